"""What every benchmark needs: the shared data folder, a broker, a fresh topic namespace.

Broker: ``KAFKA_BOOTSTRAP_SERVERS`` if set, else a LocalKafka on free ports, stopped at the
end. Redis (for the benchmarks that need it): ``REDIS_URL`` if set, else a LocalRedis on a
free port, stopped at the end. Data: ``$OMNIQUANT_SHARED_DATA`` or ``../shared/data`` beside
the repository.
"""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.config import Settings, load_settings, mask_url
from core.kafka import ensure_topics
from omniquant.stack.kafka import LocalKafka
from omniquant.stack.redis import LocalRedis
from omniquant.stages import topic_catalog


def shared_data() -> Path:
    env = os.environ.get("OMNIQUANT_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def broker(label: str) -> Iterator[str]:
    """bootstrap.servers of the broker the benchmark runs against."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        print(f"broker: external {external}")
        yield external
        return
    with tempfile.TemporaryDirectory(prefix=f"bench-{label}-") as state:
        kafka = LocalKafka(Path(state), port=free_port(), controller_port=free_port(), heap="1g")
        took = kafka.start()
        print(f"broker: LocalKafka {kafka.bootstrap} (started in {took:.1f} s)")
        try:
            yield kafka.bootstrap
        finally:
            kafka.stop()


@contextmanager
def redis_server(label: str) -> Iterator[str]:
    """URL of the Redis the benchmark runs against (may hold a password: print it masked)."""
    external = os.environ.get("REDIS_URL")
    if external:
        print(f"redis: external {mask_url(external)}")
        yield external
        return
    with tempfile.TemporaryDirectory(prefix=f"bench-{label}-redis-") as state:
        server = LocalRedis(Path(state), port=free_port())
        took = server.start()
        print(f"redis: LocalRedis {server.url} (started in {took:.2f} s)")
        try:
            yield server.url
        finally:
            server.stop()


def namespace(bootstrap: str, label: str) -> Settings:
    """Settings of a fresh topic namespace on ``bootstrap``, its topics created."""
    settings = load_settings(
        kafka={"bootstrap_servers": bootstrap},
        topic_prefix=f"bench-{label}-{uuid.uuid4().hex[:8]}.",
    )
    ensure_topics(settings, topic_catalog())
    return settings


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of a live process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")
