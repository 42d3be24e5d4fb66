"""Portfolio + risk-metrics stages against a raw consume loop of the same input, same run.

Input (synthetic, deterministic): GBM trades over ``--symbols`` symbols (default 500) and
fills on every symbol (one opening fill each for account ``paper``, then every 100th trade
a fill for one of three accounts), produced to a fresh namespace of a real broker.

(a) raw: a bare confluent-kafka consumer reads the trades and fills topics from the start
    and decodes every record with fastavro (``AvroSerde.decode_dict``).
(b) stages: ``omniquant stage portfolio`` and ``omniquant stage risk-metrics`` run as their
    own processes over the same topics; timed from the portfolio group's first commit to
    the moment both groups (repartition topic included) have no lag. Their rate is input
    records / that time. Also printed: each stage's peak RSS (VmHWM) and what it produced.

Benchmarks are not tests: they print figures and ratios. Broker: KAFKA_BOOTSTRAP_SERVERS,
else a LocalKafka on free ports.

Run: .venv/bin/python benchmarks/bench_risk.py [--symbols 500] [--trades 100000]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition
from harness import broker, namespace, peak_rss_mb

from core.config import Settings
from core.kafka import LagProbe, consumer_config, end_offsets
from core.topics import TopicNames
from producers.kafka_producer import RecordProducer
from producers.synthetic import GbmTradeGenerator
from schemas.fixedpoint import to_fixed
from schemas.models import Fill, Side, Trade
from schemas.serde import AvroSerde

T0 = 1_700_000_000_000_000_000


def _produce_input(settings: Settings, symbols: int, trades: int) -> tuple[int, int]:
    names = TopicNames(settings.topic_prefix)
    universe = [f"S{i:04d}" for i in range(symbols)]
    generator = GbmTradeGenerator(universe, seed=11, start_ns=T0, mean_interval_ms=2.0)
    producer = RecordProducer(settings, "bench-input")
    rng = random.Random(5)
    fills = 0

    def fill(symbol: str, account: str, side: Side, price: int, ts: int) -> None:
        nonlocal fills
        fills += 1
        record = Fill(
            fill_id=f"f{fills}", client_order_id=f"c{fills}", venue_order_id=f"v{fills}",
            account=account, symbol=symbol, side=side, quantity=to_fixed(10), price=price,
            venue="BENCH", ts_event=ts, ts_init=ts,
        )  # fmt: skip
        producer.send(names.fills, record, key=symbol)

    opened: set[str] = set()
    for n in range(trades):
        trade: Trade = generator.next_trade(T0 + n * 2_000_000)
        if trade.symbol not in opened:
            opened.add(trade.symbol)
            fill(trade.symbol, "paper", Side.BUY, trade.price, trade.ts_event)
        elif n % 100 == 0:
            side = Side.BUY if rng.random() < 0.5 else Side.SELL
            fill(trade.symbol, f"desk-{rng.randrange(3)}", side, trade.price, trade.ts_event)
        producer.send(names.trades, trade, key=trade.symbol)
    producer.flush()
    return trades, fills


def _raw_rate(settings: Settings, total: int) -> float:
    names = TopicNames(settings.topic_prefix)
    serde = AvroSerde.from_settings(settings)
    models = {names.trades: Trade, names.fills: Fill}
    consumer = Consumer(consumer_config(settings, f"bench-raw-{uuid.uuid4().hex[:6]}"))
    partitions = [
        TopicPartition(topic, p, 0) for topic in models for p in end_offsets(settings, topic)
    ]
    consumer.assign(partitions)
    seen = 0
    started = time.perf_counter()
    while seen < total:
        for msg in consumer.consume(1000, timeout=1.0):
            if msg.error() is None:
                serde.decode_dict(msg.value(), models[msg.topic()], topic=msg.topic())
                seen += 1
    elapsed = time.perf_counter() - started
    consumer.close()
    return total / elapsed


def _stages_rate(settings: Settings, total: int, state_dir: Path) -> tuple[float, dict]:
    names = TopicNames(settings.topic_prefix)
    prefix = settings.topic_prefix
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIQUANT_")}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=settings.kafka_bootstrap(),
        OMNIQUANT_TOPIC_PREFIX=prefix,
        OMNIQUANT_STATE_DIR=str(state_dir),
    )
    apps = {
        stage: subprocess.Popen(
            [sys.executable, "-m", "omniquant.cli", "stage", stage],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for stage in ("portfolio", "risk-metrics")
    }
    probe = LagProbe(settings)
    inputs = {
        "portfolio": [names.fills, names.trades],
        "risk-metrics": [names.name("portfolio")],
    }
    try:
        started = None
        while True:
            lag_pf = probe.lag(f"{prefix}portfolio", inputs["portfolio"])
            if started is None and lag_pf < total:
                started = time.perf_counter()  # the first commit: it is processing
            if started is not None and lag_pf == 0:
                lag_rm = probe.lag(f"{prefix}risk-metrics", inputs["risk-metrics"])
                if lag_rm == 0 and sum(end_offsets(settings, names.risk_metrics).values()):
                    break
            for stage, app in apps.items():
                if app.poll() is not None:
                    raise RuntimeError(f"{stage} exited with {app.returncode}")
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        rss = {stage: peak_rss_mb(app.pid) for stage, app in apps.items()}
    finally:
        probe.close()
        for app in apps.values():
            app.terminate()
        for app in apps.values():
            app.wait(30)
    produced = {
        topic: sum(end_offsets(settings, names.name(topic)).values())
        for topic in ("positions", "portfolio", "risk.metrics")
    }
    return total / elapsed, {"rss_mb": rss, "produced": produced, "elapsed_s": elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--trades", type=int, default=100_000)
    args = parser.parse_args()
    with broker("risk") as bootstrap, tempfile.TemporaryDirectory(prefix="bench-risk-state-") as st:
        settings = namespace(bootstrap, "risk")
        started = time.perf_counter()
        trades, fills = _produce_input(settings, args.symbols, args.trades)
        total = trades + fills
        print(
            f"input: {trades:,} trades + {fills:,} fills over {args.symbols} symbols "
            f"(produced in {time.perf_counter() - started:.1f} s)"
        )
        raw = _raw_rate(settings, total)
        print(f"(a) raw consume + fastavro decode: {raw:,.0f} records/s")
        rate, info = _stages_rate(settings, total, Path(st))
        print(
            f"(b) portfolio + risk-metrics stages: {rate:,.0f} records/s "
            f"(drained in {info['elapsed_s']:.1f} s)"
        )
        print(f"    produced: {info['produced']}")
        for stage, mb in info["rss_mb"].items():
            print(f"    peak RSS {stage}: {mb:,.0f} MB")
        print(f"ratio stages/raw: {rate / raw:.2f}x")


if __name__ == "__main__":
    main()
