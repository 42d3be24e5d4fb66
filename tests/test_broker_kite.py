"""The Kite broker (brokers.kite) against a loopback Kite Connect (tests/loopback/kite.py):
kiteconnect's own client talks HTTP to 127.0.0.1, the loopback posts postbacks to the
broker's real listener; answers and postbacks are built from Zerodha's kiteconnect-mocks."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import shared_file
from loopback.kite import MOCKS, KiteLoopback

from brokers.base import BrokerEvent, BrokerRejected, BrokerUnavailable, OrderSubmission
from brokers.kite import KiteBroker, kite_tag
from brokers.kite.parsing import broker_order, plain_order, split_symbol
from core.config import load_settings
from core.errors import MissingCredentialError
from schemas.fixedpoint import to_fixed
from schemas.models import ExecType, OrderStatus, OrderType, Side, TimeInForce

COID = "sma-x-NSE_INFY-6f1c2a9b0d3e4f5a6b7c8d9e0f1a2b3c"


def fx(text: str) -> int:
    return to_fixed(Decimal(text))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Events:
    """Events from the broker's listener and poll threads, waited for by the test."""

    def __init__(self) -> None:
        self.items: list[BrokerEvent] = []
        self._changed = threading.Condition()

    def __call__(self, event: BrokerEvent) -> None:
        with self._changed:
            self.items.append(event)
            self._changed.notify_all()

    def wait(self, count: int, timeout: float = 10.0) -> list[BrokerEvent]:
        return self.until(lambda items: len(items) >= count, timeout)

    def until(
        self, done: Callable[[list[BrokerEvent]], bool], timeout: float = 10.0
    ) -> list[BrokerEvent]:
        with self._changed:
            if not self._changed.wait_for(lambda: done(self.items), timeout):
                raise AssertionError(f"events did not arrive: {self.items}")
            return list(self.items)


def order(
    coid: str = COID,
    qty: str = "100",
    *,
    order_type: OrderType = OrderType.LIMIT,
    limit: str | None = "1573.70",
    side: Side = Side.BUY,
    symbol: str = "NSE:INFY",
    tif: TimeInForce = TimeInForce.DAY,
) -> OrderSubmission:
    return OrderSubmission(
        client_order_id=coid,
        account="kite",
        symbol=symbol,
        side=side,
        order_type=order_type,
        quantity=fx(qty),
        time_in_force=tif,
        limit_price=None if limit is None else fx(limit),
    )


def mock(root: Path, name: str) -> Any:
    return json.loads(shared_file(root, f"{MOCKS}/{name}").read_text(), parse_float=Decimal)


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def kite(shared_data: Path, port: int) -> Iterator[KiteLoopback]:
    shared_file(shared_data, f"{MOCKS}/orders.json")
    with KiteLoopback(shared_data, postback_url=f"http://127.0.0.1:{port}/kite/postback") as server:
        yield server


def start(kite: KiteLoopback, port: int, **execution: Any) -> tuple[KiteBroker, Events]:
    settings = {"kite_postback_port": port, "kite_poll_interval_ms": 60_000, **execution}
    broker = KiteBroker(kite.settings(broker_timeout_ms=3000, **settings))
    events = Events()
    broker.connect(events)
    return broker, events


@pytest.fixture
def connected(kite: KiteLoopback, port: int) -> Iterator[tuple[KiteBroker, Events]]:
    broker, events = start(kite, port)  # polls only when the test says (poll())
    try:
        yield broker, events
    finally:
        broker.close()


