"""The execution consumer against the real broker and Redis, with the paper venue (or a
test venue built on it) in this process, so the venue's calls can be counted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from confluent_kafka import Consumer
from prometheus_client import REGISTRY

from brokers.alpaca import AlpacaBroker
from brokers.base import BrokerEvent, BrokerOrder, BrokerUnavailable, OrderSubmission
from brokers.paper import PaperBroker
from brokers.paper.broker import DEFAULT_HISTORY_MS
from core.config import ExecutionSettings, Settings, load_settings
from core.errors import ConfigError
from core.kafka import consumer_config, ensure_topics
from core.logs import CORRELATION_HEADER
from core.topics import TopicNames
from omniquant.stages import topic_catalog
from producers.kafka_producer import RecordProducer
from schemas.fixedpoint import to_fixed
from schemas.models import (
    ExecType,
    ExecutionReport,
    Fill,
    OrderRequest,
    OrderStatus,
    OrderType,
    Side,
    Trade,
    TradingState,
)
from schemas.serde import AvroSerde
from streams import risk_gate
from streams.control import ControlPlane
from streams.execution import (
    APPROVED_AT_HEADER,
    CHANGELOG,
    ExecutionConsumer,
    build_broker,
)

pytestmark = pytest.mark.integration

T0 = 1_700_000_000_000_000_000
SEC = 1_000_000_000
_SERDE = AvroSerde()


# ---- venues for tests: the paper venue, counted or made to misbehave -------------------
class CountingPaper(PaperBroker):
    """The paper venue, counting the submissions it receives per client order id."""

    def __init__(self) -> None:
        super().__init__(ExecutionSettings())
        self.submits: Counter[str] = Counter()

    def submit(self, order: OrderSubmission) -> BrokerOrder:
        self.submits[order.client_order_id] += 1
        return super().submit(order)


class UnreachableVenue(CountingPaper):
    """Never answers a submission."""

    def submit(self, order: OrderSubmission) -> BrokerOrder:
        self.submits[order.client_order_id] += 1
        raise BrokerUnavailable("connection refused")


class ChattyVenue(CountingPaper):
    """After each fill, repeats it (same fill id), reports a second fill beyond the
    quantity (new id) and a late NEW: only the first fill may count."""

    def connect(self, on_event: Callable[[BrokerEvent], None]) -> None:
        def forward(event: BrokerEvent) -> None:
            on_event(event)
            if event.exec_type == ExecType.FILL:
                on_event(event)
                on_event(
                    BrokerEvent(
                        **{
                            **_fields(event),
                            "fill_id": "extra",
                            "cum_quantity": 2 * event.cum_quantity,
                        }
                    )
                )
                late_new = {"exec_type": ExecType.NEW, "last_quantity": 0, "fill_id": None}
                on_event(BrokerEvent(**{**_fields(event), **late_new, "last_price": None}))

        super().connect(forward)


def _fields(event: BrokerEvent) -> dict[str, Any]:
    return {name: getattr(event, name) for name in BrokerEvent.__dataclass_fields__}


# ---- running the consumer in this process ----------------------------------------------
class Running:
    """The consumer's loop on a thread; stop() re-raises whatever ended it."""

    def __init__(self, consumer: ExecutionConsumer) -> None:
        self.consumer = consumer
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not consumer.ready.is_set():
            assert self.error is None, self.error
            assert time.monotonic() < deadline, "the consumer did not start"
            time.sleep(0.05)

    def _run(self) -> None:
        try:
            self.consumer.run()
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self.consumer.stop()
        self.thread.join(30)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error


@pytest.fixture
def exec_settings(settings: Settings) -> Settings:
    ensure_topics(settings, topic_catalog())
    return settings


def _with(settings: Settings, **execution: Any) -> Settings:
    return settings.model_copy(
        update={"execution": settings.execution.model_copy(update=execution)}
    )


