"""The synthetic market feed stage: GBM trades for a set of symbols → the trades topic.

Event time is the wall clock at the paced rate (live-like); the generator itself never
reads the clock. ``ticks`` bounds the run (the feed then flushes and exits 0).
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Sequence

from core.config import Settings
from core.topics import TopicNames
from producers.kafka_producer import RecordProducer
from producers.synthetic import GbmTradeGenerator

log = logging.getLogger(__name__)


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
    try:
        while not stop and (ticks is None or sent < ticks):
            trade = generator.next_trade(time.time_ns())
            producer.send(topic, trade, key=trade.symbol)
            sent += 1
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing the feed to its rate, not waiting for a condition
            elif delay < -1.0:
                next_at = time.monotonic()  # fell behind: don't burst to catch up
    finally:
        producer.close()
    log.info("feed stopped", extra={"trades_sent": sent, "delivered": producer.delivered})
    return sent