# ---- place / modify / cancel -------------------------------------------------------------
def test_place_sends_kite_fields_and_maps_the_acknowledgement(
    kite: KiteLoopback, connected: tuple[KiteBroker, Events], shared_data: Path
) -> None:
    broker, _ = connected
    ack = broker.submit(order())
    placed = [r for r in kite.requests if r[0] == "POST"]
    assert placed == [
        (
            "POST",
            "/orders/regular",
            {
                "variety": "regular",
                "exchange": "NSE",
                "tradingsymbol": "INFY",
                "transaction_type": "BUY",
                "quantity": "100",
                "product": "MIS",
                "order_type": "LIMIT",
                "price": "1573.7",
                "validity": "DAY",
                "tag": kite_tag(COID),
            },
        )
    ]
    assert kite.placements(kite_tag(COID)) == 1
    [order_id] = kite.order_ids(kite_tag(COID))
    booked = kite.order(order_id)
    assert booked.keys() == mock(shared_data, "orders.json")["data"][0].keys()
    assert (ack.client_order_id, ack.venue_order_id, ack.symbol, ack.side) == (
        COID,
        order_id,
        "NSE:INFY",
        Side.BUY,
    )
    assert (ack.status, ack.quantity, ack.filled_quantity) == (OrderStatus.NEW, fx("100"), 0)


def test_modify_then_cancel_round_trip_with_postback_events(
    kite: KiteLoopback, connected: tuple[KiteBroker, Events]
) -> None:
    broker, events = connected
    ack = broker.submit(order())
    changed = broker.modify(COID, ack.venue_order_id, quantity=fx("120"), limit_price=fx("1574.05"))
    assert kite.requests[-2][:2] == ("PUT", f"/orders/regular/{ack.venue_order_id}")
    assert kite.requests[-2][2] == {
        "variety": "regular",
        "order_id": ack.venue_order_id,
        "quantity": "120",
        "price": "1574.05",
    }
    assert (changed.quantity, changed.status) == (fx("120"), OrderStatus.NEW)
    [replaced] = events.wait(1)
    assert (replaced.exec_type, replaced.status, replaced.raw_event) == (
        ExecType.REPLACED,
        OrderStatus.NEW,
        "UPDATE",
    )
    broker.cancel(COID, None)
    assert kite.requests[-1][:2] == ("DELETE", f"/orders/regular/{ack.venue_order_id}")
    canceled = events.wait(2)[-1]
    assert (canceled.exec_type, canceled.status, canceled.client_order_id) == (
        ExecType.CANCELED,
        OrderStatus.CANCELED,
        COID,
    )
    with pytest.raises(BrokerRejected, match="InputException"):
        broker.cancel(COID, ack.venue_order_id)


def test_a_resubmit_after_a_lost_answer_does_not_place_twice(
    kite: KiteLoopback, connected: tuple[KiteBroker, Events]
) -> None:
    broker, _ = connected
    kite.refuse_next(
        "POST", "/orders", 503, "NetworkException", "Gateway timed out", after_booking=True
    )
    with pytest.raises(BrokerUnavailable, match="NetworkException"):
        broker.submit(order())
    again = broker.submit(order())
    assert kite.placements(kite_tag(COID)) == 1
    assert again.venue_order_id == kite.order_ids(kite_tag(COID))[0]


# ---- postbacks and the poll --------------------------------------------------------------
def test_postback_fills_become_partial_and_full_fill_events(
    kite: KiteLoopback, connected: tuple[KiteBroker, Events], shared_data: Path
) -> None:
    broker, events = connected
    ack = broker.submit(order())
    order_id = ack.venue_order_id
    body = kite.fill(order_id, 40, "1573.70")
    assert body.keys() == mock(shared_data, "postback.json").keys()  # Kite's postback shape
    kite.fill(order_id, 60, "1573.80")
    partial, full = events.wait(2)
    assert [status for _, status in kite.postbacks] == [200, 200]
    assert (partial.exec_type, partial.status) == (
        ExecType.PARTIAL_FILL,
        OrderStatus.PARTIALLY_FILLED,
    )
    assert (partial.last_quantity, partial.last_price, partial.cum_quantity) == (
        fx("40"),
        fx("1573.70"),
        fx("40"),
    )
    assert partial.fill_id == f"{order_id}-40"
    # Kite sends no per-fill price: (1573.76 × 100 − 1573.70 × 40) / 60 = 1573.80
    assert (full.exec_type, full.status) == (ExecType.FILL, OrderStatus.FILLED)
    assert (full.last_quantity, full.last_price) == (fx("60"), fx("1573.80"))
    assert (full.cum_quantity, full.avg_price) == (fx("100"), fx("1573.76"))
    assert full.fill_id == f"{order_id}-100"