@pytest.fixture
def start(exec_settings: Settings) -> Iterator[Callable[..., Running]]:
    running: list[Running] = []

    def _start(broker: Any, settings: Settings | None = None) -> Running:
        consumer = ExecutionConsumer(
            settings or exec_settings, "execution", broker, market_history_ms=DEFAULT_HISTORY_MS
        )
        run = Running(consumer)
        running.append(run)
        return run

    yield _start
    for run in running:
        if run.thread.is_alive():
            run.stop()


# ---- records in, records out --------------------------------------------------------------
def _trade(price: str, ts: int, symbol: str = "SPY") -> Trade:
    return Trade(
        symbol=symbol, venue="T", price=to_fixed(price), size=to_fixed(100), source="test",
        ts_event=ts, ts_init=ts,
    )  # fmt: skip


def _order(
    coid: str, ts: int, *, account: str = "alice", qty: int = 10, limit: str | None = None,
    symbol: str = "SPY",
) -> OrderRequest:  # fmt: skip
    return OrderRequest(
        client_order_id=coid, strategy_id="test", account=account, symbol=symbol,
        side=Side.BUY, quantity=to_fixed(qty),
        order_type=OrderType.LIMIT if limit else OrderType.MARKET,
        limit_price=to_fixed(limit) if limit else None, ts_event=ts, ts_init=ts,
    )  # fmt: skip


class Topics:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.names = TopicNames(settings.topic_prefix)
        self.producer = RecordProducer(settings, "test")

    def send(self, *records: Trade | OrderRequest, headers: Any = None) -> None:
        for record in records:
            topic = self.names.trades if isinstance(record, Trade) else self.names.approved_orders
            self.producer.send(topic, record, key=record.symbol, headers=headers)
        self.producer.flush()

    def read(
        self,
        topic: str,
        done: Callable[[list[Any]], bool],
        timeout: float = 30.0,
        decode: bool = True,
    ) -> list[Any]:
        """(record, message) pairs from the start (read_committed) until ``done(records)``
        holds, then for one more second, so that anything extra is seen too. Without
        ``decode`` the record is the raw value."""
        consumer = Consumer(consumer_config(self.settings, f"reader-{uuid.uuid4().hex}"))
        consumer.subscribe([topic])
        out: list[Any] = []
        deadline, quiet_until = time.monotonic() + timeout, None
        try:
            while time.monotonic() < deadline:
                if quiet_until is not None and time.monotonic() > quiet_until:
                    break
                msg = consumer.poll(0.1)
                if msg is not None and msg.error() is None:
                    value = msg.value()
                    record = _SERDE.decode(value) if decode and value is not None else value
                    out.append((record, msg))
                if quiet_until is None and done([r for r, _ in out]):
                    quiet_until = time.monotonic() + 1.0
        finally:
            consumer.close()
        return out

    def reports(self, done: Callable[[list[ExecutionReport]], bool], **kw: Any) -> list:
        return [r for r, _ in self.read(self.names.execution_reports, done, **kw)]


def _types(reports: list[ExecutionReport], coid: str) -> list[ExecType]:
    return [r.exec_type for r in reports if r.client_order_id == coid]


