"""The synthetic market feed stage: GBM trades for a set of symbols → the trades topic.

Event time is the wall clock at the paced rate (live-like); the generator itself never
reads the clock. ``ticks`` bounds the run (the feed then flushes and exits 0).

Counts every trade in ``market_data_messages_total{source="synthetic",type="trade"}`` and
its ingest delay in ``market_data_lag_seconds``; ``/readyz`` passes once the broker has
acknowledged a trade, ``/healthz`` while the loop turns.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Sequence

from core.config import Settings
from core.health import HEALTH, Heartbeat
from core.metrics import MARKET_DATA_LAG, MARKET_DATA_MESSAGES
from core.topics import TopicNames
from producers.kafka_producer import RecordProducer
from producers.synthetic import GbmTradeGenerator

log = logging.getLogger(__name__)

SOURCE = "synthetic"
#: /healthz fails once the feed loop has not turned for this long (or a tick interval more)
LIVENESS_STALL_S = 120.0


def run(
    settings: Settings,
    *,
    symbols: Sequence[str],
    rate: float,
    ticks: int | None,
    seed: int,
    name: str = "feed",
) -> int:
    """Produce trades until ``ticks`` are sent or SIGTERM/SIGINT; return the count sent."""
    stop = False

    def request_stop(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    topic = TopicNames(settings.topic_prefix).trades
    producer = RecordProducer(settings, name)
    generator = GbmTradeGenerator(
        symbols=symbols, seed=seed, start_ns=time.time_ns(), mean_interval_ms=1000.0 / rate
    )
    interval = 1.0 / rate
    sent = 0
    next_at = time.monotonic()
    messages = MARKET_DATA_MESSAGES.labels(SOURCE, "trade")
    lag = MARKET_DATA_LAG.labels(SOURCE)
    heartbeat = Heartbeat(LIVENESS_STALL_S + interval)

    def connected() -> tuple[bool, str]:
        if producer.delivered:
            return True, f"{producer.delivered} trade(s) acknowledged by the broker"
        return False, "no trade acknowledged by the broker yet"

    HEALTH.register(f"{name}: main loop", heartbeat.check, kind="liveness")
    HEALTH.register(f"{name}: connected", connected)
    try:
        while not stop and (ticks is None or sent < ticks):
            heartbeat.beat()
            trade = generator.next_trade(time.time_ns())
            producer.send(topic, trade, key=trade.symbol)
            messages.inc()
            lag.observe(max(0, time.time_ns() - trade.ts_event) / 1e9)
            sent += 1
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing the feed to its rate, not waiting for a condition
            elif delay < -1.0:
                next_at = time.monotonic()  # fell behind: don't burst to catch up
    finally:
        HEALTH.unregister(f"{name}: main loop")
        HEALTH.unregister(f"{name}: connected")
        producer.close()
    log.info("feed stopped", extra={"trades_sent": sent, "delivered": producer.delivered})
    return sent
