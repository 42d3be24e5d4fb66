"""A vendor feed end to end: the venue's SDK client against a loopback server replaying the
vendor's own frames → the feed runner → the real broker."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from confluent_kafka import Consumer
from test_polygon_adapter import MockServerFrames, feed_for, mock_frames, polygon_ws_server

from omniquant.kafka import ensure_topics
from omniquant.topics import TopicNames
from producers.runner import FeedRunner, RunnerConfig
from schemas.models import Trade
from schemas.serde import AvroSerde

pytestmark = pytest.mark.integration
__all__ = ["mock_frames"]  # the fixture, re-used from the adapter's tests


def _consume(bootstrap: str, topic: str, expected: int) -> list:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"t-{topic}", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    out: list = []
    for _ in range(60):
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            out.append(msg)
        elif len(out) >= expected:
            break
    consumer.close()
    return out


def test_polygon_frames_reach_kafka_as_trades_and_garbage_reaches_dead_letters(
    mock_frames: MockServerFrames, settings, kafka_bootstrap: str, shared_data: Path
) -> None:
    ensure_topics(settings)
    names = TopicNames(settings.topic_prefix)
    frames: list[str | bytes] = [mock_frames.aapl_trade, mock_frames.amzn_trades, b"\x00garbage"]

    async def scenario() -> FeedRunner:
        async with polygon_ws_server(mock_frames, frames) as server:
            runner = FeedRunner(
                feed_for(server.port),
                settings,
                ["AAPL", "AMZN"],
                config=RunnerConfig(staleness_s=60),
            )
            stop = asyncio.Event()
            task = asyncio.create_task(runner.run(stop))
            async with asyncio.timeout(20):
                while runner.stats.produced.get("trade", 0) < 3 or runner.stats.malformed < 1:
                    await asyncio.sleep(0.05)
            stop.set()
            await asyncio.wait_for(task, 10)
            return runner

    runner = asyncio.run(scenario())
    assert runner.stats.produced == {"trade": 3} and runner.stats.malformed == 1

    serde = AvroSerde()
    messages = _consume(kafka_bootstrap, names.trades, 3)
    trades = sorted((serde.decode_as(m.value(), Trade) for m in messages), key=lambda t: t.trade_id)
    assert [(t.symbol, t.trade_id, t.price) for t in trades] == [
        ("AAPL", "5096", 161_870_000_000),
        ("AMZN", "72815", trades[1].price),
        ("AMZN", "799", trades[2].price),
    ]
    for msg in messages:
        trade = serde.decode_as(msg.value(), Trade)
        assert msg.key().decode() == trade.symbol
        assert msg.timestamp()[1] == trade.ts_event // 1_000_000  # Kafka time = event time
        assert dict(msg.headers())["source"] == b"polygon"

    dead = _consume(kafka_bootstrap, names.dead_letter("feeds"), 1)
    assert [m.value() for m in dead] == [b"\x00garbage"]
    assert dict(dead[0].headers())["dlq.reason"] == b"bad_json"
