"""The stages' Redis client rides out a short outage of a real redis-server, and gives up
after ``OMNIQUANT_REDIS__OUTAGE_WAIT_S`` (core.redis_client)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client import REGISTRY

from core.config import Settings, load_settings
from core.errors import ConfigError
from core.redis_client import redis_client
from omniquant.stack.redis import LocalRedis
from streams.account_view import ExposureBook

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LocalRedis]:
    """A redis-server of this test's own: it is stopped and started again."""
    local = LocalRedis(tmp_path / "redis", port=_free_port())
    local.start()
    try:
        yield local
    finally:
        local.stop()


def _settings(server: LocalRedis, tmp_path: Path, wait_s: float) -> Settings:
    return load_settings(
        redis={"url": server.url, "outage_wait_s": wait_s},
        topic_prefix="t-redis-client.",
        state_dir=tmp_path / "state",
    )


def _retries(role: str) -> float:
    return REGISTRY.get_sample_value("omniquant_redis_retries_total", {"role": role}) or 0.0


def _start_later(server: LocalRedis, delay_s: float) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(delay_s), server.start()))
    thread.start()
    return thread


def test_a_command_issued_while_redis_is_down_succeeds_once_it_is_back(
    server: LocalRedis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = redis_client(_settings(server, tmp_path, 20.0), "execution", socket_timeout=2.0)
    assert client.set("k", b"before")
    before = _retries("execution")
    server.stop()
    assert not server.answers()
    restart = _start_later(server, 1.5)
    try:
        with caplog.at_level(logging.WARNING, logger="core.redis_client"):
            # The server came back empty (no persistence): the key is gone, the command works.
            assert client.set("k", b"after", nx=True)
    finally:
        restart.join()  # before the fixture stops it, or it outlives the test
    assert client.get("k") == b"after"
    assert _retries("execution") > before
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("Redis does not answer; retrying") == 1, "one per outage, not per retry"
    assert messages.count("Redis answers again") == 1, messages
    client.close()


def test_the_gate_claims_an_order_id_through_a_redis_restart(
    server: LocalRedis, tmp_path: Path
) -> None:
    book = ExposureBook(_settings(server, tmp_path, 20.0))
    before = _retries("risk-gate")
    server.stop()
    restart = _start_later(server, 1.0)
    try:
        assert book.claim("coid-1", "orders.requests/0/7")
    finally:
        restart.join()
    assert not book.claim("coid-1", "orders.requests/0/8"), "the claim was stored"
    assert _retries("risk-gate") > before
    book.close()


def test_the_error_reaches_the_caller_after_the_configured_wait(
    server: LocalRedis, tmp_path: Path
) -> None:
    client = redis_client(_settings(server, tmp_path, 1.0), "risk-gate", socket_timeout=2.0)
    client.ping()
    server.stop()
    before = _retries("risk-gate")
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        client.get("k")
    waited = time.monotonic() - started
    assert _retries("risk-gate") > before
    # it waited, and it gave up: bounded by the setting, not by a count of retries
    assert 0.5 <= waited < 10.0, waited
    # The wait is the outage's, not each command's: the next one in it tries once.
    after = _retries("risk-gate")
    with pytest.raises(redis.ConnectionError):
        client.get("k")
    assert _retries("risk-gate") == after
    # Back up, then down again: a new outage, with a wait of its own.
    server.start()
    assert client.get("k") is None
    server.stop()
    with pytest.raises(redis.ConnectionError):
        client.get("k")
    assert _retries("risk-gate") > after
    client.close()


def test_no_wait_means_the_first_error_reaches_the_caller(
    server: LocalRedis, tmp_path: Path
) -> None:
    client = redis_client(_settings(server, tmp_path, 0.0), "execution", socket_timeout=2.0)
    client.ping()
    server.stop()
    before = _retries("execution")
    with pytest.raises(redis.ConnectionError):
        client.get("k")
    assert _retries("execution") == before
    client.close()


@pytest.mark.parametrize("value", [-1, 51, "soon"])
def test_an_invalid_outage_wait_fails_at_start_naming_the_setting(
    value: object, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="OMNIQUANT_REDIS__OUTAGE_WAIT_S"):
        load_settings(redis={"outage_wait_s": value}, state_dir=tmp_path)
