"""The lag-monitor stage: every consumer group on the cluster, its lag in records and in
seconds, and a Burrow-style status, as Prometheus gauges and as records.

:class:`LagCollector` is the I/O: each poll it lists every consumer group
(``AdminClient.list_consumer_groups``: ours and anyone else's), their committed offsets
(``list_consumer_group_offsets``, one request per group, all in flight together) and the end
offsets of those partitions (``list_offsets``, latest). For each partition that is behind it
reads the record at the committed offset, read_committed (at most ``max_peeks`` partitions,
within ``peek_timeout_s``): its timestamp is the time lag, and reaching the end without a
record means only transaction markers or aborted records are left (the group is caught up).
The judging is pure (:mod:`streams.logic.lag`).

:class:`LagMonitor` is the stage: every ``poll_interval_s`` it collects, evaluates, sets
``kafka_consumergroup_lag``, ``kafka_consumergroup_lag_seconds`` and
``kafka_consumergroup_status`` (0 OK, 1 WARN, 2 STALL, 3 STOP, 4 ERROR; labels group, topic,
partition; a partition no longer reported loses its samples), ``kafka_brokers`` and
``kafka_cluster_up`` (1 when the poll's metadata request answered, 0 when it failed) and
produces one :class:`schemas.models.ConsumerLag` per partition to ``monitoring.consumer_lag``
(key: the group), which the ClickHouse sink stores in ``consumer_lag``. It consumes nothing
itself.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    OFFSET_INVALID,
    ConsumerGroupTopicPartitions,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka.admin import AdminClient, OffsetSpec

from core.config import Settings
from core.errors import TopicError
from core.kafka import admin_client, consumer_config, producer_config
from core.metrics import (
    CONSUMERGROUP_LAG,
    CONSUMERGROUP_LAG_SECONDS,
    CONSUMERGROUP_STATUS,
    KAFKA_BROKERS,
    KAFKA_CLUSTER_UP,
    MESSAGES_OUT,
)
from core.topics import TopicNames
from schemas.models import ConsumerLag
from schemas.serde import AvroSerde
from streams.logic.lag import (
    NS_PER_S,
    STATUS_LEVEL,
    GroupLag,
    LagBook,
    LagRules,
    Observation,
)

log = logging.getLogger(__name__)

LAG_TOPIC = "monitoring.consumer_lag"
TP = tuple[str, int]


def lag_rules(settings: Settings) -> LagRules:
    lag = settings.lag
    return LagRules(
        window=lag.window,
        stop_after_ns=int(lag.stop_after_s * NS_PER_S),
        allowed_lag=lag.allowed_lag,
        minimum_complete=lag.minimum_complete,
        max_lag_seconds=lag.max_lag_seconds,
    )


@dataclass(frozen=True, slots=True)
class Peek:
    """What reading from a committed offset found."""

    caught_up: bool  # the end came first: nothing deliverable is left
    timestamp_ns: int | None  # the record's timestamp, when one came


class LagCollector:
    """Reads offsets from the cluster and turns them into observations."""

    def __init__(self, settings: Settings, *, timeout: float = 10.0) -> None:
        self._settings = settings
        self._timeout = timeout
        self._admin: AdminClient = admin_client(settings)

    # ---- offsets ----------------------------------------------------------------------
    def brokers(self) -> int:
        """Brokers in the cluster's metadata (raises KafkaException when it does not answer)."""
        return len(self._admin.list_topics(timeout=self._timeout).brokers)

    def groups(self) -> list[str]:
        result = self._admin.list_consumer_groups(request_timeout=self._timeout).result()
        for error in result.errors:
            log.warning("listing consumer groups: %s", error)
        return sorted(g.group_id for g in result.valid)

    def committed(self, groups: Iterable[str]) -> dict[str, dict[TP, int]]:
        """group → (topic, partition) → committed offset (partitions without one left out)."""
        futures = {
            group: self._admin.list_consumer_group_offsets(
                [ConsumerGroupTopicPartitions(group)], request_timeout=self._timeout
            )[group]
            for group in groups
        }
        out: dict[str, dict[TP, int]] = {}
        for group, future in futures.items():
            try:
                answer = future.result()
            except KafkaException as exc:  # the group went away between the two calls
                log.info("offsets of group %s: %s", group, exc)
                continue
            out[group] = {
                (tp.topic, tp.partition): tp.offset
                for tp in answer.topic_partitions or []
                if tp.error is None and tp.offset >= 0 and tp.offset != OFFSET_INVALID
            }
        return out

    def end_offsets(self, partitions: Iterable[TP]) -> dict[TP, int | None]:
        """High watermark of each partition; None when the topic or partition is gone."""
        wanted = set(partitions)
        if not wanted:
            return {}
        existing = self._admin.list_topics(timeout=self._timeout).topics
        out: dict[TP, int | None] = {}
        request: dict[TopicPartition, Any] = {}
        for topic, partition in wanted:
            meta = existing.get(topic)
            if meta is None or meta.error is not None or partition not in meta.partitions:
                out[(topic, partition)] = None
            else:
                request[TopicPartition(topic, partition)] = OffsetSpec.latest()
        if request:
            futures = self._admin.list_offsets(
                request,
                isolation_level=IsolationLevel.READ_UNCOMMITTED,
                request_timeout=self._timeout,
            )
            for tp, future in futures.items():
                try:
                    offset = future.result().offset
                    # -1001 (no offset): the partition's leader is moving, e.g. a broker was
                    # just killed; unknown this poll, asked again on the next
                    out[(tp.topic, tp.partition)] = offset if offset >= 0 else None
                except KafkaException as exc:
                    err = exc.args[0]
                    gone = isinstance(err, KafkaError) and err.code() in (
                        KafkaError.UNKNOWN_TOPIC_OR_PART,
                        KafkaError._UNKNOWN_PARTITION,
                    )
                    if not gone:
                        raise
                    out[(tp.topic, tp.partition)] = None
        return out

    # ---- the record at the committed offset -------------------------------------------
    def peek(self, start: dict[TP, int], timeout: float) -> dict[TP, Peek]:
        """Read from each committed offset until a record or the end comes (read_committed);
        partitions not answered within ``timeout`` are left out."""
        if not start:
            return {}
        # A fresh consumer per read: a reused one waits about a second before fetching a
        # partition again after it was paused or unassigned (librdkafka's fetch backoff).
        config = consumer_config(
            self._settings,
            f"omniquant-lag-peek-{uuid.uuid4().hex[:8]}",
            **{
                "enable.partition.eof": "true",
                "max.partition.fetch.bytes": "65536",
                "fetch.wait.max.ms": "10",
            },
        )
        peeker = KafkaConsumer(config)
        assignment = [TopicPartition(t, p, offset) for (t, p), offset in start.items()]
        peeker.assign(assignment)
        pending = dict(start)
        found: dict[TP, Peek] = {}
        deadline = time.monotonic() + timeout
        try:
            while pending and time.monotonic() < deadline:
                msg = peeker.poll(0.05)
                if msg is None:
                    continue
                key = (msg.topic(), msg.partition())
                if key not in pending:
                    continue
                error = msg.error()
                if error is None:
                    kind, ms = msg.timestamp()
                    found[key] = Peek(False, ms * 1_000_000 if kind and ms >= 0 else None)
                elif error.code() == KafkaError._PARTITION_EOF:
                    found[key] = Peek(True, None)
                else:
                    continue
                del pending[key]
                peeker.pause([TopicPartition(*key)])
        finally:
            peeker.close()
        return found

    # ---- one poll ---------------------------------------------------------------------
    def collect(
        self,
        now_ns: int,
        *,
        groups: Iterable[str] | None = None,
        topics: Iterable[str] | None = None,
        max_peeks: int = 200,
        peek_timeout: float = 2.0,
    ) -> dict[tuple[str, str, int], Observation]:
        """One observation per (group, topic, partition) with a committed offset."""
        names = self.groups() if groups is None else sorted(set(groups))
        topic_filter = None if topics is None else set(topics)
        committed = self.committed(names)
        if topic_filter is not None:
            committed = {
                g: {tp: o for tp, o in parts.items() if tp[0] in topic_filter}
                for g, parts in committed.items()
            }
        ends = self.end_offsets({tp for parts in committed.values() for tp in parts})
        # one read per lagging (topic, partition, offset); the biggest lags first
        behind: dict[TP, dict[int, int]] = {}
        for parts in committed.values():
            for tp, offset in parts.items():
                end = ends.get(tp)
                if end is not None and offset < end:
                    behind.setdefault(tp, {})[offset] = end - offset
        reads = sorted(
            (
                (lag, tp, offset)
                for tp, offsets in behind.items()
                for offset, lag in offsets.items()
            ),
            reverse=True,
        )[:max_peeks]
        peeks: dict[tuple[TP, int], Peek] = {}
        # a consumer reads a partition from one offset at a time: one round per offset
        rounds: list[dict[TP, int]] = []
        for _, tp, offset in reads:
            for batch in rounds:
                if tp not in batch:
                    batch[tp] = offset
                    break
            else:
                rounds.append({tp: offset})
        deadline = time.monotonic() + peek_timeout
        for batch in rounds:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for tp, peek in self.peek(batch, remaining).items():
                peeks[(tp, batch[tp])] = peek
        out: dict[tuple[str, str, int], Observation] = {}
        for group, parts in committed.items():
            for (topic, partition), offset in parts.items():
                found = peeks.get(((topic, partition), offset))
                out[(group, topic, partition)] = Observation(
                    ts_ns=now_ns,
                    committed=offset,
                    end=ends.get((topic, partition)),
                    caught_up=found is not None and found.caught_up,
                    head_ts_ns=None if found is None else found.timestamp_ns,
                )
        return out

    def close(self) -> None:
        """Nothing is held between polls but the admin client (closed with the object)."""


