"""Real services for the whole test session: Kafka, Redis and chDB. No mocks, no fake brokers.

* Kafka: ``KAFKA_BOOTSTRAP_SERVERS`` if set; else a testcontainers Kafka (KRaft) when a Docker
  daemon answers; else :class:`LocalKafka` (Java 17 + jars from Maven) on free ports.
* Redis: ``REDIS_URL`` if set; else :class:`LocalRedis` (redis-server) on a free port.
* chDB: a fresh directory per test (``chdb_dir``). One process can have only one chDB
  directory open at a time, so every test must close its ClickHouse clients before it ends.

Services are started once per session, lazily (a test run that needs none starts none), and
each test gets its own topic namespace (``topic_prefix``). Start-up times are printed in the
terminal summary.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest

# The 3-node cluster is session-scoped: defined here, not imported by each test module, so
# the whole session shares one cluster (a fixture imported into two modules is two fixtures).
from cluster_fixture import cluster  # noqa: F401

from core.config import Settings, load_settings, mask_url
from omniquant.stack.kafka import LocalKafka
from omniquant.stack.redis import LocalRedis

# "service" -> how it was provided and how long it took to come up, for the summary.
_SERVICES: dict[str, str] = {}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return (
            subprocess.run(
                ["docker", "info"], capture_output=True, timeout=10, check=False
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def _record(service: str, how: str) -> None:
    _SERVICES[service] = how
    print(f"\n[services] {service}: {how}", file=sys.stderr)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _SERVICES:
        terminalreporter.section("test services")
        for service, how in _SERVICES.items():
            terminalreporter.write_line(f"{service}: {how}")


@pytest.fixture(scope="session")
def stack_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """State dir of the session's local Kafka and Redis (their data, config and logs)."""
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def kafka_bootstrap(stack_state_dir: Path) -> Iterator[str]:
    """bootstrap.servers of the session's Kafka cluster."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        _record("kafka", f"external {external}")
        yield external
        return
    started = time.monotonic()
    if _docker_answers():
        from testcontainers.community.kafka import KafkaContainer

        container = KafkaContainer().with_kraft()
        container.start()
        try:
            bootstrap = container.get_bootstrap_server()
            _record(
                "kafka", f"testcontainers {bootstrap}, up in {time.monotonic() - started:.1f} s"
            )
            yield bootstrap
        finally:
            container.stop()
        return
    kafka = LocalKafka(
        stack_state_dir,
        port=_free_port(),
        controller_port=_free_port(),
        heap="512m",
        start_timeout_s=120.0,
    )
    try:
        took = kafka.start()
        _record("kafka", f"LocalKafka {kafka.bootstrap}, up in {took:.1f} s (logs {kafka.log_dir})")
        yield kafka.bootstrap
    finally:
        kafka.stop()


@pytest.fixture(scope="session")
def redis_url(stack_state_dir: Path) -> Iterator[str]:
    """URL of the session's Redis (may hold a password: do not print it unmasked)."""
    external = os.environ.get("REDIS_URL")
    if external:
        _record("redis", f"external {mask_url(external)}")
        yield external
        return
    server = LocalRedis(stack_state_dir, port=_free_port())
    try:
        took = server.start()
        _record("redis", f"LocalRedis {server.url}, up in {took:.2f} s")
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[LocalRedis]:
    """A redis-server of this test's own, to stop and start again (the session's
    ``redis_url`` is shared: it is not to be restarted)."""
    server = LocalRedis(tmp_path / "redis", port=_free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def chdb_dir(tmp_path: Path) -> Path:
    """A fresh chDB data directory for this test (not created yet)."""
    return tmp_path / "chdb"


@pytest.fixture
def topic_prefix() -> str:
    """This test's own topic namespace."""
    return f"t{uuid4().hex[:10]}."


@pytest.fixture
def settings(
    kafka_bootstrap: str, redis_url: str, topic_prefix: str, chdb_dir: Path, tmp_path: Path
) -> Settings:
    """Settings pointing at the session's services, this test's topics and chDB directory."""
    return load_settings(
        kafka={"bootstrap_servers": kafka_bootstrap},
        redis={"url": redis_url},
        topic_prefix=topic_prefix,
        state_dir=tmp_path / "state",
        clickhouse={"chdb_path": chdb_dir},
    )


# ---- shared third-party data (../shared/data; never copied into the repo) --------------
SHARED_DATA_ENV = "OMNIQUANT_SHARED_DATA"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the shared market-data and vendor-payload folder.

    ``$OMNIQUANT_SHARED_DATA`` if set, else ``../shared/data`` next to the repository.
    Tests ask for files through :func:`shared_file`, which skips naming the missing path.
    """
    env = os.environ.get(SHARED_DATA_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


def chdb_cli_env(chdb_path: Path, base: dict[str, str] | None = None) -> dict[str, str | None]:
    """CliRunner env reading the chDB at ``chdb_path``: no OMNIQUANT_* or CLICKHOUSE_URL of
    the calling shell, plus ``base``."""
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("OMNIQUANT_")}
    env.update(base or {})
    env["CLICKHOUSE_URL"] = None
    env["OMNIQUANT_CLICKHOUSE__CHDB_PATH"] = str(chdb_path)
    return env


def shared_file(root: Path, relative: str) -> Path:
    """``root/relative``, or skip the test saying which path was looked for."""
    path = root / relative
    if not path.exists():
        pytest.skip(f"shared data file not found: {path} (set {SHARED_DATA_ENV})")
    return path
