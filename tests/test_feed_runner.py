"""The feed runner against the real broker: routing, dead letters, reconnect, staleness.

The feed here is a scripted vendor double (the vendor side is what varies by venue; the
adapters have their own tests against loopback servers). Kafka is real.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence

import pytest
from kafka_read import read_topic

from core.kafka import ensure_topics
from core.topics import TopicNames
from omniquant.stages import topic_catalog
from producers.base import FeedDisconnected, FeedEvent, Malformed, MarketDataFeed
from producers.runner import FeedRunner, RunnerConfig, backoff_delay
from schemas.models import Alert, Quote, Trade
from schemas.serde import AvroSerde

T0 = 1_700_000_000_000_000_000


def _trade(i: int) -> Trade:
    return Trade(
        symbol="AAPL",
        venue="XNAS",
        price=190_000_000_000 + i,
        size=100_000_000_000,
        source="scripted",
        ts_event=T0 + i,
        ts_init=T0 + i + 5_000_000,
    )


class ScriptedFeed(MarketDataFeed):
    """Session 1: two trades, a malformed frame, then the link drops.
    Session 2: one quote, then silence (the runner must raise a staleness alert)."""

    source = "scripted"

    def __init__(self) -> None:
        self.connects = 0
        self.subscriptions: list[list[str]] = []
        self._symbols: frozenset[str] = frozenset()

    async def connect(self) -> None:
        self.connects += 1

    async def subscribe(self, symbols: Sequence[str]) -> None:
        self.subscriptions.append(list(symbols))
        self._symbols = frozenset(symbols)

    async def unsubscribe(self, symbols: Sequence[str]) -> None:
        self._symbols -= set(symbols)

    @property
    def subscribed(self) -> frozenset[str]:
        return self._symbols

    async def events(self) -> AsyncIterator[FeedEvent]:
        if self.connects == 1:
            yield _trade(1)
            yield _trade(2)
            yield Malformed("scripted", b'{"ev":"T","p":', "bad_json", "truncated JSON", T0)
            raise FeedDisconnected("link dropped")
        yield Quote(
            symbol="AAPL",
            venue="XNAS",
            bid_price=1,
            bid_size=2,
            source="scripted",
            ts_event=T0 + 10,
            ts_init=T0 + 11,
        )
        await asyncio.sleep(3600)  # silence until the runner is stopped
        yield _trade(3)  # pragma: no cover

    async def close(self) -> None:
        self._symbols = frozenset()


def test_backoff_grows_exponentially_with_full_jitter_and_is_capped() -> None:
    config = RunnerConfig(backoff_initial_s=0.5, backoff_max_s=8)
    rng = random.Random(1)
    for attempt in range(10):
        ceiling = min(8, 0.5 * 2**attempt)
        samples = [backoff_delay(attempt, config, rng) for _ in range(200)]
        assert all(0 <= s <= ceiling for s in samples)
        assert max(samples) > ceiling * 0.8  # jitter spans the range


@pytest.mark.integration
def test_runner_routes_records_dead_letters_malformed_reconnects_and_alerts_on_silence(
    settings, kafka_bootstrap: str
) -> None:
    ensure_topics(settings, topic_catalog())
    names = TopicNames(settings.topic_prefix)
    feed = ScriptedFeed()
    runner = FeedRunner(
        feed,
        settings,
        ["AAPL"],
        config=RunnerConfig(staleness_s=0.5, backoff_initial_s=0.05, backoff_max_s=0.1),
        rng=random.Random(0),
    )

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop))
        for _ in range(200):  # wait for the staleness alert, then stop
            if runner.stats.stale_alerts:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(scenario())

    assert feed.connects == 2 and feed.subscriptions == [["AAPL"], ["AAPL"]]
    assert runner.stats.produced == {"trade": 2, "quote": 1}
    assert runner.stats.malformed == 1 and runner.stats.disconnects == 1

    serde = AvroSerde()
    trades = read_topic(kafka_bootstrap, names.trades, 2)
    assert [serde.decode_as(m.value(), Trade).price for m in trades] == [
        190_000_000_001,
        190_000_000_002,
    ]
    assert all(m.key() == b"AAPL" for m in trades)
    assert [m.timestamp()[1] for m in trades] == [(T0 + 1) // 1_000_000, (T0 + 2) // 1_000_000]
    assert len(read_topic(kafka_bootstrap, names.quotes, 1)) == 1

    dead = read_topic(kafka_bootstrap, names.dead_letter("feeds"), 1)
    assert [m.value() for m in dead] == [b'{"ev":"T","p":']
    headers = {k: v.decode() for k, v in dead[0].headers()}
    assert headers["dlq.reason"] == "bad_json" and headers["dlq.source"] == "scripted"
    assert headers["dlq.received_ns"] == str(T0)

    alerts = [
        serde.decode_as(m.value(), Alert) for m in read_topic(kafka_bootstrap, names.alerts, 1)
    ]
    assert len(alerts) == 1 and alerts[0].kind == "feed_stale"
