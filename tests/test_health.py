"""/metrics, /healthz and /readyz: the server (core.metrics.serve_metrics), the check registry
(core.health) and a real stream app becoming ready once the broker assigns it partitions."""

from __future__ import annotations

import gc
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from core import metrics
from core.config import Settings
from core.health import HEALTH, Health, Heartbeat
from core.kafka import ensure_topics
from omniquant.stages import topic_catalog
from streams.runtime import CAUGHT_UP_WITHIN_S, AppHealth, SampledTimer, StreamApp


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(port: int, path: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET, 4xx/5xx included."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


@pytest.fixture
def served() -> Iterator[tuple[int, Health]]:
    """A server on a free port over a fresh registry (not the process's)."""
    health = Health()
    port = _free_port()
    server = metrics.serve_metrics(port, addr="127.0.0.1", health=health)
    assert server is not None
    yield port, health
    server.shutdown()
    server.server_close()


def test_port_zero_serves_nothing() -> None:
    assert metrics.serve_metrics(0) is None


def test_metrics_endpoint_serves_the_prometheus_exposition(served: tuple[int, Health]) -> None:
    port, _ = served
    metrics.APP_UP.labels("test-health").set(1)
    status, content_type, body = _get(port, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(body)}
    samples = {
        (s.name, tuple(s.labels.items())): s.value for s in families["omniquant_app_up"].samples
    }
    assert samples[("omniquant_app_up", (("app", "test-health"),))] == 1.0
    assert _get(port, "/nope")[0] == 404


def test_healthz_is_200_without_checks_and_503_once_the_loop_stalls(
    served: tuple[int, Health],
) -> None:
    port, health = served
    status, content_type, body = _get(port, "/healthz")
    assert (status, content_type) == (200, "application/json")
    assert json.loads(body) == {"status": "ok", "checks": {}, "failing": []}
    now = [100.0]
    beat = Heartbeat(stall_after_s=30, clock=lambda: now[0])
    health.register("loop", beat.check, kind="liveness")
    assert _get(port, "/healthz")[0] == 200  # not started yet: alive
    beat.beat()
    now[0] += 29
    assert _get(port, "/healthz")[0] == 200
    now[0] += 2
    status, _, body = _get(port, "/healthz")
    assert status == 503
    report = json.loads(body)
    assert report["failing"] == ["loop"]
    assert "no turn for 31.0 s" in report["checks"]["loop"]["reason"]
    assert _get(port, "/readyz")[0] == 200  # liveness checks are not readiness checks


def test_readyz_is_503_with_reasons_until_every_check_passes(served: tuple[int, Health]) -> None:
    port, health = served
    state = {"assigned": False}

    def partitions() -> tuple[bool, str]:
        return state["assigned"], "assigned" if state["assigned"] else "no partition assigned"

    health.register("app: partitions assigned", partitions)
    health.register("app: connected", lambda: (True, "subscribed"))
    status, _, body = _get(port, "/readyz")
    assert status == 503
    report = json.loads(body)
    assert report["status"] == "fail"
    assert report["failing"] == ["app: partitions assigned"]
    assert report["checks"]["app: partitions assigned"] == {
        "ok": False,
        "reason": "no partition assigned",
    }
    assert report["checks"]["app: connected"]["ok"] is True
    state["assigned"] = True
    status, _, body = _get(port, "/readyz")
    assert status == 200
    assert json.loads(body)["status"] == "ok"
    assert _get(port, "/healthz")[0] == 200


def test_a_check_that_raises_fails_readiness_with_the_error() -> None:
    health = Health()

    def broken() -> tuple[bool, str]:
        raise RuntimeError("redis went away")

    health.register("broken", broken)
    report = health.readiness()
    assert not report.ok
    assert report.checks["broken"] == (False, "check raised RuntimeError: redis went away")


def test_a_bound_method_check_leaves_with_its_component() -> None:
    health = Health()
    beat = Heartbeat(1.0)
    health.register("loop", beat.check, kind="liveness")
    assert health.names("liveness") == ["loop"]
    del beat
    gc.collect()
    assert health.liveness().checks == {}
    assert health.names("liveness") == []


def test_sampled_timer_times_one_record_in_every_n() -> None:
    seen: list[float] = []
    timer = SampledTimer(seen.append, every=4)
    for _ in range(12):
        timer.start()
        timer.stop()
    assert len(seen) == 3
    assert all(0 <= s < 0.1 for s in seen)


def test_app_time_lag_check_fails_far_behind_and_passes_once_caught_up() -> None:
    health = AppHealth("lagging", {"t.market.trades"}, max_lag_s=60)
    assert health.lag_check() == (True, "no record handled yet")
    health.last_ts_ms = int((time.time() - 600) * 1000)
    ok, reason = health.lag_check()
    assert not ok and "behind the wall clock (limit 60 s)" in reason
    health.caught_up_at = time.monotonic() - CAUGHT_UP_WITHIN_S - 1  # an old empty poll
    assert not health.lag_check()[0]
    health.caught_up_at = time.monotonic()
    assert health.lag_check() == (True, "caught up")
    health.last_ts_ms = int(time.time() * 1000)
    health.caught_up_at = None
    assert health.lag_check()[0]


def test_app_partitions_follow_assign_and_revoke_of_its_own_topics() -> None:
    health = AppHealth("p", {"t.fills"}, max_lag_s=0)
    assert health.partitions_check()[0] is False
    health.assign([TopicPartition("t.fills", 0), TopicPartition("t.fills", 1)])
    health.assign([TopicPartition("p-changelog", 0)])  # Quix's, not ours
    assert health.partitions_check() == (True, "2 partition(s) of t.fills")
    health.revoke([TopicPartition("t.fills", 0)])
    assert health.partitions_check() == (True, "1 partition(s) of t.fills")
    health.revoke([TopicPartition("t.fills", 1)])
    assert health.partitions_check()[0] is False
    health.recovering = True
    assert health.alive() == (True, "recovering state from changelog topics")


@pytest.mark.integration
def test_stream_app_is_unready_until_the_broker_assigns_it_partitions(
    settings: Settings,
) -> None:
    ensure_topics(settings, topic_catalog())
    port = _free_port()
    server = metrics.serve_metrics(port, addr="127.0.0.1")  # the process's own HEALTH
    assert server is not None
    stream = StreamApp(settings, "bars", consumer_poll_timeout=0.2)  # dlq.bars exists
    stream.dataframe("market.trades")
    name = "bars: partitions assigned"
    seen: dict[str, Any] = {}

    def readyz() -> tuple[int, dict[str, Any]]:
        status, _, body = _get(port, "/readyz")
        return status, json.loads(body)

    seen["before"] = readyz()

    def watch() -> None:
        deadline = time.monotonic() + 90
        try:
            while time.monotonic() < deadline and not seen.get("ready"):
                try:
                    status, report = readyz()
                except OSError:  # the app stopped (failed) and the test is closing
                    return
                if report["checks"].get(name, {}).get("ok"):
                    seen["ready"] = (status, report)
                    seen["healthz"] = _get(port, "/healthz")
                    return
                time.sleep(0.1)
        finally:
            stream.app.stop()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        stream.run()  # Quix installs signal handlers: the main thread runs the app
    finally:
        watcher.join(10)
        server.shutdown()
        server.server_close()
    status, report = seen["before"]
    assert status == 503
    assert name in report["failing"]
    assert "no input partition assigned" in report["checks"][name]["reason"]
    assert "ready" in seen, "the app never reported its partitions assigned"
    status, report = seen["ready"]
    assert report["checks"][name]["reason"].endswith(f"of {stream.names.trades}")
    assert report["checks"]["bars: time lag"]["ok"] is True
    assert status == 200, report  # nothing else of this process is unready
    health_status, _, body = seen["healthz"]
    assert health_status == 200
    assert json.loads(body)["checks"]["bars: main loop"]["ok"] is True
    assert name not in HEALTH.names()  # a stopped app takes its checks away
