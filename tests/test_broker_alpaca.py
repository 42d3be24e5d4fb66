"""The Alpaca broker (brokers.alpaca) against a loopback Alpaca (tests/loopback/alpaca.py):
the SDK's TradingClient and TradingStream talk HTTP and websocket to 127.0.0.1; nothing of
the SDK is mocked. Answers are built from Alpaca's recorded payloads."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import shared_file
from loopback.alpaca import ORDER_PAYLOADS, STREAM_EXAMPLES, AlpacaLoopback

from brokers.alpaca import AlpacaBroker
from brokers.alpaca.broker import trade_updates_url
from brokers.alpaca.parsing import broker_event, broker_order, original_client_order_id
from brokers.base import BrokerEvent, BrokerRejected, BrokerUnavailable, OrderSubmission
from core.config import ExecutionSettings, load_settings
from core.errors import ConfigError, MissingCredentialError
from schemas.fixedpoint import to_fixed
from schemas.models import ExecType, OrderStatus, OrderType, Side, TimeInForce


def fx(text: str) -> int:
    return to_fixed(Decimal(text))


class Events:
    """Events from the broker's stream thread, waited for by the test."""

    def __init__(self) -> None:
        self.items: list[BrokerEvent] = []
        self._changed = threading.Condition()

    def __call__(self, event: BrokerEvent) -> None:
        with self._changed:
            self.items.append(event)
            self._changed.notify_all()

    def wait(self, count: int, timeout: float = 10.0) -> list[BrokerEvent]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.items) >= count, timeout):
                raise AssertionError(f"{len(self.items)} events, wanted {count}: {self.items}")
            return list(self.items)


def order(
    coid: str = "sma-x-AAPL-0001",
    qty: str = "100",
    *,
    side: Side = Side.BUY,
    order_type: OrderType = OrderType.MARKET,
    limit: str | None = None,
    tif: TimeInForce = TimeInForce.DAY,
    symbol: str = "AAPL",
) -> OrderSubmission:
    return OrderSubmission(
        client_order_id=coid,
        account="alpaca",
        symbol=symbol,
        side=side,
        order_type=order_type,
        quantity=fx(qty),
        time_in_force=tif,
        limit_price=None if limit is None else fx(limit),
    )


def recorded(root: Path, name: str) -> Any:
    return json.loads(shared_file(root, name).read_text())


@pytest.fixture
def alpaca(shared_data: Path) -> Iterator[AlpacaLoopback]:
    shared_file(shared_data, ORDER_PAYLOADS)
    shared_file(shared_data, STREAM_EXAMPLES)
    with AlpacaLoopback(shared_data) as server:
        yield server


@pytest.fixture
def connected(alpaca: AlpacaLoopback) -> Iterator[tuple[AlpacaBroker, Events]]:
    broker = AlpacaBroker(alpaca.settings(broker_timeout_ms=3000, retry_backoff_ms=50))
    events = Events()
    broker.connect(events)
    try:
        yield broker, events
    finally:
        broker.close()


# ---- submit / acknowledge ----------------------------------------------------------------
def test_submit_sends_exact_decimal_text_and_maps_the_acknowledgement(
    alpaca: AlpacaLoopback, connected: tuple[AlpacaBroker, Events], shared_data: Path
) -> None:
    broker, events = connected
    ack = broker.submit(
        order(qty="12.5", order_type=OrderType.LIMIT, limit="187.1234", tif=TimeInForce.GTC)
    )
    method, path, body = alpaca.requests[-1]
    assert (method, path) == ("POST", "/v2/orders")
    assert body == {
        "symbol": "AAPL",
        "qty": "12.5",
        "side": "buy",
        "type": "limit",
        "time_in_force": "gtc",
        "client_order_id": "sma-x-AAPL-0001",
        "limit_price": "187.1234",
    }
    venue = alpaca.order("sma-x-AAPL-0001")
    template = recorded(shared_data, ORDER_PAYLOADS)["payloads"][0]["body"]
    assert venue.keys() == template.keys()  # the answer is the vendor's order object
    assert (ack.client_order_id, ack.venue_order_id, ack.symbol) == (
        "sma-x-AAPL-0001",
        venue["id"],
        "AAPL",
    )
    assert (ack.quantity, ack.filled_quantity, ack.avg_price) == (fx("12.5"), 0, None)
    assert ack.status is OrderStatus.PENDING_NEW  # Alpaca's "accepted"
    [new] = events.wait(1)
    assert (new.exec_type, new.status, new.raw_event) == (ExecType.NEW, OrderStatus.NEW, "new")
    assert new.venue_order_id == venue["id"] and new.client_order_id == "sma-x-AAPL-0001"


