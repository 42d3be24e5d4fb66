"""Kite order objects → our ExecutionReport / Fill. Pure: no I/O, no clock.

The same order object arrives as a websocket order update (:mod:`producers.kite.messages`)
and as a postback (:mod:`producers.kite.postback`, ``postback.json``):

- Each update → one :class:`ExecutionReport`, ``raw_event`` = Kite's status verbatim;
  status mapping in :data:`_FIXED_STATUS` / :data:`_WORKING_STATUS`; unknown statuses →
  OTHER/UNKNOWN.
- A **Fill** when ``filled_quantity`` grows over what :class:`OrderTracker` last saw for the
  order: quantity = the increase; price = the price implied by the change of
  ``average_price × filled_quantity`` (Kite sends no per-fill price; the order's first
  fill is exact, later ones are as exact as Kite's rounded average, rounded half-even to
  1e-9), fill id ``"<order_id>-<filled_quantity>"`` (deterministic, so a duplicate via
  websocket and postback is idempotent downstream).
- Order times are IST wall-clock strings ``"YYYY-MM-DD HH:MM:SS"`` (India has no DST:
  fixed +05:30) → UTC ns; text with an explicit offset is read at that offset.
  ``client_order_id`` = the order's ``tag`` when set (our OMS places orders with
  ``tag=client_order_id``, ≤ 20 chars), else Kite's order id.

Numbers are read by the shared exact readers (:mod:`producers._fields`): ints, Decimals
and decimal text; a float is refused (``bad_decimal``), as the frames are decoded with
exact decimals. A missing or invalid field raises :class:`~core.errors.FeedParseError`.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any, Final

from core.errors import FeedParseError
from producers._fields import build, decimal_value, fixed_value, required, timestamp_value
from schemas.models import (
    ExecType,
    ExecutionReport,
    Fill,
    LiquiditySide,
    OrderStatus,
    Side,
)

__all__ = ["IST_OFFSET", "OrderProgress", "OrderTracker", "order_to_records"]

#: India Standard Time, the wall clock of Kite's order timestamps (no DST).
IST_OFFSET: Final = timedelta(hours=5, minutes=30)
_TIME_FIELDS: Final = ("exchange_update_timestamp", "exchange_timestamp", "order_timestamp")
#: the fields whose change makes a new report (its id is a digest of them)
_REPORT_FIELDS: Final = (
    "status",
    "quantity",
    "filled_quantity",
    "pending_quantity",
    "cancelled_quantity",
    "price",
    "trigger_price",
    "average_price",
    "exchange_update_timestamp",
)

# Kite status → (exec type, order status) when the status alone decides.
_FIXED_STATUS: Final[Mapping[str, tuple[ExecType, OrderStatus]]] = {
    "PUT ORDER REQ RECEIVED": (ExecType.PENDING_NEW, OrderStatus.PENDING_NEW),
    "VALIDATION PENDING": (ExecType.PENDING_NEW, OrderStatus.PENDING_NEW),
    "OPEN PENDING": (ExecType.PENDING_NEW, OrderStatus.PENDING_NEW),
    "AMO REQ RECEIVED": (ExecType.PENDING_NEW, OrderStatus.PENDING_NEW),
    "TRIGGER PENDING": (ExecType.NEW, OrderStatus.NEW),  # a stop order resting untriggered
    "CANCEL PENDING": (ExecType.PENDING_CANCEL, OrderStatus.PENDING_CANCEL),
    "COMPLETE": (ExecType.FILL, OrderStatus.FILLED),
    "CANCELLED": (ExecType.CANCELED, OrderStatus.CANCELED),
    "CANCELLED AMO": (ExecType.CANCELED, OrderStatus.CANCELED),
    "REJECTED": (ExecType.REJECTED, OrderStatus.REJECTED),
}
# Working-order statuses: exec type when no new fill came with it; the order status then
# follows the quantities (NEW / PARTIALLY_FILLED / FILLED). UPDATE = modified or partly
# filled (Kite postback docs).
_WORKING_STATUS: Final[Mapping[str, ExecType]] = {
    "OPEN": ExecType.NEW,
    "UPDATE": ExecType.REPLACED,
    "MODIFIED": ExecType.REPLACED,
    "MODIFY VALIDATION PENDING": ExecType.OTHER,
    "MODIFY PENDING": ExecType.OTHER,
}
_TERMINAL: Final = frozenset({OrderStatus.FILLED, OrderStatus.CANCELED, OrderStatus.REJECTED})
_SIDES: Final[Mapping[str, Side]] = {"BUY": Side.BUY, "SELL": Side.SELL}


@dataclass(frozen=True, slots=True)
class OrderProgress:
    """What we last saw filled on an order (for the fill-delta rule)."""

    filled: Decimal
    average_price: Decimal


def _qty(order: Mapping[str, Any], name: str, *, absent_is_zero: bool = False) -> Decimal:
    """A non-negative quantity or price as an exact Decimal."""
    if absent_is_zero and order.get(name) is None:
        return Decimal(0)
    value = required(order, name)
    result = decimal_value(value, name)
    if result < 0:
        raise FeedParseError("bad_value", f"field {name!r} is negative: {value!r:.40}")
    return result


def _text(order: Mapping[str, Any], name: str) -> str:
    """A required id or label; Kite sends some ids as numbers."""
    value = required(order, name)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise FeedParseError(
            "bad_field", f"field {name!r} must be a non-empty string: {value!r:.80}"
        )
    return value.strip()


def _event_time(order: Mapping[str, Any], ts_init: int) -> int:
    for name in _TIME_FIELDS:
        value = order.get(name)
        if isinstance(value, str) and value.strip():
            return timestamp_value(value.strip(), name, naive_utc_offset=IST_OFFSET)
    return ts_init


def _status(
    status: str, filled: Decimal, quantity: Decimal, new_fill: bool
) -> tuple[ExecType, OrderStatus]:
    fixed = _FIXED_STATUS.get(status)
    if fixed is not None:
        return fixed
    working = _WORKING_STATUS.get(status)
    if working is None:
        return ExecType.OTHER, OrderStatus.UNKNOWN
    if filled <= 0:
        order_status = OrderStatus.NEW
    elif filled < quantity:
        order_status = OrderStatus.PARTIALLY_FILLED
    else:
        order_status = OrderStatus.FILLED
    if new_fill:
        exec_type = ExecType.FILL if order_status is OrderStatus.FILLED else ExecType.PARTIAL_FILL
    elif working is ExecType.NEW and filled > 0:
        exec_type = ExecType.OTHER  # an OPEN restatement of a partly filled order
    else:
        exec_type = working
    return exec_type, order_status


def _int_text(value: Decimal) -> str:
    return str(int(value)) if value == value.to_integral_value() else str(value.normalize())


def order_to_records(
    order: Mapping[str, Any], *, previous: OrderProgress | None, ts_init: int
) -> tuple[ExecutionReport, Fill | None]:
    """One Kite order object → its ExecutionReport and, if ``filled_quantity`` grew past
    ``previous``, the Fill. Raises :class:`~core.errors.FeedParseError` on a missing or
    invalid field, naming the order."""
    order_id = _text(order, "order_id")
    try:
        return _records(order, order_id, previous, ts_init)
    except FeedParseError as exc:
        raise FeedParseError(exc.reason, f"order {order_id}: {exc}") from None


def _records(
    order: Mapping[str, Any], order_id: str, previous: OrderProgress | None, ts_init: int
) -> tuple[ExecutionReport, Fill | None]:
    status = _text(order, "status")
    side = _SIDES.get(_text(order, "transaction_type").upper())
    if side is None:
        raise FeedParseError("bad_field", f"transaction_type {order.get('transaction_type')!r:.20}")
    exchange = _text(order, "exchange")
    symbol = f"{exchange}:{_text(order, 'tradingsymbol')}"
    quantity = _qty(order, "quantity")
    filled = _qty(order, "filled_quantity", absent_is_zero=True)
    cancelled = _qty(order, "cancelled_quantity", absent_is_zero=True)
    average = _qty(order, "average_price", absent_is_zero=True)
    ts_event = _event_time(order, ts_init)

    before = previous.filled if previous is not None else Decimal(0)
    delta = filled - before
    fill_price: int | None = None  # fixed-point units
    if delta > 0 and average > 0:
        price = average
        if previous is not None and previous.filled > 0:
            implied = (average * filled - previous.average_price * previous.filled) / delta
            if implied > 0:
                price = implied
        fill_price = fixed_value(price, "average_price", rounded=True)
    exec_type, order_status = _status(status, filled, quantity, fill_price is not None)

    if order_status in _TERMINAL:
        leaves = Decimal(0)
    elif order.get("pending_quantity") is not None:
        leaves = _qty(order, "pending_quantity")
    else:
        leaves = max(quantity - filled - cancelled, Decimal(0))
    tag = order.get("tag")
    client_order_id = tag.strip() if isinstance(tag, str) and tag.strip() else order_id
    account = str(order.get("user_id") or order.get("placed_by") or "kite")
    reason = order.get("status_message")
    digest = hashlib.sha256(
        "|".join(str(order.get(k)) for k in _REPORT_FIELDS).encode()
    ).hexdigest()[:16]
    last_quantity = fixed_value(delta, "filled_quantity") if fill_price is not None else 0
    # what the report and its fill say alike: whose order, where, when
    same = dict(
        client_order_id=client_order_id,
        venue_order_id=order_id,
        account=account,
        symbol=symbol,
        side=side,
        venue=exchange,
        ts_event=ts_event,
        ts_init=ts_init,
    )
    report = build(
        ExecutionReport,
        report_id=f"{order_id}-{digest}",
        exec_type=exec_type,
        order_status=order_status,
        quantity=fixed_value(quantity, "quantity"),
        last_quantity=last_quantity,
        last_price=fill_price,
        cum_quantity=fixed_value(filled, "filled_quantity"),
        leaves_quantity=fixed_value(leaves, "pending_quantity"),
        avg_price=fixed_value(average, "average_price") if filled > 0 and average > 0 else None,
        reason=str(reason) if reason else None,
        raw_event=status,
        **same,
    )
    if fill_price is None:
        return report, None
    fill = build(
        Fill,
        fill_id=f"{order_id}-{_int_text(filled)}",
        quantity=last_quantity,
        price=fill_price,
        liquidity_side=LiquiditySide.NONE,
        **same,
    )
    return report, fill


class OrderTracker:
    """Per-order fill progress so each increase of ``filled_quantity`` becomes one Fill.

    Thread-safe: the websocket feed and the postback receiver may share one tracker, so an
    update delivered by both yields its Fill once. Entries are kept for the session (a
    trading day's orders); an update arriving out of order (a lower filled quantity than
    already seen) yields its report and no Fill.
    """

    def __init__(self) -> None:
        self._progress: dict[str, OrderProgress] = {}
        self._lock = threading.Lock()

    def apply(self, order: Mapping[str, Any], ts_init: int) -> tuple[ExecutionReport, Fill | None]:
        order_id = _text(order, "order_id")
        with self._lock:
            report, fill = order_to_records(
                order, previous=self._progress.get(order_id), ts_init=ts_init
            )
            if fill is not None:
                self._progress[order_id] = OrderProgress(
                    filled=_qty(order, "filled_quantity", absent_is_zero=True),
                    average_price=_qty(order, "average_price", absent_is_zero=True),
                )
            return report, fill

    def progress(self, order_id: str) -> OrderProgress | None:
        with self._lock:
            return self._progress.get(order_id)

    def snapshot(self) -> dict[str, list[str]]:
        with self._lock:
            return {k: [str(p.filled), str(p.average_price)] for k, p in self._progress.items()}

    def restore(self, snapshot: Mapping[str, list[str]]) -> None:
        with self._lock:
            self._progress = {
                k: OrderProgress(Decimal(v[0]), Decimal(v[1])) for k, v in snapshot.items()
            }
