"""Tick → risk-checked order latency through the real broker (signals and risk-gate stages).

Setup. A real broker (Kafka 4, KRaft) and Redis from the harness (``KAFKA_BOOTSTRAP_SERVERS``
and ``REDIS_URL`` if set), a fresh topic namespace with the catalog's topics, and the
``signals`` and ``risk-gate`` stages as their own processes (``omniquant stage <name>``, the
environment the supervisor gives a stage) set up to trade often: 100 ms bars, SMA 2 / 4,
100 shares an order; limits that let the orders through (order rate 1,000,000/s, starting
cash 1e9). This process produces trades (Avro ``Trade``: ``--symbols`` symbols, a seeded random
walk of cent prices, event time = the wall clock now, strictly increasing per symbol, Kafka
timestamp = event time) paced at ``--rate`` per second: first a warm-up (``--warmup`` s, then
on until both stages' groups have committed past it), then ``--seconds`` s measured. A reader
process reads ``orders.requests``, ``risk.decisions`` and ``orders.approved`` from the start.

What is measured, for the orders whose triggering trade was produced in the measured window:

``tick → decision``      RiskDecision.ts_init (the gate's wall clock when it decided) minus
                         the wall time at which this process handed the triggering trade to
                         librdkafka (``produce()``; the producer lingers up to 5 ms, as the
                         feeds' producers do). **Target: p99 <= 20 ms at 5,000 ticks/s**,
                         printed next to the result, not asserted.
``tick → signal``        OrderRequest.ts_init minus that produce time: the signals stage
                         stamps its wall clock when it builds the signal (``Signal.ts_init``,
                         copied into the order request), so this is the feed's linger, the
                         broker and the stage's fetch, decode, bar and SMA step.
``signal → decision``    RiskDecision.ts_init minus OrderRequest.ts_init: the signals → gate
                         hop alone (the order's encode and 5 ms linger, the broker, the gate's
                         fetch and its merge with the trades topic, its state, Redis, checks).
``tick → approved seen`` the reader's wall clock when its ``poll()`` returned the approved
                         order, minus the produce time; by a ``read_uncommitted`` consumer (on
                         the broker's log, before the gate's transaction commits) and by a
                         ``read_committed`` one (what the execution stage sees). The gate runs
                         exactly-once and commits its transaction every second, so the second
                         figure includes up to that second by design.

The link from an order to its trade. The order's ``ts_event`` (and its decision's) is exactly,
to the nanosecond, the ``ts_event`` of the trade that closed the bar: ``SmaCrossover`` closes
the open bar when a trade of a later bucket arrives and gives the crossover that trade's
event time (``streams/logic/sma.py``: "the event time of the trade that closed the bar"),
``SignalsProcessor.on_trade`` copies it into the Signal, ``signal_to_order`` into the
OrderRequest and ``PreTradeRisk.check`` into the RiskDecision. The trade is the first of the
next bar, not the last of the closed one. Event times are unique per symbol here, so
(symbol, ts_event) names one trade. Kafka timestamps cannot time the hops: the topics are
CreateTime and Quix forwards the input's timestamp, so ``orders.requests`` records carry the
triggering trade's event time in ms, not a time they were produced or appended; the hop is
timed with the records' own ``ts_init`` fields instead.

Clocks. Every figure is a difference of two ``time.time_ns()`` wall clocks read by different
processes on one machine (this process, the two stages, the reader), so they share one clock;
none uses the broker's clock. Percentiles are nearest-rank over the measured orders.

Limits. Two cores are shared by the broker (a JVM), Redis, this producer, both stages and the
reader, and by whatever else runs on the box (the load average and each stage's CPU over the
window are printed): the figures are those of a crowded machine, and a stage waiting for a
core shows up as latency. A few hundred orders make a p99 of a handful of samples: its run-to-
run spread is large. The produce time is taken in Python just before ``produce()``, so it
misses nothing of the path but adds the producer's own scheduling jitter. Rejections are
counted, not timed differently: a rejected decision is timed like an approved one.

Nothing is deleted: on an external broker or Redis the namespace's topics and keys (all under
its prefix) stay; a LocalKafka or LocalRedis started here is stopped with its data.

Run: .venv/bin/python benchmarks/bench_order_latency.py [--rate 5000] [--seconds 20]
     [--warmup 5] [--symbols 8] [--seed 7] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    ConsumerGroupState,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from harness import broker, namespace, redis_server

from core.config import Settings, load_settings
from core.kafka import LagProbe, admin_client, consumer_config, end_offsets, producer_config
from core.topics import TopicNames
from schemas.models import OrderRequest, RiskDecision, Trade
from schemas.serde import AvroSerde

TARGET_P99_MS = 20.0
NS_PER_MS = 1_000_000
CENT = 10_000_000  # one cent in raw fixed point (1e-9 units)
SIZE = 100 * 1_000_000_000  # 100 shares, raw
STAGE_NAMES = ("signals", "risk-gate")
# What makes orders frequent and lets them through (the benchmark times decisions, it does
# not exercise rejections): every stage process gets these.
STAGE_SETTINGS = {
    "OMNIQUANT_STRATEGY__BAR_INTERVAL_MS": "100",
    "OMNIQUANT_STRATEGY__FAST_WINDOW": "2",
    "OMNIQUANT_STRATEGY__SLOW_WINDOW": "4",
    "OMNIQUANT_STRATEGY__ORDER_QUANTITY": "100",
    "OMNIQUANT_RISK__MAX_ORDERS_PER_SECOND": "1000000",
    "OMNIQUANT_PORTFOLIO__STARTING_CASH": "1000000000",
}
JOIN_TIMEOUT_S = 180.0
CATCH_UP_TIMEOUT_S = 120.0
READER_IDLE_S = 1.5  # the reader stops this long after it last got a record, once told to
CLK_TCK = os.sysconf("SC_CLK_TCK")


def say(message: str) -> None:
    """Progress, on stderr (stdout carries the results)."""
    print(message, file=sys.stderr, flush=True)


# ---- the reader (a child process: its receipt times are not skewed by the producer) -----


def _reader(prefix: str, bootstrap: str) -> None:
    """Child mode: read requests, decisions and approved orders until told to stop on stdin
    (and then idle for READER_IDLE_S); print what was read as one JSON line."""
    settings = load_settings(kafka={"bootstrap_servers": bootstrap}, topic_prefix=prefix)
    names = TopicNames(prefix)
    serde = AvroSerde.from_settings(settings)
    requests: dict[str, list[Any]] = {}
    decisions: dict[str, list[Any]] = {}
    seen: dict[str, dict[str, int]] = {"read_committed": {}, "read_uncommitted": {}}
    duplicates = Counter[str]()
    stop = threading.Event()

    def consumer(isolation: str, topics: list[str]) -> Consumer:
        group = f"{prefix}bench-reader-{uuid.uuid4().hex[:8]}"  # assigned: never joins
        client = Consumer(consumer_config(settings, group, **{"isolation.level": isolation}))
        client.assign(
            [
                TopicPartition(topic, partition, OFFSET_BEGINNING)
                for topic in topics
                for partition in end_offsets(settings, topic)
            ]
        )
        return client

    def committed(msg: Message, at_ns: int) -> None:
        topic, value = msg.topic(), msg.value()
        if topic == names.order_requests:
            order = serde.decode_dict(value, OrderRequest, topic=topic)
            key = order["client_order_id"]
            if key in requests:
                duplicates["requests"] += 1
            else:
                requests[key] = [order["symbol"], order["ts_event"], order["ts_init"]]
        elif topic == names.risk_decisions:
            decision = serde.decode_dict(value, RiskDecision, topic=topic)
            key = decision["client_order_id"]
            if key in decisions:
                duplicates["decisions"] += 1
            else:
                failed = [c["name"] for c in decision["checks"] if not c["passed"]]
                decisions[key] = [
                    decision["symbol"],
                    decision["ts_event"],
                    decision["ts_init"],
                    decision["decision"],
                    failed,
                    decision["reason"],
                ]
        else:
            approved(msg, at_ns, seen["read_committed"])

    def approved(msg: Message, at_ns: int, into: dict[str, int]) -> None:
        order = serde.decode_dict(msg.value(), OrderRequest, topic=msg.topic())
        into.setdefault(order["client_order_id"], at_ns)  # first sighting only

    def loop(client: Consumer, handle: Callable[[Message, int], None]) -> None:
        idle_since: float | None = None
        try:
            while True:
                msg = client.poll(0.05)
                if msg is None:
                    if stop.is_set():
                        idle_since = idle_since or time.monotonic()
                        if time.monotonic() - idle_since > READER_IDLE_S:
                            return
                    continue
                at_ns = time.time_ns()  # before decoding: the receipt time
                idle_since = None
                if msg.error() is None:
                    handle(msg, at_ns)
        finally:
            client.close()

    topics = [names.order_requests, names.risk_decisions, names.approved_orders]
    threads = [
        threading.Thread(target=loop, args=(consumer("read_committed", topics), committed)),
        threading.Thread(
            target=loop,
            args=(
                consumer("read_uncommitted", [names.approved_orders]),
                lambda msg, at: approved(msg, at, seen["read_uncommitted"]),
            ),
        ),
    ]
    for thread in threads:
        thread.start()
    print("ready", flush=True)
    sys.stdin.readline()
    stop.set()
    for thread in threads:
        thread.join()
    out = {"requests": requests, "decisions": decisions, "seen": seen, "duplicates": duplicates}
    print(json.dumps(out), flush=True)


class Reader:
    """The reader child process, started before any trade is produced."""

    def __init__(self, settings: Settings, log: IO[bytes]) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--reader",
                settings.topic_prefix,
                settings.kafka_bootstrap(),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"the reader did not start ({self.proc.wait()}); see its log")

    def finish(self) -> dict[str, Any]:
        out, _ = self.proc.communicate("stop\n", timeout=120)
        if self.proc.returncode != 0:
            raise SystemExit(f"the reader exited with {self.proc.returncode}")
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return result

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# ---- the stages -------------------------------------------------------------------------


@dataclass
class StageProc:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def check(self) -> None:
        if self.proc.poll() is not None:
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])
            raise SystemExit(f"stage {self.name} exited with {self.proc.returncode}:\n{tail}")

    def cpu_s(self) -> float:
        """User + system CPU seconds of the stage process so far (all its threads)."""
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def stop(self) -> None:
        """SIGTERM to the stage's own process group (it leads it), SIGKILL after 30 s."""
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def _spawn(name: str, env: dict[str, str], log: Path) -> StageProc:
    """``omniquant stage <name>`` in its own process group, as the supervisor starts it."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "omniquant.cli", "stage", name],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return StageProc(name, proc, log)


def _stage_env(settings: Settings, redis_url: str, state_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIQUANT_")}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=settings.kafka_bootstrap(),
        REDIS_URL=redis_url,
        OMNIQUANT_TOPIC_PREFIX=settings.topic_prefix,
        OMNIQUANT_STATE_DIR=str(state_dir),
        **STAGE_SETTINGS,
    )
    return env


class Groups:
    """The stages' consumer groups: membership, and committed offsets read by probe consumers
    that never subscribe or commit."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.admin = admin_client(settings)
        self._probes: dict[str, Consumer] = {}

    def joined(self, group: str) -> bool:
        """Stable, with partitions assigned to a member."""
        try:
            found = self.admin.describe_consumer_groups([group], request_timeout=5)[group]
            described = found.result()
        except KafkaException:
            return False
        return described.state == ConsumerGroupState.STABLE and any(
            m.assignment is not None and m.assignment.topic_partitions for m in described.members
        )

    def past(self, group: str, topic: str, ends: dict[int, int]) -> bool:
        """Has ``group`` committed at least ``ends`` on every partition of ``topic``?"""
        probe = self._probes.get(group)
        if probe is None:
            probe = self._probes[group] = Consumer(consumer_config(self.settings, group))
        try:
            committed = probe.committed([TopicPartition(topic, p) for p in ends], timeout=5)
        except KafkaException:
            return False
        return all(tp.offset >= ends[tp.partition] for tp in committed if ends[tp.partition])

    def close(self) -> None:
        for probe in self._probes.values():
            probe.close()
        self._probes.clear()
        del self.admin  # its connection goes now, not when the broker stops under it


