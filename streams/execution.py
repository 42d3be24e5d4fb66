"""The execution consumer: approved orders → a venue → execution reports and fills.

A hand-written consume–transform–produce loop on confluent-kafka, not a Quix app: each
approved order is a call to a venue (:class:`brokers.base.Broker`) with retries, and the
venue answers with events on its own schedule, neither of which fits a dataframe.

Inputs (one consumer, group ``<prefix><stage>``, read_committed, offsets committed by us)
    ``orders.approved``; ``market.trades`` and ``market.quotes``, fed to the venue
    (:meth:`Broker.on_market_data`: a simulated venue fills on them, a real one ignores
    them); ``control``, whose records only wake the halt check (the trading states come
    from a :class:`~streams.control.TradingStateWatcher`). Every input's offset is
    committed, so the group's lag means what it says for every venue.

Outputs
    ``execution.reports`` and ``fills`` (Avro, key = symbol, ``correlation_id`` header =
    client order id, Kafka timestamp = event time), and ``execution.orders``: the working
    orders as JSON keyed by client order id, compacted, tombstoned when an order is done.

Exactly once (``OMNIQUANT_EXECUTION__EXACTLY_ONCE``, default on)
    One transactional producer, ``transactional.id = <prefix><stage>``: a restarted
    instance fences the one it replaces and aborts its open transaction. Reports, fills,
    the changelog and the consumed offsets commit together at most every
    ``commit_interval_ms``. A Kafka error that needs it aborts the transaction, rewinds the
    inputs to the committed offsets and takes the book back to the last commit. Off: an
    idempotent producer, offsets committed after a flush (at least once). One instance per
    namespace: the fixed transactional id stops a second one.

Start
    The changelog is read to its end (read_committed) to rebuild the book of working
    orders before any order is consumed. A simulated venue remembers nothing, so it is fed
    the market data of its history window before the committed offsets (it then prices
    exactly as the instance before did) and handed the working orders back
    (:meth:`Broker.restore`); a real venue is asked for each (:meth:`Broker.open_orders`,
    :meth:`Broker.get_order`) and what the book misses is published (fills beyond the
    book's quantity, a cancel).

Submitting once
    Before the venue is called the client order id is reserved in Redis
    (``SET <prefix>exec:submit:<id> NX``, TTL 7 days) and marked done once the order's end
    is committed. An order already in the book, or done, is not submitted again. A
    reservation without a committed order means an instance died between the two: the
    venue is asked (:meth:`Broker.get_order`); if it has the order it is adopted (what was
    not yet published is), otherwise it is submitted. ``BrokerUnavailable`` is retried with
    backoff (``submit_retries``, ``retry_backoff_ms``, the venue asked before each retry),
    then the order is REJECTED with the reason; ``BrokerRejected`` rejects it with the
    venue's reason. Every approved order gets a NEW or a REJECTED report.

Kill switch
    When an account's (or ``*``'s) trading state turns HALTED its working orders are
    cancelled at the venue (PENDING_CANCEL, then the venue's CANCELED) within a second. An
    order of a halted account that arrives anyway is rejected, not submitted.

Health and metrics
    ``/healthz``: the loop turns (:data:`~streams.runtime.LIVENESS_STALL_S`). ``/readyz``:
    the inputs are assigned (the book is rebuilt, orders are consumed) and the venue
    answered its last call (``trading_venue_up``). Every fill a venue reports counts in
    ``trading_trades_total{venue,side}``; an unavailable venue, a commit retried and a
    transaction aborted in ``errors_total{app,kind}``; one handled record in
    :data:`~streams.runtime.EVENT_SAMPLE_EVERY` is timed into ``event_processing_seconds``.

A record that cannot be decoded goes to ``dlq.<stage>`` with the error in headers
(:class:`~streams.runtime.DeadLetters`) and the loop carries on. A live venue is never
built in a backtest namespace (prefix ``bt-``).
"""

from __future__ import annotations

import importlib
import json
import logging
import queue
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_STORED,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from brokers.base import (
    Broker,
    BrokerEvent,
    BrokerOrder,
    BrokerRejected,
    BrokerUnavailable,
    OrderSubmission,
)
from core.config import Settings
from core.errors import ConfigError, SerdeError, TopicError
from core.health import HEALTH, Heartbeat
from core.kafka import (
    TransactionWatchdog,
    admin_client,
    consumer_config,
    producer_config,
    retry_transient,
)
from core.logs import CORRELATION_HEADER, correlated, header_value
from core.metrics import (
    ERRORS,
    EVENT_PROCESSING,
    FILLS,
    MESSAGES_IN,
    MESSAGES_OUT,
    ORDER_EVENTS_REFUSED,
    ORDER_LATENCY,
    ORDERS_FILLED,
    ORDERS_REJECTED,
    ORDERS_SUBMITTED,
    TRADES,
    VENUE_UP,
)
from core.redis_client import redis_client
from core.topics import BACKTEST_PREFIX, TopicNames
from schemas.models import (
    ExecType,
    OrderRequest,
    OrderStatus,
    Quote,
    Record,
    Side,
    Trade,
    TradingState,
)
from schemas.serde import AvroSerde
from streams.control import TradingStateWatcher
from streams.logic.order_state import (
    Applied,
    Ignored,
    OrderEvent,
    Refused,
    WorkingOrder,
    apply_event,
    reconcile,
)
from streams.logic.trading_state import ScopeState
from streams.runtime import (
    LIVENESS_STALL_S,
    DeadLetters,
    OutOfRange,
    SampledTimer,
    now_ns,
    require_event_time,
)

__all__ = ["APPROVED_AT_HEADER", "ExecutionConsumer", "build", "build_broker", "run"]

log = logging.getLogger(__name__)

