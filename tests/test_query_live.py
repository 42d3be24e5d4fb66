"""Reading the embedded store while the pipeline writes it: the sink stage owns the chDB
directory and serves it read-only over the ClickHouse HTTP interface; `omniquant sql`, run
as a user would in another process, finds it and reads live rows — and cannot write."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from stage_proc import spawn_stage, stage_namespace

from core.clickhouse import QUERY_SERVER_FILE
from core.config import Settings
from core.topics import TopicNames
from producers.kafka_producer import RecordProducer
from schemas.models import Trade

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

T0 = 1_700_000_000_000_000_000


def _sql(env: dict[str, str], query: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "omniquant.cli", "sql", query, "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _count(env: dict[str, str]) -> int | None:
    out = _sql(env, "SELECT count() AS n FROM omniquant.trades")
    if out.returncode != 0:
        return None
    return int(json.loads(out.stdout)[0]["n"])


def _produce(settings: Settings, names: TopicNames, start: int, count: int) -> None:
    producer = RecordProducer(settings, "test")
    for i in range(start, start + count):
        ts = T0 + i * 1_000_000
        trade = Trade(symbol="SPY", venue="XNYS", price=187_250_000_000 + i, size=10**9,
                      source="live", ts_event=ts, ts_init=ts)  # fmt: skip
        producer.send(names.trades, trade, key="SPY")
    producer.flush()


def test_omniquant_sql_reads_the_embedded_store_while_the_sink_writes_it(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    settings, env = stage_namespace(kafka_bootstrap, redis_url, tmp_path, "live")
    chdb = tmp_path / "chdb"
    env.update(
        OMNIQUANT_CLICKHOUSE__CHDB_PATH=str(chdb),
        OMNIQUANT_CLICKHOUSE__QUERY_PORT="0",  # any free port: announced in the directory
        OMNIQUANT_CLICKHOUSE__FLUSH_INTERVAL_S="0.2",
    )
    names = TopicNames(settings.topic_prefix)
    stage = spawn_stage("sink-clickhouse", env, output=True)
    try:
        deadline = time.monotonic() + 90
        while not (chdb / QUERY_SERVER_FILE).exists():
            assert stage.poll() is None, stage.stdout.read() if stage.stdout else ""
            assert time.monotonic() < deadline, "the sink never announced its query server"
            time.sleep(0.2)
        announced = json.loads((chdb / QUERY_SERVER_FILE).read_text())
        assert announced["pid"] == stage.pid
        assert announced["url"].startswith("http://127.0.0.1:")

        # rows appear to a reader in another process while the sink keeps running
        for start, count in ((0, 300), (300, 400)):
            _produce(settings, names, start, count)
            total = start + count
            while (seen := _count(env)) != total:
                assert stage.poll() is None, "the sink stopped"
                assert time.monotonic() < deadline, f"saw {seen} of {total} rows"
                time.sleep(0.3)

        # the live interface is read-only: the command fails with ClickHouse's reason
        refused = _sql(env, "DROP TABLE omniquant.trades")
        assert refused.returncode != 0
        assert "164" in refused.stderr or "readonly" in refused.stderr.lower(), refused.stderr
        assert _count(env) == 700
        assert stage.poll() is None
    finally:
        stage.send_signal(signal.SIGTERM)
        stage.wait(60)

    # once the sink has stopped, the directory is free again and read directly
    assert not (chdb / QUERY_SERVER_FILE).exists()
    assert _count(env) == 700
