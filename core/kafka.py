"""Kafka wiring: client configs, topic creation from the catalog, broker checks, lag.

All producers here use the Java client's partitioner (murmur2) so that records keyed by
symbol land on the same partition whoever produced them: other systems integrate by topic,
and the execution app joins orders with trades per partition.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from core.config import Settings
from core.errors import KafkaAccessError, StackError, TopicError
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
    """Block until the cluster answers a metadata request; return seconds waited.

    Raises :class:`KafkaAccessError` at once when the cluster refuses the client's
    credentials or the client does not trust its certificate (no retry helps), and
    :class:`StackError` when it does not answer within ``timeout``."""
    start = time.monotonic()
    deadline = start + timeout
    refusals: list[KafkaError] = []

    def on_error(err: KafkaError) -> None:
        if err.code() in (KafkaError._AUTHENTICATION, KafkaError._SSL):
            refusals.append(err)

    admin = AdminClient({**settings.kafka_client_config(), "error_cb": on_error})
    while True:
        remaining = deadline - time.monotonic()
        try:
            admin.list_topics(timeout=max(0.5, min(2.0, remaining)))
            return time.monotonic() - start
        except KafkaException as exc:
            admin.poll(0)  # serves error_cb
            if refusals:
                raise access_error(settings, refusals[-1]) from None
            if time.monotonic() >= deadline:
                raise StackError(
                    f"Kafka at {settings.kafka_bootstrap()} did not answer within "
                    f"{timeout:.0f} s: {exc}"
                ) from None


def access_error(settings: Settings, err: KafkaError) -> KafkaAccessError:
    """What to tell the user about a refused connection (names the settings to check,
    never a secret's value)."""
    kafka, where = settings.kafka, settings.kafka_bootstrap()
    reason = err.str()
    if err.code() == KafkaError._AUTHENTICATION:
        return KafkaAccessError(
            f"Kafka at {where} refused user {kafka.sasl_username!r} ({kafka.sasl_mechanism}): "
            "wrong password or no such user. Check OMNIQUANT_KAFKA__SASL_USERNAME and "
            f"OMNIQUANT_KAFKA__SASL_PASSWORD. ({reason})"
        )
    if "certificate verify failed" in reason or "verify" in reason.lower():
        ca = kafka.ssl_ca_location or "unset: the system CAs"
        return KafkaAccessError(
            f"the TLS certificate of Kafka at {where} is not trusted: it is not signed by "
            f"the CA in OMNIQUANT_KAFKA__SSL_CA_LOCATION ({ca}). ({reason})"
        )
    return KafkaAccessError(f"TLS with Kafka at {where} failed: {reason}")


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
    replicas = settings.topic_replication_factor()
    new = [
        NewTopic(
            name,
            num_partitions=partitions,
            replication_factor=-1 if replicas is None else replicas,  # -1: broker default
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


# Answers that mean "ask again": leadership or a coordinator is moving.
TRANSIENT_ERRORS = frozenset(
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
P = ParamSpec("P")

log = logging.getLogger(__name__)

# A process that exits with this (EX_TEMPFAIL) asks to be started again: its work is
# committed transactionally, so a fresh instance resumes exactly where it left off.
EXIT_TRANSACTION_STALLED = 75


class TransactionWatchdog:
    """Ends the process when a Kafka transaction call has not returned within ``stall_s``.

    librdkafka's ``send_offsets_to_transaction`` can block for good, whatever timeout it is
    given, once the group coordinator's broker has died: it waits for a broker thread that
    was shut down (confluentinc/librdkafka#5511, its timeout unchecked: #5456; seen here
    after the active controller was SIGKILLed). A blocked C call cannot be interrupted, and
    its transaction is aborted by the broker after transaction.timeout.ms anyway, so the
    only way on is a new process: the exit is a SIGKILL's equivalent, which a transactional
    stage survives exactly (the kill loops show it), and its supervisor starts it again.
    """

    def __init__(
        self,
        stall_s: float,
        on_stall: Callable[[str, float], None] | None = None,
    ) -> None:
        self.stall_s = stall_s
        self._on_stall = on_stall or _exit_stalled
        self._cond = threading.Condition()
        self._watched: tuple[str, float] | None = None  # (call, deadline)
        self._thread: threading.Thread | None = None

    @contextmanager
    def guard(self, call: str) -> Iterator[None]:
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._watch, name="transaction-watchdog", daemon=True
                )
                self._thread.start()
            self._watched = (call, time.monotonic() + self.stall_s)
            self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._watched = None
                self._cond.notify()

    def wrap(self, call: str, fn: Callable[P, T]) -> Callable[P, T]:
        def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
            with self.guard(call):
                return fn(*args, **kwargs)

        return guarded

    def _watch(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._watched is None:
                        self._cond.wait()
                        continue
                    call, deadline = self._watched
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self._watched = None
                        break
                    self._cond.wait(left)
            self._on_stall(call, self.stall_s)


def _exit_stalled(call: str, stall_s: float) -> None:
    log.critical(
        "Kafka transaction call stalled; exiting to be started again",
        extra={"call": call, "stalled_s": stall_s, "exit_code": EXIT_TRANSACTION_STALLED},
    )
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)  # where it was stuck
    sys.stderr.flush()
    os._exit(EXIT_TRANSACTION_STALLED)  # the main thread is inside C: nothing can unwind it


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
                err.retriable() or err.code() in TRANSIENT_ERRORS
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

    Offsets are not all records: a transactional producer (the risk gate, execution) ends
    each transaction with a commit marker that takes an offset and is never delivered, and
    an aborted transaction's records are skipped by read_committed consumers. A group that
    has consumed everything is left "behind" by those offsets, and a drain would wait for
    ever. So a small residual (at most ``PEEK_RESIDUAL`` offsets) is checked by reading
    from the committed offset as a read_committed consumer: if nothing is delivered before
    the end, the partition has caught up.
    """

    PEEK_RESIDUAL = 100

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._consumers: dict[str, Consumer] = {}
        self._peeker: Consumer | None = None
        self._unstable: Consumer | None = None

    def _consumer(self, group: str) -> Consumer:
        consumer = self._consumers.get(group)
        if consumer is None:
            consumer = Consumer(consumer_config(self._settings, group))
            self._consumers[group] = consumer
        return consumer

    def _uncommitted(self) -> Consumer:
        """A read_uncommitted probe: its high watermark counts open transactions."""
        if self._unstable is None:
            config = consumer_config(self._settings, f"lag-hw-{uuid.uuid4().hex[:8]}")
            config["isolation.level"] = "read_uncommitted"
            self._unstable = Consumer(config)
        return self._unstable

    @staticmethod
    def _watermarks(
        consumer: Consumer, topic: str, partition: int, timeout: float
    ) -> tuple[int, int]:
        tp = TopicPartition(topic, partition)
        try:
            low, high = consumer.get_watermark_offsets(tp, timeout=timeout, cached=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._UNKNOWN_PARTITION:
                raise
            # not in this client's metadata (yet, or any more after a failover): the
            # broker's answer is what counts, so look the topic up and ask once more
            consumer.list_topics(topic, timeout=timeout)
            low, high = consumer.get_watermark_offsets(tp, timeout=timeout, cached=False)
        return int(low), int(high)

    def lag(self, group: str, topics: Iterable[str], timeout: float = 2.0) -> int:
        """Lag of ``group`` over ``topics`` and over the repartition topics Quix made for the
        group (``repartition__<group>--...``): a stage that re-keys has caught up only when
        its own repartition topic is drained too."""
        return sum(self.behind(group, topics, timeout).values())

    def behind(
        self, group: str, topics: Iterable[str], timeout: float = 2.0
    ) -> dict[tuple[str, int], int]:
        """What :meth:`lag` sums: the partitions where ``group`` is behind, by how much."""
        consumer = self._consumer(group)
        topic_list = list(topics)
        internal = f"repartition__{group}--"

        def query() -> dict[tuple[str, int], int]:
            existing = consumer.list_topics(timeout=timeout).topics
            names = [*topic_list, *sorted(t for t in existing if t.startswith(internal))]
            partitions: list[TopicPartition] = []
            for topic in names:
                meta = existing.get(topic)
                if meta is None:
                    continue
                partitions.extend(TopicPartition(topic, p) for p in meta.partitions)
            lagging: dict[tuple[str, int], int] = {}
            residual: dict[tuple[str, int], tuple[int, int]] = {}
            for tp in consumer.committed(partitions, timeout=timeout):
                key = (tp.topic, tp.partition)
                low, high = self._watermarks(consumer, tp.topic, tp.partition, timeout)
                committed = tp.offset if tp.offset >= 0 else low
                behind = max(0, high - committed)
                if tp.topic.startswith(internal):
                    # an exactly-once stage's own re-keyed records in a transaction still
                    # open are past the stable offset (``high``): behind until committed
                    _, unstable = self._watermarks(
                        self._uncommitted(), tp.topic, tp.partition, timeout
                    )
                    if unstable > high:
                        lagging[key] = unstable - high
                if 0 < behind <= self.PEEK_RESIDUAL:
                    residual[key] = (committed, high)
                elif behind:
                    lagging[key] = lagging.get(key, 0) + behind
            for key, n in self._deliverable(residual, timeout).items() if residual else ():
                lagging[key] = lagging.get(key, 0) + n
            return {key: n for key, n in lagging.items() if n > 0}

        return retry_transient(query, timeout * 3)

    def _deliverable(
        self, residual: dict[tuple[str, int], tuple[int, int]], timeout: float
    ) -> dict[tuple[str, int], int]:
        """Of the offsets ``committed..high`` per partition, how many a read_committed
        consumer would still be given: all of them once one record is delivered (the
        group really is behind), 0 when the partition ends first (markers, aborted)."""
        if self._peeker is None:
            config = consumer_config(self._settings, f"lag-peek-{uuid.uuid4().hex[:8]}")
            config.update({"isolation.level": "read_committed", "enable.partition.eof": True})
            self._peeker = Consumer(config)
        peeker = self._peeker
        peeker.assign([TopicPartition(t, p, start) for (t, p), (start, _) in residual.items()])
        pending = dict(residual)
        behind: dict[tuple[str, int], int] = {}
        deadline = time.monotonic() + timeout
        try:
            while pending and time.monotonic() < deadline:
                msg = peeker.poll(0.05)
                if msg is None:
                    continue
                key = (msg.topic(), msg.partition())
                if key not in pending:
                    continue
                start, high = pending[key]
                error = msg.error()
                if error is None and msg.offset() < high:
                    behind[key] = high - start
                    del pending[key]
                elif error is not None and error.code() == KafkaError._PARTITION_EOF:
                    del pending[key]
            # Not answered in time (an open transaction holds the stable offset back):
            # count it as behind; the next query asks again.
            behind.update({key: high - start for key, (start, high) in pending.items()})
        finally:
            peeker.unassign()
        return behind

    def close(self) -> None:
        for consumer in self._consumers.values():
            consumer.close()
        self._consumers.clear()
        if self._peeker is not None:
            self._peeker.close()
            self._peeker = None
        if self._unstable is not None:
            self._unstable.close()
            self._unstable = None