def test_resubmitting_a_client_order_id_returns_the_existing_order(
    alpaca: AlpacaLoopback, connected: tuple[AlpacaBroker, Events]
) -> None:
    broker, _ = connected
    first = broker.submit(order())
    again = broker.submit(order())
    assert alpaca.submissions("sma-x-AAPL-0001") == 2  # the venue saw both ...
    assert len(alpaca.orders()) == 1  # ... and booked one
    assert again.venue_order_id == first.venue_order_id
    assert again.client_order_id == first.client_order_id


def test_an_order_booked_behind_a_lost_answer_is_found_by_the_retry(
    alpaca: AlpacaLoopback, connected: tuple[AlpacaBroker, Events]
) -> None:
    broker, _ = connected
    alpaca.refuse_next("POST", "/v2/orders", 503, "service unavailable", after_booking=True)
    with pytest.raises(BrokerUnavailable, match="503"):
        broker.submit(order())
    retried = broker.submit(order())
    assert retried.venue_order_id == alpaca.order("sma-x-AAPL-0001")["id"]
    assert alpaca.submissions("sma-x-AAPL-0001") == 2 and len(alpaca.orders()) == 1


# ---- events through the websocket --------------------------------------------------------
def test_partial_then_full_fill_arrive_as_events_with_exact_prices(
    alpaca: AlpacaLoopback, connected: tuple[AlpacaBroker, Events]
) -> None:
    broker, events = connected
    broker.submit(order(qty="100"))
    events.wait(1)
    partial = alpaca.fill("sma-x-AAPL-0001", "40", "187.2512")
    full = alpaca.fill("sma-x-AAPL-0001", "60", "187.30")
    _, first, second = events.wait(3)
    assert (first.exec_type, first.status) == (ExecType.PARTIAL_FILL, OrderStatus.PARTIALLY_FILLED)
    assert (first.last_quantity, first.last_price) == (fx("40"), fx("187.2512"))
    assert (first.cum_quantity, first.avg_price) == (fx("40"), fx("187.2512"))
    assert first.fill_id == partial["data"]["execution_id"]
    assert (second.exec_type, second.status) == (ExecType.FILL, OrderStatus.FILLED)
    assert (second.last_quantity, second.last_price) == (fx("60"), fx("187.30"))
    # (40 × 187.2512 + 60 × 187.30) / 100 = 187.28048, as the venue's filled_avg_price says
    assert second.cum_quantity == fx("100")
    assert second.avg_price == fx(full["data"]["order"]["filled_avg_price"]) == fx("187.28048")
    assert second.fill_id == full["data"]["execution_id"] != first.fill_id
    assert second.ts_event > first.ts_event


def test_the_docs_fill_example_maps_field_by_field(shared_data: Path) -> None:
    examples = recorded(shared_data, STREAM_EXAMPLES)["examples"]
    data = next(
        e["message"]["data"] for e in examples if e["message"].get("stream") == "trade_updates"
    )
    event = broker_event(data)
    assert event.client_order_id == data["order"]["client_order_id"]
    assert event.venue_order_id == data["order"]["id"]
    assert (event.exec_type, event.status, event.raw_event) == (
        ExecType.FILL,
        OrderStatus.FILLED,
        "fill",
    )
    assert (event.last_quantity, event.last_price) == (fx(data["qty"]), fx(data["price"]))
    assert event.cum_quantity == fx(data["order"]["filled_qty"])
    assert event.avg_price == fx(data["order"]["filled_avg_price"])
    assert event.fill_id == data["execution_id"]
    assert event.ts_event == 1_650_390_305_024_916_716  # 2022-04-19T17:45:05.024916716Z


