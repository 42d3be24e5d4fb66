"""The order state machine of the execution consumer. Pure: no I/O, no clock.

One :class:`WorkingOrder` per client order id, in the states of
:class:`~schemas.models.OrderStatus`::

    PENDING_NEW ─ack─▶ NEW ─fill─▶ PARTIALLY_FILLED ─fill─▶ FILLED
         │              │                 │
         │              ├─────────────────┴──▶ PENDING_CANCEL ─▶ CANCELED
         │              │                          │ (fills still land; a refused
         └──────────────┴─▶ REJECTED, CANCELED,    │  cancel goes back to working)
                            EXPIRED ◀──────────────┘

PENDING_NEW is ours (sent, not acknowledged yet); every other state is the venue's.
FILLED, CANCELED, REJECTED and EXPIRED are terminal.

:func:`apply_event` takes a venue event (anything shaped like
:class:`brokers.base.BrokerEvent`, see :class:`VenueEvent`) and answers with a typed
:class:`Transition`, never an exception:

- :class:`Applied`: the order after the event, the :class:`~schemas.models.ExecutionReport`
  to publish and, for a fill, the :class:`~schemas.models.Fill`;
- :class:`Ignored`: a repeat that changes nothing (a fill id already booked, a second
  acknowledgement, a cancel confirmed twice): venues and reconnecting streams redeliver;
- :class:`Refused`: an event the table does not allow (anything after a terminal state,
  FILLED → NEW, a fill beyond the order's quantity, a fill without quantity or price). It
  is not applied; the caller logs and counts it.

Identities are deterministic, so replaying the same events gives the same records:
report ids are ``<client order id>:<exec type>`` for the once-per-order events (NEW and
the terminal ones), ``<client order id>:<fill id>`` for fills, and
``<client order id>:<exec type>:<revision>`` for the repeatable ones (PENDING_CANCEL, a
refused cancel). A fill without a venue fill id gets ``<client order id>:fill:<cum>``
(the cumulative quantity it brings the order to, which only one fill can).

:func:`reconcile` compares the book with the venue's view of an order (after a restart)
and returns the events that bring the book level with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Final, Protocol

from schemas.models import (
    ExecType,
    ExecutionReport,
    Fill,
    OrderRequest,
    OrderStatus,
    OrderType,
    Side,
    TimeInForce,
)

__all__ = [
    "TERMINAL",
    "Applied",
    "IgnoreReason",
    "Ignored",
    "OrderEvent",
    "Refusal",
    "Refused",
    "Transition",
    "VenueEvent",
    "VenueOrder",
    "WorkingOrder",
    "apply_event",
    "reconcile",
]

_S = OrderStatus
_E = ExecType

TERMINAL: Final = frozenset({_S.FILLED, _S.CANCELED, _S.REJECTED, _S.EXPIRED})
_FILLS: Final = frozenset({_E.PARTIAL_FILL, _E.FILL})
# What each exec type makes of an order (fills decide between PARTIALLY_FILLED and FILLED
# by quantity, whatever the venue labels them).
_STATUS_OF: Final = {
    _E.NEW: _S.NEW,
    _E.PENDING_CANCEL: _S.PENDING_CANCEL,
    _E.CANCELED: _S.CANCELED,
    _E.REJECTED: _S.REJECTED,
    _E.EXPIRED: _S.EXPIRED,
}
# Non-terminal state → exec types that move it on.
_ALLOWED: Final[Mapping[OrderStatus, frozenset[ExecType]]] = {
    _S.PENDING_NEW: frozenset(
        {_E.NEW, _E.PARTIAL_FILL, _E.FILL, _E.PENDING_CANCEL, _E.CANCELED, _E.REJECTED, _E.EXPIRED}
    ),
    _S.NEW: frozenset(
        {_E.PARTIAL_FILL, _E.FILL, _E.PENDING_CANCEL, _E.CANCELED, _E.REJECTED, _E.EXPIRED}
    ),
    _S.PARTIALLY_FILLED: frozenset(
        {_E.PARTIAL_FILL, _E.FILL, _E.PENDING_CANCEL, _E.CANCELED, _E.EXPIRED}
    ),
    # OTHER here is the venue refusing the cancel: the order works on
    _S.PENDING_CANCEL: frozenset({_E.PARTIAL_FILL, _E.FILL, _E.CANCELED, _E.EXPIRED, _E.OTHER}),
}
# Non-terminal state → exec types that only repeat what the order already is (a late or
# second acknowledgement, a second cancel request).
_REPEATS: Final[Mapping[OrderStatus, frozenset[ExecType]]] = {
    _S.PENDING_NEW: frozenset({_E.PENDING_NEW, _E.OTHER}),
    _S.NEW: frozenset({_E.PENDING_NEW, _E.NEW, _E.OTHER}),
    _S.PARTIALLY_FILLED: frozenset({_E.PENDING_NEW, _E.NEW, _E.OTHER}),
    _S.PENDING_CANCEL: frozenset({_E.PENDING_NEW, _E.NEW, _E.PENDING_CANCEL}),
}
_WORKING: Final = frozenset({_S.NEW, _S.PARTIALLY_FILLED})


class VenueEvent(Protocol):
    """What :func:`apply_event` reads from an event (:class:`brokers.base.BrokerEvent` has
    these fields; :class:`OrderEvent` is the same shape for events the consumer makes)."""

    @property
    def exec_type(self) -> ExecType: ...
    @property
    def status(self) -> OrderStatus: ...
    @property
    def venue_order_id(self) -> str | None: ...
    @property
    def last_quantity(self) -> int: ...
    @property
    def last_price(self) -> int | None: ...
    @property
    def avg_price(self) -> int | None: ...
    @property
    def cum_quantity(self) -> int: ...
    @property
    def fill_id(self) -> str | None: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def raw_event(self) -> str | None: ...
    @property
    def ts_event(self) -> int: ...


@dataclass(frozen=True, slots=True)
class OrderEvent:
    """An event the consumer makes itself: the venue's acknowledgement returned by a
    submission, a rejection it decides (venue unreachable, account halted), a cancel
    request, or what reconciling with the venue found missing."""

    exec_type: ExecType
    status: OrderStatus
    venue_order_id: str | None = None
    last_quantity: int = 0
    last_price: int | None = None
    avg_price: int | None = None
    cum_quantity: int = 0
    fill_id: str | None = None
    reason: str | None = None
    raw_event: str | None = None
    ts_event: int = 0


class VenueOrder(Protocol):
    """A venue's view of one order (:class:`brokers.base.BrokerOrder` has these fields)."""

    @property
    def venue_order_id(self) -> str: ...
    @property
    def status(self) -> OrderStatus: ...
    @property
    def filled_quantity(self) -> int: ...
    @property
    def avg_price(self) -> int | None: ...
    @property
    def ts_event(self) -> int: ...
    @property
    def reason(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class WorkingOrder:
    """One order as the execution consumer's book knows it (the changelog's value)."""

    client_order_id: str
    account: str
    symbol: str
    side: Side
    order_type: OrderType
    quantity: int  # raw, > 0
    venue: str
    limit_price: int | None = None
    time_in_force: TimeInForce = TimeInForce.DAY
    order_ts_event: int = 0  # the approved order's event time
    status: OrderStatus = _S.PENDING_NEW
    cum_quantity: int = 0
    avg_price: int | None = None
    venue_order_id: str | None = None
    fill_ids: frozenset[str] = field(default_factory=frozenset)
    ts_event: int = 0  # event time of the latest change
    revision: int = 0  # events applied so far

    @classmethod
    def from_request(cls, order: OrderRequest, venue: str) -> WorkingOrder:
        """An approved order about to be sent to ``venue`` (PENDING_NEW)."""
        return cls(
            client_order_id=order.client_order_id,
            account=order.account,
            symbol=order.symbol,
            side=order.side,
            order_type=order.order_type,
            quantity=order.quantity,
            venue=venue,
            limit_price=order.limit_price,
            time_in_force=order.time_in_force,
            order_ts_event=order.ts_event,
            ts_event=order.ts_event,
        )

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def is_working(self) -> bool:
        """Acknowledged and open at the venue, no cancel asked for yet."""
        return self.status in _WORKING

    @property
    def leaves_quantity(self) -> int:
        return 0 if self.is_terminal else self.quantity - self.cum_quantity

    def to_dict(self) -> dict[str, Any]:
        """JSON-able snapshot (enums as their values, fill ids sorted)."""
        return {
            "client_order_id": self.client_order_id,
            "account": self.account,
            "symbol": self.symbol,
            "side": self.side.value,
            "order_type": self.order_type.value,
            "quantity": self.quantity,
            "venue": self.venue,
            "limit_price": self.limit_price,
            "time_in_force": self.time_in_force.value,
            "order_ts_event": self.order_ts_event,
            "status": self.status.value,
            "cum_quantity": self.cum_quantity,
            "avg_price": self.avg_price,
            "venue_order_id": self.venue_order_id,
            "fill_ids": sorted(self.fill_ids),
            "ts_event": self.ts_event,
            "revision": self.revision,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkingOrder:
        def opt_int(name: str) -> int | None:
            value = data.get(name)
            return None if value is None else int(value)

        venue_order_id = data.get("venue_order_id")
        return cls(
            client_order_id=str(data["client_order_id"]),
            account=str(data["account"]),
            symbol=str(data["symbol"]),
            side=Side(data["side"]),
            order_type=OrderType(data["order_type"]),
            quantity=int(data["quantity"]),
            venue=str(data["venue"]),
            limit_price=opt_int("limit_price"),
            time_in_force=TimeInForce(data["time_in_force"]),
            order_ts_event=int(data["order_ts_event"]),
            status=OrderStatus(data["status"]),
            cum_quantity=int(data["cum_quantity"]),
            avg_price=opt_int("avg_price"),
            venue_order_id=None if venue_order_id is None else str(venue_order_id),
            fill_ids=frozenset(str(f) for f in data.get("fill_ids", ())),
            ts_event=int(data["ts_event"]),
            revision=int(data["revision"]),
        )


class IgnoreReason(StrEnum):
    DUPLICATE_FILL = "DUPLICATE_FILL"  # this fill id is booked already
    REPEATED = "REPEATED"  # the order is in that state already


class Refusal(StrEnum):
    """Why an event was refused (a bounded label for metrics)."""

    AFTER_TERMINAL = "AFTER_TERMINAL"
    ILLEGAL_TRANSITION = "ILLEGAL_TRANSITION"
    OVERFILL = "OVERFILL"
    BAD_FILL = "BAD_FILL"


@dataclass(frozen=True, slots=True)
class Applied:
    order: WorkingOrder
    report: ExecutionReport
    fill: Fill | None = None


@dataclass(frozen=True, slots=True)
class Ignored:
    reason: IgnoreReason
    detail: str


@dataclass(frozen=True, slots=True)
class Refused:
    code: Refusal
    detail: str


Transition = Applied | Ignored | Refused


def apply_event(order: WorkingOrder, event: VenueEvent, *, ts_init: int) -> Transition:
    """The transition ``event`` makes of ``order`` (see the module docstring)."""
    exec_type = event.exec_type
    if exec_type in _FILLS:
        if event.fill_id and event.fill_id in order.fill_ids:
            return Ignored(IgnoreReason.DUPLICATE_FILL, f"fill {event.fill_id} is booked already")
        if not event.fill_id and 0 < event.cum_quantity <= order.cum_quantity:
            # no id to tell fills apart: the venue's running total says it is booked
            return Ignored(
                IgnoreReason.DUPLICATE_FILL,
                f"a fill up to {event.cum_quantity} is booked already ({order.cum_quantity})",
            )
    if order.is_terminal:
        if _STATUS_OF.get(exec_type) == order.status:
            return Ignored(IgnoreReason.REPEATED, f"the order is {order.status} already")
        return Refused(Refusal.AFTER_TERMINAL, f"{exec_type} after the order was {order.status}")
    if exec_type in _REPEATS[order.status]:
        return Ignored(IgnoreReason.REPEATED, f"{exec_type} while {order.status}")
    if exec_type not in _ALLOWED[order.status]:
        return Refused(Refusal.ILLEGAL_TRANSITION, f"{order.status} → {exec_type}")
    if exec_type in _FILLS:
        return _fill(order, event, ts_init)
    if exec_type == _E.OTHER:
        # the venue refused our cancel (only OTHER allowed, from PENDING_CANCEL)
        status = _S.NEW if order.cum_quantity == 0 else _S.PARTIALLY_FILLED
        return _applied(order, event, _E.OTHER, status, ts_init)
    return _applied(order, event, exec_type, _STATUS_OF[exec_type], ts_init)


def _applied(
    order: WorkingOrder, event: VenueEvent, exec_type: ExecType, status: OrderStatus, ts: int
) -> Applied:
    after = replace(
        order,
        status=status,
        venue_order_id=event.venue_order_id or order.venue_order_id,
        ts_event=event.ts_event or order.ts_event,
        revision=order.revision + 1,
    )
    if exec_type in (_E.PENDING_CANCEL, _E.OTHER):
        report_id = f"{order.client_order_id}:{exec_type}:{after.revision}"
    else:
        report_id = f"{order.client_order_id}:{exec_type}"
    return Applied(after, _report(after, event, exec_type, report_id, ts))


def _fill(order: WorkingOrder, event: VenueEvent, ts_init: int) -> Transition:
    quantity, price = event.last_quantity, event.last_price
    if quantity <= 0 or price is None or price <= 0:
        return Refused(Refusal.BAD_FILL, f"fill of {quantity} at {price}")
    cum = order.cum_quantity + quantity
    if cum > order.quantity:
        return Refused(
            Refusal.OVERFILL,
            f"a fill of {quantity} brings {order.cum_quantity} to {cum}, over {order.quantity}",
        )
    fill_id = event.fill_id or f"{order.client_order_id}:fill:{cum}"
    if event.avg_price is not None and event.cum_quantity == cum:
        avg = event.avg_price  # the venue's own average over the same quantity
    else:
        avg = _round_half_even((order.avg_price or 0) * order.cum_quantity + price * quantity, cum)
    if order.status == _S.PENDING_CANCEL and cum < order.quantity:
        status = _S.PENDING_CANCEL  # still waiting for the cancel
    else:
        status = _S.FILLED if cum == order.quantity else _S.PARTIALLY_FILLED
    exec_type = _E.FILL if status == _S.FILLED else _E.PARTIAL_FILL
    after = replace(
        order,
        status=status,
        cum_quantity=cum,
        avg_price=avg,
        venue_order_id=event.venue_order_id or order.venue_order_id,
        fill_ids=order.fill_ids | {fill_id},
        ts_event=event.ts_event or order.ts_event,
        revision=order.revision + 1,
    )
    report = _report(
        after,
        event,
        exec_type,
        f"{order.client_order_id}:{fill_id}",
        ts_init,
        last_quantity=quantity,
        last_price=price,
    )
    fill = Fill(
        fill_id=fill_id,
        client_order_id=order.client_order_id,
        venue_order_id=after.venue_order_id,
        account=order.account,
        symbol=order.symbol,
        side=order.side,
        quantity=quantity,
        price=price,
        venue=order.venue,
        ts_event=after.ts_event,
        ts_init=ts_init,
    )
    return Applied(after, report, fill)


def _report(
    after: WorkingOrder,
    event: VenueEvent,
    exec_type: ExecType,
    report_id: str,
    ts_init: int,
    *,
    last_quantity: int = 0,
    last_price: int | None = None,
) -> ExecutionReport:
    return ExecutionReport(
        report_id=report_id,
        client_order_id=after.client_order_id,
        venue_order_id=after.venue_order_id,
        account=after.account,
        symbol=after.symbol,
        side=after.side,
        exec_type=exec_type,
        order_status=after.status,
        quantity=after.quantity,
        last_quantity=last_quantity,
        last_price=last_price,
        cum_quantity=after.cum_quantity,
        leaves_quantity=after.leaves_quantity,
        avg_price=after.avg_price,
        reason=event.reason,
        venue=after.venue,
        raw_event=event.raw_event,
        ts_event=after.ts_event,
        ts_init=ts_init,
    )


def _round_half_even(numerator: int, denominator: int) -> int:
    quotient, remainder = divmod(numerator, denominator)
    twice = 2 * remainder
    if twice > denominator or (twice == denominator and quotient % 2 == 1):
        quotient += 1
    return quotient


def reconcile(order: WorkingOrder, venue: VenueOrder) -> list[OrderEvent]:
    """The events that bring ``order`` level with the venue's view of it: the
    acknowledgement if the book has none, one fill for the quantity the venue filled beyond
    what the book holds (at the price that makes the venue's average), and the venue's
    terminal state. Apply them in order with :func:`apply_event`."""
    events: list[OrderEvent] = []
    ts = venue.ts_event or order.ts_event
    if order.status == _S.PENDING_NEW and venue.status != _S.REJECTED:
        events.append(OrderEvent(_E.NEW, _S.NEW, venue.venue_order_id, ts_event=ts))
    missing = min(venue.filled_quantity, order.quantity) - order.cum_quantity
    if missing > 0 and venue.avg_price is not None:
        cum = order.cum_quantity + missing
        # the price of the missing quantity: the venue's total cost less what the book has
        total = venue.avg_price * cum - (order.avg_price or 0) * order.cum_quantity
        price = _round_half_even(total, missing)
        status = _S.FILLED if cum == order.quantity else _S.PARTIALLY_FILLED
        events.append(
            OrderEvent(
                _E.FILL if status == _S.FILLED else _E.PARTIAL_FILL,
                status,
                venue.venue_order_id,
                last_quantity=missing,
                last_price=price if price > 0 else venue.avg_price,
                avg_price=venue.avg_price,
                cum_quantity=cum,
                raw_event="reconciled",
                ts_event=ts,
            )
        )
    if venue.status in (_S.CANCELED, _S.EXPIRED, _S.REJECTED):
        exec_type = {_S.CANCELED: _E.CANCELED, _S.EXPIRED: _E.EXPIRED, _S.REJECTED: _E.REJECTED}
        events.append(
            OrderEvent(
                exec_type[venue.status],
                venue.status,
                venue.venue_order_id,
                reason=venue.reason,
                raw_event="reconciled",
                ts_event=ts,
            )
        )
    return events
