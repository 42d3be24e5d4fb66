"""Three KRaft nodes from the same jars (a 3-voter quorum): a topic with replication factor
3 and min.insync.replicas 2 keeps taking acks=all writes while one broker is SIGKILLed, and
the broker rejoins and catches up (back in every partition's ISR); the active controller
killed, another is elected and writes go on. Three JVMs on 2 cores, about a minute: in the
default suite, and alone as ``make test-multibroker``. The cluster is the session's one
(tests/cluster_fixture.py), shared with tests/test_cluster_pipeline.py."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from omniquant.stack.kafka import LocalKafkaCluster

pytestmark = [pytest.mark.integration, pytest.mark.multibroker]

TOPIC = "cluster.test"


def _produce(bootstrap: str, start: int, count: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    failed: list[object] = []
    for i in range(start, start + count):
        producer.produce(
            TOPIC,
            str(i).encode(),
            str(i).encode(),
            on_delivery=lambda e, _m: e and failed.append(e),
        )
        producer.poll(0)
    assert producer.flush(60) == 0
    assert not failed, failed[:3]


def _read_all(bootstrap: str, expected: int) -> list[int]:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"read-{time.time_ns()}",
         "auto.offset.reset": "earliest", "enable.auto.commit": False}
    )  # fmt: skip
    consumer.subscribe([TOPIC])
    seen: list[int] = []
    deadline = time.monotonic() + 90
    try:
        while len(seen) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                seen.append(int(msg.value()))
    finally:
        consumer.close()
    return seen


def _isr_sizes(admin: AdminClient) -> list[int]:
    meta = admin.list_topics(TOPIC, timeout=10).topics[TOPIC]
    return [len(p.isrs) for p in meta.partitions.values()]


@pytest.mark.timeout(600)
def test_a_killed_broker_loses_nothing_and_rejoins(
    cluster: LocalKafkaCluster,
) -> None:
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    meta = admin.list_topics(timeout=15)
    assert sorted(meta.brokers) == [1, 2, 3]
    new = NewTopic(TOPIC, 3, 3, config={"min.insync.replicas": "2"})
    admin.create_topics([new])[TOPIC].result(30)
    _produce(cluster.bootstrap, 0, 2_000)

    victim = cluster.nodes[1]
    victim.kill()
    assert not victim.is_running()
    deadline = time.monotonic() + 60
    while max(_isr_sizes(admin)) > 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert max(_isr_sizes(admin)) == 2, "the dead broker should leave every ISR"
    _produce(cluster.bootstrap, 2_000, 2_000)  # acks=all with 2 of 3 in sync
    assert sorted(_read_all(cluster.bootstrap, 4_000)) == list(range(4_000))

    cluster.start_node(2)
    deadline = time.monotonic() + 120
    while min(_isr_sizes(admin)) < 3 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _isr_sizes(admin) == [3, 3, 3], "the restarted broker should catch up"
    assert sorted(_read_all(cluster.bootstrap, 4_000)) == list(range(4_000))


@pytest.mark.timeout(600)
def test_killing_the_active_controller_elects_another_and_writes_go_on(
    cluster: LocalKafkaCluster,
) -> None:
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    deadline = time.monotonic() + 120  # the previous test's broker may still be catching up
    while min(_isr_sizes(admin)) < 3 and time.monotonic() < deadline:
        time.sleep(0.5)
    leader = cluster.active_controller()
    assert leader in (1, 2, 3), "no node logged a quorum leader"
    cluster.nodes[leader - 1].kill()
    deadline = time.monotonic() + 60
    new_leader = None
    while time.monotonic() < deadline:
        new_leader = cluster.active_controller()
        if new_leader not in (None, leader):
            break
        time.sleep(0.5)
    assert new_leader not in (None, leader), f"no new quorum leader after killing {leader}"
    _produce(cluster.bootstrap, 4_000, 1_000)  # metadata and acks=all still work
    assert sorted(_read_all(cluster.bootstrap, 5_000)) == list(range(5_000))
    cluster.start_node(leader)
    deadline = time.monotonic() + 120
    while min(_isr_sizes(admin)) < 3 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _isr_sizes(admin) == [3, 3, 3]