def _has(coid: str, *types: ExecType) -> Callable[[list[ExecutionReport]], bool]:
    return lambda reports: all(t in _types(reports, coid) for t in types)


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# ---- tests --------------------------------------------------------------------------------
def test_paper_order_is_acknowledged_then_filled_at_the_trade_it_meets(
    exec_settings: Settings, start
) -> None:
    topics = Topics(exec_settings)
    latency_before = _metric("trading_order_latency_seconds_count", venue="PAPER")
    latency_sum_before = _metric("trading_order_latency_seconds_sum", venue="PAPER")
    run = start(CountingPaper())
    approved_at = time.time_ns() - 250_000_000  # the gate approved it 250 ms ago
    topics.send(_trade("101.25", T0), _trade("101.50", T0 + SEC))
    topics.send(_order("o-1", T0 + SEC), headers=[(APPROVED_AT_HEADER, str(approved_at))])

    records = topics.read(topics.names.execution_reports, _has("o-1", ExecType.FILL))
    reports = [r for r, _ in records]
    assert _types(reports, "o-1") == [ExecType.NEW, ExecType.FILL]
    new, filled = reports
    assert new.order_status == OrderStatus.NEW and new.leaves_quantity == to_fixed(10)
    assert (filled.order_status, filled.cum_quantity, filled.leaves_quantity) == (
        OrderStatus.FILLED, to_fixed(10), 0,
    )  # fmt: skip
    assert filled.last_price == filled.avg_price == to_fixed("101.50")  # the trade at T0+1s
    assert filled.venue == "PAPER" and filled.venue_order_id == "PAPER-o-1"
    for _, msg in records:  # keyed by symbol, correlated by client order id
        assert msg.key() == b"SPY"
        assert dict(msg.headers())[CORRELATION_HEADER] == b"o-1"
    fills = [f for f, _ in topics.read(topics.names.fills, lambda fs: len(fs) >= 1)]
    assert [(f.client_order_id, f.quantity, f.price) for f in fills] == [
        ("o-1", to_fixed(10), to_fixed("101.50"))
    ]
    assert isinstance(fills[0], Fill) and fills[0].ts_event == T0 + SEC
    # latency: from the approval header to the venue's acknowledgement
    assert _metric("trading_order_latency_seconds_count", venue="PAPER") == latency_before + 1
    latency = _metric("trading_order_latency_seconds_sum", venue="PAPER") - latency_sum_before
    assert 0.25 <= latency < 5
    run.stop()


def test_a_duplicate_approved_record_is_submitted_once(exec_settings: Settings, start) -> None:
    topics = Topics(exec_settings)
    venue = CountingPaper()
    run = start(venue)
    topics.send(_trade("100", T0))
    topics.send(_order("dup", T0), _order("dup", T0))  # redelivered at once
    reports = topics.reports(_has("dup", ExecType.FILL))
    topics.send(_order("dup", T0), _order("other", T0))  # and again once it is done
    reports = topics.reports(_has("other", ExecType.FILL))
    assert venue.submits == {"dup": 1, "other": 1}
    assert _types(reports, "dup") == [ExecType.NEW, ExecType.FILL]
    run.stop()
    # a new instance knows it from Redis: the order's end was committed
    venue = CountingPaper()
    run = start(venue)
    topics.send(_order("dup", T0), _order("third", T0))
    reports = topics.reports(_has("third", ExecType.FILL))
    run.stop()
    assert venue.submits == {"third": 1}
    assert _types(reports, "dup") == [ExecType.NEW, ExecType.FILL]
    # (filled at the trade the first instance consumed: the new paper venue is warmed up)
    assert _types(reports, "third") == [ExecType.NEW, ExecType.FILL]


def test_a_reservation_left_by_a_dead_instance_is_submitted_once_and_not_lost(
    exec_settings: Settings, start
) -> None:
    """The instance before reserved the id and died before committing; the venue never
    got the order: it is submitted now, once."""
    topics = Topics(exec_settings)
    client = redis.Redis.from_url(exec_settings.redis_url())
    client.set(f"{exec_settings.topic_prefix}exec:submit:lost", b"reserved")
    venue = CountingPaper()
    run = start(venue)
    topics.send(_trade("100", T0), _order("lost", T0))
    reports = topics.reports(_has("lost", ExecType.FILL))
    assert venue.submits == {"lost": 1}
    assert _types(reports, "lost") == [ExecType.NEW, ExecType.FILL]
    run.stop()
    # the order's end is committed: the reservation now says so
    assert client.get(f"{exec_settings.topic_prefix}exec:submit:lost") == b"done"


