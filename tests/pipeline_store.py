"""A ClickHouse store filled by one real pipeline run, shared by the whole test session.

``pipeline_store`` runs ``omniquant run --duration N --no-live`` exactly as a user would (a
subprocess supervising one process per stage) against the session's real Kafka and Redis,
with chDB in a fresh directory, and yields ``(chdb_path, env)``: the directory the sink
wrote and the environment the run had (pass it to ``omniquant sql`` / ``omniquant report``
subprocesses, or open ``chdb_path`` in-process once no other chDB directory is open).

The run is configured to exercise every table: short event-time bars and SMA windows give
many crossovers, a notional limit between first entries and reversals makes the gate reject
some orders, risk metrics run on a short cadence, and a few malformed records are produced
to the order-requests topic before the stages start, so the consuming apps dead-letter them
(``dlq.risk-gate``, ``dlq.sink-clickhouse``), and an account nobody trades
(CONTROL_ACCOUNT) is set REDUCING and then ACTIVE again with ``omniquant reduce-only`` /
``resume``, so the control topic (trading states) has records too.

Use it like the other helpers here (pytest puts ``tests/`` on ``sys.path``; there is no
``tests`` package): ``from pipeline_store import pipeline_store  # noqa: F401``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from confluent_kafka import Producer

from core.config import load_settings
from core.kafka import ensure_topics
from core.topics import TopicNames
from omniquant.stages import topic_catalog

__all__ = [
    "CONTROL_ACCOUNT",
    "MALFORMED_RECORDS",
    "RUN_SECONDS",
    "SYMBOLS",
    "PipelineStore",
    "pipeline_store",
]

RUN_SECONDS = 12  # 8 s left a loaded CI box once with too few risk observations for VaR
RATE = 400.0  # trades per second, all symbols: ~3200 ticks
SYMBOLS = "AAPL,MSFT,SPY"
SEED = 11
# Produced to orders.requests before the run: not Avro at all, and Avro framing with a
# fingerprint no schema has.
MALFORMED_RECORDS: tuple[bytes, ...] = (
    b"\x00not avro at all",
    b"\xc3\x01" + b"\x01" * 8 + b"\x02",
    b'{"client_order_id": "json is not our wire format"}',
)


CONTROL_ACCOUNT = "desk-b"


class PipelineStore(NamedTuple):
    chdb_path: Path
    env: dict[str, str]


def pipeline_env(
    kafka_bootstrap: str, redis_url: str, prefix: str, state_dir: Path, chdb_path: Path
) -> dict[str, str]:
    """The run's environment (the same tuning as tests/test_e2e_pipeline.py)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIQUANT_")}
    env.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "REDIS_URL": redis_url,
            "OMNIQUANT_TOPIC_PREFIX": prefix,
            "OMNIQUANT_STATE_DIR": str(state_dir),
            "OMNIQUANT_CLICKHOUSE__CHDB_PATH": str(chdb_path),
            # Short event-time bars so a few thousand ticks give many crossovers.
            "OMNIQUANT_STRATEGY__BAR_INTERVAL_MS": "20",
            "OMNIQUANT_STRATEGY__FAST_WINDOW": "3",
            "OMNIQUANT_STRATEGY__SLOW_WINDOW": "8",
            "OMNIQUANT_STRATEGY__ORDER_QUANTITY": "100",
            # Entries are 100 shares, reversals 200: a notional limit between the two makes
            # the gate reject some orders.
            "OMNIQUANT_RISK__MAX_ORDER_NOTIONAL": "60000",
            "OMNIQUANT_RISK__MAX_POSITION_PER_SYMBOL": "1000",
            # Bars and risk observations on the same short clock: enough returns for VaR.
            "OMNIQUANT_BARS__INTERVALS_MS": "[20, 1000]",
            "OMNIQUANT_RISK_METRICS__CADENCE_MS": "20",
            "OMNIQUANT_RISK_METRICS__WINDOW": "100",
            "OMNIQUANT_RISK_METRICS__MIN_RETURNS": "10",
            # the lag monitor polls every second, so a short run has consumer_lag rows
            "OMNIQUANT_LAG__POLL_INTERVAL_S": "1",
        }
    )
    return env


def _produce_malformed(kafka_bootstrap: str, redis_url: str, prefix: str, state_dir: Path) -> None:
    settings = load_settings(
        kafka={"bootstrap_servers": kafka_bootstrap},
        redis={"url": redis_url},
        topic_prefix=prefix,
        state_dir=state_dir,
    )
    ensure_topics(settings, topic_catalog())
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    topic = TopicNames(prefix).order_requests
    for i, value in enumerate(MALFORMED_RECORDS):
        producer.produce(
            topic, key=b"paper", value=value, headers=[("correlation_id", f"bad-{i}".encode())]
        )
    assert producer.flush(10) == 0, "malformed records were not delivered"


def _cli(env: dict[str, str], *args: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "omniquant.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"omniquant {' '.join(args)}: {proc.stdout}{proc.stderr}"


@pytest.fixture(scope="session")
def pipeline_store(
    kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PipelineStore]:
    """``(chdb_path, env)`` of a store filled by one ``omniquant run`` of RUN_SECONDS."""
    state_dir = tmp_path_factory.mktemp("pipeline-store")
    chdb_path = state_dir / "clickhouse"
    prefix = f"ps{uuid.uuid4().hex[:8]}."
    env = pipeline_env(kafka_bootstrap, redis_url, prefix, state_dir, chdb_path)
    _produce_malformed(kafka_bootstrap, redis_url, prefix, state_dir)
    reason = "pipeline_store fixture"
    _cli(env, "reduce-only", "--account", CONTROL_ACCOUNT, "--reason", reason)
    _cli(env, "resume", "--account", CONTROL_ACCOUNT, "--reason", reason)
    started = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "omniquant.cli",
            "run",
            "--duration",
            str(RUN_SECONDS),
            "--rate",
            str(RATE),
            "--symbols",
            SYMBOLS,
            "--seed",
            str(SEED),
            "--no-live",
            "--drain-timeout",
            "60",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    took = time.monotonic() - started
    print(f"\n[pipeline_store] omniquant run took {took:.1f} s", file=sys.stderr)
    assert proc.returncode == 0, (
        f"omniquant run failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    )
    assert chdb_path.exists(), f"the run wrote no chDB directory at {chdb_path}"
    yield PipelineStore(chdb_path, env)