#: set by the risk gate on every approved order: wall-clock ns of the approval (ASCII int)
APPROVED_AT_HEADER = "approved_at_ns"
CHANGELOG = "execution.orders"
#: paper venue market history in a backtest namespace: the whole run (see _market_history_ms)
BACKTEST_HISTORY_MS = 31 * 24 * 3600 * 1000
BROKER_SETTING = "OMNIQUANT_EXECUTION__BROKER"

# bounded reason codes of trading_orders_rejected_total
VENUE_REJECTED = "VENUE_REJECTED"
VENUE_UNAVAILABLE = "VENUE_UNAVAILABLE"
HALTED = "HALTED"

_RESERVATION_TTL_S = 7 * 24 * 3600
_DONE = b"done"
_POLL_S = 0.05
_BATCH = 500
_HALT_CHECK_S = 0.05
_KEEP_DONE = 10_000  # finished orders remembered, so late events are judged, not stashed
_KEEP_STASHED = 10_000  # events of orders not (yet) known: an adoption may claim them
_KAFKA_TIMEOUT_S = 30.0
#: an approved order or a market record more than this ahead of the wall clock is
#: dead-lettered: its event time becomes the Kafka timestamp of reports and fills, which the
#: broker refuses beyond message.timestamp.after.max.ms (1 h by default)
MAX_AHEAD_NS = 10 * 60 * 1_000_000_000


# ---- venues ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Venue:
    """How to build one venue's broker; its class is imported only when chosen."""

    broker_class: str  # "module:Class"
    make: Callable[[type[Broker], Settings], Broker]

    def load(self) -> type[Broker]:
        module, _, name = self.broker_class.partition(":")
        cls: type[Broker] = getattr(importlib.import_module(module), name)
        return cls


def _paper(cls: type[Broker], settings: Settings) -> Broker:
    history = _market_history_ms(settings)
    return cls(settings.execution, history_ms=history)  # type: ignore[call-arg]


def _vendor(cls: type[Broker], settings: Settings) -> Broker:
    return cls(settings)  # type: ignore[call-arg]


_VENUES: dict[str, _Venue] = {
    "paper": _Venue("brokers.paper:PaperBroker", _paper),
    "alpaca": _Venue("brokers.alpaca:AlpacaBroker", _vendor),
    "kite": _Venue("brokers.kite:KiteBroker", _vendor),
}


def build_broker(settings: Settings) -> Broker:
    """The venue ``OMNIQUANT_EXECUTION__BROKER`` names. A live venue is refused in a
    backtest namespace before anything of it is built."""
    choice = settings.execution.broker
    venue = _VENUES.get(choice)
    if venue is None:
        raise ConfigError(f"{BROKER_SETTING}: no broker adapter for {choice!r} yet")
    cls = venue.load()
    if cls.live and settings.topic_prefix.startswith(BACKTEST_PREFIX):
        raise ConfigError(
            f"{BROKER_SETTING}={choice} trades a live account, and topic prefix "
            f"{settings.topic_prefix!r} is a backtest namespace: use paper"
        )
    return venue.make(cls, settings)


