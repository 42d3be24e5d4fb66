"""The sink's kill loop: the real sink stage (its own process, the session's broker, chDB)
is SIGKILLed right after ClickHouse acknowledged an insert and before Quix committed the
offsets, at 20+ random points while records keep coming; then one last instance drains the
topics. Every record is in its table exactly once: plain count() and uniqExact over
(_topic, _partition, _offset), no FINAL."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from stage_proc import stage_namespace

from core.clickhouse import ChdbClickHouse
from core.kafka import consumer_config
from core.topics import TopicNames
from producers.kafka_producer import RecordProducer
from schemas.models import Fill, Side, Trade

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

KILLS = 20
SEED = 20_240_917
TRADES_PER_ROUND = 400
FILLS_PER_ROUND = 40
T0 = 1_700_000_000_000_000_000
_CRASH_PROC = Path(__file__).with_name("sink_crash_proc.py")


def _spawn(env: dict[str, str], log: Path, kill_after: int) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, str(_CRASH_PROC)],
            env={**env, "SINK_KILL_AFTER_INSERTS": str(kill_after)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _produce(producer: RecordProducer, names: TopicNames, start: int, rng: random.Random) -> None:
    for i in range(start, start + TRADES_PER_ROUND):
        ts = T0 + i * 1_000_000
        symbol = rng.choice(("SPY", "IBM", "BAC", "AIG"))
        trade = Trade(symbol=symbol, venue="XNYS", price=187_250_000_000 + i, size=10**9,
                      source="kill", ts_event=ts, ts_init=ts)  # fmt: skip
        producer.send(names.trades, trade, key=symbol)
    for i in range(start, start + FILLS_PER_ROUND):
        ts = T0 + i * 1_000_000
        fill = Fill(fill_id=f"f-{i}", client_order_id=f"c-{i}", account=f"acct-{i % 3}",
                    symbol="SPY", side=Side.BUY, quantity=10**9, price=10**11, venue="paper",
                    ts_event=ts, ts_init=ts)  # fmt: skip
        producer.send(names.fills, fill, key="SPY")
    producer.flush()


def _drained(settings: Any, group: str, topics: list[str]) -> bool:
    consumer = Consumer({**consumer_config(settings, group), "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(timeout=10)
        tps = [TopicPartition(t, p) for t in topics for p in meta.topics[t].partitions]
        committed = consumer.committed(tps, timeout=10)
        for tp in committed:
            _, high = consumer.get_watermark_offsets(tp, timeout=10)
            if high > 0 and tp.offset < high:
                return False
        return True
    finally:
        consumer.close()


def test_sink_killed_between_insert_and_commit_stores_every_record_exactly_once(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    settings, env = stage_namespace(kafka_bootstrap, redis_url, tmp_path, "sinkkill")
    chdb_path = tmp_path / "chdb"
    env.update(
        OMNIQUANT_CLICKHOUSE__CHDB_PATH=str(chdb_path),
        OMNIQUANT_CLICKHOUSE__BATCH_SIZE="100",  # small checkpoints: many inserts per run
        OMNIQUANT_CLICKHOUSE__FLUSH_INTERVAL_S="0.2",
        # static membership: a restarted sink gets its partitions back at once
        OMNIQUANT_CLICKHOUSE__SINK_INSTANCE_ID="sink-kill-loop",
    )
    names = TopicNames(settings.topic_prefix)
    group = f"{settings.topic_prefix}sink-clickhouse"
    rng = random.Random(SEED)
    producer = RecordProducer(settings, "test")
    started = time.monotonic()
    produced = 0
    kills = 0
    logs: list[Path] = []
    while kills < KILLS:
        _produce(producer, names, produced, rng)
        produced += TRADES_PER_ROUND
        logs.append(tmp_path / f"sink-{kills}.log")
        stage = _spawn(env, logs[-1], kill_after=rng.randint(1, 4))
        try:
            code = stage.wait(45)
        except subprocess.TimeoutExpired:
            stage.kill()
            pytest.fail(f"the sink did not reach its kill point; log {logs[-1]}")
        assert code == -signal.SIGKILL, logs[-1].read_text(errors="replace")[-3000:]
        kills += 1
    logs.append(tmp_path / "sink-last.log")
    stage = _spawn(env, logs[-1], kill_after=0)
    try:
        deadline = time.monotonic() + 90
        while not _drained(settings, group, [names.trades, names.fills]):
            assert stage.poll() is None, logs[-1].read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "the last sink did not drain the topics"
            time.sleep(0.5)
    finally:
        stage.send_signal(signal.SIGTERM)
        stage.wait(60)
    took = time.monotonic() - started

    with ChdbClickHouse(chdb_path) as client:
        figures = {
            table: client.query(
                f"SELECT count(), uniqExact(_topic, _partition, _offset) FROM omniquant.{table}"
            ).rows[0]
            for table in ("trades", "fills")
        }
        engines = client.query(
            "SELECT DISTINCT engine FROM system.tables WHERE database = 'omniquant' "
            "AND name IN ('trades', 'fills')"
        ).rows
    text = "".join(log.read_text(errors="replace") for log in logs)
    skipped = text.count("records already in ClickHouse left out")
    print(
        f"\nsink kill loop: {kills} kills in {took:.0f} s; trades {figures['trades']}, "
        f"fills {figures['fills']} (count, uniqExact) of {produced} / "
        f"{kills * FILLS_PER_ROUND}; {skipped} batches had records already stored"
    )
    assert engines == [("MergeTree",)]
    assert figures["trades"] == (produced, produced)
    assert figures["fills"] == (kills * FILLS_PER_ROUND, kills * FILLS_PER_ROUND)
    assert skipped > 0  # the restart check did its job at least once
