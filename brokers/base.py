"""The broker interface every venue implements, and the domain types it speaks.

The execution consumer (:mod:`streams.execution`) drives a :class:`Broker`: it submits
approved orders, cancels them, asks for an order's state when it reconciles after a
restart, and receives the venue's order events through one callback. Nothing here is a
vendor SDK type: each venue's package maps its SDK's objects to :class:`BrokerOrder` and
:class:`BrokerEvent`.

Quantities and prices are raw fixed-point ints (scale 1e-9, :mod:`schemas.fixedpoint`);
times are UTC nanoseconds.

Errors: :class:`BrokerRejected` (the venue refused this order: final, the order is
REJECTED), :class:`BrokerUnavailable` (the venue could not be reached or answered with a
server error: retry later, the order's fate is unknown until reconciled).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from core.errors import OmniquantError
from schemas.models import ExecType, ExecutionReport, OrderStatus, OrderType, Side, TimeInForce

__all__ = [
    "Broker",
    "BrokerError",
    "BrokerEvent",
    "BrokerOrder",
    "BrokerRejected",
    "BrokerUnavailable",
    "EventCallback",
    "OrderSubmission",
]


class BrokerError(OmniquantError):
    """A broker call failed."""


class BrokerRejected(BrokerError):
    """The venue refused the order (invalid, insufficient funds, duplicate id ...). Final."""


class BrokerUnavailable(BrokerError):
    """The venue could not be reached or failed; the call may be retried."""


@dataclass(frozen=True, slots=True)
class OrderSubmission:
    """What the execution consumer asks a venue to work: an order the risk gate approved."""

    client_order_id: str
    account: str
    symbol: str
    side: Side
    order_type: OrderType
    quantity: int  # raw, > 0
    time_in_force: TimeInForce = TimeInForce.DAY
    limit_price: int | None = None  # raw; required for LIMIT
    ts_event: int = 0  # the approved order's event time (ns); paper's clock starts here


@dataclass(frozen=True, slots=True)
class BrokerOrder:
    """A venue's view of one order (an acknowledgement, or a lookup when reconciling)."""

    client_order_id: str
    venue_order_id: str
    symbol: str
    side: Side
    quantity: int  # raw
    status: OrderStatus
    filled_quantity: int = 0  # raw, cumulative
    avg_price: int | None = None  # raw
    ts_event: int = 0  # venue time of this state (ns)
    reason: str | None = None  # why rejected / canceled, when the venue says

    @classmethod
    def from_report(cls, report: ExecutionReport, client_order_id: str) -> BrokerOrder:
        """The order as a venue's report of it describes it, under our client order id."""
        return cls(
            client_order_id=client_order_id,
            venue_order_id=report.venue_order_id or "",
            symbol=report.symbol,
            side=report.side,
            quantity=report.quantity,
            status=report.order_status,
            filled_quantity=report.cum_quantity,
            avg_price=report.avg_price,
            ts_event=report.ts_event,
            reason=report.reason,
        )


@dataclass(frozen=True, slots=True)
class BrokerEvent:
    """One change of an order at the venue: acknowledged, (partly) filled, canceled, ...

    ``last_quantity``/``last_price`` describe this event's fill (0 / None when it is not a
    fill); ``cum_quantity``/``avg_price`` the order's totals after it. ``fill_id`` is the
    venue's execution id for a fill, stable across redeliveries (a stream and a postback of
    the same fill carry the same id), so the consumer can drop a duplicate.
    """

    client_order_id: str
    venue_order_id: str
    exec_type: ExecType
    status: OrderStatus
    last_quantity: int = 0
    last_price: int | None = None
    cum_quantity: int = 0
    avg_price: int | None = None
    fill_id: str | None = None
    reason: str | None = None
    raw_event: str | None = None  # the venue's own event/status name
    ts_event: int = 0


EventCallback = Callable[[BrokerEvent], None]


class Broker(ABC):
    """One venue. Methods are synchronous and called from the consumer's thread; events
    may arrive on any thread through the callback given to :meth:`connect` (the consumer
    queues them)."""

    venue: ClassVar[str]
    #: True for a venue that trades real or vendor-hosted accounts. A backtest namespace
    #: never gets one (:func:`streams.execution` refuses to build it).
    live: ClassVar[bool] = True

    @abstractmethod
    def connect(self, on_event: EventCallback) -> None:
        """Open sessions and event streams; ``on_event`` receives every order event."""

    @abstractmethod
    def submit(self, order: OrderSubmission) -> BrokerOrder:
        """Send a new order; returns the venue's acknowledgement. Raises
        :class:`BrokerRejected` or :class:`BrokerUnavailable`."""

    @abstractmethod
    def cancel(self, client_order_id: str, venue_order_id: str | None) -> None:
        """Ask the venue to cancel an open order (the CANCELED event follows)."""

    @abstractmethod
    def get_order(self, client_order_id: str) -> BrokerOrder | None:
        """The venue's current view of an order by our client order id; None if the venue
        never received it."""

    @abstractmethod
    def open_orders(self) -> list[BrokerOrder]:
        """Every order still working at the venue (for reconciliation at start)."""

    def modify(
        self,
        client_order_id: str,
        venue_order_id: str | None,
        *,
        quantity: int | None = None,
        limit_price: int | None = None,
    ) -> BrokerOrder:
        """Change a working order's quantity or limit price (the REPLACED event follows).
        Venues that cannot modify refuse."""
        raise BrokerRejected(f"{self.venue} does not modify orders")

    def restore(self, orders: list[BrokerOrder]) -> None:  # noqa: B027 - optional hook
        """A simulated venue keeps nothing across restarts: at start the consumer hands it
        back the orders its own book says are still working there. Real venues ignore it
        (they are asked with :meth:`get_order` / :meth:`open_orders` instead)."""

    def on_market_data(self, record: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """A trade or quote from our market topics (decoded dict). Only simulated venues
        use it; real venues ignore it."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release sessions and threads."""
