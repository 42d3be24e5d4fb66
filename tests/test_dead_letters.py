"""A malformed record goes to the app's dead-letter topic, is counted, and the app carries on."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer

from core.config import load_settings
from core.kafka import LagProbe, ensure_topics
from core.metrics import DEAD_LETTERS
from core.topics import TopicNames
from omniquant.stages import CONSUMED, LiveFigure, topic_catalog
from omniquant.supervisor import free_port, scrape
from schemas.models import Trade
from schemas.serde import AvroSerde

pytestmark = pytest.mark.integration


def _wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_malformed_trades_go_to_dead_letter_topic_and_signals_app_keeps_running(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    prefix = f"dlq{uuid.uuid4().hex[:8]}."
    settings = load_settings(
        kafka={"bootstrap_servers": kafka_bootstrap},
        redis={"url": redis_url},
        topic_prefix=prefix,
        state_dir=tmp_path,
    )
    ensure_topics(settings, topic_catalog())
    names = TopicNames(prefix)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIQUANT_")}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        REDIS_URL=redis_url,
        OMNIQUANT_TOPIC_PREFIX=prefix,
        OMNIQUANT_STATE_DIR=str(tmp_path),
        OMNIQUANT_METRICS_PORT=str(port),
    )
    app = subprocess.Popen(
        [sys.executable, "-m", "omniquant.cli", "stage", "signals"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        serde = AvroSerde()
        good = Trade(
            symbol="AAPL",
            venue="SIM",
            price=190_120_000_000,
            size=100_000_000_000,
            source="test",
            ts_event=1_700_000_000_000_000_000,
            ts_init=1_700_000_000_000_000_001,
        )
        garbage = b"\x00not avro at all"
        unknown_fingerprint = b"\xc3\x01" + b"\x01" * 8 + b"\x02"
        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        for value in (garbage, serde.encode(good, topic=names.trades), unknown_fingerprint):
            producer.produce(
                names.trades, key=b"AAPL", value=value, headers=[("correlation_id", b"c-1")]
            )
        assert producer.flush(10) == 0

        consumer = Consumer(
            {
                "bootstrap.servers": kafka_bootstrap,
                "group.id": f"dlq-reader-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
            }
        )
        consumer.subscribe([names.dead_letter("signals")])
        dead: list = []
        deadline = time.monotonic() + 90
        while len(dead) < 2 and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                dead.append(msg)
        consumer.close()

        assert [m.value() for m in dead] == [garbage, unknown_fingerprint]
        for msg in dead:
            headers = {k: v.decode() for k, v in msg.headers()}
            assert headers["dlq.app"] == "signals"
            assert headers["dlq.original.topic"] == names.trades
            assert headers["dlq.error.message"]
            assert headers["dlq.stage"] == "deserialize"
            assert headers["correlation_id"] == "c-1"  # original headers are kept
        assert {int(dict(m.headers())["dlq.original.offset"]) for m in dead} == {0, 2}

        # The app is alive and consumed past all three records (the good one included).
        probe = LagProbe(settings)
        try:
            _wait_for(
                lambda: probe.lag(f"{prefix}signals", [names.trades]) == 0,
                60,
                "signals to commit past the bad records",
            )
        finally:
            probe.close()
        assert app.poll() is None, "the signals app must keep running"
        metrics = _wait_for(lambda: scrape(port), 10, "metrics endpoint")
        assert LiveFigure("dead letters", DEAD_LETTERS).read(metrics) == 2
        assert CONSUMED.read(metrics) == 1
    finally:
        app.terminate()
        try:
            out, _ = app.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            app.kill()
            out, _ = app.communicate()
    assert app.returncode == 0, out.decode(errors="replace")[-3000:]