def lag_records(groups: Iterable[GroupLag], ts_event: int, ts_init: int) -> list[ConsumerLag]:
    return [
        ConsumerLag(
            group=g.group,
            topic=p.topic,
            partition=p.partition,
            committed_offset=p.committed,
            end_offset=p.end if p.end is not None else 0,
            lag=p.lag,
            lag_seconds=p.time_lag.ns,  # seconds as fixed-point 1e-9: the nanoseconds
            status=p.status,
            ts_event=ts_event,
            ts_init=ts_init,
        )
        for g in groups
        for p in g.partitions
    ]


class LagMonitor:
    """The stage's loop: collect, judge, export gauges, produce records, every poll."""

    def __init__(self, settings: Settings, name: str = "lag-monitor") -> None:
        self.settings = settings
        self.name = name
        self.topic = TopicNames(settings.topic_prefix).name(LAG_TOPIC)
        self.book = LagBook(lag_rules(settings))
        self.collector = LagCollector(settings)
        self.serde = AvroSerde.from_settings(settings)
        self._producer = Producer(producer_config(settings, **{"client.id": name}))
        self._labels: set[tuple[str, str, str]] = set()
        self._sent = MESSAGES_OUT.labels(name, self.topic)

    def require_topic(self) -> None:
        existing = admin_client(self.settings).list_topics(timeout=30).topics
        if self.topic not in existing:
            raise TopicError(
                f"topics missing: {self.topic}; create them with `omniquant topics create`"
            )

    def poll_once(self) -> list[GroupLag]:
        now = time.time_ns()
        self._observe_cluster()
        lag = self.settings.lag
        observed = self.collector.collect(
            now, max_peeks=lag.max_peeks, peek_timeout=lag.peek_timeout_s
        )
        for (group, topic, partition), obs in observed.items():
            self.book.observe(group, topic, partition, obs)
        self.book.retain(observed)
        groups = self.book.evaluate(now)
        self._export(groups)
        self._produce(lag_records(groups, now, time.time_ns()))
        return groups

    def _observe_cluster(self) -> None:
        try:
            brokers = self.collector.brokers()
        except KafkaException:
            KAFKA_CLUSTER_UP.set(0)
            raise
        KAFKA_CLUSTER_UP.set(1)
        KAFKA_BROKERS.set(brokers)

    def _export(self, groups: list[GroupLag]) -> None:
        labels: set[tuple[str, str, str]] = set()
        for g in groups:
            for p in g.partitions:
                key = (g.group, p.topic, str(p.partition))
                labels.add(key)
                CONSUMERGROUP_LAG.labels(*key).set(p.lag)
                CONSUMERGROUP_LAG_SECONDS.labels(*key).set(p.time_lag.seconds)
                CONSUMERGROUP_STATUS.labels(*key).set(STATUS_LEVEL[p.status])
        for key in self._labels - labels:
            for gauge in (CONSUMERGROUP_LAG, CONSUMERGROUP_LAG_SECONDS, CONSUMERGROUP_STATUS):
                gauge.remove(*key)
        self._labels = labels

    def _produce(self, records: list[ConsumerLag]) -> None:
        failures: list[str] = []

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is not None:
                failures.append(str(err))

        for record in records:
            self._producer.produce(
                self.topic,
                key=record.group.encode("utf-8"),
                value=self.serde.encode(record, topic=self.topic),
                timestamp=record.ts_event // 1_000_000,
                on_delivery=on_delivery,
            )
        self._producer.flush(30)
        if failures:
            raise RuntimeError(f"lag records to {self.topic} not delivered: {failures[:3]}")
        self._sent.inc(len(records))

    def run(self, stop: threading.Event) -> None:
        self.require_topic()
        interval = self.settings.lag.poll_interval_s
        try:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    self.poll_once()
                except KafkaException as exc:  # the broker is away: the next poll asks again
                    log.warning("lag poll failed: %s", exc)
                stop.wait(max(0.0, interval - (time.monotonic() - started)))
        finally:
            self.close()

    def close(self) -> None:
        self.collector.close()
        self._producer.flush(30)


def run(settings: Settings, *, name: str = "lag-monitor") -> None:
    """Stage entry point: poll until SIGTERM or SIGINT."""
    stop = threading.Event()

    def on_signal(_signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    LagMonitor(settings, name).run(stop)
