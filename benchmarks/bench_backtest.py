"""Backtest wall time against a raw consume + decode loop over the same ticks, same run.

Backtests one real day (default: SPY 2013-10-07 trades, 250,601 ticks; SMA 10/30 on 1-minute
bars, long-only, 100 shares) with :func:`omniquant.backtest.run_backtest` — the command's
code: replay into ``bt-<id>.``, the stages in phases, results read back — then, on the same
broker, reads that run's trades topic with a bare confluent-kafka ``consume(batch)`` loop that
decodes every record (``AvroSerde.decode_dict``). Prints both rates, the backtest's time per
step, and backtest / raw. Target: ratio <= 2.

Services: a private state directory with its own Kafka (KRaft) and Redis on free ports
(``omniquant up``'s code), chDB in it; all stopped at the end. ``KAFKA_BOOTSTRAP_SERVERS`` /
``REDIS_URL`` set: those instead. Data: ``$OMNIQUANT_SHARED_DATA`` or ``../shared/data``.

Run: .venv/bin/python benchmarks/bench_backtest.py [FILE] [--raw-rounds N]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition
from harness import free_port, shared_data

from core.config import Settings, load_settings
from core.kafka import consumer_config
from core.topics import TopicNames
from omniquant.backtest import run_backtest, strategy_env
from omniquant.stack.manager import LocalStack
from schemas.models import Trade
from schemas.serde import AvroSerde

DEFAULT_FILE = "Lean/Data/equity/usa/tick/spy/20131007_trade.zip"
TARGET = 2.0


def raw_loop(settings: Settings, topic: str) -> tuple[int, float]:
    """(records, seconds) to consume every record of ``topic`` and decode it."""
    serde = AvroSerde.from_settings(settings)
    consumer = Consumer(
        consumer_config(
            settings,
            f"bench-raw-{uuid.uuid4().hex[:8]}",
            **{"enable.auto.commit": "false", "enable.partition.eof": "true"},
        )
    )
    try:
        parts = consumer.list_topics(topic, timeout=15).topics[topic].partitions
        ends = {}
        for p in parts:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=15)
            if high > low:
                ends[p] = high
        started = time.perf_counter()
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        n = 0
        while ends:
            for msg in consumer.consume(1000, 1.0):
                if msg.error() is not None:  # partition EOF
                    ends.pop(msg.partition(), None)
                    continue
                serde.decode_dict(msg.value(), Trade, topic=topic)
                n += 1
                if msg.offset() + 1 >= ends.get(msg.partition(), 0):
                    ends.pop(msg.partition(), None)
        return n, time.perf_counter() - started
    finally:
        consumer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", help=f"default: {DEFAULT_FILE}")
    parser.add_argument("--raw-rounds", type=int, default=3)
    args = parser.parse_args()
    path = Path(args.file) if args.file else shared_data() / DEFAULT_FILE
    if not path.exists():
        sys.exit(f"missing {path} (set OMNIQUANT_SHARED_DATA)")
    with tempfile.TemporaryDirectory(prefix="bench-backtest-") as state:
        os.environ.setdefault("OMNIQUANT_STATE_DIR", state)
        os.environ.setdefault("OMNIQUANT_STACK__KAFKA_PORT", str(free_port()))
        os.environ.setdefault("OMNIQUANT_STACK__KAFKA_CONTROLLER_PORT", str(free_port()))
        os.environ.setdefault("OMNIQUANT_STACK__REDIS_PORT", str(free_port()))
        os.environ.setdefault("OMNIQUANT_CLICKHOUSE__CHDB_PATH", str(Path(state) / "chdb"))
        run_id = f"bench{uuid.uuid4().hex[:6]}"
        settings = load_settings(topic_prefix=f"bt-{run_id}.")
        stack = LocalStack(settings)
        for service in stack.up():
            print(f"{service.name}: {service.address} {service.detail}")
        try:
            params = {"fast": "10", "slow": "30"}
            env = strategy_env("sma-crossover", params, 60_000, Decimal(100), long_only=True)
            started = time.perf_counter()
            result = run_backtest(
                settings,
                run_id=run_id,
                paths=[path],
                strategy_environment=env,
                progress=False,
                log=io.StringIO(),
            )
            backtest_s = time.perf_counter() - started
            summary = result.summary
            ticks = int(summary["ticks"])
            trades = TopicNames(settings.topic_prefix).trades
            raw = [raw_loop(settings, trades) for _ in range(max(1, args.raw_rounds))]
        finally:
            stack.down()
    counts = {n for n, _ in raw}
    if counts != {ticks}:
        sys.exit(f"raw loop read {counts} records, the backtest fed {ticks}")
    raw_s = statistics.median(s for _, s in raw)
    print(
        f"{path.name}: {ticks:,} ticks, {summary['orders']} orders, {summary['fills']} fills,"
        f" pnl {summary['pnl']}, digest {summary['digest'][:16]}"
    )
    print("backtest steps (wall s):")
    for step, seconds in summary["timings_s"].items():
        print(f"  {step:<40} {seconds:8.1f}")
    print(f"backtest (whole command) {backtest_s:8.1f} s  {ticks / backtest_s:>10,.0f} ticks/s")
    print(
        f"raw consume + decode (median of {len(raw)}) {raw_s:8.2f} s"
        f"  {ticks / raw_s:>10,.0f} ticks/s"
    )
    print(f"ratio backtest / raw: {backtest_s / raw_s:.1f} (target <= {TARGET:.0f})")


if __name__ == "__main__":
    main()
