"""A broker, then the active controller, SIGKILLed while the whole pipeline runs over real
ticks on a 3-node KRaft cluster: nothing is lost, nothing is doubled, both nodes rejoin.

What a user does: ``omniquant up --brokers 3`` (the session's cluster, tests/cluster_fixture.py),
the supervised stages of ``omniquant run`` and ``omniquant replay`` of a real SPY tick file
(QuantConnect Lean / AlgoSeek, 2013-10-07 10:00-10:03 ET, paced at 3x event time). The
supervisor runs every stage but the synthetic feed (the replay is the feed: the synthetic
one would mix 2026 event times into 2013 bars); it is stopped with SIGINT, as Ctrl-C stops
``omniquant run`` (feed-less sources first, then each consumer once it has caught up).

Mid-run, once the ClickHouse sink has committed a first share of the ticks, one broker that
is not the quorum leader is SIGKILLed; while it is down the replay keeps producing and the
sink keeps committing; it is restarted and must be back in every partition's ISR. Then the
active controller is SIGKILLed, another is elected, the pipeline keeps going, and the old
leader is restarted and back in every ISR too.

Then: every ClickHouse table holds exactly as many rows as its topic has records (topics
read to their end with read_committed), the trades table exactly the ticks in the file's
window, and no client_order_id is doubled among order requests and approved orders, on the
topics or in ClickHouse. Part of ``make test-multibroker``.

What it found, fixed since: the run's topics had one replica (a cluster named only by its
bootstrap now gets topics at its own default.replication.factor); a consumer group's
coordinator dying failed a stage's offset commit (now committed again through the
failover); the lag monitor aborted inside librdkafka (#4605) and is now restarted.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cluster_fixture import wait_full_isr
from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient
from conftest import shared_file
from pipeline_store import pipeline_env

from core.topics import TopicNames
from omniquant.stack.kafka import LocalKafkaCluster
from omniquant.stages import STAGES, topic_catalog
from producers.replay import Skip, open_file, parse_bound
from schemas.serde import AvroSerde
from sinks.clickhouse import TABLE_BY_TOPIC

pytestmark = [pytest.mark.integration, pytest.mark.multibroker]

SPY_TICKS = "Lean/Data/equity/usa/tick/spy/20131007_trade.zip"
FROM = "2013-10-07T10:00:00-04:00"
TO = "2013-10-07T10:03:00-04:00"
SPEED = "3x"  # 180 s of event time in ~60 s of wall time
FIRST_KILL_AT = 800  # ticks the sink has committed before the first kill (mid-run)
PROGRESS = 400  # ticks the sink must commit while a node is down

# `omniquant run`'s supervisor without the synthetic feed; SIGINT stops it like Ctrl-C.
SUPERVISE = """
import sys
from pathlib import Path
from core.config import load_settings
from omniquant.supervisor import Supervisor, pipeline_stages
from core.kafka import ensure_topics
from omniquant.stages import STAGES, topic_catalog
settings = load_settings()
ensure_topics(settings, topic_catalog())  # as `omniquant run` does before the stages
stages = pipeline_stages(settings, stages=[s for s in STAGES if s.name != "feed"])
sup = Supervisor(settings, stages, duration=None, log_dir=Path(sys.argv[1]), drain_timeout=240)
code = sup.run()
for stage in sup.stages:
    print(f"{stage.name}: consumed {stage.consumed:.0f} produced {stage.produced:.0f}")
print(f"outcome: {sup.outcome}")
sys.exit(code)
"""


def _expected_ticks(path: Path) -> int:
    lo, hi = parse_bound(FROM), parse_bound(TO)
    return sum(
        1 for item in open_file(path) if not isinstance(item, Skip) and lo <= item.ts_event < hi
    )


def _wait(what: str, done: Callable[[], bool], timeout_s: float, procs: list[Any]) -> float:
    """Poll ``done`` until it holds; fails naming ``what`` (or a process that died)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        for proc in procs:
            if proc.poll() not in (None, 0):
                pytest.fail(f"{proc.args[:4]} exited {proc.returncode} while waiting: {what}")
        if done():
            return time.monotonic() - started
        time.sleep(0.25)
    pytest.fail(f"not within {timeout_s:.0f} s: {what}")