def test_postback_with_a_bad_checksum_is_refused_and_reports_nothing(
    kite: KiteLoopback, connected: tuple[KiteBroker, Events]
) -> None:
    broker, events = connected
    ack = broker.submit(order())
    kite.fill(ack.venue_order_id, 100, "1573.70", postback=False)
    assert kite.postback(ack.venue_order_id, checksum="0" * 64) == 401
    time.sleep(0.2)
    assert events.items == []
    assert kite.postback(ack.venue_order_id) == 200  # the genuine one still counts
    assert events.wait(1)[0].exec_type is ExecType.FILL


def test_poll_catches_a_missed_postback_and_the_late_postback_is_not_a_duplicate(
    kite: KiteLoopback, connected: tuple[KiteBroker, Events]
) -> None:
    broker, events = connected
    ack = broker.submit(order())
    kite.fill(ack.venue_order_id, 40, "1573.70", postback=False)  # missed
    broker.poll()
    [caught] = events.wait(1)
    assert (caught.exec_type, caught.status, caught.raw_event) == (
        ExecType.PARTIAL_FILL,
        OrderStatus.PARTIALLY_FILLED,
        "OPEN",  # the order book's word for a partly filled order
    )
    assert (caught.last_quantity, caught.last_price) == (fx("40"), fx("1573.70"))
    assert caught.fill_id == f"{ack.venue_order_id}-40"
    # the postback of that state arrives after all (Kite calls it UPDATE), then a poll again
    assert kite.postback(ack.venue_order_id, status="UPDATE") == 200
    broker.poll()
    time.sleep(0.2)
    assert events.items == [caught]
    # and the next fill is still reported once, whichever way it comes first
    kite.fill(ack.venue_order_id, 60, "1573.80")
    broker.poll()
    time.sleep(0.2)
    assert [(e.exec_type, e.last_quantity) for e in events.items] == [
        (ExecType.PARTIAL_FILL, fx("40")),
        (ExecType.FILL, fx("60")),
    ]


def test_the_poll_runs_by_itself_every_interval(kite: KiteLoopback, port: int) -> None:
    broker, events = start(kite, port, kite_poll_interval_ms=50)
    try:
        ack = broker.submit(order(qty="10", order_type=OrderType.MARKET, limit=None))
        kite.fill(ack.venue_order_id, 10, "1573.75", postback=False)
        arrived = events.until(lambda items: any(e.exec_type is ExecType.FILL for e in items))
        filled = next(e for e in arrived if e.exec_type is ExecType.FILL)
        assert (filled.last_quantity, filled.last_price) == (fx("10"), fx("1573.75"))
        time.sleep(0.3)  # more polls of the same state
        assert sum(e.exec_type is ExecType.FILL for e in events.items) == 1
    finally:
        broker.close()


# ---- reconcile ---------------------------------------------------------------------------
def test_get_order_finds_our_order_by_tag_and_open_orders_lists_the_working_ones(
    kite: KiteLoopback, connected: tuple[KiteBroker, Events]
) -> None:
    broker, _ = connected
    done = broker.submit(order("done-1", qty="5"))
    broker.submit(order("working-1", qty="7", side=Side.SELL))
    kite.fill(done.venue_order_id, 5, "1573.70")
    found = broker.get_order("done-1")
    assert found is not None
    assert (found.status, found.filled_quantity, found.avg_price) == (
        OrderStatus.FILLED,
        fx("5"),
        fx("1573.70"),
    )
    assert broker.get_order("never-placed") is None
    [working] = broker.open_orders()
    assert (working.client_order_id, working.side, working.quantity) == (
        "working-1",
        Side.SELL,
        fx("7"),
    )
    # a restarted broker knows no ids: the working order is listed under its tag
    fresh = KiteBroker(kite.settings())
    assert [o.client_order_id for o in fresh.open_orders()] == [kite_tag("working-1")]


