"""The seed's metric set, each metric on the stage that owns it, from a real pipeline run.

Runs ``omniquant run`` (a subprocess supervising one process per stage, the e2e tuning of
tests/pipeline_store.py) with ``--metrics-port BASE`` so stage *i* of the registry serves on
``BASE + i``, scrapes every stage's ``/metrics``, ``/healthz`` and ``/readyz`` while it runs,
and checks on the last scrape of each stage that every metric it owns is there with its
label names (counters by their ``_total`` sample), and that the ones this run must move
did move. Every stage must have answered ``/readyz`` 200 at some point, ``/healthz`` 200.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer
from pipeline_store import SEED, SYMBOLS, pipeline_env
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from core.config import load_settings
from core.kafka import ensure_topics
from core.topics import TopicNames
from omniquant.stages import STAGES, topic_catalog

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

RUN_SECONDS = 8
RATE = 400.0

#: every stage that consumes records through streams.runtime (StreamApp or DeadLetters)
CONSUMERS = ("bars", "signals", "risk-gate", "execution", "portfolio", "risk-metrics")
CONSUMERS += ("sink-clickhouse",)

#: stage → {sample name: label names}: the seed's metric set on its owners
OWNED: dict[str, dict[str, frozenset[str]]] = {
    "feed": {
        "market_data_messages_total": frozenset({"source", "type"}),
        "market_data_lag_seconds_count": frozenset({"source"}),
    },
    "execution": {
        "trading_trades_total": frozenset({"venue", "side"}),
        "trading_orders_submitted_total": frozenset({"venue"}),
        "trading_orders_filled_total": frozenset({"venue"}),
        "trading_orders_rejected_total": frozenset({"venue", "reason"}),
        "trading_order_latency_seconds_count": frozenset({"venue"}),
    },
    "portfolio": {
        "trading_position_value": frozenset({"account", "symbol"}),
        "trading_portfolio_equity": frozenset({"account"}),
    },
    "risk-metrics": {
        "trading_pnl_count": frozenset({"account"}),
        "trading_daily_pnl": frozenset({"account"}),
    },
}
for _stage in CONSUMERS:
    OWNED.setdefault(_stage, {}).update(
        {
            "event_processing_seconds_count": frozenset({"app"}),
            "errors_total": frozenset({"app", "kind"}),
        }
    )

#: (stage, sample name, labels it must carry): this run must move these above 0
MOVED = [
    ("feed", "market_data_messages_total", {"source": "synthetic", "type": "trade"}),
    ("execution", "trading_orders_submitted_total", {}),
    ("execution", "trading_trades_total", {}),
    ("execution", "trading_orders_filled_total", {}),
    ("execution", "trading_order_latency_seconds_count", {}),
    ("risk-gate", "errors_total", {"app": "risk-gate", "kind": "dead_letter"}),
    *((stage, "event_processing_seconds_count", {"app": stage}) for stage in CONSUMERS),
]

Samples = dict[str, list[tuple[dict[str, str], float]]]


def _free_run_of_ports(count: int) -> int:
    """A base port with ``count`` free ports from it (checked, not reserved)."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            base = int(sock.getsockname()[1])
        if base + count > 65535:
            continue
        try:
            for port in range(base, base + count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no run of free ports")


def _get(port: int, path: str) -> tuple[int, str] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return None


def _samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if k not in ("le", "quantile")}
            out.setdefault(sample.name, []).append((labels, sample.value))
    return out


def _produce_malformed(settings_env: dict[str, str], prefix: str, state_dir: Path) -> None:
    """One record on orders.requests that is not Avro: risk-gate dead-letters it."""
    settings = load_settings(
        kafka={"bootstrap_servers": settings_env["KAFKA_BOOTSTRAP_SERVERS"]},
        redis={"url": settings_env["REDIS_URL"]},
        topic_prefix=prefix,
        state_dir=state_dir,
    )
    ensure_topics(settings, topic_catalog())
    producer = Producer({"bootstrap.servers": settings_env["KAFKA_BOOTSTRAP_SERVERS"]})
    producer.produce(TopicNames(prefix).order_requests, key=b"paper", value=b"\x00not avro")
    assert producer.flush(10) == 0