def test_an_order_the_venue_already_has_is_adopted_not_submitted_again(
    exec_settings: Settings, start
) -> None:
    """The instance before submitted it and died before committing: the venue has it
    (filled); its reports come out once, and the venue sees no second submission."""
    topics = Topics(exec_settings)
    redis.Redis.from_url(exec_settings.redis_url()).set(
        f"{exec_settings.topic_prefix}exec:submit:had", b"reserved"
    )
    venue = CountingPaper()
    venue.connect(lambda _event: None)  # the dead instance's session
    venue.on_market_data(_trade("99", T0).model_dump())
    order = _order("had", T0)
    venue.submit(OrderSubmission("had", "alice", "SPY", Side.BUY, OrderType.MARKET,
                                 order.quantity, ts_event=T0))  # fmt: skip
    run = start(venue)
    topics.send(order)
    reports = topics.reports(_has("had", ExecType.FILL))
    assert venue.submits == {"had": 1}  # the dead instance's only
    assert _types(reports, "had") == [ExecType.NEW, ExecType.FILL]
    assert reports[-1].avg_price == to_fixed(99) and reports[-1].cum_quantity == order.quantity
    run.stop()


def test_a_halt_cancels_the_accounts_working_orders_within_a_second(
    exec_settings: Settings, start
) -> None:
    topics = Topics(exec_settings)
    venue = CountingPaper()
    run = start(venue)
    # limits far below the market: they work and never fill
    topics.send(_trade("100", T0))
    topics.send(
        _order("a-1", T0, limit="50"),
        _order("a-2", T0, limit="51"),
        _order("b-1", T0, limit="50", account="bob"),
    )
    topics.reports(lambda rs: all(_types(rs, c) == [ExecType.NEW] for c in ("a-1", "a-2", "b-1")))

    ControlPlane(exec_settings).set_state(
        TradingState.HALTED, account="alice", reason="desk review", issued_by="test"
    )
    halted_at = time.monotonic()
    done = lambda rs: all(ExecType.CANCELED in _types(rs, c) for c in ("a-1", "a-2"))  # noqa: E731
    consumer = Consumer(consumer_config(exec_settings, f"reader-{uuid.uuid4().hex}"))
    consumer.subscribe([topics.names.execution_reports])
    seen: list[ExecutionReport] = []
    try:
        while not done(seen) and time.monotonic() - halted_at < 10:
            msg = consumer.poll(0.05)
            if msg is not None and msg.error() is None:
                seen.append(_SERDE.decode(msg.value()))
        took = time.monotonic() - halted_at
    finally:
        consumer.close()
    assert done(seen), [(r.client_order_id, r.exec_type) for r in seen]
    assert took < 1.0, f"cancelled {took:.2f} s after the halt"
    for coid in ("a-1", "a-2"):
        assert _types(seen, coid) == [ExecType.NEW, ExecType.PENDING_CANCEL, ExecType.CANCELED]
    pending = next(r for r in seen if r.exec_type == ExecType.PENDING_CANCEL)
    assert "HALTED" in (pending.reason or "") and "desk review" in (pending.reason or "")

    # an order of the halted account that arrives anyway is rejected, never submitted
    topics.send(_order("a-3", T0 + SEC))
    reports = topics.reports(_has("a-3", ExecType.REJECTED))
    assert _types(reports, "a-3") == [ExecType.REJECTED]
    assert "HALTED" in (next(r for r in reports if r.client_order_id == "a-3").reason or "")
    assert "a-3" not in venue.submits
    assert _types(reports, "b-1") == [ExecType.NEW]  # bob trades on
    run.stop()


def test_an_order_replaced_at_the_venue_outside_the_gate_is_canceled(
    exec_settings: Settings, start
) -> None:
    """Someone changes a working order at the venue (its web UI, another tool): the risk
    gate approved 10, not 1000, so execution takes it off the market."""
    topics = Topics(exec_settings)
    venue = CountingPaper()
    run = start(venue)
    topics.send(_trade("100", T0), _order("edited", T0, limit="50"))
    topics.reports(_has("edited", ExecType.NEW))
    venue.modify("edited", None, quantity=to_fixed(1000))
    reports = topics.reports(_has("edited", ExecType.CANCELED))
    run.stop()
    assert _types(reports, "edited") == [
        ExecType.NEW,
        ExecType.PENDING_CANCEL,
        ExecType.CANCELED,
    ]
    pending = next(r for r in reports if r.exec_type == ExecType.PENDING_CANCEL)
    assert "replaced at the venue without a risk decision" in (pending.reason or "")
    assert venue.submits == {"edited": 1}


