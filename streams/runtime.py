"""Quix Streams wiring shared by every stream app: Avro topics, dead letters, app factory.

An app built here
- reads and writes our Avro records (both framings, via :class:`schemas.serde.AvroSerde`);
- sends every record it cannot deserialize or process to its dead-letter topic with the
  original bytes (or the decoded value as JSON when only that is left) and the error in
  headers, counts it, and keeps running;
- uses its own consumer group ``<topic prefix><app>``, commits after processing
  (at-least-once), and a state dir under ``<state_dir>/quix/<app>``;
- tells ``/healthz`` and ``/readyz`` (:mod:`core.health`) whether its main loop turns,
  whether it has partitions and how far behind the wall clock its records are, and times
  one consumed record in :data:`EVENT_SAMPLE_EVERY` into ``event_processing_seconds``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition
from quixstreams import Application, message_context
from quixstreams.dataframe import StreamingDataFrame
from quixstreams.kafka.configuration import ConnectionConfig
from quixstreams.models import Row
from quixstreams.models.serializers import (
    Deserializer,
    SerializationContext,
    Serializer,
)
from quixstreams.models.serializers.exceptions import SerializationError
from quixstreams.models.topics import Topic, TopicAdmin, TopicManager
from quixstreams.models.topics.exceptions import TopicNotFoundError
from quixstreams.utils.json import dumps as quix_json_dumps

from core.config import Settings
from core.errors import SerdeError, TopicError
from core.health import HEALTH, Heartbeat
from core.kafka import (
    PARTITIONER,
    TRANSIENT_ERRORS,
    TransactionWatchdog,
    admin_client,
    producer_config,
)
from core.logs import CORRELATION_HEADER
from core.metrics import DEAD_LETTERS, ERRORS, EVENT_PROCESSING, MESSAGES_IN, MESSAGES_OUT
from core.topics import TopicNames, spec
from schemas.models import MODEL_BY_AVRO_NAME, Record
from schemas.serde import AvroSerde
from streams.ordering import EventTimeOrder

log = logging.getLogger(__name__)

#: one consumed record in this many is timed into event_processing_seconds: a histogram
#: observation costs more than the rest of a record's bookkeeping together
EVENT_SAMPLE_EVERY = 16
#: /healthz fails once an app's main loop has not turned for this long (a Quix loop turns
#: at least once per poll timeout; state recovery, which does not turn it, is exempt)
LIVENESS_STALL_S = 120.0
#: an empty poll this recent means the app is caught up: no time lag
CAUGHT_UP_WITHIN_S = 5.0

# Headers a dead letter carries besides the original ones.
DLQ_HEADERS = (
    "dlq.error.class",
    "dlq.error.message",
    "dlq.app",
    "dlq.stage",
    "dlq.original.topic",
    "dlq.original.partition",
    "dlq.original.offset",
    "dlq.original.timestamp",
)


class SampledTimer:
    """Times one record in ``every`` into ``observe`` (seconds): :meth:`start` when a
    record's handling begins, :meth:`stop` when it ends; both next to free when not timing.
    """

    __slots__ = ("_every", "_left", "_observe", "_t0")

    def __init__(self, observe: Callable[[float], None], every: int = EVENT_SAMPLE_EVERY) -> None:
        self._observe = observe
        self._every = every
        self._left = 1
        self._t0 = 0.0

    def start(self) -> None:
        self._left -= 1
        if self._left <= 0:
            self._left = self._every
            self._t0 = time.perf_counter()

    def stop(self) -> None:
        if self._t0:
            self._observe(time.perf_counter() - self._t0)
            self._t0 = 0.0


class AppHealth:
    """What ``/healthz`` and ``/readyz`` know of one app. Its thread writes plain
    attributes (no locks on the hot path); the checks read them from the HTTP thread.

    - liveness ``<app>: main loop``: the loop turned within :data:`LIVENESS_STALL_S`, or the
      app is recovering its state (which can take long and is not a hang);
    - readiness ``<app>: partitions assigned``: it owns at least one input partition (an
      instance beyond the partition count stays unready, which is what it is);
    - readiness ``<app>: time lag`` (when ``max_lag_s`` > 0): the last record it handled is
      at most ``max_lag_s`` behind the wall clock, or it has caught up (an empty poll within
      :data:`CAUGHT_UP_WITHIN_S`). Kafka timestamps are event times here: a replay is
      unready until it has caught up, a live stage while it is far behind.
    """

    def __init__(self, app: str, topics: set[str], max_lag_s: float) -> None:
        self.app = app
        self.topics = topics  # our catalog topics (not Quix's changelogs)
        self.max_lag_s = max_lag_s
        self.heartbeat = Heartbeat(LIVENESS_STALL_S)
        self.timer = SampledTimer(EVENT_PROCESSING.labels(app).observe)
        self.assigned: frozenset[tuple[str, int]] = frozenset()
        self.recovering = False
        self.processed = 0
        self.caught_up_at: float | None = None  # monotonic time of the last empty poll
        self.last_ts_ms: int | None = None  # Kafka timestamp of the last record handled

    @property
    def check_names(self) -> tuple[str, str, str]:
        return (
            f"{self.app}: main loop",
            f"{self.app}: partitions assigned",
            f"{self.app}: time lag",
        )

    def register(self) -> None:
        loop, partitions, lag = self.check_names
        HEALTH.register(loop, self.alive, kind="liveness")
        HEALTH.register(partitions, self.partitions_check)
        if self.max_lag_s > 0:
            HEALTH.register(lag, self.lag_check)

    def unregister(self) -> None:
        for name in self.check_names:
            HEALTH.unregister(name)

    # ---- written by the app's thread -------------------------------------------------
    def on_processed(self, _topic: str, _partition: int, _offset: int) -> None:
        """Quix ``on_message_processed``: one record handled."""
        self.processed += 1
        self.timer.stop()

    def assign(self, partitions: list[TopicPartition]) -> None:
        ours = {(tp.topic, tp.partition) for tp in partitions if tp.topic in self.topics}
        self.assigned = self.assigned | ours

    def revoke(self, partitions: list[TopicPartition]) -> None:
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self.assigned = self.assigned - gone

    # ---- the checks (HTTP thread) ----------------------------------------------------
    def alive(self) -> tuple[bool, str]:
        if self.recovering:
            return True, "recovering state from changelog topics"
        return self.heartbeat.check()

    def partitions_check(self) -> tuple[bool, str]:
        assigned = self.assigned
        if self.recovering:
            return False, "recovering state from changelog topics"
        if not assigned:
            return False, "no input partition assigned (starting, rebalancing, or idle member)"
        topics = sorted({t for t, _ in assigned})
        return True, f"{len(assigned)} partition(s) of {', '.join(topics)}"

    def lag_check(self) -> tuple[bool, str]:
        ts_ms, caught_up_at = self.last_ts_ms, self.caught_up_at
        if caught_up_at is not None and time.monotonic() - caught_up_at <= CAUGHT_UP_WITHIN_S:
            return True, "caught up"
        if ts_ms is None:
            return True, "no record handled yet"
        lag = time.time() - ts_ms / 1000
        if lag > self.max_lag_s:
            return False, f"{lag:.0f} s behind the wall clock (limit {self.max_lag_s:g} s)"
        return True, f"{max(lag, 0.0):.1f} s behind the wall clock"


# Commit answers that mean "the group's coordinator is moving" (its broker died, another
# is taking over): the same offsets are committed again, which is idempotent.
_COMMIT_RETRIABLE = TRANSIENT_ERRORS | {
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError._WAIT_COORD,
    KafkaError._TRANSPORT,
}
COMMIT_FAILOVER_S = 60.0  # well inside max.poll.interval.ms (300 s): the group keeps us


def _commit_retriable(error: Any) -> bool:
    return isinstance(error, KafkaError) and (
        error.code() in _COMMIT_RETRIABLE or error.retriable()
    )


def commit_through_failover(
    commit: Callable[..., list[TopicPartition] | None],
    timeout_s: float = COMMIT_FAILOVER_S,
    sleep: Callable[[float], None] = time.sleep,
) -> Callable[..., list[TopicPartition] | None]:
    """Wrap a consumer's ``commit`` so a synchronous commit rides out a coordinator
    failover instead of failing the checkpoint (Quix raises on the first NOT_COORDINATOR,
    and a restarted at-least-once stage would redo everything since its last commit)."""

    def commit_retrying(
        message: Any = None,
        offsets: list[TopicPartition] | None = None,
        asynchronous: bool = True,
    ) -> list[TopicPartition] | None:
        if asynchronous:
            return commit(message=message, offsets=offsets, asynchronous=True)
        deadline = time.monotonic() + timeout_s
        delay = 0.1
        while True:
            try:
                result = commit(message=message, offsets=offsets, asynchronous=False)
            except KafkaException as exc:
                if not _commit_retriable(exc.args[0]) or time.monotonic() > deadline:
                    raise
                reason = str(exc.args[0])
            else:
                failed = [p.error for p in result or [] if p.error is not None]
                if (
                    not failed
                    or not all(_commit_retriable(e) for e in failed)
                    or time.monotonic() > deadline
                ):
                    return result
                reason = str(failed[0])
            log.warning("offset commit failed (%s); committing again in %.1f s", reason, delay)
            sleep(delay)
            delay = min(delay * 2, 2.0)

    return commit_retrying


class _ObservedApplication(Application):
    """Quix's Application reporting its loop and its partitions to an :class:`AppHealth`.

    Extends the rebalance callbacks Application hands its consumer and the step its run
    loop takes per poll; each calls Quix's own first (or around it).
    """

    health: AppHealth
    assign_hooks: list[Callable[[dict[tuple[str, int], int]], None]]

    def _process_message(self, dataframe_composed: Any) -> None:
        health = self.health
        health.heartbeat.beat()
        processed = health.processed
        super()._process_message(dataframe_composed)  # type: ignore[no-untyped-call]
        if health.processed == processed:  # nothing came: caught up
            health.caught_up_at = health.heartbeat.last

    def _on_assign(self, consumer: Any, topic_partitions: list[TopicPartition]) -> None:
        super()._on_assign(consumer, topic_partitions)
        if self.assign_hooks and topic_partitions:
            data = self._topic_manager.non_changelog_topics
            ours = [tp for tp in topic_partitions if tp.topic in data]
            committed = {
                (tp.topic, tp.partition): tp.offset
                for tp in self._consumer.committed(partitions=ours, timeout=30)
            }
            for hook in self.assign_hooks:
                hook(committed)
        self.health.assign(topic_partitions)
        self.health.recovering = self._state_manager.recovery_required
        self.health.heartbeat.beat()

    def _on_revoke(self, consumer: Any, topic_partitions: list[TopicPartition]) -> None:
        super()._on_revoke(consumer, topic_partitions)
        self.health.revoke(topic_partitions)

    def _on_lost(self, consumer: Any, topic_partitions: list[TopicPartition]) -> None:
        super()._on_lost(consumer, topic_partitions)
        self.health.revoke(topic_partitions)


class Undecodable:
    """What the deserializer yields for bytes that are not a valid record of the topic.

    Raising instead would make Quix skip the message without storing its offset, so a dead
    letter at the end of a partition would hold the group's lag above zero forever. As a
    value it flows into the dataframe, whose first step sends it to the dead-letter topic.
    """

    __slots__ = ("error", "raw")

    def __init__(self, raw: bytes, error: Exception) -> None:
        self.raw = raw
        self.error = error


class OutOfRange(ValueError):
    """A decoded record with a value the stage refuses to take (its dead letter says which).

    Raised before the record touches the stage's state: a Quix state write that fails
    (e.g. a value beyond int64, which the store cannot serialize) fails the whole
    checkpoint, and the stage with it.
    """


def require_event_time(record: Mapping[str, Any], *, max_ahead_ns: int | None = None) -> int:
    """The record's ``ts_event``; :class:`OutOfRange` when it is before the Unix epoch, or
    (with ``max_ahead_ns``) more than that ahead of the wall clock.

    Avro ``long`` lets an event time be anything in int64; a market event before 1970 is
    nonsense, and one near int64's minimum puts its bar start (``ts - ts mod interval``)
    below int64, which the state store cannot hold. A stage that stamps its output with
    the event time as the Kafka timestamp needs the upper bound too: the broker refuses a
    timestamp more than ``message.timestamp.after.max.ms`` (1 h by default) ahead, which
    fails the whole transaction (both found by tests/test_fuzz_inputs.py).
    """
    ts = int(record["ts_event"])
    if ts < 0:
        raise OutOfRange(f"ts_event {ts} is before the Unix epoch (1970-01-01T00:00:00Z)")
    if max_ahead_ns is not None and ts > time.time_ns() + max_ahead_ns:
        raise OutOfRange(
            f"ts_event {ts} is more than {max_ahead_ns / 1e9:g} s ahead of the wall clock"
        )
    return ts


_MISSING = object()


class StagedState:
    """A record's state writes held back until :meth:`apply`, which first checks that the
    store can hold every value (ints within int64, strings without lone surrogates: the
    store's JSON), and raises :class:`OutOfRange` without writing anything when one cannot.

    Quix fails the whole checkpoint, and the stage with it, after a write it cannot
    serialize; a value computed from boundary inputs (a position's value beyond int64, a
    symbol that decoded to surrogates) must be the record's dead letter instead (found by
    tests/test_fuzz_inputs.py). Reads see the pending writes.
    """

    __slots__ = ("_pending", "_state")

    def __init__(self, state: Any) -> None:
        self._state = state
        self._pending: dict[str, Any] = {}  # key → value, or _MISSING for a delete

    def get(self, key: str, default: Any = None) -> Any:
        value = self._pending.get(key, _NOT_PENDING)
        if value is _NOT_PENDING:
            return self._state.get(key, default)
        return default if value is _MISSING else value

    def set(self, key: str, value: Any) -> None:
        self._pending[key] = value

    def delete(self, key: str) -> None:
        self._pending[key] = _MISSING

    def apply(self) -> None:
        for key, value in self._pending.items():
            if value is _MISSING:
                continue
            try:
                quix_json_dumps(value)
            except (TypeError, ValueError) as exc:  # orjson: JSONEncodeError is a TypeError
                raise OutOfRange(f"state {key!r} cannot be stored: {exc}: {value!r:.300}") from None
        for key, value in self._pending.items():
            if value is _MISSING:
                self._state.delete(key)
            else:
                self._state.set(key, value)
        self._pending.clear()


_NOT_PENDING = object()


class AvroRecordDeserializer(Deserializer):
    """Kafka bytes → dict of the topic's record type, or :class:`Undecodable`.

    The dict is fastavro's (enums as symbol strings, nested records as dicts), checked against
    the model's rules without building the model (:meth:`AvroSerde.decode_dict`): the bytes
    that decode are exactly those a pydantic-validated decode accepts.
    """

    def __init__(
        self, serde: AvroSerde, model: type[Record], app: str, timer: SampledTimer | None = None
    ) -> None:
        self._serde = serde
        self._model = model
        self._app = app
        self._counted: dict[str, Any] = {}  # topic → its MESSAGES_IN child
        self._start = timer.start if timer is not None else _nothing

    def __call__(self, value: bytes, ctx: SerializationContext) -> Any:
        self._start()  # a record's handling begins with its decoding
        try:
            record = self._serde.decode_dict(value, self._model, topic=ctx.topic)
        except SerdeError as exc:
            return Undecodable(value, exc)
        counter = self._counted.get(ctx.topic)
        if counter is None:
            counter = self._counted[ctx.topic] = MESSAGES_IN.labels(self._app, ctx.topic)
        counter.inc()
        return record


class AvroRecordSerializer(Serializer):
    """dict or Record → Avro bytes of the topic's record type.

    A dict (what the app built, e.g. with ``model_dump()``, or what the deserializer gave) is
    written as it is; a Record is dumped once. Neither is validated again: fastavro refuses
    values that do not fit the schema (SerializationError).
    """

    def __init__(self, serde: AvroSerde, model: type[Record], app: str) -> None:
        self._serde = serde
        self._model = model
        self._app = app
        self._counted: dict[str, Any] = {}  # topic → its MESSAGES_OUT child

    def __call__(self, value: Any, ctx: SerializationContext) -> bytes:
        try:
            if isinstance(value, Mapping):
                data = self._serde.encode_dict(self._model, value, topic=ctx.topic)
            elif isinstance(value, self._model):
                data = self._serde.encode(value, topic=ctx.topic)
            else:
                raise SerdeError(
                    f"cannot serialize a {type(value).__name__} as {self._model.__name__}"
                )
        except SerdeError as exc:
            raise SerializationError(str(exc)) from exc
        counter = self._counted.get(ctx.topic)
        if counter is None:
            counter = self._counted[ctx.topic] = MESSAGES_OUT.labels(self._app, ctx.topic)
        counter.inc()
        return data


def _nothing() -> None:
    pass


def _header_bytes(value: object) -> bytes:
    return str(value).encode("utf-8")[:4096]


class DeadLetters:
    """Publishes records an app could not handle to ``<prefix>dlq.<app>``.

    Each write is flushed before returning: the source offset may be committed right after,
    and a dead letter must not be lost with it.
    """

    def __init__(self, settings: Settings, app: str) -> None:
        self.app = app
        self.topic = TopicNames(settings.topic_prefix).dead_letter(app)
        self._producer = Producer(producer_config(settings, **{"client.id": f"{app}-dlq"}))
        self._errors = ERRORS.labels(app, "dead_letter")

    def publish(
        self,
        *,
        stage: str,
        error: Exception,
        topic: str | None,
        partition: int | None,
        offset: int | None,
        timestamp_ms: int | None,
        key: bytes | str | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None,
    ) -> None:
        dlq_headers = [(k, v) for k, v in (headers or []) if not k.startswith("dlq.")]
        dlq_headers += [
            ("dlq.error.class", _header_bytes(type(error).__name__)),
            ("dlq.error.message", _header_bytes(error)),
            ("dlq.app", _header_bytes(self.app)),
            ("dlq.stage", _header_bytes(stage)),
            ("dlq.original.topic", _header_bytes(topic)),
            ("dlq.original.partition", _header_bytes(partition)),
            ("dlq.original.offset", _header_bytes(offset)),
            ("dlq.original.timestamp", _header_bytes(timestamp_ms)),
        ]
        failures: list[Exception] = []

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is not None:
                failures.append(RuntimeError(str(err)))

        self._producer.produce(
            self.topic, key=key, value=value, headers=dlq_headers, on_delivery=on_delivery
        )
        remaining = self._producer.flush(30)
        if remaining or failures:
            # Refusing to continue is the only way not to lose the record: the app stops
            # and the supervisor reports it; the offset stays uncommitted.
            raise RuntimeError(f"dead letter to {self.topic} was not delivered: {failures}")
        DEAD_LETTERS.labels(self.app, topic or "", type(error).__name__).inc()
        self._errors.inc()
        log.warning(
            "record sent to dead-letter topic",
            extra={
                "dlq_topic": self.topic,
                "source_topic": topic,
                "partition": partition,
                "offset": offset,
                "error": f"{type(error).__name__}: {error}",
            },
        )

    def keep_decodable(self, value: Any, key: Any, timestamp: int, headers: Any) -> bool:
        """Dataframe filter: send :class:`Undecodable` values to the dead-letter topic."""
        if not isinstance(value, Undecodable):
            return True
        ctx = message_context()
        self.publish(
            stage="deserialize",
            error=value.error,
            topic=ctx.topic,
            partition=ctx.partition,
            offset=ctx.offset,
            timestamp_ms=timestamp,
            key=key if isinstance(key, bytes | str) else None,
            value=value.raw,
            headers=[
                (k, v if isinstance(v, bytes) else _header_bytes(v)) for k, v in headers or []
            ],
        )
        return False

    def on_consumer_error(self, exc: Exception, message: Any, logger: logging.Logger) -> bool:
        """Quix callback: a message could not be deserialized (or polling failed)."""
        if message is None or not isinstance(exc, SerializationError):
            return False  # broker-level errors are not the record's fault: let them surface
        ts_type, ts = message.timestamp()
        self.publish(
            stage="deserialize",
            error=exc,
            topic=message.topic(),
            partition=message.partition(),
            offset=message.offset(),
            timestamp_ms=ts if ts_type else None,
            key=message.key(),
            value=message.value(),
            headers=list(message.headers() or []),
        )
        return True

    def on_processing_error(self, exc: Exception, row: Row | None, logger: logging.Logger) -> bool:
        """Quix callback: our code raised on a decoded record. The value goes out as JSON."""
        if row is None:
            return False
        if isinstance(row.value, Undecodable):
            value = row.value.raw
        else:
            value = json.dumps(row.value, default=str).encode("utf-8")
        key = row.key if isinstance(row.key, bytes | str) else None
        headers = [
            (k, v if isinstance(v, bytes) else _header_bytes(v)) for k, v in (row.headers or [])
        ]
        self.publish(
            stage="process",
            error=exc,
            topic=row.topic,
            partition=row.partition,
            offset=row.offset,
            timestamp_ms=row.timestamp,
            key=key,
            value=value,
            headers=headers,
        )
        return True

    def close(self) -> None:
        self._producer.flush(30)


# Admin errors of a cluster between controllers or brokers (a failover), and how long a
# stage's start waits them out: an election takes seconds, a killed broker's restart more.
_TRANSIENT_ADMIN_ERRORS = frozenset(
    {
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NOT_CONTROLLER,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.BROKER_NOT_AVAILABLE,
    }
)
_CONTROLLER_WAIT_S = 120.0


class _VisibleTopicManager(TopicManager):
    """Waits until a topic Quix just created (its state changelogs) shows in metadata.

    Quix reads a new topic back once, right after creating it; with KRaft the metadata can
    lag the creation by a moment, and that read then fails the app's start. On a cluster
    each request may go to another broker, and one that knows the topic says nothing of the
    next (listed by one, its configs refused by another as UNKNOWN_TOPIC_OR_PART): every
    read of a topic created here retries until the create timeout.

    Any read also rides out a cluster without a controller for a while: a stage restarted
    right after the active controller died (its transaction watchdog ends it then) had its
    start fail with "Timed out waiting for controller" while the quorum elected another.
    """

    _created_here: set[str]

    def _create_topic(self, topic: Topic, timeout: float, create_timeout: float) -> None:
        super()._create_topic(topic, timeout=timeout, create_timeout=create_timeout)
        if not hasattr(self, "_created_here"):
            self._created_here = set()
        self._created_here.add(topic.name)
        deadline = time.monotonic() + create_timeout
        while not self._visible(topic.name, timeout):
            if time.monotonic() > deadline:
                raise TopicError(f"topic {topic.name} was created but never became visible")
            time.sleep(0.1)

    def _visible(self, name: str, timeout: float) -> bool:
        try:
            return self._admin.inspect_topics([name], timeout=timeout).get(name) is not None
        except KafkaException as exc:
            if exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                return False
            raise

    def _fetch_topic(self, topic: Topic) -> Topic:
        created_here = topic.name in getattr(self, "_created_here", ())
        started = time.monotonic()
        unknown_until = started + self._create_timeout
        transient_until = started + _CONTROLLER_WAIT_S
        warned = False
        while True:
            try:
                return super()._fetch_topic(topic)
            except (TopicNotFoundError, KafkaException) as exc:
                error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
                code = error.code() if isinstance(error, KafkaError) else None
                unknown = isinstance(exc, TopicNotFoundError) or code == (
                    KafkaError.UNKNOWN_TOPIC_OR_PART
                )
                now = time.monotonic()
                if code in _TRANSIENT_ADMIN_ERRORS and now < transient_until:
                    if not warned:
                        log.warning(
                            "Kafka cannot describe a topic yet; retrying",
                            extra={"topic": topic.name, "error": str(error)},
                        )
                        warned = True
                    time.sleep(0.5)
                    continue
                if not (unknown and created_here) or now > unknown_until:
                    raise
                time.sleep(0.1)


def instance_id(app_state: Path) -> str:
    """This instance's id, kept in its state directory: two live instances of an app never
    share one (each holds its own RocksDB directory), a restart on the same one keeps it."""
    path = app_state / "instance-id"
    with contextlib.suppress(FileNotFoundError):
        kept = path.read_text().strip()
        if kept:
            return kept
    app_state.mkdir(parents=True, exist_ok=True)
    new = uuid.uuid4().hex
    scratch = path.with_name(f".instance-id.{new}")
    scratch.write_text(new + "\n")
    scratch.replace(path)  # atomic: a crash leaves the old file or the new, never half
    return new


class StreamApp:
    """An Application plus what our apps need around it (topics, serde, dead letters)."""

    def __init__(
        self,
        settings: Settings,
        name: str,
        *,
        commit_interval: float | None = None,
        commit_every: int = 0,
        processing_guarantee: Literal["at-least-once", "exactly-once"] | None = None,
        consumer_poll_timeout: float = 1.0,
        consumer_extra: dict[str, Any] | None = None,
        event_time_order: bool = False,
    ) -> None:
        """``event_time_order``: process the records of every assigned partition in one
        event-time order (:class:`~streams.ordering.EventTimeOrder`), not only those of one
        partition number, for a stage whose decisions read more than its own key's state."""
        self.settings = settings
        self.name = name
        self.names = TopicNames(settings.topic_prefix)
        self.serde = AvroSerde.from_settings(settings)
        self.dead_letters = DeadLetters(settings, name)
        self._used_topics: set[str] = {self.dead_letters.topic}
        self.health = AppHealth(name, self._used_topics, settings.readiness_max_lag_seconds)
        connection = ConnectionConfig.from_librdkafka_dict(
            dict(settings.kafka_client_config()), ignore_extras=True
        )
        producer_extra: dict[str, Any] = {"partitioner": PARTITIONER, "linger.ms": 5}
        admin_extra = dict(producer_extra)
        # unless the stage sets its own: the stateful stages' shared settings
        if processing_guarantee is None:
            once = settings.streams.exactly_once
            processing_guarantee = "exactly-once" if once else "at-least-once"
        if commit_interval is None:
            commit_interval = settings.streams.commit_interval_ms / 1000
        self.processing_guarantee = processing_guarantee
        app_state = settings.state_dir / "quix" / f"{settings.topic_prefix}{name}"
        if processing_guarantee == "exactly-once":
            # Named after the group, so a secure cluster can grant the app its transactional
            # ids by prefix; stable per instance (as Kafka Streams keeps its process id in
            # its state directory), so a restarted instance's init_transactions aborts the
            # transaction its killed predecessor left open at once: with a fresh id each
            # start (Quix's default) it stays open until transaction.timeout.ms, and
            # read_committed readers downstream stop at it for up to a minute.
            producer_extra["transactional.id"] = f"{self.consumer_group}-{instance_id(app_state)}"
        topic_manager = _VisibleTopicManager(
            topic_admin=TopicAdmin(broker_address=connection, extra_config=admin_extra),
            consumer_group=self.consumer_group,
            timeout=30,
            create_timeout=60,
            auto_create_topics=True,
        )
        self.app = _ObservedApplication(
            broker_address=connection,
            topic_manager=topic_manager,
            consumer_group=f"{settings.topic_prefix}{name}",
            auto_offset_reset="earliest",
            commit_interval=commit_interval,
            commit_every=commit_every,  # 0: by interval only
            processing_guarantee=processing_guarantee,
            consumer_poll_timeout=consumer_poll_timeout,
            # Only Quix's own changelog topics are created here: the catalog topics are
            # checked to exist first (require_topics) so they keep their explicit configs.
            auto_create_topics=True,
            state_dir=str(app_state),
            on_consumer_error=self.dead_letters.on_consumer_error,
            on_processing_error=self.dead_letters.on_processing_error,
            on_message_processed=self.health.on_processed,
            producer_extra_config=producer_extra,
            consumer_extra_config=consumer_extra or {},
            loglevel=None,
            broker_availability_timeout=30.0,
        )
        self.app.health = self.health
        self.app.assign_hooks = []
        consumer = self.app._consumer
        consumer.commit = commit_through_failover(consumer.commit)  # type: ignore[method-assign]
        if event_time_order:
            consumer._buffer = EventTimeOrder(consumer._max_partition_buffer_size)
        if processing_guarantee == "exactly-once":
            # Quix's checkpoint commits with no timeout; a call librdkafka never returns
            # from ends the process instead of the stage standing still (see the watchdog)
            watchdog = TransactionWatchdog(settings.kafka.transaction_stall_s)
            producer = self.app._producer
            for call in ("commit_transaction", "abort_transaction"):
                setattr(producer, call, watchdog.wrap(call, getattr(producer, call)))
        self.health.register()  # unready until it runs and is assigned partitions

    @property
    def consumer_group(self) -> str:
        return f"{self.settings.topic_prefix}{self.name}"

    def topic(self, logical_name: str) -> Topic:
        """A catalog topic with our Avro serde for values and UTF-8 string keys."""
        item = spec(logical_name)
        if item.value_schema is None:
            raise ValueError(f"{logical_name} carries raw bytes, not records")
        model = MODEL_BY_AVRO_NAME[item.value_schema]
        self._used_topics.add(self.names.name(logical_name))
        return self.app.topic(
            self.names.name(logical_name),
            key_serializer="str",
            key_deserializer="str",
            value_serializer=AvroRecordSerializer(self.serde, model, self.name),
            value_deserializer=AvroRecordDeserializer(
                self.serde, model, self.name, self.health.timer
            ),
        )

    def on_assign(self, hook: Callable[[dict[tuple[str, int], int]], None]) -> None:
        """Call ``hook`` at each assignment, before any of its records is processed, with
        the committed offset of every input partition assigned (negative: none yet): where
        processing resumes, so state kept outside Kafka can be rolled back to it."""
        self.app.assign_hooks.append(hook)

    def on_commit(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` after each checkpoint that committed offsets (in the processing
        thread, before the next record): everything processed so far is committed."""
        context = self.app._processing_context
        commit = context.commit_checkpoint

        def commit_checkpoint(force: bool = False, revoking: bool = False) -> None:
            before = getattr(context, "_checkpoint", None)
            pending = before is not None and not before.empty()
            commit(force=force, revoking=revoking)
            if pending and getattr(context, "_checkpoint", None) is not before:
                hook()

        context.commit_checkpoint = commit_checkpoint  # type: ignore[method-assign]

    def dataframe(self, logical_name: str) -> StreamingDataFrame:
        """A dataframe over a catalog topic whose undecodable records go to dead letters."""
        sdf = self.app.dataframe(self.topic(logical_name))
        return sdf.filter(self._first_step, metadata=True)

    def _first_step(self, value: Any, key: Any, timestamp: int, headers: Any) -> bool:
        self.health.last_ts_ms = timestamp  # for the time-lag check
        return self.dead_letters.keep_decodable(value, key, timestamp, headers)

    def require_topics(self) -> None:
        """Fail with a clear message when a catalog topic this app uses is missing."""
        existing = admin_client(self.settings).list_topics(timeout=30).topics
        missing = sorted(name for name in self._used_topics if name not in existing)
        if missing:
            raise TopicError(
                f"topics missing: {', '.join(missing)}; create them with `omniquant topics create`"
            )

    def run(self) -> None:
        try:
            self.require_topics()
            self.app.run()
        finally:
            self.health.unregister()
            self.dead_letters.close()


def correlation_headers(field: str) -> Callable[[Any, Any, int, Any], list[tuple[str, bytes]]]:
    """``set_headers`` callback: keep incoming headers, set correlation_id from ``field``."""

    def set_headers(value: Any, _key: Any, _ts: int, headers: Any) -> list[tuple[str, bytes]]:
        kept = [(k, v) for k, v in (headers or []) if k != CORRELATION_HEADER]
        kept.append((CORRELATION_HEADER, str(value[field]).encode("utf-8")))
        return kept

    return set_headers


def now_ns() -> int:
    """Wall-clock UTC ns, for ``ts_init`` only (event time always comes from the data)."""
    return time.time_ns()
