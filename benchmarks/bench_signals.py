"""Signals stage throughput against a raw consume + decode loop of the same topic, same run.

Each round replays one day of real trades (default: SPY 2013-10-07, 250,601 trades, from
``$OMNIQUANT_SHARED_DATA`` or ``../shared/data``) into a fresh topic namespace, then drains
that trades topic from the start twice, in alternating order:

(a) raw: a bare confluent-kafka ``Consumer.poll()`` loop decoding every value with fastavro
    (``schemaless_reader`` after the 10-byte single-object header), in this process;
(b) stage: ``python -m omniquant.cli stage signals`` in its own process, with the env the
    supervisor gives a stage (topic prefix, state dir, metrics port).

Both are timed from their first consumed record to their last (the stage's from its
``messages_in`` counter, scraped every 20 ms): start-up and group join are left out of
both (the stage's between the first sample with records consumed and the last before all
were). Printed per round and as medians: records/s, wall and CPU µs per record (CPU of the
whole process, librdkafka threads included; the stage's from /proc), stage/raw ratios
(target >= 0.6), and what the stage produced. The stage's time from start to committed lag
0 is printed too.

Then the stage's peak RSS (VmHWM) over synthetic GBM trades of 5,000 symbols (target
<= 300 MB), and with ``--breakdown`` the per-record cost of each layer (raw loops and
in-process Quix apps doing less and less of the stage's work) over the first round's topic.

Benchmarks are not tests: they print figures. Broker: ``KAFKA_BOOTSTRAP_SERVERS`` if set,
else a LocalKafka on free ports (stopped at the end). The machine's load average is printed
with each round: other processes on the box skew wall-clock rates (CPU per record less so).

Run: .venv/bin/python benchmarks/bench_signals.py [--rounds 3] [--rss-trades 500000]
     [--breakdown] [FILE ...]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from fastavro import schemaless_reader
from harness import broker, free_port, namespace, peak_rss_mb, shared_data

from core.config import Settings, load_settings
from core.kafka import LagProbe, consumer_config, end_offsets, producer_config
from core.metrics import LATE_TRADES
from core.topics import TopicNames
from omniquant.stages import CONSUMED, LiveFigure
from omniquant.supervisor import scrape

DEFAULT_FILES = ("Lean/Data/equity/usa/tick/spy/20131007_trade.zip",)
HEADER = 10  # single-object encoding: C3 01 + 8-byte fingerprint
SCRAPE_S = 0.05
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _trade_schema() -> Any:
    from schemas.registry import default_registry

    return default_registry().current("io.omniquant.market.Trade").parsed


def _load() -> str:
    return "load {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


@dataclass
class Drain:
    """One drain of the trades topic: records timed, wall and CPU seconds over them."""

    records: int
    wall_s: float
    cpu_s: float

    @property
    def rate(self) -> float:
        return self.records / self.wall_s

    @property
    def wall_us(self) -> float:
        return self.wall_s / self.records * 1e6

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / self.records * 1e6


# ---- (a) the raw loop ------------------------------------------------------------------


def _raw_loop(settings: Settings, total: int, decode: bool = True) -> Drain:
    """A bare poll loop over the trades topic from offset 0, decoding with fastavro."""
    topic = TopicNames(settings.topic_prefix).trades
    schema = _trade_schema()
    consumer = Consumer(consumer_config(settings, f"bench-raw-{uuid.uuid4().hex[:8]}"))
    consumer.assign([TopicPartition(topic, p, 0) for p in end_offsets(settings, topic)])
    poll, bytes_io = consumer.poll, io.BytesIO
    seen, wall0, cpu0 = 0, 0.0, 0.0
    try:
        while seen < total:
            msg = poll(1.0)
            if msg is None or msg.error() is not None:
                continue
            if not seen:
                wall0, cpu0 = time.perf_counter(), time.process_time()
            if decode:
                body = bytes_io(msg.value())
                body.seek(HEADER)
                schemaless_reader(body, schema, None)
            seen += 1
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    finally:
        consumer.close()
    return Drain(total - 1, wall, cpu)  # timed from the end of the first record's poll


# ---- (b) the stage process -------------------------------------------------------------


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (all its threads)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass
class StageRun:
    drain: Drain
    to_lag0_s: float  # from the process start to committed lag 0
    peak_rss_mb: float
    signals: int
    orders: int
    late: float


def _stage(settings: Settings, total: int, state_dir: Path, log: Path) -> StageRun:
    """Run ``omniquant stage signals`` until it has consumed and committed ``total``."""
    names = TopicNames(settings.topic_prefix)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIQUANT_")}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=settings.kafka_bootstrap(),
        OMNIQUANT_TOPIC_PREFIX=settings.topic_prefix,
        OMNIQUANT_STATE_DIR=str(state_dir),
        OMNIQUANT_METRICS_PORT=str(port),
    )
    probe = LagProbe(settings)
    started = time.perf_counter()
    with log.open("ab") as out:
        app = subprocess.Popen(
            [sys.executable, "-m", "omniquant.cli", "stage", "signals"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # as the supervisor starts it
        )
    try:
        # Timed between two samples: the first with records consumed, the last before all
        # were (each sample: consumed count, wall clock, the process's CPU time).
        first: tuple[float, float, float] | None = None
        last: tuple[float, float, float] | None = None
        while True:
            if app.poll() is not None:
                raise SystemExit(f"the signals stage exited with {app.returncode}; see {log}")
            sample = (CONSUMED.read(scrape(port)), time.perf_counter(), _cpu_s(app.pid))
            if sample[0] >= total:
                break
            if sample[0] > 0:
                first, last = first or sample, sample
            time.sleep(SCRAPE_S)
        if first is None or last is None or last[0] - first[0] < total / 2:
            raise SystemExit("the stage drained the topic between two samples: no timing")
        drain = Drain(int(last[0] - first[0]), last[1] - first[1], last[2] - first[2])
        while probe.lag(f"{settings.topic_prefix}signals", [names.trades]) != 0:
            time.sleep(SCRAPE_S)
        to_lag0 = time.perf_counter() - started
        rss = peak_rss_mb(app.pid)
        metrics = scrape(port)
        late = LiveFigure("late", LATE_TRADES).read(metrics)
    finally:
        probe.close()
        app.terminate()
        try:
            app.wait(60)
        except subprocess.TimeoutExpired:
            app.kill()
            app.wait()
    if app.returncode != 0:
        raise SystemExit(f"the signals stage did not stop cleanly ({app.returncode}); see {log}")
    signals = sum(end_offsets(settings, names.signals).values())
    orders = sum(end_offsets(settings, names.order_requests).values())
    return StageRun(drain, to_lag0, rss, signals, orders, late)


# ---- input -----------------------------------------------------------------------------


def _replay(settings: Settings, files: list[Path]) -> int:
    from producers.replay import replay

    stats = replay(files, settings, speed="max")
    if not stats.ok:
        raise SystemExit(f"replay not clean: {stats.report()}")
    return int(sum(end_offsets(settings, TopicNames(settings.topic_prefix).trades).values()))


def _synthetic(settings: Settings, symbols: int, trades: int) -> int:
    """``trades`` GBM trades over ``symbols`` symbols, keyed by symbol, event-time stamped."""
    from producers.synthetic import GbmTradeGenerator
    from schemas.serde import AvroSerde

    names = TopicNames(settings.topic_prefix)
    serde = AvroSerde.from_settings(settings)
    universe = [f"S{i:04d}" for i in range(symbols)]
    generator = GbmTradeGenerator(
        universe, seed=3, start_ns=1_700_000_000_000_000_000, mean_interval_ms=1.0
    )
    producer = Producer(producer_config(settings, **{"client.id": "bench-synthetic"}))
    for n in range(trades):
        trade = generator.next_trade()
        while True:
            try:
                producer.produce(
                    names.trades,
                    serde.encode(trade, topic=names.trades),
                    trade.symbol.encode(),
                    timestamp=trade.ts_event // 1_000_000,
                )
                break
            except BufferError:
                producer.poll(0.1)
        if not n % 1024:
            producer.poll(0)
    if producer.flush(120):
        raise SystemExit("synthetic trades were not all delivered")
    return trades


# ---- --breakdown: what each layer costs per record --------------------------------------


def _variant(name: str, prefix: str, bootstrap: str, total: int, state_dir: str) -> None:
    """Child mode: drain the trades topic with one variant in this process; print JSON."""
    import logging

    from quixstreams import Application
    from quixstreams.models.serializers import Deserializer

    logging.disable(logging.WARNING)
    settings = load_settings(
        kafka={"bootstrap_servers": bootstrap}, topic_prefix=prefix, state_dir=state_dir
    )
    topic = TopicNames(prefix).trades
    if name.startswith("raw"):
        drain = _raw_loop(settings, total, decode=name == "raw-poll+fastavro")
        print(json.dumps({"records": drain.records, "wall": drain.wall_s, "cpu": drain.cpu_s}))
        return
    seen = [0]
    if name == "signals-in-process":
        from core.metrics import MESSAGES_IN
        from streams.signals import build

        app_name = f"signals-{uuid.uuid4().hex[:6]}"
        dlq = TopicNames(prefix).dead_letter(app_name)
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for future in admin.create_topics([NewTopic(dlq, 1, 1)]).values():
            future.result()
        stream = build(settings, app_name)
        app = stream.app
        counter = MESSAGES_IN.labels(app_name, topic)
        count = lambda: int(counter._value.get())  # noqa: E731
    else:
        from schemas.models import Trade
        from schemas.serde import AvroSerde
        from streams.runtime import AvroRecordDeserializer

        schema = _trade_schema()

        class Fastavro(Deserializer):
            def __call__(self, value: bytes, ctx: Any) -> Any:
                body = io.BytesIO(value)
                body.seek(HEADER)
                return schemaless_reader(body, schema, None)

        class Raw(Deserializer):
            def __call__(self, value: bytes, ctx: Any) -> Any:
                return value

        deserializer = {
            "quix-bytes": Raw(),
            "quix-fastavro": Fastavro(),
        }.get(name) or AvroRecordDeserializer(AvroSerde(), Trade, "bench")
        app = Application(
            broker_address=bootstrap,
            consumer_group=f"bench-{name.replace('+', '-')}-{uuid.uuid4().hex[:6]}",
            auto_offset_reset="earliest",
            state_dir=state_dir,
            loglevel=None,
        )
        sdf = app.dataframe(
            app.topic(topic, key_deserializer="str", value_deserializer=deserializer)
        )

        def noop(_value: Any) -> None:
            seen[0] += 1

        def small_state(value: Any, state: Any) -> None:
            state.get("bar")
            state.set("bar", [value["ts_event"], value["price"], value["ts_event"], 0])
            seen[0] += 1

        if name == "quix-decode_dict+state":
            sdf.update(small_state, stateful=True)
        else:
            sdf.update(noop)
        count = lambda: seen[0]  # noqa: E731
    marks: dict[str, float] = {}

    def watch() -> None:
        while True:
            n = count()
            if n and "wall0" not in marks:
                marks.update(wall0=time.perf_counter(), cpu0=time.process_time(), n0=n)
            if n >= total:
                marks.update(wall1=time.perf_counter(), cpu1=time.process_time())
                app.stop()
                return
            time.sleep(0.01)

    threading.Thread(target=watch, daemon=True).start()
    if name == "signals-in-process":
        stream.run()
    else:
        app.run()
    records = total - marks["n0"]
    wall, cpu = marks["wall1"] - marks["wall0"], marks["cpu1"] - marks["cpu0"]
    print(json.dumps({"records": records, "wall": wall, "cpu": cpu}))


BREAKDOWN = (
    ("raw-poll", "confluent-kafka poll() loop, no decode"),
    ("raw-poll+fastavro", "+ fastavro decode: the raw loop (a)"),
    ("quix-bytes", "Quix app: bytes values, one no-op step"),
    ("quix-fastavro", "Quix app: fastavro decode, one no-op step"),
    ("quix-decode_dict", "Quix app: our deserializer (decode_dict), no-op"),
    ("quix-decode_dict+state", "... + a Quix state get + set per record"),
    ("signals-in-process", "the signals app (streams.signals.build)"),
)


def _breakdown(settings: Settings, total: int, tmp: Path) -> None:
    print(f"\nper-record cost by layer ({total:,} records each, one child process each):")
    print(f"  {'':<52} {'rec/s':>9} {'wall µs':>8} {'CPU µs':>7}")
    for name, label in BREAKDOWN:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--variant",
                name,
                settings.topic_prefix,
                settings.kafka_bootstrap(),
                str(total),
                str(tmp / f"state-{name}"),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            print(f"  {label:<52} failed: {out.stderr.strip()[-500:]}")
            continue
        result = json.loads(out.stdout.strip().splitlines()[-1])
        drain = Drain(int(result["records"]), result["wall"], result["cpu"])
        print(f"  {label:<52} {drain.rate:>9,.0f} {drain.wall_us:>8.2f} {drain.cpu_us:>7.2f}")


# ---- main ------------------------------------------------------------------------------


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--variant":
        name, prefix, bootstrap, total, state_dir = sys.argv[2:7]
        _variant(name, prefix, bootstrap, int(total), state_dir)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", help="default: SPY 20131007 trades")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rss-trades", type=int, default=500_000, help="0: skip the RSS run")
    parser.add_argument("--rss-symbols", type=int, default=5_000)
    parser.add_argument("--breakdown", action="store_true", help="per-layer costs too")
    args = parser.parse_args()
    root = shared_data()
    files = [Path(f) for f in args.files] or [root / f for f in DEFAULT_FILES]
    for file in files:
        if not file.exists():
            sys.exit(f"missing {file} (set OMNIQUANT_SHARED_DATA)")
    with (
        broker("signals") as bootstrap,
        tempfile.TemporaryDirectory(prefix="bench-signals-") as tmp,
    ):
        log = Path(tmp) / "stage.log"
        raws: list[Drain] = []
        stages: list[StageRun] = []
        first_round: tuple[Settings, int] | None = None
        for round_no in range(1, args.rounds + 1):
            settings = namespace(bootstrap, f"signals{round_no}")
            total = _replay(settings, files)
            first_round = first_round or (settings, total)
            state = Path(tmp) / f"state{round_no}"
            if round_no % 2:  # alternate who goes first
                raws.append(_raw_loop(settings, total))
                stages.append(_stage(settings, total, state, log))
            else:
                stages.append(_stage(settings, total, state, log))
                raws.append(_raw_loop(settings, total))
            raw, run = raws[-1], stages[-1]
            print(
                f"round {round_no} ({total:,} trades, {_load()}): "
                f"raw {raw.rate:>8,.0f}/s ({raw.wall_us:.2f} µs, CPU {raw.cpu_us:.2f} µs)   "
                f"stage {run.drain.rate:>8,.0f}/s ({run.drain.wall_us:.2f} µs, "
                f"CPU {run.drain.cpu_us:.2f} µs)   ratio {run.drain.rate / raw.rate:.2f} "
                f"(CPU {raw.cpu_us / run.drain.cpu_us:.2f})"
            )
            print(
                f"    stage: start → committed lag 0 in {run.to_lag0_s:.1f} s "
                f"({total / run.to_lag0_s:,.0f}/s incl. start-up); {run.signals:,} signals, "
                f"{run.orders:,} orders, {run.late:,.0f} late trades; "
                f"peak RSS {run.peak_rss_mb:,.0f} MB"
            )
        raw_rate = statistics.median(r.rate for r in raws)
        stage_rate = statistics.median(s.drain.rate for s in stages)
        raw_cpu = statistics.median(r.cpu_us for r in raws)
        stage_cpu = statistics.median(s.drain.cpu_us for s in stages)
        print(f"raw poll + fastavro decode: median {raw_rate:,.0f} trades/s, CPU {raw_cpu:.2f} µs")
        print(
            f"signals stage:              median {stage_rate:,.0f} trades/s, CPU {stage_cpu:.2f} µs"
        )
        print(
            f"ratio stage/raw: median {stage_rate / raw_rate:.2f}x wall-clock, "
            f"{raw_cpu / stage_cpu:.2f}x CPU per record (target >= 0.6)"
        )
        if args.rss_trades:
            settings = namespace(bootstrap, "signals-rss")
            started = time.perf_counter()
            total = _synthetic(settings, args.rss_symbols, args.rss_trades)
            print(
                f"\nRSS input: {total:,} synthetic trades over {args.rss_symbols:,} symbols "
                f"(produced in {time.perf_counter() - started:.1f} s)"
            )
            run = _stage(settings, total, Path(tmp) / "state-rss", log)
            print(
                f"signals stage peak RSS (VmHWM): {run.peak_rss_mb:,.0f} MB (target <= 300 MB); "
                f"{run.drain.rate:,.0f} trades/s, {run.signals:,} signals"
            )
        if args.breakdown and first_round is not None:
            _breakdown(*first_round, Path(tmp))


if __name__ == "__main__":
    main()
