"""Pure mapping between Kite Connect orders and the broker domain types. No I/O.

Kite's order objects (the ``GET /orders`` book, ``GET /orders/{id}`` history entries and
postbacks share one shape) are read by :func:`producers.kite.orders.order_to_records`, the
reader the Kite feed uses; its ExecutionReport (+ Fill) becomes a
:class:`~brokers.base.BrokerOrder` or :class:`~brokers.base.BrokerEvent` here.

Client order ids: Kite's ``tag`` holds at most 20 characters and ours up to 64, so an order
is tagged with :func:`kite_tag`, the first 20 hex digits of the BLAKE2b digest of our
client order id: deterministic (a restarted process finds its orders again by computing
the tag), and 80 bits make two of our ids sharing a tag beyond a day's worth of orders.
Lookups by client order id search the order book for that tag.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from brokers.base import BrokerEvent, BrokerOrder, BrokerRejected
from producers.kite.orders import order_to_records
from schemas.fixedpoint import FACTOR, from_fixed
from schemas.models import ExecutionReport, Fill, OrderStatus

__all__ = [
    "TAG_LENGTH",
    "StateKey",
    "broker_event",
    "broker_order",
    "kite_tag",
    "plain_order",
    "price_text",
    "shares",
    "split_symbol",
    "state_key",
]

TAG_LENGTH: Final = 20  # Kite's limit on an order's tag
_TEXT_TIME: Final = "%Y-%m-%d %H:%M:%S"  # how Kite writes order times (IST, no zone)

#: what makes an order's state new to the consumer: status, filled, quantity, limit price
StateKey = tuple[OrderStatus, int, int, Decimal | None]


def kite_tag(client_order_id: str) -> str:
    """The 20-character tag our order with this client order id carries at Kite."""
    return hashlib.blake2b(client_order_id.encode(), digest_size=TAG_LENGTH // 2).hexdigest()


def split_symbol(symbol: str, default_exchange: str) -> tuple[str, str]:
    """``"NSE:INFY"`` → ``("NSE", "INFY")``; a bare ``"INFY"`` is on ``default_exchange``."""
    exchange, colon, tradingsymbol = symbol.partition(":")
    if not colon:
        return default_exchange, symbol
    if not exchange or not tradingsymbol:
        raise BrokerRejected(f"kite: {symbol!r} is not EXCHANGE:TRADINGSYMBOL")
    return exchange.upper(), tradingsymbol


def shares(quantity: int) -> int:
    """Raw fixed-point quantity → whole shares; Kite trades no fractions."""
    whole, fraction = divmod(quantity, FACTOR)
    if fraction or whole <= 0:
        raise BrokerRejected(f"kite trades whole shares only, not {from_fixed(quantity)}")
    return whole


def price_text(raw: int) -> str:
    """Raw fixed-point price → plain decimal text for Kite's form fields (never ``1E+3``)."""
    return format(from_fixed(raw), "f")


def plain_order(order: Mapping[str, Any]) -> dict[str, Any]:
    """An order as the SDK hands it back → as Kite wrote it: the SDK turns some time fields
    into ``datetime`` (we read Kite's own text), and a float that slipped through becomes
    the decimal it was written as (its shortest repr)."""
    return {key: _plain(value) for key, value in order.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.strftime(_TEXT_TIME) if value.tzinfo is None else value.isoformat(sep=" ")
    if isinstance(value, float):
        return Decimal(repr(value))
    return value


def _records(order: Mapping[str, Any], ts_init: int) -> tuple[ExecutionReport, Fill | None]:
    return order_to_records(order, previous=None, ts_init=ts_init)


def broker_order(order: Mapping[str, Any], client_order_id: str, *, ts_init: int) -> BrokerOrder:
    """A Kite order object → BrokerOrder under our client order id. Raises FeedParseError."""
    report, _ = _records(order, ts_init)
    return BrokerOrder.from_report(report, client_order_id)


def broker_event(report: ExecutionReport, fill: Fill | None, client_order_id: str) -> BrokerEvent:
    """What :class:`~producers.kite.orders.OrderTracker` made of an update → BrokerEvent."""
    return BrokerEvent(
        client_order_id=client_order_id,
        venue_order_id=report.venue_order_id or "",
        exec_type=report.exec_type,
        status=report.order_status,
        last_quantity=report.last_quantity,
        last_price=report.last_price,
        cum_quantity=report.cum_quantity,
        avg_price=report.avg_price,
        fill_id=fill.fill_id if fill is not None else None,
        reason=report.reason,
        raw_event=report.raw_event,
        ts_event=report.ts_event,
    )


def state_key(report: ExecutionReport, order: Mapping[str, Any]) -> StateKey:
    """The state an update tells of, in our terms: a poll and a postback of the same state
    agree on it even where Kite's status words differ (``UPDATE`` / ``OPEN``)."""
    price = order.get("price")
    limit = Decimal(str(price)).normalize() if price is not None else None
    return (report.order_status, report.cum_quantity, report.quantity, limit)