def test_refused_venue_events_are_counted_and_never_published(
    exec_settings: Settings, start
) -> None:
    topics = Topics(exec_settings)
    overfill = (
        "trading_order_events_refused_total",
        {"venue": "PAPER", "reason": "AFTER_TERMINAL"},
    )
    before = _metric(overfill[0], **overfill[1])
    run = start(ChattyVenue())
    topics.send(_trade("100", T0), _order("chatty", T0))
    reports = topics.reports(_has("chatty", ExecType.FILL))
    fills = [f for f, _ in topics.read(topics.names.fills, lambda fs: len(fs) >= 1)]
    run.stop()
    assert _types(reports, "chatty") == [ExecType.NEW, ExecType.FILL]
    assert len(fills) == 1 and fills[0].quantity == to_fixed(10)
    # the repeated fill is a repeat (ignored); the extra fill and the NEW after FILLED are
    # refused and counted
    assert _metric(overfill[0], **overfill[1]) == before + 2


def test_an_unreachable_venue_is_retried_then_the_order_is_rejected_with_the_reason(
    exec_settings: Settings, start
) -> None:
    topics = Topics(exec_settings)
    settings = _with(exec_settings, submit_retries=2, retry_backoff_ms=20)
    before = _metric("trading_orders_rejected_total", venue="PAPER", reason="VENUE_UNAVAILABLE")
    venue = UnreachableVenue()
    run = start(venue, settings)
    topics.send(_trade("100", T0), _order("down", T0))
    reports = topics.reports(_has("down", ExecType.REJECTED))
    run.stop()
    assert venue.submits == {"down": 3}  # the first try and two retries
    (rejected,) = [r for r in reports if r.client_order_id == "down"]
    assert rejected.order_status == OrderStatus.REJECTED
    assert "unavailable after 3 attempts" in (rejected.reason or "")
    assert "connection refused" in (rejected.reason or "")
    assert (
        _metric("trading_orders_rejected_total", venue="PAPER", reason="VENUE_UNAVAILABLE")
        == before + 1
    )


def test_the_venues_refusal_rejects_the_order_with_its_reason(
    exec_settings: Settings, start
) -> None:
    topics = Topics(exec_settings)
    before = _metric("trading_orders_rejected_total", venue="PAPER", reason="VENUE_REJECTED")
    run = start(CountingPaper())
    no_limit = _order("nolimit", T0).model_copy(update={"order_type": OrderType.LIMIT})
    topics.send(_trade("100", T0), no_limit)
    reports = topics.reports(_has("nolimit", ExecType.REJECTED))
    run.stop()
    (rejected,) = [r for r in reports if r.client_order_id == "nolimit"]
    assert rejected.reason == "a LIMIT order needs a limit price"  # the venue's own words
    after = _metric("trading_orders_rejected_total", venue="PAPER", reason="VENUE_REJECTED")
    assert after == before + 1


def test_an_undecodable_approved_record_is_dead_lettered_and_the_next_order_still_fills(
    exec_settings: Settings, start
) -> None:
    topics = Topics(exec_settings)
    run = start(CountingPaper())
    topics.producer.send_raw(topics.names.approved_orders, b"\x00not avro", key="SPY")
    topics.send(_trade("100", T0), _order("after", T0))
    topics.reports(_has("after", ExecType.FILL))
    letters = topics.read(
        topics.names.dead_letter("execution"), lambda ms: len(ms) >= 1, decode=False
    )
    run.stop()
    assert len(letters) == 1
    msg = letters[0][1]
    headers = dict(msg.headers())
    assert msg.value() == b"\x00not avro"
    assert headers["dlq.original.topic"] == topics.names.approved_orders.encode()
    assert headers["dlq.error.class"] == b"SerdeError"