def test_recorded_rest_orders_map_to_broker_orders(shared_data: Path) -> None:
    payloads = {p["test"]: p["body"] for p in recorded(shared_data, ORDER_PAYLOADS)["payloads"]}
    accepted = broker_order(payloads["test_get_order_by_client_id"])
    assert accepted.client_order_id == "eb9e2aaa-f71a-4f51-b5b4-52a6c565dad4"
    assert accepted.venue_order_id == "61e69015-8549-4bfd-b9c3-01e75843f47d"
    assert (accepted.status, accepted.quantity, accepted.filled_quantity) == (
        OrderStatus.PENDING_NEW,
        fx("1"),
        0,
    )
    assert accepted.ts_event == 1_615_919_881_942_282_000  # updated_at 18:38:01.942282Z
    [listed] = [broker_order(o) for o in payloads["test_get_orders"]]
    assert (listed.symbol, listed.status, listed.side) == ("SPY", OrderStatus.NEW, Side.BUY)


def test_replacement_client_order_ids_map_back_to_ours() -> None:
    assert original_client_order_id("sma-x-AAPL-0001~r2") == "sma-x-AAPL-0001"
    assert original_client_order_id("sma-x-AAPL-0001") == "sma-x-AAPL-0001"
    assert original_client_order_id("odd~rx") == "odd~rx"


def test_stream_reconnects_after_a_drop_and_delivers_later_fills(
    alpaca: AlpacaLoopback, connected: tuple[AlpacaBroker, Events]
) -> None:
    broker, events = connected
    broker.submit(order())
    events.wait(1)
    alpaca.drop_streams()
    alpaca.wait_listening(1)
    alpaca.fill("sma-x-AAPL-0001", "100", "10.01")
    assert events.wait(2)[-1].exec_type is ExecType.FILL


# ---- cancel, modify, reconcile -----------------------------------------------------------
def test_cancel_gives_a_canceled_event_and_a_second_cancel_is_rejected(
    alpaca: AlpacaLoopback, connected: tuple[AlpacaBroker, Events]
) -> None:
    broker, events = connected
    ack = broker.submit(order())
    broker.cancel(ack.client_order_id, ack.venue_order_id)
    canceled = events.wait(2)[-1]
    assert (canceled.exec_type, canceled.status) == (ExecType.CANCELED, OrderStatus.CANCELED)
    assert alpaca.requests[-1][:2] == ("DELETE", f"/v2/orders/{ack.venue_order_id}")
    with pytest.raises(BrokerRejected, match="not cancelable"):
        broker.cancel(ack.client_order_id, ack.venue_order_id)
    with pytest.raises(BrokerRejected, match="no order"):
        broker.cancel("never-sent", None)


def test_modify_replaces_the_order_and_keeps_our_client_order_id(
    alpaca: AlpacaLoopback, connected: tuple[AlpacaBroker, Events]
) -> None:
    broker, events = connected
    ack = broker.submit(order(order_type=OrderType.LIMIT, limit="10.00"))
    events.wait(1)
    changed = broker.modify(
        ack.client_order_id, ack.venue_order_id, quantity=fx("150"), limit_price=fx("10.05")
    )
    method, _, body = alpaca.requests[-1]
    assert method == "PATCH"
    assert body == {"client_order_id": "sma-x-AAPL-0001~r1", "qty": "150", "limit_price": "10.05"}
    live = alpaca.order("sma-x-AAPL-0001")
    assert (changed.client_order_id, changed.venue_order_id, changed.quantity) == (
        "sma-x-AAPL-0001",
        live["id"],
        fx("150"),
    )
    replaced = events.wait(2)[-1]
    assert (replaced.exec_type, replaced.status) == (ExecType.REPLACED, OrderStatus.NEW)
    assert replaced.venue_order_id == live["id"] != ack.venue_order_id
    assert broker.get_order("sma-x-AAPL-0001").venue_order_id == live["id"]  # type: ignore[union-attr]
    # a cancel with the superseded id still reaches the live order
    broker.cancel("sma-x-AAPL-0001", ack.venue_order_id)
    assert events.wait(3)[-1].exec_type is ExecType.CANCELED


