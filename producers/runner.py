"""Runs any :class:`~producers.base.MarketDataFeed` into Kafka.

What every feed gets from here, so no venue module repeats it:
- records routed by type to their topic (trades, quotes, bars, execution reports, fills),
  keyed by symbol, Kafka timestamp = event time, through the idempotent acks=all
  :class:`~producers.kafka_producer.RecordProducer` (a failed delivery stops the runner);
- malformed vendor frames to the ``feeds`` dead-letter topic with the raw bytes and the
  reason in headers, counted, never a crash;
- reconnect after a dropped connection with exponential backoff and full jitter, then
  re-subscribe; a FeedError (bad credentials, bad request) is fatal;
- staleness: no event for ``staleness_s`` while subscribed → one Alert record on the alerts
  topic and ``market_data_stale{source}`` = 1, until data flows again;
- metrics ``market_data_messages_total{source,type}``, ``market_data_lag_seconds{source}``,
  ``market_data_errors_total{source,reason}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from core.config import Settings
from core.health import HEALTH
from core.logs import CORRELATION_HEADER
from core.metrics import (
    MARKET_DATA_ERRORS,
    MARKET_DATA_LAG,
    MARKET_DATA_MESSAGES,
    MARKET_DATA_RECONNECTS,
    MARKET_DATA_STALE,
)
from core.topics import TopicNames
from producers.base import FeedDisconnected, FeedError, FeedEvent, Malformed, MarketDataFeed
from producers.kafka_producer import RecordProducer
from schemas.models import (
    Alert,
    AlertSeverity,
    Bar,
    ExecutionReport,
    Fill,
    Quote,
    Record,
    Trade,
)

log = logging.getLogger(__name__)

Clock = Callable[[], int]  # UTC ns


@dataclass(frozen=True, slots=True)
class RunnerConfig:
    staleness_s: float = 30.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    max_reconnects: int | None = None  # None: forever


@dataclass
class FeedStats:
    produced: dict[str, int] = field(default_factory=dict)  # by record type
    malformed: int = 0
    connects: int = 0
    disconnects: int = 0
    stale_alerts: int = 0


def backoff_delay(attempt: int, config: RunnerConfig, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform(0, min(max, initial * 2**attempt))."""
    ceiling = min(config.backoff_max_s, config.backoff_initial_s * (2**attempt))
    return rng.uniform(0.0, ceiling)


