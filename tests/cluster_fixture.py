"""One 3-node KRaft cluster for the whole session, shared by every multibroker test file.

``omniquant up --brokers 3``'s code (:class:`LocalStack` with ``kafka_brokers=3``) on free
ports, the topic catalog created on it (3 replicas, 2 in sync required). Three JVMs on a
2-core box are expensive: start them once. A test that kills a node must restart it and
wait until it is back in every ISR (:func:`wait_full_isr`) before it ends, so the next test
finds the cluster whole.

tests/conftest.py imports ``cluster``, so every module shares the one instance; modules
import only the helpers (``wait_full_isr``).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from confluent_kafka.admin import AdminClient

from core.config import load_settings
from core.kafka import ensure_topics
from omniquant.stack.kafka import LocalKafkaCluster
from omniquant.stack.manager import LocalStack
from omniquant.stages import topic_catalog

__all__ = ["cluster", "short_isrs", "wait_full_isr"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_base() -> int:
    """A port p with p .. p+5 free: three nodes' (client, controller) ports."""
    for _ in range(50):
        base = _free_port()
        if base + 5 < 65_000 and all(_bindable(base + i) for i in range(6)):
            return base
    raise RuntimeError("no six consecutive free ports")


def short_isrs(admin: AdminClient, prefix: str = "") -> list[str]:
    """``topic[partition] isr=[...]`` of every partition (of topics starting with ``prefix``)
    whose ISR is not all of its replicas; empty when every replica is in sync."""
    meta = admin.list_topics(timeout=10)
    out = []
    for name, topic in sorted(meta.topics.items()):
        if not name.startswith(prefix):
            continue
        for pid, part in sorted(topic.partitions.items()):
            if sorted(part.isrs) != sorted(part.replicas):
                out.append(f"{name}[{pid}] isr={sorted(part.isrs)} replicas={part.replicas}")
    return out


def wait_full_isr(admin: AdminClient, prefix: str = "", timeout_s: float = 120.0) -> list[str]:
    """Wait until every partition's ISR is all its replicas; returns what is still short."""
    deadline = time.monotonic() + timeout_s
    short = ["(not checked)"]
    while time.monotonic() < deadline:
        try:
            short = short_isrs(admin, prefix)
        except Exception as exc:  # metadata from a node that is just coming back
            short = [f"metadata error: {exc}"]
        if not short:
            return []
        time.sleep(0.5)
    return short


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafkaCluster]:
    """`omniquant up --brokers 3`'s code: the stack's settings with three nodes (up to
    240 s to form a quorum: other suites may load the box)."""
    base = _free_base()
    settings = load_settings(
        state_dir=tmp_path_factory.mktemp("cluster"),
        stack={"kafka_port": base, "kafka_controller_port": base + 1, "kafka_brokers": 3,
               "kafka_heap": "384m", "start_timeout_s": 240.0},
    )  # fmt: skip
    stack = LocalStack(settings)
    assert isinstance(stack.kafka, LocalKafkaCluster)
    took = stack.kafka.start()
    print(f"3-node cluster {stack.kafka.bootstrap} up in {took:.1f} s")
    try:
        # the catalog's topics get 3 replicas on 3 nodes (2 in sync required)
        ensure_topics(settings, topic_catalog())
        admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap()})
        topics = admin.list_topics(timeout=15).topics
        ours = [t for name, t in topics.items() if name.startswith(settings.topic_prefix)]
        assert ours and all(len(p.replicas) == 3 for t in ours for p in t.partitions.values())
        yield stack.kafka
    finally:
        stack.down()
        assert not any(node.is_running() for node in stack.kafka.nodes)
