"""Kafka wiring: client configs, topic creation from the catalog, broker checks, lag.

All producers here use the Java client's partitioner (murmur2) so that records keyed by
symbol land on the same partition whoever produced them: other systems integrate by topic,
and the execution app joins orders with trades per partition.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from core.config import Settings
from core.errors import StackError, TopicError
from core.topics import TopicCatalog, TopicSpec

PARTITIONER = "murmur2_random"


def producer_config(settings: Settings, **overrides: str | int) -> dict[str, str | int]:
    """Idempotent, acks=all producer; small linger for throughput without visible latency."""
    conf: dict[str, str | int] = {
        **settings.kafka_client_config(),
        "enable.idempotence": "true",
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        "partitioner": PARTITIONER,
    }
    conf.update(overrides)
    return conf


def consumer_config(
    settings: Settings, group_id: str, **overrides: str | int
) -> dict[str, str | int]:
    conf: dict[str, str | int] = {
        **settings.kafka_client_config(),
        "group.id": group_id,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": "false",
        "isolation.level": "read_committed",
    }
    conf.update(overrides)
    return conf


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient(dict(settings.kafka_client_config()))


def broker_answers(settings: Settings, timeout: float = 2.0) -> bool:
    """True when the cluster answers a metadata request within ``timeout`` seconds."""
    try:
        admin_client(settings).list_topics(timeout=timeout)
    except KafkaException:
        return False
    return True


def wait_for_broker(settings: Settings, timeout: float) -> float:
    """Block until the cluster answers a metadata request; return seconds waited."""
    start = time.monotonic()
    deadline = start + timeout
    admin = admin_client(settings)
    while True:
        remaining = deadline - time.monotonic()
        try:
            admin.list_topics(timeout=max(0.5, min(2.0, remaining)))
            return time.monotonic() - start
        except KafkaException as exc:
            if time.monotonic() >= deadline:
                raise StackError(
                    f"Kafka at {settings.kafka_bootstrap()} did not answer within "
                    f"{timeout:.0f} s: {exc}"
                ) from None


@dataclass(frozen=True, slots=True)
class TopicState:
    name: str
    partitions: int
    exists: bool


def ensure_topics(settings: Settings, catalog: TopicCatalog, timeout: float = 30.0) -> list[str]:
    """Create every topic of ``catalog`` that does not exist yet; return the names created.

    An existing topic with fewer partitions than the catalog asks for is an error: keyed
    joins and per-symbol state depend on the partition count.
    """
    admin = admin_client(settings)
    existing = admin.list_topics(timeout=timeout).topics
    wanted: list[tuple[str, TopicSpec, int]] = []
    for name, item in catalog.physical(settings.topic_prefix):
        partitions = item.partitions or settings.kafka.partitions
        if name in existing:
            have = len(existing[name].partitions)
            if have != partitions:
                raise TopicError(
                    f"topic {name} has {have} partitions, the catalog wants {partitions}"
                )
            continue
        wanted.append((name, item, partitions))
    if not wanted:
        return []
    new = [
        NewTopic(
            name,
            num_partitions=partitions,
            replication_factor=settings.kafka.replication_factor,
            config=item.broker_config(settings.kafka.retention_bytes),
        )
        for name, item, partitions in wanted
    ]
    created = []
    for name, future in admin.create_topics(new, request_timeout=timeout).items():
        try:
            future.result(timeout=timeout)
            created.append(name)
        except KafkaException as exc:
            err = exc.args[0]
            if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue  # another process won the race
            raise TopicError(f"could not create topic {name}: {exc}") from None
    _wait_topics_visible(admin, [n for n, _, _ in wanted], timeout)
    return created


def _wait_topics_visible(admin: AdminClient, names: Iterable[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending:
        topics = admin.list_topics(timeout=timeout).topics
        pending = {n for n in pending if n not in topics or topics[n].error is not None}
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TopicError(f"topics not visible after creation: {sorted(pending)}")
        time.sleep(0.05)


def describe_topics(
    settings: Settings, catalog: TopicCatalog, timeout: float = 10.0
) -> list[TopicState]:
    existing = admin_client(settings).list_topics(timeout=timeout).topics
    return [
        TopicState(
            name, len(existing[name].partitions) if name in existing else 0, name in existing
        )
        for name, _ in catalog.physical(settings.topic_prefix)
    ]


_TRANSIENT = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._TIMED_OUT,
    }
)

T = TypeVar("T")


def retry_transient(fn: Callable[[], T], timeout: float) -> T:
    """Call ``fn`` until it stops failing with a transient broker error or ``timeout`` ends.

    Right after a topic or group appears, leadership and coordinators settle for a moment;
    those answers mean "ask again", not "failed".
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except KafkaException as exc:
            err = exc.args[0]
            transient = isinstance(err, KafkaError) and (
                err.retriable() or err.code() in _TRANSIENT
            )
            if not transient or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def end_offsets(settings: Settings, topic: str, timeout: float = 10.0) -> dict[int, int]:
    """High watermark per partition of ``topic``."""
    consumer = Consumer(consumer_config(settings, "omniquant-offsets-probe"))

    def query() -> dict[int, int]:
        meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if meta is None or meta.error is not None:
            raise TopicError(f"topic {topic} does not exist")
        return {
            partition: consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=timeout
            )[1]
            for partition in meta.partitions
        }

    try:
        return retry_transient(query, timeout)
    finally:
        consumer.close()


class LagProbe:
    """Consumer-group lag (high watermark − committed offset), summed over partitions.

    One long-lived probe consumer (never subscribes, never commits) serves every query.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._consumers: dict[str, Consumer] = {}

    def _consumer(self, group: str) -> Consumer:
        consumer = self._consumers.get(group)
        if consumer is None:
            consumer = Consumer(consumer_config(self._settings, group))
            self._consumers[group] = consumer
        return consumer

    def lag(self, group: str, topics: Iterable[str], timeout: float = 2.0) -> int:
        """Lag of ``group`` over ``topics`` and over the repartition topics Quix made for the
        group (``repartition__<group>--...``): a stage that re-keys has caught up only when
        its own repartition topic is drained too."""
        consumer = self._consumer(group)
        topic_list = list(topics)
        internal = f"repartition__{group}--"

        def query() -> int:
            existing = consumer.list_topics(timeout=timeout).topics
            names = [*topic_list, *sorted(t for t in existing if t.startswith(internal))]
            partitions: list[TopicPartition] = []
            for topic in names:
                meta = existing.get(topic)
                if meta is None:
                    continue
                partitions.extend(TopicPartition(topic, p) for p in meta.partitions)
            total = 0
            for tp in consumer.committed(partitions, timeout=timeout):
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(tp.topic, tp.partition), timeout=timeout, cached=False
                )
                committed = tp.offset if tp.offset >= 0 else low
                total += max(0, high - committed)
            return total

        return retry_transient(query, timeout * 3)

    def close(self) -> None:
        for consumer in self._consumers.values():
            consumer.close()
        self._consumers.clear()