def metric_set_problems(
    last: dict[str, Samples],
) -> tuple[list[tuple[str, str, list[str]]], list[str]]:
    """(stage, sample, label names) found, and what is missing, mislabelled or unmoved."""
    table = []  # (stage, sample, labels found) for the report on failure
    problems = []
    for stage, owned in OWNED.items():
        samples = last.get(stage)
        if samples is None:
            problems.append(f"{stage}: never scraped")
            continue
        for name, label_names in owned.items():
            found = samples.get(name)
            if not found:
                problems.append(f"{stage}: {name} missing")
                continue
            keys = {frozenset(labels) for labels, _ in found}
            table.append((stage, name, sorted(set().union(*keys))))
            if keys != {label_names}:
                problems.append(f"{stage}: {name} has labels {keys}, not {set(label_names)}")
    for stage, name, labels in MOVED:
        found = last.get(stage, {}).get(name, [])
        total = sum(v for got, v in found if labels.items() <= got.items())
        if total <= 0:
            problems.append(f"{stage}: {name}{labels} did not move in the run ({total})")
    return table, problems


def test_every_stage_exposes_the_metrics_it_owns_and_answers_health(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    prefix = f"ms{uuid.uuid4().hex[:8]}."
    env = pipeline_env(kafka_bootstrap, redis_url, prefix, tmp_path, tmp_path / "clickhouse")
    _produce_malformed(env, prefix, tmp_path)
    base = _free_run_of_ports(len(STAGES))
    ports = {spec.name: base + i for i, spec in enumerate(STAGES)}  # as pipeline_stages
    args = ["run", "--duration", str(RUN_SECONDS), "--rate", str(RATE), "--symbols", SYMBOLS]
    args += ["--seed", str(SEED), "--no-live", "--drain-timeout", "60"]
    args += ["--metrics-port", str(base)]
    last: dict[str, Samples] = {}
    ready: dict[str, bool] = dict.fromkeys(ports, False)
    unhealthy: dict[str, str] = {}
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "omniquant.cli", *args], env=env, stdout=out, stderr=out
        )
        deadline = time.monotonic() + 300
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                for stage, port in ports.items():
                    scraped = _get(port, "/metrics")
                    if scraped is None or scraped[0] != 200:
                        continue  # not up yet, or stopped already
                    last[stage] = _samples(scraped[1])
                    readyz, healthz = _get(port, "/readyz"), _get(port, "/healthz")
                    if readyz is not None and readyz[0] == 200:
                        ready[stage] = True
                    if healthz is not None and healthz[0] != 200:
                        unhealthy[stage] = healthz[1]
                time.sleep(0.3)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)
    output = log.read_text(errors="replace")[-4000:]
    assert proc.returncode == 0, f"omniquant run failed ({proc.returncode}):\n{output}"

    table, problems = metric_set_problems(last)
    problems += [f"{stage}: /readyz never answered 200" for stage, ok in ready.items() if not ok]
    problems += [f"{stage}: /healthz failed: {body}" for stage, body in unhealthy.items()]
    print("\n".join(f"{stage:<16} {name:<40} {labels}" for stage, name, labels in table))
    assert problems == [], "\n".join(problems)


def test_metric_set_checker_catches_a_missing_metric_a_wrong_label_and_no_movement() -> None:
    registry = CollectorRegistry()
    messages = Counter("market_data_messages", "", ["source", "type"], registry=registry)
    messages.labels("synthetic", "trade").inc()
    Gauge("market_data_lag_seconds_count", "", ["feed"], registry=registry).labels("x")
    scraped = {"feed": _samples(generate_latest(registry).decode())}
    table, problems = metric_set_problems(scraped)
    assert ("feed", "market_data_messages_total", ["source", "type"]) in table
    assert not any("market_data_messages_total" in p for p in problems)
    assert "feed: market_data_lag_seconds_count has labels" in " ".join(problems)
    assert "execution: never scraped" in problems
    del scraped["feed"]["market_data_messages_total"]
    _, problems = metric_set_problems(scraped)
    assert "feed: market_data_messages_total missing" in problems
    assert any("market_data_messages_total" in p and "did not move" in p for p in problems)