class _Committed:
    """The sum of a consumer group's committed offsets on one topic."""

    def __init__(self, bootstrap: str, group: str, topic: str) -> None:
        self.topic = topic
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})

    def __call__(self) -> int:
        try:
            meta = self.consumer.list_topics(self.topic, timeout=5).topics[self.topic]
            parts = [TopicPartition(self.topic, p) for p in meta.partitions]
            return sum(max(tp.offset, 0) for tp in self.consumer.committed(parts, timeout=5))
        except Exception:  # a node just killed: the next poll asks another
            return -1

    def close(self) -> None:
        self.consumer.close()


def _read_to_end(bootstrap: str, topic: str) -> list[tuple[int, int, bytes]]:
    """Every committed record of ``topic`` (read_committed) as (partition, offset, value),
    read until each partition's end."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"cluster-reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=15).topics[topic]
        consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
        pending = set(meta.partitions)
        out: list[tuple[int, int, bytes]] = []
        deadline = time.monotonic() + 60
        while pending and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is None:
                out.append((msg.partition(), msg.offset(), msg.value()))
            elif err.code() == KafkaError._PARTITION_EOF:
                pending.discard(msg.partition())
        assert not pending, f"{topic}: partitions {sorted(pending)} not read to the end"
        return out
    finally:
        consumer.close()


def _sql(env: dict[str, str], query: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, "-m", "omniquant.cli", "sql", query, "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    rows: list[dict[str, Any]] = json.loads(out.stdout)
    return rows


def _stop(proc: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
        pytest.fail(f"{proc.args[:4]} did not stop within {timeout:.0f} s:\n{out[-3000:]}{err}")


@pytest.mark.timeout(420)
def test_broker_and_controller_killed_during_a_replayed_run_lose_and_double_nothing(
    cluster: LocalKafkaCluster,
    redis_url: str,
    shared_data: Path,
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    spy = shared_file(shared_data, SPY_TICKS)
    expected = _expected_ticks(spy)
    assert 2_000 < expected < 6_000, expected
    bootstrap = cluster.bootstrap
    admin = AdminClient({"bootstrap.servers": bootstrap})
    assert not wait_full_isr(admin, timeout_s=120), "the cluster should start whole"

    prefix = f"cp{uuid.uuid4().hex[:8]}."
    names = TopicNames(prefix)
    chdb = tmp_path / "clickhouse"
    env = pipeline_env(bootstrap, redis_url, prefix, tmp_path / "state", chdb)
    env.update(
        {
            # 180 s of real SPY ticks: one-second bars, SMA 3/8 → tens of crossovers
            "OMNIQUANT_STRATEGY__BAR_INTERVAL_MS": "1000",
            "OMNIQUANT_BARS__INTERVALS_MS": "[1000]",
            "OMNIQUANT_RISK_METRICS__CADENCE_MS": "1000",
        }
    )
    log_dir = tmp_path / "logs"
    run = subprocess.Popen(
        [sys.executable, "-c", SUPERVISE, str(log_dir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    replay: subprocess.Popen[str] | None = None
    sink = next(s for s in STAGES if s.name == "sink-clickhouse")
    committed = _Committed(bootstrap, sink.consumer_group(prefix) or "", names.trades)
    events: list[str] = []

    def mark(what: str) -> None:
        events.append(f"{time.monotonic() - started:6.1f} s  {what} (sink at {committed()})")
        print(events[-1])

    try:
        replay = subprocess.Popen(
            [sys.executable, "-m", "omniquant.cli", "replay", str(spy),
             "--from", FROM, "--to", TO, "--speed", SPEED],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        procs: list[Any] = [run, replay]
        _wait(f"the sink commits {FIRST_KILL_AT} ticks",
              lambda: committed() >= FIRST_KILL_AT, 150, procs)  # fmt: skip
        assert replay.poll() is None, "the replay ended before the first kill: not mid-run"
        # every topic of the run, the stages' changelogs too, has a replica on every node
        # (the cluster's default.replication.factor: the run names only its bootstrap)
        run_topics = {
            name: topic
            for name, topic in admin.list_topics(timeout=15).topics.items()
            if prefix in name
        }
        assert len(run_topics) > len(topic_catalog().record_topics()), sorted(run_topics)
        thin = {
            name: len(p.replicas)
            for name, topic in run_topics.items()
            for p in topic.partitions.values()
            if len(p.replicas) != 3
        }
        assert not thin, f"topics without 3 replicas: {thin}"

        # 1. one broker, not the quorum leader
        leader = cluster.active_controller()
        assert leader in (1, 2, 3), "no node logged a quorum leader"
        victim = next(n for n in cluster.nodes if n.node_id != leader)
        at = committed()
        victim.kill()
        assert not victim.is_running()
        mark(f"killed broker {victim.node_id} (leader {leader})")
        _wait(f"the sink commits {PROGRESS} more ticks with broker {victim.node_id} down",
              lambda: committed() >= at + PROGRESS, 90, [run])  # fmt: skip
        mark("progress with the broker down")
        cluster.start_node(victim.node_id)
        mark(f"broker {victim.node_id} restarted")
        short = wait_full_isr(admin, timeout_s=120)
        assert not short, f"broker {victim.node_id} did not catch up: {short[:5]}"
        mark(f"broker {victim.node_id} back in every ISR")

        # 2. the active controller (also a broker: combined nodes)
        leader = cluster.active_controller()
        assert leader in (1, 2, 3)
        at = committed()
        cluster.nodes[leader - 1].kill()
        mark(f"killed the active controller {leader}")
        elected: list[int | None] = [None]

        def another_leader() -> bool:
            elected[0] = cluster.active_controller()
            return elected[0] not in (None, leader)

        _wait(f"a new quorum leader after killing {leader}", another_leader, 60, [run])
        mark(f"node {elected[0]} elected")
        _wait(f"the sink commits {PROGRESS} more ticks with the controller down",
              lambda: committed() >= min(at + PROGRESS, expected), 90, [run])  # fmt: skip
        mark("progress with the controller down")
        cluster.start_node(leader)
        short = wait_full_isr(admin, timeout_s=120)
        assert not short, f"node {leader} did not catch up: {short[:5]}"
        mark(f"node {leader} back in every ISR")

        replay_out, replay_err = _stop(replay, 120)
        assert replay.returncode == 0, f"replay failed:\n{replay_out[-3000:]}{replay_err[-2000:]}"
        produced = re.search(r"produced → \S*market\.trades\s*│\s*([\d,]+)", replay_out)
        assert produced, replay_out[-3000:]
        assert int(produced[1].replace(",", "")) == expected, replay_out[-3000:]
        _wait("the sink commits every tick", lambda: committed() >= expected, 120, [run])
        mark("the sink has every tick")
    finally:
        committed.close()
        if run.poll() is None:
            run.send_signal(signal.SIGINT)  # Ctrl-C: drain, then stop in order
        if replay is not None and replay.poll() is None:
            replay.kill()
            replay.communicate(timeout=10)
        out, err = _stop(run, 330)
        for node in cluster.nodes:  # whatever failed above, leave the cluster whole
            if not node.is_running():
                cluster.start_node(node.node_id)
        print(out[-3000:])
    assert run.returncode == 0, f"the supervised run failed:\n{out[-4000:]}\n{err[-3000:]}"
    print(f"{time.monotonic() - started:6.1f} s  run stopped")

    # ---- nothing lost: each table holds exactly its topic's records ----------------------
    tables = {
        TABLE_BY_TOPIC[s.logical_name]: names.prefix + s.logical_name
        for s in topic_catalog().record_topics()
        if s.logical_name in TABLE_BY_TOPIC
    }
    compacted = {
        TABLE_BY_TOPIC[s.logical_name]
        for s in topic_catalog().record_topics()
        if s.logical_name in TABLE_BY_TOPIC and s.compacted
    }
    assert "positions" in compacted, compacted
    read = {table: _read_to_end(bootstrap, topic) for table, topic in tables.items()}
    on_topic = {table: [value for _, _, value in records] for table, records in read.items()}
    # A compacted topic (positions: the latest per account and symbol; control events) may
    # lose superseded records to the log cleaner after the sink stored them: ClickHouse
    # keeps every one. Nothing is lost there when ClickHouse holds each record still on the
    # topic; for positions, each one it holds beyond them was superseded by a later record
    # of its account and symbol on the topic.
    cleaned: dict[str, int] = {}
    for table in sorted(compacted):
        stored = _sql(env, f"SELECT _partition AS p, _offset AS o FROM omniquant.`{table}`")
        topic_offsets = {(partition, offset) for partition, offset, _ in read[table]}
        ch_offsets = {(int(r["p"]), int(r["o"])) for r in stored}
        lost = sorted(topic_offsets - ch_offsets)
        assert not lost, f"{table}: records on the topic missing in ClickHouse: {lost[:5]}"
        cleaned[table] = len(ch_offsets - topic_offsets)
    serde = AvroSerde()
    last_on_topic: dict[tuple[int, str, str], int] = {}
    for partition, offset, value in read["positions"]:
        record = serde.decode(value)
        last_on_topic[(partition, record.account, record.symbol)] = offset  # type: ignore[attr-defined]
    on_topic_offsets = {(partition, offset) for partition, offset, _ in read["positions"]}
    stored_positions = _sql(
        env, "SELECT _partition AS p, _offset AS o, account, symbol FROM omniquant.positions"
    )
    not_superseded = [
        r for r in stored_positions
        if (int(r["p"]), int(r["o"])) not in on_topic_offsets
        and last_on_topic.get((int(r["p"]), r["account"], r["symbol"]), -1) <= int(r["o"])
    ]  # fmt: skip
    assert not not_superseded, f"positions in ClickHouse never on the topic: {not_superseded[:3]}"
    print(f"superseded records compacted away after the sink stored them: {cleaned}")
    union = " UNION ALL ".join(
        f"SELECT '{table}' AS t, count() AS n, uniqExact(_partition, _offset) AS distinct_offsets "
        f"FROM omniquant.`{table}`"
        for table in tables
    )
    in_ch = {row["t"]: (int(row["n"]), int(row["distinct_offsets"])) for row in _sql(env, union)}
    counts = {t: (len(on_topic[t]), *in_ch[t]) for t in tables}
    print("table: topic records, ClickHouse rows, distinct offsets")
    for table, figures in counts.items():
        print(f"  {table:<18} {figures}")
    assert len(on_topic["trades"]) == expected, "the trades topic should hold every tick"
    mismatched = {
        t: c
        for t, c in counts.items()
        if not (c[1] == c[2] and (c[0] == c[1] if t not in compacted else c[0] <= c[1]))
    }
    assert not mismatched, f"topic records vs ClickHouse rows differ: {mismatched}"
    assert counts["order_requests"][0] > 10, "the strategy should have ordered on real ticks"

    # ---- nothing doubled: one client_order_id per order, on the topics and in ClickHouse -
    for table in ("order_requests", "approved_orders"):
        ids = Counter(serde.decode(v).client_order_id for v in on_topic[table])  # type: ignore[attr-defined]
        doubled = [i for i, n in ids.items() if n > 1]
        assert not doubled, f"{table} topic: client_order_id doubled: {doubled[:5]}"
        rows = _sql(
            env,
            f"SELECT count() AS n, uniqExact(client_order_id) AS ids FROM omniquant.{table}",
        )
        assert int(rows[0]["n"]) == int(rows[0]["ids"]) == len(ids), (table, rows, len(ids))
    took = time.monotonic() - started
    print("\n".join(events))
    print(f"test took {took:.1f} s ({expected} ticks, {counts['approved_orders'][0]} approved)")