def test_get_order_and_open_orders_reconcile_with_the_venue(
    alpaca: AlpacaLoopback, connected: tuple[AlpacaBroker, Events]
) -> None:
    broker, events = connected
    broker.submit(order("filled-1"))
    broker.submit(order("working-1", side=Side.SELL, qty="5"))
    events.wait(2)
    alpaca.fill("filled-1", "100", "99.5")
    events.wait(3)
    filled = broker.get_order("filled-1")
    assert filled is not None
    assert (filled.status, filled.filled_quantity, filled.avg_price) == (
        OrderStatus.FILLED,
        fx("100"),
        fx("99.5"),
    )
    assert broker.get_order("never-sent") is None
    [working] = broker.open_orders()
    assert (working.client_order_id, working.side, working.quantity, working.status) == (
        "working-1",
        Side.SELL,
        fx("5"),
        OrderStatus.NEW,
    )


# ---- refusals and failures ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "message"),
    [(403, "insufficient buying power"), (422, "qty must be > 0"), (422, 'asset "XYZ" not found')],
)
def test_client_errors_are_rejections_with_the_venues_message(
    alpaca: AlpacaLoopback, connected: tuple[AlpacaBroker, Events], status: int, message: str
) -> None:
    broker, _ = connected
    alpaca.refuse_next("POST", "/v2/orders", status, message)
    with pytest.raises(BrokerRejected) as refused:
        broker.submit(order())
    assert message in str(refused.value) and f"HTTP {status}" in str(refused.value)


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_unavailable(
    alpaca: AlpacaLoopback, connected: tuple[AlpacaBroker, Events], status: int
) -> None:
    broker, _ = connected
    alpaca.refuse_next("POST", "/v2/orders", status, "internal server error")
    with pytest.raises(BrokerUnavailable, match=f"HTTP {status}"):
        broker.submit(order())
    alpaca.refuse_next("GET", "/v2/orders", status, "internal server error")
    with pytest.raises(BrokerUnavailable):
        broker.open_orders()


def test_unreachable_venue_is_unavailable(alpaca: AlpacaLoopback) -> None:
    broker = AlpacaBroker(alpaca.settings(broker_timeout_ms=500))
    alpaca.stop()
    with pytest.raises(BrokerUnavailable):
        broker.connect(lambda _: None)
    with pytest.raises(BrokerUnavailable, match="ConnectionError"):
        broker.get_order("anything")


def test_submit_before_connect_is_unavailable(alpaca: AlpacaLoopback) -> None:
    with pytest.raises(BrokerUnavailable, match="connect"):
        AlpacaBroker(alpaca.settings()).submit(order())


def test_refused_stream_credentials_stop_connect_with_a_config_error(
    alpaca: AlpacaLoopback,
) -> None:
    settings = load_settings(
        execution={
            "alpaca_trading_url": alpaca.trading_url,
            "alpaca_stream_url": alpaca.stream_url,
        },
        feeds={"alpaca_api_key_id": alpaca.key_id, "alpaca_api_secret_key": "wrong"},
    )
    broker = AlpacaBroker(settings)
    with pytest.raises(ConfigError, match="APCA_API_KEY_ID"):
        broker.connect(lambda _: None)
    with pytest.raises(BrokerRejected, match="HTTP 401"):
        broker.get_order("anything")


def test_missing_credentials_name_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("APCA_API_KEY_ID", "APCA_API_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(MissingCredentialError) as missing:
        AlpacaBroker(load_settings(feeds={}))
    assert "OMNIQUANT_FEEDS__ALPACA_API_KEY_ID" in str(missing.value)
    assert "OMNIQUANT_FEEDS__ALPACA_API_SECRET_KEY" in str(missing.value)


@pytest.mark.parametrize(
    ("trading", "stream", "expected"),
    [
        (None, None, None),
        ("https://paper-api.alpaca.markets", None, "wss://paper-api.alpaca.markets/stream"),
        ("http://127.0.0.1:8080/", None, "ws://127.0.0.1:8080/stream"),
        ("http://127.0.0.1:8080", "ws://elsewhere/stream", "ws://elsewhere/stream"),
    ],
)
def test_stream_url_follows_the_trading_url(
    trading: str | None, stream: str | None, expected: str | None
) -> None:
    settings = ExecutionSettings(alpaca_trading_url=trading, alpaca_stream_url=stream)
    assert trade_updates_url(settings) == expected