# ---- the consumer ------------------------------------------------------------------------
class ExecutionConsumer:
    """The loop described in the module docstring. ``run`` blocks until :meth:`stop`."""

    def __init__(
        self,
        settings: Settings,
        name: str,
        broker: Broker,
        *,
        watcher: TradingStateWatcher | None = None,
        market_history_ms: int | None = None,
    ) -> None:
        if broker.live and settings.topic_prefix.startswith(BACKTEST_PREFIX):
            raise ConfigError(
                f"{BROKER_SETTING}: {broker.venue} is a live venue and "
                f"{settings.topic_prefix!r} a backtest namespace"
            )
        self._settings = settings
        self._name = name
        self.broker = broker
        self._venue = broker.venue
        self._names = TopicNames(settings.topic_prefix)
        self._group = f"{settings.topic_prefix}{name}"
        self._exactly_once = settings.execution.exactly_once
        self._watchdog = TransactionWatchdog(settings.kafka.transaction_stall_s)
        self._serde = AvroSerde.from_settings(settings)
        self._dead_letters = DeadLetters(settings, name)
        self._redis = redis_client(settings, "execution", socket_timeout=5.0)
        self._watcher = watcher or TradingStateWatcher(settings)
        # a simulated venue is warmed up with this much market data at start
        self._market_history_ms = market_history_ms if not broker.live else None
        self._approved = self._names.approved_orders
        names = self._names
        self._market: dict[str, type[Record]] = {names.trades: Trade, names.quotes: Quote}
        self._control = self._names.control
        self._reports = self._names.execution_reports
        self._fills = self._names.fills
        self._changelog = self._names.name(CHANGELOG)

        self._events: queue.SimpleQueue[BrokerEvent] = queue.SimpleQueue()
        self._book: dict[str, WorkingOrder] = {}  # open orders
        self._committed_book: dict[str, WorkingOrder] = {}  # the book as of the last commit
        self._done: OrderedDict[str, WorkingOrder] = OrderedDict()
        self._stash: OrderedDict[str, list[BrokerEvent]] = OrderedDict()
        self._changed: set[str] = set()  # changelog entries to write at the commit
        self._finished: set[str] = set()  # done in this transaction: reservations to close
        self._txn_events: list[BrokerEvent] = []  # applied in this transaction
        self._handled: dict[tuple[str, int], int] = {}  # next offset, in this transaction
        self._cancel_due: dict[str, float] = {}  # client order id → when to (re)try a cancel
        self._next_halt_check = 0.0
        self._txn_started = 0.0
        self._dirty = False
        self._delivery_failures: list[str] = []
        self._stop = threading.Event()
        self.ready = threading.Event()  # set once orders are being consumed
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._inputs: list[TopicPartition] = []
        self._heartbeat = Heartbeat(LIVENESS_STALL_S)
        self._timer = SampledTimer(EVENT_PROCESSING.labels(name).observe)
        self._venue_up: bool | None = None  # None: not asked yet
        self._venue_error = ""
        _initialise_series(name, self._venue)
        HEALTH.register(f"{name}: main loop", self._heartbeat.check, kind="liveness")
        HEALTH.register(f"{name}: inputs assigned", self._inputs_check)
        HEALTH.register(f"{name}: venue answers", self._venue_check)

    # ---- lifecycle -----------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        try:
            self._start()
            self.ready.set()
            while not self._stop.is_set():
                self._step()
            self._commit()  # a clean stop keeps what was done
        finally:
            self._close()

    def _step(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        self._heartbeat.beat()
        # what has arrived, else the next record as soon as it comes (a batch call would
        # wait out its whole timeout for a batch that is not coming)
        messages = consumer.consume(_BATCH, 0)
        if not messages:
            first = consumer.poll(_POLL_S)
            messages = [first] if first is not None else []
        try:
            timer = self._timer
            for message in messages:
                timer.start()
                self._handle(message)
                self._drain_events()
                timer.stop()
                # venue calls take time: a long batch does not hold one transaction open
                self._commit_if_due(message is messages[-1])
            self._drain_events()
            self._check_halts()
            self._commit_if_due(True)
        except KafkaException as exc:
            if not _abortable(exc):
                raise
            self._abort(exc)

    def _start(self) -> None:
        self._require_topics()
        self._producer = self._make_producer()
        if self._exactly_once:
            # fences the instance this one replaces and aborts its open transaction, so
            # the changelog and the committed offsets read next are final
            self._producer.init_transactions(_KAFKA_TIMEOUT_S)
        self._rebuild_book()
        self._consumer = Consumer(
            consumer_config(self._settings, self._group, **{"client.id": self._name})
        )
        self._inputs = self._input_partitions()
        self.broker.connect(self._events.put)
        self._venue_answered()
        if self._market_history_ms:
            self._warm_up_market(self._market_history_ms)
        self._watcher.start()
        self._begin()
        self._reconcile()
        self._consumer.assign(
            [TopicPartition(tp.topic, tp.partition, OFFSET_STORED) for tp in self._inputs]
        )
        log.info(
            "execution consumer started",
            extra={
                "venue": self._venue,
                "working_orders": len(self._book),
                "exactly_once": self._exactly_once,
            },
        )

    def _close(self) -> None:
        for check in ("main loop", "inputs assigned", "venue answers"):
            HEALTH.unregister(f"{self._name}: {check}")
        closers: tuple[Callable[[], object], ...] = (
            self._watcher.stop,
            self.broker.close,
            lambda: self._consumer.close() if self._consumer else None,
            lambda: self._producer.flush(_KAFKA_TIMEOUT_S) if self._producer else None,
            self._dead_letters.close,
            self._redis.close,
        )
        for close in closers:
            try:
                close()
            except Exception as exc:  # closing the rest matters more than this one
                log.warning("error while closing", extra={"error": repr(exc)})

    # ---- health --------------------------------------------------------------------------
    def _venue_answered(self) -> None:
        if self._venue_up is not True:
            self._venue_up = True
            VENUE_UP.labels(self._venue).set(1)

    def _venue_unavailable(self, exc: BrokerUnavailable) -> None:
        self._venue_up = False
        self._venue_error = str(exc) or type(exc).__name__
        VENUE_UP.labels(self._venue).set(0)
        ERRORS.labels(self._name, "venue_unavailable").inc()

    def _inputs_check(self) -> tuple[bool, str]:
        if not self.ready.is_set():
            return False, "starting: rebuilding the book before consuming orders"
        return True, f"{len(self._inputs)} input partition(s) assigned"

    def _venue_check(self) -> tuple[bool, str]:
        if self._venue_up is None:
            return False, f"{self._venue}: not connected yet"
        if not self._venue_up:
            return False, f"{self._venue} unavailable: {self._venue_error}"
        return True, f"{self._venue} answers"

    def _require_topics(self) -> None:
        wanted = [self._approved, *self._market, self._control, self._reports, self._fills]
        wanted += [self._changelog, self._dead_letters.topic]
        existing = admin_client(self._settings).list_topics(timeout=_KAFKA_TIMEOUT_S).topics
        missing = sorted(t for t in wanted if t not in existing)
        if missing:
            raise TopicError(
                f"topics missing: {', '.join(missing)}; create them with `omniquant topics create`"
            )

    def _make_producer(self) -> Producer:
        extra: dict[str, str | int] = {"client.id": self._name}
        if self._exactly_once:
            extra["transactional.id"] = self._group
        return Producer(producer_config(self._settings, **extra))

    def _partitions(self, consumer: Consumer, topic: str) -> list[TopicPartition]:
        def query() -> list[TopicPartition]:
            meta = consumer.list_topics(topic, timeout=_KAFKA_TIMEOUT_S).topics.get(topic)
            if meta is None or meta.error is not None or not meta.partitions:
                raise TopicError(f"topic {topic} has no partitions")
            return [TopicPartition(topic, p) for p in sorted(meta.partitions)]

        return retry_transient(query, _KAFKA_TIMEOUT_S)

    def _input_partitions(self) -> list[TopicPartition]:
        assert self._consumer is not None
        topics = [self._approved, *self._market, self._control]
        return [tp for t in topics for tp in self._partitions(self._consumer, t)]

    # ---- rebuilding the book -------------------------------------------------------------
    def _rebuild_book(self) -> None:
        reader = Consumer(
            consumer_config(
                self._settings,
                f"{self._group}-changelog",  # never commits: always read from the start
                **{"enable.partition.eof": "true", "client.id": f"{self._name}-changelog"},
            )
        )
        try:
            for key, value in _read_to_end(reader, self._partitions(reader, self._changelog)):
                coid = key.decode()
                if value is None:
                    self._book.pop(coid, None)
                else:
                    self._book[coid] = WorkingOrder.from_dict(json.loads(value))
        finally:
            reader.close()
        self._committed_book = dict(self._book)

    def _warm_up_market(self, history_ms: int) -> None:
        """Feed the simulated venue the last ``history_ms`` (event time) of market data
        before the committed offsets: it keeps no history of its own across a restart."""
        reader = Consumer(
            consumer_config(
                self._settings,
                self._group,  # only to read the group's committed offsets; never commits
                **{"enable.partition.eof": "true", "client.id": f"{self._name}-warm-up"},
            )
        )
        try:
            market = [tp for tp in self._inputs if tp.topic in self._market]
            # right after the group appears its coordinator may still be loading
            # (NOT_COORDINATOR, COORDINATOR_LOAD_IN_PROGRESS): ask again
            committed = retry_transient(
                lambda: reader.committed(market, timeout=_KAFKA_TIMEOUT_S), _KAFKA_TIMEOUT_S
            )
            ranges: list[tuple[TopicPartition, int]] = []  # (start, end exclusive)
            for tp in committed:
                if tp.offset <= 0:
                    continue
                last = _timestamp_at(reader, tp.topic, tp.partition, tp.offset - 1)
                if last is None:
                    continue
                since = TopicPartition(tp.topic, tp.partition, last - history_ms)
                start = reader.offsets_for_times([since], timeout=_KAFKA_TIMEOUT_S)[0].offset
                if 0 <= start < tp.offset:
                    ranges.append((TopicPartition(tp.topic, tp.partition, start), tp.offset))
            fed = 0
            ends = {(tp.topic, tp.partition): end for tp, end in ranges}
            for topic, partition, offset, value in _read_ranges(reader, ends, ranges):
                if value is not None and offset < ends[(topic, partition)]:
                    record = self._decode_market(topic, value)
                    if record is not None and _publishable(record):
                        self.broker.on_market_data(record)
                        fed += 1
        finally:
            reader.close()
        if fed:
            log.info("paper venue warmed up with recent market data", extra={"ticks": fed})

    def _reconcile(self) -> None:
        """Bring the book level with the venue (inside the first transaction)."""
        if not self._book:
            return
        submissions = {coid: _submission(wo) for coid, wo in self._book.items()}
        if not self.broker.live:
            self.broker.restore(  # type: ignore[call-arg]
                [_venue_view(wo) for wo in self._book.values()], submissions=submissions
            )
        else:
            at_venue = {o.client_order_id: o for o in self._call(self.broker.open_orders)}
            for coid, order in list(self._book.items()):
                with correlated(coid):
                    view = at_venue.get(coid) or self._call(self.broker.get_order, coid)
                    if view is None:
                        log.error("the venue does not know a working order of the book")
                        continue
                    for event in reconcile(order, view):
                        self._apply(coid, event)
        for coid, order in self._book.items():
            if order.status == OrderStatus.PENDING_CANCEL:
                self._cancel_due[coid] = 0.0  # the cancel may not have reached the venue
        self._drain_events()

    # ---- input records -------------------------------------------------------------------
    def _handle(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            if error.fatal():
                raise KafkaException(error)
            log.warning("consumer error", extra={"error": error.str()})
            return
        topic = message.topic()
        self._handled[(topic, message.partition())] = message.offset() + 1
        self._dirty = True
        try:
            if topic == self._approved:
                self._on_approved(message)
            elif topic in self._market:
                if not self.broker.live:  # a real venue has its own market
                    record = self._decode_market(topic, message.value(), message)
                    if record is not None:
                        require_event_time(record, max_ahead_ns=MAX_AHEAD_NS)
                        self.broker.on_market_data(record)
            elif topic == self._control:
                self._next_halt_check = 0.0
        except (KafkaException, redis.RedisError):
            raise  # not the record's fault: stop rather than lose it
        except OutOfRange as exc:  # a valid record whose event time we cannot publish
            self._dead_letter(message, exc, stage="process")
        except Exception as exc:
            log.exception("record could not be processed", extra={"topic": topic})
            self._dead_letter(message, exc, stage="process")

    def _decode_market(
        self, topic: str, value: bytes | None, message: Message | None = None
    ) -> dict[str, Any] | None:
        """A trade or quote as a dict. From the loop (``message`` given) a bad record is
        dead-lettered and a good one counted; during the warm-up they were already."""
        try:
            if value is None:
                raise SerdeError(f"empty value on {topic}")
            record = self._serde.decode_dict(value, self._market[topic], topic=topic)
        except SerdeError as exc:
            if message is not None:
                self._dead_letter(message, exc)
            return None
        if message is not None:
            MESSAGES_IN.labels(self._name, topic).inc()
        return record

    def _on_approved(self, message: Message) -> None:
        try:
            value = message.value()
            if value is None:
                raise SerdeError("an approved order without a value")
            order = self._serde.decode_as(value, OrderRequest, topic=self._approved)
        except SerdeError as exc:
            self._dead_letter(message, exc)
            return
        MESSAGES_IN.labels(self._name, self._approved).inc()
        # Reports and fills carry the order's event time as their Kafka timestamp: one the
        # broker refuses would fail the transaction and stop the stage (OutOfRange: the
        # order's dead letter instead).
        require_event_time({"ts_event": order.ts_event}, max_ahead_ns=MAX_AHEAD_NS)
        with correlated(order.client_order_id):
            self._accept(order, _approved_at_ns(message))

    def _dead_letter(self, message: Message, error: Exception, stage: str = "deserialize") -> None:
        ts_type, ts = message.timestamp()
        self._dead_letters.publish(
            stage=stage,
            error=error,
            topic=message.topic(),
            partition=message.partition(),
            offset=message.offset(),
            timestamp_ms=ts if ts_type else None,
            key=message.key(),
            value=message.value(),
            headers=list(message.headers() or []),
        )

    # ---- orders --------------------------------------------------------------------------
    def _reservation(self, coid: str) -> str:
        return f"{self._settings.topic_prefix}exec:submit:{coid}"

    def _accept(self, order: OrderRequest, approved_at_ns: int) -> None:
        coid = order.client_order_id
        if coid in self._book or coid in self._done:
            log.info("approved order seen again: it is in the book, not submitted again")
            return
        key = self._reservation(coid)
        if not self._redis.set(key, b"reserved", nx=True, ex=_RESERVATION_TTL_S):
            if self._redis.get(key) == _DONE:
                log.info("approved order seen again: it is done, not submitted again")
                return
            # reserved by an instance that died before committing: did the venue get it?
            view = self._get_order(coid)
            if view is not None:
                self._adopt(order, view)
                return
            log.info("reserved but unknown to the venue: submitting")
        state = self._watcher.of(order.account)
        if state.state == TradingState.HALTED:
            self._book[coid] = WorkingOrder.from_request(order, self._venue)
            self._reject(coid, HALTED, f"HALTED: {state.reason}")
            return
        self._submit(order, approved_at_ns)

    def _submit(self, order: OrderRequest, approved_at_ns: int) -> None:
        coid = order.client_order_id
        working = WorkingOrder.from_request(order, self._venue)
        self._book[coid] = working
        self._changed.add(coid)
        submission = _submission(working)
        ORDERS_SUBMITTED.labels(self._venue).inc()
        retries = self._settings.execution.submit_retries
        delay = self._settings.execution.retry_backoff_ms / 1000
        ack: BrokerOrder | None = None
        failure: BrokerUnavailable | None = None
        for attempt in range(retries + 1):
            try:
                ack = self.broker.submit(submission)
                self._venue_answered()
                break
            except BrokerRejected as exc:
                self._venue_answered()
                self._drain_events()
                self._reject(coid, VENUE_REJECTED, str(exc) or "rejected by the venue")
                return
            except BrokerUnavailable as exc:
                failure = exc
                self._venue_unavailable(exc)
                log.warning(
                    "venue unavailable for a submission",
                    extra={"attempt": attempt + 1, "error": str(exc)},
                )
                if attempt == retries or self._stop.wait(delay):
                    break
                delay *= 2
                # the call may have reached the venue before it failed
                ack = self._get_order(coid)
                if ack is not None:
                    break
        if ack is None:
            self._reject(
                coid,
                VENUE_UNAVAILABLE,
                f"venue unavailable after {retries + 1} attempts: {failure}",
            )
            return
        ORDER_LATENCY.labels(self._venue).observe(max(0, time.time_ns() - approved_at_ns) / 1e9)
        # The submission's answer is the order's NEW; the venue's own "new" (and fills) that
        # came on its stream during the call follow it. Acknowledging first makes the report
        # the same whichever way that race went (a restart's replay runs it again).
        self._acknowledge(coid, ack)
        self._drain_events()

    def _acknowledge(self, coid: str, ack: BrokerOrder) -> None:
        """The venue's answer to a submission, if its events have not said it already."""
        current = self._book.get(coid)
        if current is None or current.status != OrderStatus.PENDING_NEW:
            return
        if ack.status == OrderStatus.REJECTED:
            self._reject(coid, VENUE_REJECTED, ack.reason or "rejected by the venue")
            return
        event = OrderEvent(
            ExecType.NEW,
            OrderStatus.NEW,
            ack.venue_order_id,
            ts_event=ack.ts_event or current.ts_event,
        )
        self._apply(coid, event)

    def _adopt(self, order: OrderRequest, view: BrokerOrder) -> None:
        """An order the venue has though the book does not (its instance died before
        committing): publish what was not yet published."""
        coid = order.client_order_id
        log.warning(
            "adopting an order the venue already has",
            extra={"venue_status": str(view.status), "filled": view.filled_quantity},
        )
        self._book[coid] = WorkingOrder.from_request(order, self._venue)
        self._changed.add(coid)
        for event in self._stash.pop(coid, []):
            self._apply(coid, event)
        current = self._book.get(coid)
        if current is not None:  # the NEW, fills and end the stash did not bring
            for made in reconcile(current, view):
                self._apply(coid, made)

    def _reject(self, coid: str, code: str, reason: str) -> None:
        order = self._book[coid]
        log.warning("order rejected", extra={"reason_code": code, "reason": reason})
        event = OrderEvent(
            ExecType.REJECTED, OrderStatus.REJECTED, reason=reason, ts_event=order.ts_event
        )
        if self._apply(coid, event, rejected_as=code):
            return
        self._book.pop(coid, None)  # refused (cannot happen from PENDING_NEW): forget it

    # ---- venue events --------------------------------------------------------------------
    def _drain_events(self) -> None:
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return
            self._txn_events.append(event)
            with correlated(event.client_order_id):
                self._apply(event.client_order_id, event)

    def _apply(
        self, coid: str, event: BrokerEvent | OrderEvent, *, rejected_as: str = VENUE_REJECTED
    ) -> bool:
        """Apply one event to the order; True when it changed it."""
        order = self._book.get(coid) or self._done.get(coid)
        if order is None:
            if isinstance(event, BrokerEvent):  # an adoption may claim it later
                self._stash.setdefault(coid, []).append(event)
                while len(self._stash) > _KEEP_STASHED:
                    self._stash.popitem(last=False)
            log.debug("event for an order not in the book", extra={"exec_type": event.exec_type})
            return False
        result = apply_event(order, event, ts_init=now_ns())
        if isinstance(result, Ignored):
            log.debug("venue event repeats the book", extra={"detail": result.detail})
            return False
        if isinstance(result, Refused):
            ORDER_EVENTS_REFUSED.labels(self._venue, result.code.value).inc()
            log.warning(
                "venue event refused by the order state machine",
                extra={"refusal": result.code.value, "detail": result.detail},
            )
            if event.exec_type == ExecType.REPLACED and order.is_working:
                # Changed at the venue (its web UI, another tool): the risk gate approved
                # the order as it was, not as it is now. Take it off the market.
                self._cancel_unapproved(coid)
            return False
        self._publish(result)
        after = result.order
        self._dirty = True
        if after.is_terminal:
            self._book.pop(coid, None)
            self._done[coid] = after
            while len(self._done) > _KEEP_DONE:
                self._done.popitem(last=False)
            self._finished.add(coid)
            self._cancel_due.pop(coid, None)
            if after.status == OrderStatus.FILLED:
                ORDERS_FILLED.labels(self._venue).inc()
            elif after.status == OrderStatus.REJECTED:
                ORDERS_REJECTED.labels(self._venue, rejected_as).inc()
        else:
            self._book[coid] = after
        self._changed.add(coid)
        return True

    def _publish(self, applied: Applied) -> None:
        report = applied.report
        headers = [(CORRELATION_HEADER, report.client_order_id.encode())]
        self._produce(self._reports, report.symbol, report, headers)
        if applied.fill is not None:
            self._produce(self._fills, applied.fill.symbol, applied.fill, headers)
            FILLS.labels(self._venue).inc()
            TRADES.labels(self._venue, str(applied.fill.side)).inc()
        log.info(
            "execution report",
            extra={
                "exec_type": str(report.exec_type),
                "order_status": str(report.order_status),
                "cum_quantity": report.cum_quantity,
            },
        )

    # ---- kill switch ---------------------------------------------------------------------
    def _check_halts(self) -> None:
        now = time.monotonic()
        if now >= self._next_halt_check:
            self._next_halt_check = now + _HALT_CHECK_S
            states: dict[str, ScopeState] = {}  # each account asked once
            for coid, order in list(self._book.items()):
                if not order.is_working:
                    continue
                state = states.get(order.account)
                if state is None:
                    state = states[order.account] = self._watcher.of(order.account)
                if state.state != TradingState.HALTED:
                    continue
                with correlated(coid):
                    event = OrderEvent(
                        ExecType.PENDING_CANCEL,
                        OrderStatus.PENDING_CANCEL,
                        reason=f"HALTED: {state.reason}",
                        ts_event=time.time_ns(),  # our request, made now
                    )
                    if self._apply(coid, event):
                        self._cancel_due[coid] = 0.0
        for coid, due in list(self._cancel_due.items()):
            if due <= now:
                with correlated(coid):
                    self._send_cancel(coid)
        self._drain_events()

    def _cancel_unapproved(self, coid: str) -> None:
        log.error("order replaced at the venue outside the risk gate: canceling it")
        event = OrderEvent(
            ExecType.PENDING_CANCEL,
            OrderStatus.PENDING_CANCEL,
            reason="replaced at the venue without a risk decision",
            ts_event=time.time_ns(),  # our request, made now
        )
        if self._apply(coid, event):
            self._cancel_due[coid] = 0.0

    def _send_cancel(self, coid: str) -> None:
        order = self._book.get(coid)
        if order is None:
            self._cancel_due.pop(coid, None)
            return
        try:
            self.broker.cancel(coid, order.venue_order_id)
            self._venue_answered()
            self._cancel_due.pop(coid, None)
            log.info("cancel sent to the venue")
        except BrokerUnavailable as exc:
            self._venue_unavailable(exc)
            backoff = self._settings.execution.retry_backoff_ms / 1000
            self._cancel_due[coid] = time.monotonic() + backoff
            log.warning("venue unavailable for a cancel: will retry", extra={"error": str(exc)})
        except BrokerRejected as exc:
            self._venue_answered()
            # filled or ended meanwhile, or not cancellable yet: the venue's view decides
            self._cancel_due.pop(coid, None)
            log.warning("the venue refused the cancel", extra={"error": str(exc)})
            self._drain_events()
            view = self._get_order(coid)
            current = self._book.get(coid)
            if view is None or current is None:
                return
            for event in reconcile(current, view):
                self._apply(coid, event)
            if coid in self._book and view.status in (
                OrderStatus.NEW,
                OrderStatus.PARTIALLY_FILLED,
                OrderStatus.PENDING_CANCEL,
            ):  # still working there: ask again
                backoff = self._settings.execution.retry_backoff_ms / 1000
                self._cancel_due[coid] = time.monotonic() + backoff

    # ---- venue calls ---------------------------------------------------------------------
    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A venue query, retried with backoff while the venue is unavailable."""
        delay = self._settings.execution.retry_backoff_ms / 1000
        for attempt in range(self._settings.execution.submit_retries + 1):
            try:
                answer = fn(*args)
            except BrokerUnavailable as exc:
                self._venue_unavailable(exc)
                if attempt == self._settings.execution.submit_retries or self._stop.wait(delay):
                    raise
                log.warning("venue unavailable: retrying", extra={"error": str(exc)})
                delay *= 2
                continue
            self._venue_answered()
            return answer
        raise AssertionError("unreachable")

    def _get_order(self, coid: str) -> BrokerOrder | None:
        """The venue's view of an order, or None if it has none or cannot say now."""
        try:
            view: BrokerOrder | None = self._call(self.broker.get_order, coid)
        except BrokerUnavailable as exc:
            log.warning("venue could not say whether it has the order", extra={"error": str(exc)})
            return None
        return view

    # ---- output and transactions ---------------------------------------------------------
    def _produce(
        self,
        topic: str,
        key: str,
        record: Record | None,
        headers: list[tuple[str, bytes]] | None = None,
        *,
        value: bytes | None = None,
        timestamp_ns: int | None = None,
    ) -> None:
        producer = self._producer
        assert producer is not None
        if record is not None:
            value = self._serde.encode(record, topic=topic)
            timestamp_ns = int(record.ts_event)  # type: ignore[attr-defined]
        kwargs: dict[str, Any] = {"key": key, "value": value, "on_delivery": self._delivered}
        if headers:
            kwargs["headers"] = headers
        if timestamp_ns:
            kwargs["timestamp"] = timestamp_ns // 1_000_000
        while True:
            try:
                producer.produce(topic, **kwargs)
                break
            except BufferError:
                producer.poll(0.1)  # the local queue is full: let deliveries drain it
        MESSAGES_OUT.labels(self._name, topic).inc()

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._delivery_failures.append(f"{msg.topic()}: {err.str()}")

    def _begin(self) -> None:
        if self._exactly_once:
            assert self._producer is not None
            self._producer.begin_transaction()
        self._txn_started = time.monotonic()

    def _commit_if_due(self, batch_done: bool) -> None:
        interval = self._settings.execution.commit_interval_ms / 1000
        if not self._dirty or time.monotonic() - self._txn_started < interval:
            return
        try:
            self._commit(batch_done)
        except KafkaException as exc:
            if not (batch_done and _retriable(exc)):
                raise
            # everything consumed is processed: the next step commits again
            ERRORS.labels(self._name, "commit_retry").inc()
            log.warning("commit failed, will retry", extra={"error": str(exc)})

    def _commit(self, batch_done: bool = True) -> None:
        """Commit what is published with the input offsets. Within a batch only the
        messages handled so far count; at its end the consumer's positions (which also
        step over the transaction markers of transactional inputs)."""
        producer, consumer = self._producer, self._consumer
        assert producer is not None and consumer is not None
        for coid in sorted(self._changed):
            order = self._book.get(coid)
            if order is not None:
                data = json.dumps(order.to_dict()).encode()
                self._produce(self._changelog, coid, None, value=data, timestamp_ns=order.ts_event)
            elif coid in self._committed_book:
                self._produce(self._changelog, coid, None, value=None)  # tombstone
        if batch_done:
            offsets = [tp for tp in consumer.position(consumer.assignment()) if tp.offset >= 0]
        else:
            offsets = [TopicPartition(t, p, o) for (t, p), o in self._handled.items()]
        if self._exactly_once:
            # its timeout is not always honoured (librdkafka#5456): the watchdog's is
            with self._watchdog.guard("send_offsets_to_transaction, commit_transaction"):
                if offsets:
                    producer.send_offsets_to_transaction(
                        offsets, consumer.consumer_group_metadata(), _KAFKA_TIMEOUT_S
                    )
                producer.commit_transaction(_KAFKA_TIMEOUT_S)
        else:
            producer.flush(_KAFKA_TIMEOUT_S)
            if self._delivery_failures:
                failures, self._delivery_failures = self._delivery_failures, []
                # stop with the offsets uncommitted: nothing is lost, records come again
                raise RuntimeError(f"records not delivered: {failures[:3]}")
            if offsets:
                consumer.commit(offsets=offsets, asynchronous=False)
        self._committed_book = dict(self._book)
        self._handled.clear()
        self._txn_events.clear()
        self._changed.clear()
        self._dirty = False
        finished, self._finished = self._finished, set()
        if finished:  # after the commit: a reservation closed early could lose an order
            pipe = self._redis.pipeline(transaction=False)
            for coid in finished:
                pipe.set(self._reservation(coid), _DONE, ex=_RESERVATION_TTL_S)
            pipe.execute()
        self._begin()

    def _abort(self, error: KafkaException) -> None:
        """Drop the open transaction and go back to the last commit: the book, the input
        offsets; the venue's events of the transaction are applied again."""
        log.error("transaction aborted: rewinding to the last commit", extra={"error": str(error)})
        ERRORS.labels(self._name, "transaction_aborted").inc()
        producer, consumer = self._producer, self._consumer
        assert producer is not None and consumer is not None
        with self._watchdog.guard("abort_transaction"):
            producer.abort_transaction(_KAFKA_TIMEOUT_S)
        self._book = dict(self._committed_book)
        for coid in self._finished:
            self._done.pop(coid, None)
        self._changed.clear()
        self._finished.clear()
        self._handled.clear()
        events, self._txn_events = self._txn_events, []
        consumer.assign(
            [TopicPartition(tp.topic, tp.partition, OFFSET_STORED) for tp in self._inputs]
        )
        self._begin()
        for event in events:
            self._events.put(event)
        self._drain_events()


# ---- helpers -----------------------------------------------------------------------------
def _initialise_series(app: str, venue: str) -> None:
    """Every series this consumer may set exists from the start, at 0 (so a rate or an
    alert over it has data before the first order, and a scrape shows its labels)."""
    ORDERS_SUBMITTED.labels(venue)
    ORDERS_FILLED.labels(venue)
    FILLS.labels(venue)
    ORDER_LATENCY.labels(venue)
    for code in (VENUE_REJECTED, VENUE_UNAVAILABLE, HALTED):
        ORDERS_REJECTED.labels(venue, code)
    for side in Side:
        TRADES.labels(venue, str(side))
    for kind in ("venue_unavailable", "commit_retry", "transaction_aborted"):
        ERRORS.labels(app, kind)


def _publishable(record: dict[str, Any]) -> bool:
    try:
        require_event_time(record, max_ahead_ns=MAX_AHEAD_NS)
    except OutOfRange:
        return False
    return True


def _abortable(exc: KafkaException) -> bool:
    err = exc.args[0] if exc.args else None
    return isinstance(err, KafkaError) and err.txn_requires_abort()


def _retriable(exc: KafkaException) -> bool:
    err = exc.args[0] if exc.args else None
    return isinstance(err, KafkaError) and err.retriable() and not err.fatal()


def _approved_at_ns(message: Message) -> int:
    """When the gate approved the order: its header, else the record's timestamp."""
    raw = header_value(message.headers(), APPROVED_AT_HEADER)
    if raw is not None and raw.isdigit():
        return int(raw)
    _, ts_ms = message.timestamp()
    return max(0, int(ts_ms)) * 1_000_000


def _submission(order: WorkingOrder) -> OrderSubmission:
    return OrderSubmission(
        client_order_id=order.client_order_id,
        account=order.account,
        symbol=order.symbol,
        side=order.side,
        order_type=order.order_type,
        quantity=order.quantity,
        time_in_force=order.time_in_force,
        limit_price=order.limit_price,
        ts_event=order.order_ts_event,
    )


def _venue_view(order: WorkingOrder) -> BrokerOrder:
    """What a simulated venue had of a working order (for :meth:`Broker.restore`)."""
    return BrokerOrder(
        client_order_id=order.client_order_id,
        venue_order_id=order.venue_order_id or "",
        symbol=order.symbol,
        side=order.side,
        quantity=order.quantity,
        status=OrderStatus.NEW if order.cum_quantity == 0 else OrderStatus.PARTIALLY_FILLED,
        filled_quantity=order.cum_quantity,
        avg_price=order.avg_price,
        ts_event=order.ts_event,
    )


def _read_to_end(
    reader: Consumer, partitions: list[TopicPartition]
) -> Iterable[tuple[bytes, bytes | None]]:
    """(key, value) of every record of ``partitions`` up to their end as of now."""
    for _topic, _partition, _offset, key, value in _read(
        reader, [TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING) for tp in partitions]
    ):
        if key is not None:
            yield key, value


def _read_ranges(
    reader: Consumer, ends: dict[tuple[str, int], int], starts: list[tuple[TopicPartition, int]]
) -> Iterable[tuple[str, int, int, bytes | None]]:
    """(topic, partition, offset, value) from each start up to its end (exclusive)."""
    for topic, partition, offset, _key, value in _read(
        reader, [tp for tp, _ in starts], stop_at=ends
    ):
        yield topic, partition, offset, value


def _read(
    reader: Consumer,
    partitions: list[TopicPartition],
    stop_at: dict[tuple[str, int], int] | None = None,
) -> Iterable[tuple[str, int, int, bytes | None, bytes | None]]:
    """Records of ``partitions`` (assigned at their offsets) until each reaches its end (or
    its ``stop_at`` offset): an empty partition is done at once."""
    pending: set[tuple[str, int]] = set()
    for tp in partitions:
        where = TopicPartition(tp.topic, tp.partition)
        low, high = retry_transient(
            lambda where=where: reader.get_watermark_offsets(  # type: ignore[misc]
                where, timeout=_KAFKA_TIMEOUT_S, cached=False
            ),
            _KAFKA_TIMEOUT_S,
        )
        if high > low:
            pending.add((tp.topic, tp.partition))
    if not pending:
        return
    reader.assign([tp for tp in partitions if (tp.topic, tp.partition) in pending])
    deadline = time.monotonic() + 5 * _KAFKA_TIMEOUT_S
    while pending:
        if time.monotonic() > deadline:
            raise TopicError(f"could not read {sorted(pending)} to the end")
        message = reader.poll(0.5)
        if message is None:
            continue
        where = (message.topic(), message.partition())
        error = message.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                pending.discard(where)
                continue
            if error.fatal():
                raise KafkaException(error)
            continue
        if where not in pending:
            continue
        yield where[0], where[1], message.offset(), message.key(), message.value()
        if stop_at is not None and message.offset() >= stop_at[where] - 1:
            pending.discard(where)


def _timestamp_at(reader: Consumer, topic: str, partition: int, offset: int) -> int | None:
    """Kafka timestamp (ms) of the record at ``offset`` (or the first one after it)."""
    reader.assign([TopicPartition(topic, partition, offset)])
    try:
        deadline = time.monotonic() + _KAFKA_TIMEOUT_S
        while time.monotonic() < deadline:
            message = reader.poll(0.5)
            if message is None:
                continue
            if message.error() is not None:
                if message.error().code() == KafkaError._PARTITION_EOF:
                    return None
                continue
            _, ts = message.timestamp()
            return int(ts) if ts >= 0 else None
        return None
    finally:
        reader.unassign()


# ---- entry points ------------------------------------------------------------------------
def build(settings: Settings, name: str) -> ExecutionConsumer:
    """The consumer under the stage name the registry gives it, with the configured venue."""
    broker = build_broker(settings)
    history = _market_history_ms(settings)
    return ExecutionConsumer(settings, name, broker, market_history_ms=history)


def _market_history_ms(settings: Settings) -> int | None:
    """Event time of market data the paper venue keeps (and is warmed up with at start).

    In a backtest namespace the stages do not run in step with one another: the market
    topics are complete before the first order is approved, so this consumer may have read
    hours of trades when an order arrives. A venue that forgot them would refuse the order
    (or not, depending on how far ahead it happened to be); one that keeps the whole run
    fills it from its history exactly as it would have live."""
    if settings.execution.broker != "paper":
        return None
    from brokers.paper.broker import DEFAULT_HISTORY_MS

    if settings.topic_prefix.startswith(BACKTEST_PREFIX):
        return BACKTEST_HISTORY_MS
    return DEFAULT_HISTORY_MS


def run(settings: Settings, *, name: str) -> None:
    consumer = build(settings, name)

    def on_signal(_signum: int, _frame: Any) -> None:
        consumer.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    consumer.run()
