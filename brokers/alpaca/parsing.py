"""Pure mapping between Alpaca's order objects and the broker domain types. No I/O.

Alpaca's order object (REST ``/v2/orders`` answers and the ``order`` of a ``trade_updates``
message) is read by :func:`producers.alpaca.parsing.parse_trade_update`, the same exact
reader the trade-updates feed uses (money fields are strings; floats are refused), and its
ExecutionReport / Fill become a :class:`~brokers.base.BrokerOrder` or
:class:`~brokers.base.BrokerEvent` here.

Replacements: Alpaca replaces an order by a new order with a new id and a new, unique
client order id. We name the replacement ``<client order id>~r<n>`` (our client order ids
never contain ``~``), so every order of the chain maps back to the client order id the
consumer knows (:func:`original_client_order_id`). The old order's status becomes
``replaced`` with ``replaced_by`` naming the new one; lookups follow that chain.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from brokers.base import BrokerEvent, BrokerOrder
from producers.alpaca.parsing import parse_trade_update
from schemas.fixedpoint import from_fixed
from schemas.models import ExecType, ExecutionReport, Fill, OrderStatus

__all__ = [
    "REPLACED",
    "broker_event",
    "broker_order",
    "decimal_text",
    "original_client_order_id",
    "replacement_client_order_id",
    "replacement_number",
]

_MARK: Final = "~r"
#: Alpaca's status of an order that a replacement superseded
REPLACED: Final = "replaced"
_ACCOUNT: Final = "alpaca"  # the records are not published; any account name will do


def decimal_text(raw: int) -> str:
    """Raw fixed-point → plain decimal text (``"100"``, ``"0.5"``; never ``"1E+2"``)."""
    return format(from_fixed(raw), "f")


def replacement_client_order_id(client_order_id: str, number: int) -> str:
    return f"{client_order_id}{_MARK}{number}"


def original_client_order_id(venue_client_order_id: str) -> str:
    """The client order id a (replacement) order at Alpaca stands for."""
    base, mark, number = venue_client_order_id.partition(_MARK)
    return base if mark and number.isdigit() else venue_client_order_id


def replacement_number(venue_client_order_id: str) -> int:
    """0 for an original order, n for its n-th replacement."""
    _, mark, number = venue_client_order_id.partition(_MARK)
    return int(number) if mark and number.isdigit() else 0


def _records(data: Mapping[str, Any]) -> tuple[ExecutionReport, Fill | None]:
    records = parse_trade_update(data, account=_ACCOUNT, ts_init=0)
    report, fill = records[0], records[1] if len(records) > 1 else None
    assert isinstance(report, ExecutionReport)
    assert fill is None or isinstance(fill, Fill)
    return report, fill


def broker_order(order: Mapping[str, Any]) -> BrokerOrder:
    """An Alpaca order object (REST answer) → BrokerOrder. Raises FeedParseError."""
    # the reader takes trade updates; an order on its own is one whose event is its status
    report, _ = _records({"event": order.get("status"), "order": order})
    return BrokerOrder.from_report(report, original_client_order_id(report.client_order_id))


def broker_event(update: Mapping[str, Any]) -> BrokerEvent:
    """The ``data`` of one ``trade_updates`` message → BrokerEvent. Raises FeedParseError."""
    report, fill = _records(update)
    order = update.get("order")
    status = report.order_status
    venue_order_id = report.venue_order_id or ""
    if report.exec_type is ExecType.REPLACED and isinstance(order, Mapping):
        # the event may carry the superseded order (status "replaced", which the record
        # reader calls CANCELED) or its replacement: either way the order goes on working,
        # now under the replacement's id
        status = OrderStatus.PARTIALLY_FILLED if report.cum_quantity > 0 else OrderStatus.NEW
        if order.get("replaced_by"):
            venue_order_id = str(order["replaced_by"])
    return BrokerEvent(
        client_order_id=original_client_order_id(report.client_order_id),
        venue_order_id=venue_order_id,
        exec_type=report.exec_type,
        status=status,
        last_quantity=report.last_quantity,
        last_price=report.last_price,
        cum_quantity=report.cum_quantity,
        avg_price=report.avg_price,
        fill_id=fill.fill_id if fill is not None else None,
        raw_event=report.raw_event,
        ts_event=report.ts_event,
    )