# ---- the ticks --------------------------------------------------------------------------


class TickProducer(threading.Thread):
    """Produces trades at ``rate`` per second: warm-up until :attr:`measure` is set, then
    ``seconds`` of measured ticks. Keeps each trade's produce time by (symbol, ts_event)."""

    def __init__(
        self, settings: Settings, symbols: int, rate: float, seconds: float, seed: int
    ) -> None:
        super().__init__(name="ticks", daemon=True)
        self.settings = settings
        self.rate = rate
        self.seconds = seconds
        self.rng = random.Random(seed)
        self.symbols = [f"SYM{i:02d}" for i in range(symbols)]
        self.measure = threading.Event()  # set by main: the warm-up is over
        self.stop = threading.Event()
        self.sent: dict[tuple[str, int], int] = {}  # (symbol, ts_event) → produce wall ns
        self.warmup_ticks = 0
        self.measured_ticks = 0
        self.window_ns = (0, 0)  # wall clock: first and after-last measured produce
        self.window_s = 0.0  # perf_counter length of the measured window
        self.failed_deliveries = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:
            self.error = exc

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.failed_deliveries += 1

    def _run(self) -> None:
        topic = TopicNames(self.settings.topic_prefix).trades
        producer = Producer(
            producer_config(
                self.settings,
                **{"client.id": "bench-order-latency", "on_delivery": self._on_delivery},
            )
        )
        encode = AvroSerde.from_settings(self.settings).encode_dict
        produce, poll, time_ns, perf = (
            producer.produce,
            producer.poll,
            time.time_ns,
            time.perf_counter,
        )
        rng, sent, rate = self.rng, self.sent, self.rate
        symbols = self.symbols
        keys = [s.encode() for s in symbols]
        cents = [rng.randrange(5_000, 50_000) for _ in symbols]  # $50 .. $500
        last = [0] * len(symbols)
        steps = (-2, -1, 0, 1, 2)

        def send() -> None:
            i = rng.randrange(len(symbols))
            cents[i] = max(1_000, cents[i] + rng.choice(steps))
            ts = time_ns()
            if ts <= last[i]:
                ts = last[i] + 1
            last[i] = ts
            datum = {
                "symbol": symbols[i], "venue": "BENCH", "price": cents[i] * CENT, "size": SIZE,
                "aggressor_side": "NONE", "trade_id": None, "conditions": [], "flags": [],
                "source": "bench-order-latency", "ts_event": ts, "ts_init": ts,
            }  # fmt: skip
            value = encode(Trade, datum, topic)
            while True:
                produced_at = time_ns()
                try:
                    produce(topic, value, keys[i], timestamp=ts // NS_PER_MS)
                    break
                except BufferError:
                    poll(0.05)
            sent[(symbols[i], ts)] = produced_at

        start, scheduled, measuring, deadline = perf(), 0, False, 0.0
        while not self.stop.is_set():
            now = perf()
            if not measuring and self.measure.is_set():
                # A fresh schedule: a shortfall of the warm-up is not made up in a burst.
                measuring, start, scheduled, deadline = True, now, 0, now + self.seconds
                self.window_ns = (time_ns(), 0)
            if measuring and now >= deadline:
                break
            due = min(int((now - start) * rate) + 1 - scheduled, 1_000)
            for _ in range(due):
                send()
            scheduled += max(due, 0)
            if measuring:
                self.measured_ticks += max(due, 0)
            else:
                self.warmup_ticks += max(due, 0)
            poll(0)
            delay = start + scheduled / rate - perf()
            if delay > 0:
                time.sleep(delay)
        if measuring:
            self.window_s = perf() - start
            self.window_ns = (self.window_ns[0], time_ns())
        if producer.flush(60):
            raise RuntimeError("trades still undelivered 60 s after the last")


# ---- figures ----------------------------------------------------------------------------


def _quantile(ordered: list[int], q: float) -> int:
    """Nearest-rank quantile of a sorted, non-empty list."""
    rank = max(1, -(-len(ordered) * q // 1))  # ceil(n q), at least 1
    return ordered[int(rank) - 1]


def _ms(ns: int) -> float:
    return round(ns / NS_PER_MS, 3)


def _summary(values_ns: list[int]) -> dict[str, float | int | None]:
    if not values_ns:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None}
    ordered = sorted(values_ns)
    return {
        "n": len(ordered),
        **{f"p{int(q * 100)}": _ms(_quantile(ordered, q)) for q in (0.5, 0.9, 0.99)},
        "max": _ms(ordered[-1]),
    }


def _figures(producer: TickProducer, read: dict[str, Any]) -> dict[str, Any]:
    sent = producer.sent
    first_ns, end_ns = producer.window_ns
    requests: dict[str, list[Any]] = read["requests"]
    decisions: dict[str, list[Any]] = read["decisions"]
    seen: dict[str, dict[str, int]] = read["seen"]
    latency: dict[str, list[int]] = {
        "tick_to_decision": [],
        "tick_to_signal": [],
        "signal_to_decision": [],
        "tick_to_approved_read_uncommitted": [],
        "tick_to_approved_read_committed": [],
    }
    outcome = Counter[str]()
    reasons = Counter[str]()
    examples: dict[str, str] = {}
    unlinked = 0
    for coid, (symbol, ts_event, decided_ns, decision, failed, reason) in decisions.items():
        produced = sent.get((symbol, ts_event))
        if produced is None:
            unlinked += 1  # no trade of ours has that (symbol, ts_event): must not happen
            continue
        if not first_ns <= produced < end_ns:
            continue  # a warm-up order
        outcome[decision] += 1
        latency["tick_to_decision"].append(decided_ns - produced)
        request = requests.get(coid)
        if request is not None:
            latency["tick_to_signal"].append(request[2] - produced)
            latency["signal_to_decision"].append(decided_ns - request[2])
        if decision != "APPROVED":
            why = "+".join(failed) or "?"
            reasons[why] += 1
            examples.setdefault(why, reason)
        for isolation, at in seen.items():
            if coid in at:
                latency[f"tick_to_approved_{isolation}"].append(at[coid] - produced)
    measured_requests = [
        coid
        for coid, (symbol, ts_event, _init) in requests.items()
        if first_ns <= sent.get((symbol, ts_event), -1) < end_ns
    ]
    achieved = producer.measured_ticks / producer.window_s if producer.window_s else 0.0
    tick_to_decision = _summary(latency["tick_to_decision"])
    p99 = tick_to_decision["p99"]
    return {
        "rate_target": producer.rate,
        "rate_achieved": round(achieved, 1),
        "rate_short": achieved < producer.rate * 0.99,
        "seconds": round(producer.window_s, 3),
        "ticks_measured": producer.measured_ticks,
        "ticks_warmup": producer.warmup_ticks,
        "symbols": len(producer.symbols),
        "orders_requested": len(measured_requests),
        "decided": sum(outcome.values()),
        "approved": outcome["APPROVED"],
        "rejected": outcome["REJECTED"],
        "undecided": sum(1 for coid in measured_requests if coid not in decisions),
        "unlinked_decisions": unlinked,
        "duplicates_read": dict(read["duplicates"]),
        "rejections": [
            {"checks": why, "count": n, "example": examples[why][:160]}
            for why, n in reasons.most_common(5)
        ],
        "latency_ms": {
            "tick_to_decision": tick_to_decision,
            **{
                name: _summary(values)
                for name, values in latency.items()
                if name != "tick_to_decision"
            },
        },
        "target_p99_ms": TARGET_P99_MS,
        "target_met": p99 is not None
        and p99 <= TARGET_P99_MS
        and not achieved < producer.rate * 0.99,
    }


ROWS = (
    ("tick_to_decision", "tick → decision (gate ts_init)"),
    ("tick_to_signal", "  tick → signal built (signals ts_init)"),
    ("signal_to_decision", "  signal → decision (signals→gate hop)"),
    ("tick_to_approved_read_uncommitted", "tick → approved seen, read_uncommitted"),
    ("tick_to_approved_read_committed", "tick → approved seen, read_committed"),
)


def _table(fig: dict[str, Any], cpu: dict[str, float]) -> str:
    def ms(value: float | None) -> str:
        return f"{value:8.2f}" if value is not None else f"{'—':>8}"

    lines = [
        f"{'latency, ms (nearest-rank)':<42} {'n':>6} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}"
    ]
    for key, label in ROWS:
        row = fig["latency_ms"][key]
        line = f"{label:<42} {row['n']:>6} " + " ".join(
            ms(row[q]) for q in ("p50", "p90", "p99", "max")
        )
        if key == "tick_to_decision":
            verdict = "met" if fig["target_met"] else "NOT met"
            line += f"   target p99 <= {TARGET_P99_MS:.0f} ms at 5,000 ticks/s: {verdict}"
        elif key == "tick_to_approved_read_committed":
            line += "   (waits for the gate's 1 s transaction)"
        lines.append(line)
    rate = fig["rate_achieved"]
    flag = (
        f"SHORT of --rate by {1 - rate / fig['rate_target']:.1%}"
        if fig["rate_short"]
        else "on rate"
    )
    lines.append(
        f"ticks: {fig['ticks_measured']:,} over {fig['symbols']} symbols in {fig['seconds']:.2f} s "
        f"= {rate:,.0f}/s (--rate {fig['rate_target']:,.0f}): {flag}; "
        f"warm-up {fig['ticks_warmup']:,} ticks excluded"
    )
    lines.append(
        f"orders from measured ticks: {fig['orders_requested']:,} requested, "
        f"{fig['decided']:,} decided: {fig['approved']:,} APPROVED, {fig['rejected']:,} REJECTED; "
        f"{fig['undecided']} without a decision, {fig['unlinked_decisions']} decisions unlinked"
    )
    for item in fig["rejections"]:
        lines.append(f"  rejected {item['count']:>5} × {item['checks']}: {item['example']}")
    usage = ", ".join(f"{name} {share:.0%}" for name, share in cpu.items())
    lines.append(
        f"CPU over the window (of one core): {usage}; load {{:.2f}} {{:.2f}} {{:.2f}}".format(
            *os.getloadavg()
        )
    )
    return "\n".join(lines)


# ---- the run ----------------------------------------------------------------------------


def _wait(what: str, done: Callable[[], bool], timeout: float, check: Callable[[], None]) -> float:
    started = time.monotonic()
    while not done():
        check()
        if time.monotonic() - started > timeout:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)
    return time.monotonic() - started


def run(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, float]]:
    with (
        broker("order-latency") as bootstrap,
        redis_server("order-latency") as redis_url,
        tempfile.TemporaryDirectory(prefix="bench-order-latency-") as tmp,
    ):
        settings = namespace(bootstrap, "latency")
        names = TopicNames(settings.topic_prefix)
        env = _stage_env(settings, redis_url, Path(tmp) / "state")
        env.update(dict(item.split("=", 1) for item in args.stage_env))
        say(f"namespace {settings.topic_prefix}; stages with {STAGE_SETTINGS}")
        stages: list[StageProc] = []
        producer = TickProducer(settings, args.symbols, args.rate, args.seconds, args.seed)
        groups = Groups(settings)
        probe = LagProbe(settings)
        with (Path(tmp) / "reader.log").open("wb") as reader_log:
            reader = Reader(settings, reader_log)
            try:
                stages = [_spawn(n, env, Path(tmp) / f"{n}.log") for n in STAGE_NAMES]

                def healthy() -> None:
                    for stage in stages:
                        stage.check()
                    if producer.error is not None:
                        raise SystemExit(f"the tick producer failed: {producer.error!r}")

                group = {s: f"{settings.topic_prefix}{s}" for s in STAGE_NAMES}
                took = _wait(
                    "both stages to join their groups",
                    lambda: all(groups.joined(g) for g in group.values()),
                    JOIN_TIMEOUT_S,
                    healthy,
                )
                say(
                    f"stages joined in {took:.1f} s; "
                    f"warm-up {args.warmup:g} s at {args.rate:,.0f}/s"
                )
                producer.start()
                warm_until = time.monotonic() + args.warmup
                while time.monotonic() < warm_until:
                    healthy()
                    time.sleep(0.2)
                trades_end = end_offsets(settings, names.trades)
                took = _wait(
                    "both stages to consume the warm-up",
                    lambda: (
                        groups.past(group["signals"], names.trades, trades_end)
                        and groups.past(group["risk-gate"], names.trades, trades_end)
                    ),
                    CATCH_UP_TIMEOUT_S,
                    healthy,
                )
                requests_end = end_offsets(settings, names.order_requests)
                took += _wait(
                    "the gate to decide the warm-up's orders",
                    lambda: groups.past(group["risk-gate"], names.order_requests, requests_end),
                    CATCH_UP_TIMEOUT_S,
                    healthy,
                )
                say(
                    f"warm-up: {producer.warmup_ticks:,} ticks, "
                    f"{sum(requests_end.values()):,} orders; consumed {took:.1f} s after; "
                    f"measuring {args.seconds:g} s"
                )
                cpu0 = {s.name: s.cpu_s() for s in stages}
                own0, wall0 = time.process_time(), time.monotonic()
                producer.measure.set()
                while producer.is_alive():
                    healthy()
                    producer.join(0.2)
                healthy()
                wall = time.monotonic() - wall0
                cpu = {s.name: (s.cpu_s() - cpu0[s.name]) / wall for s in stages}
                cpu["this process (producer)"] = (time.process_time() - own0) / wall
                took = _wait(
                    "both stages to drain",
                    lambda: (
                        probe.lag(group["signals"], [names.trades]) == 0
                        and probe.lag(
                            group["risk-gate"],
                            [names.order_requests, names.trades, names.execution_reports],
                        )
                        == 0
                    ),
                    CATCH_UP_TIMEOUT_S,
                    healthy,
                )
                say(f"stages drained {took:.1f} s after the last tick; reading the results")
                read = reader.finish()
            finally:
                producer.stop.set()
                reader.kill()
                for stage in stages:
                    stage.stop()
                groups.close()
                probe.close()
        if producer.failed_deliveries:
            raise SystemExit(f"{producer.failed_deliveries} trades were not delivered")
        return _figures(producer, read), cpu


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--reader":
        _reader(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=5000.0, help="ticks per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=5.0, help="warm-up seconds (excluded)")
    parser.add_argument("--symbols", type=int, default=8)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print one JSON line of figures")
    parser.add_argument(
        "--stage-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra setting for the stages, e.g. OMNIQUANT_RISK__EXACTLY_ONCE=false",
    )
    args = parser.parse_args()
    if args.json:
        with contextlib.redirect_stdout(sys.stderr):  # the harness's lines too
            figures, cpu = run(args)
        print(json.dumps({**figures, "cpu_share": {k: round(v, 3) for k, v in cpu.items()}}))
    else:
        figures, cpu = run(args)
        print(_table(figures, cpu))


if __name__ == "__main__":
    main()