def test_after_a_restart_the_book_is_rebuilt_and_the_paper_venue_works_it_on(
    exec_settings: Settings, start
) -> None:
    topics = Topics(exec_settings)
    run = start(CountingPaper())
    topics.send(_trade("100", T0), _order("rest", T0, limit="95"))
    topics.reports(_has("rest", ExecType.NEW))
    run.stop()
    changelog = topics.read(topics.names.name(CHANGELOG), lambda ms: len(ms) >= 1, decode=False)
    entry, msg = changelog[-1]
    assert msg.key() == b"rest"
    assert json.loads(entry)["status"] == "NEW"

    venue = CountingPaper()  # a new process: the paper venue starts empty
    run = start(venue)
    topics.send(_trade("94", T0 + SEC))  # crosses the limit
    reports = topics.reports(_has("rest", ExecType.FILL))
    run.stop()
    assert venue.submits == {}  # restored, not submitted again
    assert _types(reports, "rest") == [ExecType.NEW, ExecType.FILL]
    assert reports[-1].last_price == to_fixed(94)
    # done: the changelog's key is tombstoned, the book of a next start is empty
    changelog = topics.read(topics.names.name(CHANGELOG), lambda ms: len(ms) >= 2, decode=False)
    assert changelog[-1][1].key() == b"rest" and changelog[-1][1].value() is None


def test_at_least_once_mode_without_transactions_fills_too(exec_settings: Settings, start) -> None:
    topics = Topics(exec_settings)
    run = start(CountingPaper(), _with(exec_settings, exactly_once=False))
    topics.send(_trade("100", T0), _order("alo", T0))
    reports = topics.reports(_has("alo", ExecType.FILL))
    run.stop()
    assert _types(reports, "alo") == [ExecType.NEW, ExecType.FILL]


def test_the_approval_header_is_the_one_the_risk_gate_sets() -> None:
    assert risk_gate.APPROVED_AT_HEADER == APPROVED_AT_HEADER


def test_alpaca_is_never_built_in_a_backtest_namespace(settings: Settings) -> None:
    def with_prefix(prefix: str) -> Settings:
        return load_settings(
            topic_prefix=prefix,
            execution={"broker": "alpaca"},
            # credentials are there: only the namespace can refuse it
            feeds={"alpaca_api_key_id": "key", "alpaca_api_secret_key": "secret"},
        )

    with pytest.raises(ConfigError, match="OMNIQUANT_EXECUTION__BROKER=alpaca") as refused:
        build_broker(with_prefix("bt-42."))
    assert "backtest namespace" in str(refused.value)
    live = build_broker(with_prefix("omniquant."))  # built (not connected) elsewhere
    assert isinstance(live, AlpacaBroker) and live.live


def test_the_execution_stage_refuses_a_live_venue_in_a_backtest_namespace_at_start(
    settings: Settings,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIQUANT_")}
    env.update(
        OMNIQUANT_TOPIC_PREFIX="bt-9.",
        OMNIQUANT_EXECUTION__BROKER="kite",
        OMNIQUANT_FEEDS__KITE_API_KEY="key",
        OMNIQUANT_FEEDS__KITE_ACCESS_TOKEN="token",
        KAFKA_BOOTSTRAP_SERVERS=settings.kafka_bootstrap(),
        REDIS_URL=settings.redis_url(),
    )
    out = subprocess.run(
        [sys.executable, "-m", "omniquant.cli", "stage", "execution"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode != 0
    assert "OMNIQUANT_EXECUTION__BROKER=kite" in out.stderr + out.stdout


def test_a_live_venue_is_refused_in_a_backtest_namespace(exec_settings: Settings) -> None:
    class LiveVenue(CountingPaper):
        live = True

    backtest = exec_settings.model_copy(update={"topic_prefix": "bt-7."})
    with pytest.raises(ConfigError, match="OMNIQUANT_EXECUTION__BROKER"):
        ExecutionConsumer(backtest, "execution", LiveVenue())
    # the paper venue is what a backtest uses
    assert isinstance(build_broker(backtest), PaperBroker)