class FeedRunner:
    def __init__(
        self,
        feed: MarketDataFeed,
        settings: Settings,
        symbols: Sequence[str],
        *,
        producer: RecordProducer | None = None,
        config: RunnerConfig | None = None,
        clock: Clock = time.time_ns,
        rng: random.Random | None = None,
    ) -> None:
        self.feed = feed
        self.symbols = list(symbols)
        self.names = TopicNames(settings.topic_prefix)
        self.producer = producer or RecordProducer(settings, f"feed-{feed.source}")
        self.config = config or RunnerConfig()
        self.clock = clock
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not security
        self.stats = FeedStats()
        self._last_event = time.monotonic()
        self._stale = False
        self._connected = False  # subscribed on a live link (``/readyz``)
        self._topics: dict[type[Record], str] = {
            Trade: self.names.trades,
            Quote: self.names.quotes,
            Bar: self.names.bars,
            ExecutionReport: self.names.execution_reports,
            Fill: self.names.fills,
        }

    # ---- routing ---------------------------------------------------------------------
    def handle(self, event: FeedEvent) -> None:
        self._last_event = time.monotonic()
        if self._stale:
            self._stale = False
            MARKET_DATA_STALE.labels(self.feed.source).set(0)
            log.info("feed data resumed", extra={"source": self.feed.source})
        if isinstance(event, Malformed):
            self._dead_letter(event)
            return
        topic = self._topics[type(event)]
        headers: list[tuple[str, bytes | str]] = [("source", self.feed.source)]
        cid = getattr(event, "client_order_id", None)
        if cid:
            headers.append((CORRELATION_HEADER, cid))
        self.producer.send(topic, event, key=event.symbol, headers=headers)
        kind = type(event).__name__.lower()
        self.stats.produced[kind] = self.stats.produced.get(kind, 0) + 1
        MARKET_DATA_MESSAGES.labels(self.feed.source, kind).inc()
        MARKET_DATA_LAG.labels(self.feed.source).observe(
            max(0.0, (event.ts_init - event.ts_event) / 1e9)
        )

    def _dead_letter(self, event: Malformed) -> None:
        self.stats.malformed += 1
        MARKET_DATA_ERRORS.labels(event.source, event.reason).inc()
        self.producer.send_raw(
            self.names.dead_letter("feeds"),
            event.raw,
            key=event.source,
            # Stamped now (dead-letter topics expire by time); the receive time is a header.
            headers=[
                ("dlq.received_ns", str(event.received_ns)),
                ("dlq.error.class", "Malformed"),
                ("dlq.error.message", event.error[:4096]),
                ("dlq.reason", event.reason),
                ("dlq.app", "feeds"),
                ("dlq.source", event.source),
            ],
        )
        log.warning(
            "malformed frame sent to dead letters",
            extra={"source": event.source, "reason": event.reason, "error": event.error[:500]},
        )

    # ---- staleness -------------------------------------------------------------------
    async def _watch_staleness(self) -> None:
        period = max(0.05, self.config.staleness_s / 4)
        while True:
            await asyncio.sleep(period)
            silent = time.monotonic() - self._last_event
            if not self._stale and silent >= self.config.staleness_s and self.feed.subscribed:
                self._stale = True
                self.stats.stale_alerts += 1
                MARKET_DATA_STALE.labels(self.feed.source).set(1)
                now = self.clock()
                alert = Alert(
                    alert_id=f"stale-{self.feed.source}-{now}",
                    severity=AlertSeverity.WARNING,
                    source=f"feed-{self.feed.source}",
                    kind="feed_stale",
                    message=(
                        f"no data from {self.feed.source} for {silent:.0f} s while "
                        f"subscribed to {len(self.feed.subscribed)} symbol(s)"
                    ),
                    attributes={"silent_seconds": f"{silent:.1f}"},
                    ts_event=now,
                    ts_init=now,
                )
                self.producer.send(self.names.alerts, alert, key=self.feed.source)
                self.producer.flush()
                log.warning("feed stale", extra={"source": self.feed.source, "silent_s": silent})

    # ---- main loop -------------------------------------------------------------------
    def connected_check(self) -> tuple[bool, str]:
        """Readiness ``feed-<source>: connected``: subscribed on a live link."""
        if self._connected:
            return True, f"subscribed to {len(self.feed.subscribed)} symbol(s)"
        return False, f"{self.feed.source}: not connected (connecting or reconnecting)"

    async def run(self, stop: asyncio.Event) -> FeedStats:
        watchdog = asyncio.create_task(self._watch_staleness())
        attempt = 0
        check_name = f"feed-{self.feed.source}: connected"
        HEALTH.register(check_name, self.connected_check)
        try:
            while not stop.is_set():
                try:
                    await self.feed.connect()
                    self.stats.connects += 1
                    await self.feed.subscribe(self.symbols)
                    self._connected = True
                    self._last_event = time.monotonic()
                    attempt = 0
                    await self._pump(stop)
                    if stop.is_set():
                        break
                    raise FeedDisconnected("feed ended its event stream")
                except FeedError:
                    raise
                except (TimeoutError, FeedDisconnected, OSError) as exc:
                    self._connected = False
                    self.stats.disconnects += 1
                    MARKET_DATA_ERRORS.labels(self.feed.source, "disconnect").inc()
                    if (
                        self.config.max_reconnects is not None
                        and attempt >= self.config.max_reconnects
                    ):
                        raise FeedDisconnected(
                            f"{self.feed.source}: gave up after {attempt} reconnects: {exc}"
                        ) from exc
                    delay = backoff_delay(attempt, self.config, self.rng)
                    attempt += 1
                    MARKET_DATA_RECONNECTS.labels(self.feed.source).inc()
                    log.warning(
                        "feed disconnected; reconnecting",
                        extra={"source": self.feed.source, "error": str(exc), "in_s": delay},
                    )
                    await self.feed.close()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=delay)
        finally:
            self._connected = False
            HEALTH.unregister(check_name)
            watchdog.cancel()
            await self.feed.close()
            self.producer.flush()
        return self.stats

    async def _pump(self, stop: asyncio.Event) -> None:
        events = self.feed.events()
        stopper = asyncio.create_task(stop.wait())
        try:
            while True:
                nxt = asyncio.ensure_future(anext(events))
                done, _ = await asyncio.wait({nxt, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if nxt not in done:
                    nxt.cancel()
                    return
                try:
                    event = nxt.result()
                except StopAsyncIteration:
                    return
                self.handle(event)
        finally:
            stopper.cancel()
