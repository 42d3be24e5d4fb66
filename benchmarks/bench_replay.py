"""Replay throughput against a raw confluent-kafka loop producing the same bytes, same run.

Replays real Lean ticks (default: AIG 2013-10-07 quotes, 1,079,935 rows) into a real broker,
and, alternating with it, produces the very same pre-encoded messages (same topic layout,
keys, timestamps, producer config: idempotent, acks=all, lz4, linger) from a list with a bare
``produce``/``poll`` loop. Prints both rates and replay/raw. Target: ratio ≥ 0.7.

Broker: ``KAFKA_BOOTSTRAP_SERVERS`` if set, else a LocalKafka started on free ports (and
stopped at the end). Data: ``$OMNIQUANT_SHARED_DATA`` or ``../shared/data``.

Run: .venv/bin/python benchmarks/bench_replay.py [--rounds N] [FILE ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from confluent_kafka import Producer
from harness import broker, namespace, shared_data

from core.config import Settings
from core.kafka import producer_config
from core.topics import TopicNames
from producers.replay import open_files, replay
from producers.replay._avro import RecordEncoder, TimestampEncoder
from producers.replay._files import merge_items
from producers.replay._model import QUOTE, SKIP, TRADE, to_record
from schemas.serde import AvroSerde

DEFAULT_FILES = ("Lean/Data/equity/usa/tick/aig/20131007_quote.zip",)


def _pre_encode(files: list[Path], settings: Settings) -> list[tuple[int, bytes, bytes, int]]:
    """(kind, value, key, timestamp ms) of every message replay sends, in its order."""
    serde = AvroSerde.from_settings(settings)
    names = TopicNames(settings.topic_prefix)
    encoder = RecordEncoder(serde, {TRADE: names.trades, QUOTE: names.quotes})
    out = []
    checked = 0
    avro_timestamp = TimestampEncoder()
    for ts, _, _, kind, symbol, body in merge_items(open_files(files)):
        if kind == SKIP:
            continue
        tsb = avro_timestamp(ts)
        value = encoder.prefix(kind, symbol) + body.middle + tsb + tsb
        if checked < 1000:  # the bytes are AvroSerde's, record for record
            record = to_record(kind, symbol, body, ts)
            topic = names.trades if kind == TRADE else names.quotes
            assert value == serde.encode(record, topic=topic), (ts, symbol)
            checked += 1
        out.append((kind, value, symbol.encode(), ts // 1_000_000))
    return out


def _raw_loop(settings: Settings, messages: list[tuple[int, bytes, bytes, int]]) -> float:
    """Seconds to produce ``messages`` with a bare loop and get every acknowledgement."""
    names = TopicNames(settings.topic_prefix)
    topics = (names.trades, names.quotes)
    acked = [0]
    failed: list[str] = []

    def report(err: object, _msg: object) -> None:
        if err is None:
            acked[0] += 1
        else:
            failed.append(str(err))

    started = time.perf_counter()
    producer = Producer(producer_config(settings, **{"client.id": "bench-raw"}))
    produce, poll = producer.produce, producer.poll
    for sent, (kind, value, key, ts_ms) in enumerate(messages, start=1):
        while True:
            try:
                produce(topics[kind], value, key, on_delivery=report, timestamp=ts_ms)
                break
            except BufferError:
                poll(0.1)
        if not sent % 1024:  # same cadence as replay
            poll(0)
    remaining = producer.flush(120)
    elapsed = time.perf_counter() - started
    if remaining or failed or acked[0] != len(messages):
        raise SystemExit(f"raw loop lost messages: {remaining} queued, {failed[:3]}")
    return elapsed


def _replay_once(settings: Settings, files: list[Path], expected: int) -> float:
    started = time.perf_counter()
    stats = replay(files, settings, speed="max")
    elapsed = time.perf_counter() - started
    if not stats.ok or stats.produced_total != expected:
        raise SystemExit(f"replay not clean: {stats.report()}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", help="default: AIG 20131007 quotes")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    root = shared_data()
    files = [Path(f) for f in args.files] or [root / f for f in DEFAULT_FILES]
    for file in files:
        if not file.exists():
            sys.exit(f"missing {file} (set OMNIQUANT_SHARED_DATA)")
    with broker("replay") as bootstrap:
        warm = namespace(bootstrap, "warm")
        print("pre-encoding (and checking 1000 messages against AvroSerde.encode) ...")
        messages = _pre_encode(files, warm)
        n = len(messages)
        print(f"{n:,} messages from {', '.join(f.name for f in files)}")
        # Warm-up, not timed: connections, idempotent producer id, the broker's JIT and page
        # cache (a fresh broker is markedly slower on its first million messages).
        _raw_loop(warm, messages)
        _replay_once(namespace(bootstrap, "warm-replay"), files, n)
        raw_times: list[float] = []
        replay_times: list[float] = []
        for round_no in range(1, args.rounds + 1):
            raw_ns, replay_ns = namespace(bootstrap, "raw"), namespace(bootstrap, "replay")
            if round_no % 2:  # alternate who goes first: the broker may still be busy after one
                raw_times.append(_raw_loop(raw_ns, messages))
                replay_times.append(_replay_once(replay_ns, files, n))
            else:
                replay_times.append(_replay_once(replay_ns, files, n))
                raw_times.append(_raw_loop(raw_ns, messages))
            print(
                f"round {round_no}: raw {n / raw_times[-1]:>10,.0f} msg/s   "
                f"replay {n / replay_times[-1]:>10,.0f} rows/s   "
                f"ratio {raw_times[-1] / replay_times[-1]:.2f}"
            )
        ratios = [raw / rep for raw, rep in zip(raw_times, replay_times, strict=True)]
        raw_best, replay_best = min(raw_times), min(replay_times)
        raw_med, replay_med = statistics.median(raw_times), statistics.median(replay_times)
        print(
            f"raw confluent-kafka loop: best {n / raw_best:,.0f} msg/s, median {n / raw_med:,.0f}"
        )
        print(
            f"replay (read+parse+encode+merge+produce+account): best {n / replay_best:,.0f}"
            f" rows/s, median {n / replay_med:,.0f}"
        )
        print(
            f"ratio replay/raw: best-of {raw_best / replay_best:.2f},"
            f" median {raw_med / replay_med:.2f},"
            f" median of per-round ratios {statistics.median(ratios):.2f} (target >= 0.70)"
        )


if __name__ == "__main__":
    main()