def test_recorded_orders_map_to_broker_orders(shared_data: Path) -> None:
    book = {o["order_id"]: o for o in mock(shared_data, "orders.json")["data"]}
    complete = broker_order(plain_order(book["300000000000000"]), "x", ts_init=0)
    assert (complete.status, complete.quantity, complete.filled_quantity) == (
        OrderStatus.FILLED,
        fx("1"),
        fx("1"),
    )
    assert complete.avg_price == fx(str(book["300000000000000"]["average_price"]))
    assert (
        complete.symbol
        == f"{book['300000000000000']['exchange']}:{book['300000000000000']['tradingsymbol']}"
    )
    rejected = broker_order(plain_order(book["220524001859672"]), "y", ts_init=0)
    assert rejected.status is OrderStatus.REJECTED and rejected.reason


# ---- refusals ----------------------------------------------------------------------------
@pytest.mark.parametrize("qty", ["1.5", "0.000000001"])
def test_fractional_quantity_is_rejected_before_reaching_kite(
    kite: KiteLoopback, connected: tuple[KiteBroker, Events], qty: str
) -> None:
    broker, _ = connected
    with pytest.raises(BrokerRejected, match="whole shares"):
        broker.submit(order(qty=qty))
    assert kite.placements() == 0


def test_a_validity_kite_does_not_have_is_rejected(connected: tuple[KiteBroker, Events]) -> None:
    broker, _ = connected
    with pytest.raises(BrokerRejected, match="GTC"):
        broker.submit(order(tif=TimeInForce.GTC))


@pytest.mark.parametrize(
    ("status", "error_type", "refusal"),
    [
        (400, "InputException", BrokerRejected),
        (400, "OrderException", BrokerRejected),
        (500, "OrderException", BrokerRejected),
        (503, "NetworkException", BrokerUnavailable),
        (502, "DataException", BrokerUnavailable),
        (500, "GeneralException", BrokerUnavailable),
    ],
)
def test_kite_errors_map_to_rejected_or_unavailable(
    kite: KiteLoopback,
    connected: tuple[KiteBroker, Events],
    status: int,
    error_type: str,
    refusal: type[Exception],
) -> None:
    broker, _ = connected
    kite.refuse_next(
        "POST", "/orders", status, error_type, "Insufficient funds. Required margin is 95417.84"
    )
    with pytest.raises(refusal, match="Insufficient funds"):
        broker.submit(order())


def test_unreachable_kite_is_unavailable(kite: KiteLoopback) -> None:
    broker = KiteBroker(kite.settings(broker_timeout_ms=500))
    kite.stop()
    with pytest.raises(BrokerUnavailable, match="ConnectionError"):
        broker.get_order(COID)


def test_an_expired_token_is_a_rejection_naming_the_token_error(kite: KiteLoopback) -> None:
    settings = load_settings(
        execution={"kite_root_url": kite.url},
        feeds={"kite_api_key": kite.api_key, "kite_access_token": "yesterday"},
    )
    with pytest.raises(BrokerRejected, match="TokenException"):
        KiteBroker(settings).get_order(COID)


def test_missing_credentials_name_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KITE_API_KEY", "KITE_ACCESS_TOKEN", "KITE_API_SECRET"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(MissingCredentialError) as missing:
        KiteBroker(load_settings(feeds={}, execution={"kite_postback_port": 8443}))
    for name in ("KITE_API_KEY", "KITE_ACCESS_TOKEN", "KITE_API_SECRET"):
        assert name in str(missing.value)


def test_tag_is_a_deterministic_20_character_digest() -> None:
    assert kite_tag(COID) == kite_tag(COID) and len(kite_tag(COID)) == 20
    assert kite_tag(COID) != kite_tag(COID + "x")
    assert kite_tag(COID).isalnum()


@pytest.mark.parametrize(
    ("symbol", "expected"),
    [("NSE:INFY", ("NSE", "INFY")), ("INFY", ("NSE", "INFY")), ("bse:SBIN", ("BSE", "SBIN"))],
)
def test_symbols_split_into_exchange_and_tradingsymbol(
    symbol: str, expected: tuple[str, str]
) -> None:
    assert split_symbol(symbol, "NSE") == expected
