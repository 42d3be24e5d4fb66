"""PaperBroker: a simulated venue that fills orders against our own market data.

Deterministic and driven by event time only: the venue's clock is the ``ts_event`` of the
orders and of the trades and quotes it is fed through :meth:`PaperBroker.on_market_data`.
No wall clock is read, so a replay of the same topics gives the same fills.

When an order can fill
    An order submitted with ``ts_event = T`` becomes eligible at ``E = T +
    paper_latency_ms``. It is first priced *as of* E: against the newest quote or, for a
    symbol not quoted by then, the newest trade among the ticks before E and the first tick
    at E (the one that, arriving live, tells the venue E has come; ticks at E arriving
    after it are later ticks). Then each later tick offers it liquidity, in event-time
    order. If market data at or after E has already been seen when the order arrives, all
    of that is done at once from the symbol's history (:mod:`brokers.paper.market`, the
    last ``history_ms`` of event time); otherwise the order is parked until the first tick
    at or after E arrives. Either way the same ticks are offered in the same order, so the
    fills do not depend on how the caller interleaves the order topic and the market
    topics. (Market ticks of one symbol are expected in event-time order; a tick older than
    one already seen is kept for later as-of pricing but offered to no working order.) An
    order whose E is older than the kept history is refused: the market it would have met
    is forgotten.

What a tick offers
    A quote offers its displayed size at its price: a BUY takes the ask (up to
    ``ask_size``), a SELL the bid (up to ``bid_size``); the rest rests and is offered each
    new quote's size, giving PARTIAL_FILL events and a FILL. Orders do not compete for a
    quote's size: each sees all of it (otherwise one order's fills would depend on the
    arrival of another). Once a symbol is quoted, its trades offer nothing (the book is the
    quotes). A symbol never quoted up to that time, with ``paper_fill_on_trades``, fills the
    whole order at a trade's price: a print shows no depth, so there is no size to limit
    the fill to, and partial fills against prints would be an invention of ours.

Order types
    LIMIT fills only at or better than its limit (rests otherwise). IOC takes what the
    as-of market offers and expires the rest; FOK fills in full from it or expires; DAY and
    GTC rest until filled or canceled (no session end is simulated). With no market data
    for the symbol at all the order rests (the consumer may cancel it).

Events
    Delivered synchronously through the ``on_event`` callback given to :meth:`connect`,
    inside the :meth:`submit`, :meth:`cancel`, :meth:`modify`, :meth:`restore` and
    :meth:`on_market_data` call that caused them, after the venue's state is updated (a
    callback that looks the order up sees the new state). :meth:`submit` emits NEW and may
    emit fills before it returns its NEW acknowledgement. Ids are deterministic: venue order
    id ``PAPER-<client order id>``, fill id ``PAPER-<client order id>-F<n>``. ``avg_price``
    is exact: total notional / cumulative quantity, rounded half-even to a raw unit.

Not thread-safe: the execution consumer calls it from one thread (as :class:`Broker` says).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from brokers.base import (
    Broker,
    BrokerEvent,
    BrokerOrder,
    BrokerRejected,
    BrokerUnavailable,
    EventCallback,
    OrderSubmission,
)
from brokers.paper.market import QuoteTick, SymbolHistory, Tick, TradeTick
from core.config import ExecutionSettings
from schemas.models import ExecType, OrderStatus, OrderType, Side, TimeInForce

__all__ = ["DEFAULT_HISTORY_MS", "VENUE", "PaperBroker"]


VENUE: Final = "PAPER"
#: event time of market data kept per symbol (orders may lag the market topics this much)
DEFAULT_HISTORY_MS: Final = 5 * 60 * 1000
_NS_PER_MS: Final = 1_000_000
_WORKING: Final = frozenset({OrderStatus.NEW, OrderStatus.PARTIALLY_FILLED})


def _div_half_even(numerator: int, denominator: int) -> int:
    quotient, remainder = divmod(numerator, denominator)
    twice = remainder * 2
    if twice > denominator or (twice == denominator and quotient % 2 == 1):
        quotient += 1
    return quotient


@dataclass(slots=True, eq=False)  # identity: two orders are never "equal"
class _Order:
    """One order in the paper book (mutable: the venue's own state)."""

    client_order_id: str
    venue_order_id: str
    symbol: str
    side: Side
    order_type: OrderType
    time_in_force: TimeInForce
    quantity: int
    limit_price: int | None
    eligible_at: int
    ts_event: int  # time of the last change
    status: OrderStatus = OrderStatus.NEW
    filled: int = 0
    notional: int = 0  # Σ price × quantity in raw² units (scale 1e-18): exact
    fills: int = 0
    reason: str | None = None
    active: bool = False  # priced as of eligibility; now offered each new tick
    restored: bool = False  # re-adopted after a restart: its as-of pricing is already done

    @property
    def remaining(self) -> int:
        return self.quantity - self.filled

    @property
    def avg_price(self) -> int | None:
        return _div_half_even(self.notional, self.filled) if self.filled else None

    def marketable(self, price: int) -> bool:
        if self.limit_price is None:
            return True
        return price <= self.limit_price if self.side is Side.BUY else price >= self.limit_price

    def view(self) -> BrokerOrder:
        return BrokerOrder(
            client_order_id=self.client_order_id,
            venue_order_id=self.venue_order_id,
            symbol=self.symbol,
            side=self.side,
            quantity=self.quantity,
            status=self.status,
            filled_quantity=self.filled,
            avg_price=self.avg_price,
            ts_event=self.ts_event,
            reason=self.reason,
        )


class _Symbol:
    """A symbol's history and the orders waiting on it."""

    __slots__ = ("active", "history", "next_eligible", "parked")

    def __init__(self, window_ns: int) -> None:
        self.history = SymbolHistory(window_ns)
        self.active: dict[str, _Order] = {}  # offered every new tick, in submission order
        self.parked: list[_Order] = []  # waiting for market data to reach their eligibility
        self.next_eligible: int | None = None  # earliest eligibility among the parked


class PaperBroker(Broker):
    """Simulated fills against our market data; see the module docs for the model."""

    venue: ClassVar[str] = VENUE
    live: ClassVar[bool] = False

    def __init__(
        self, settings: ExecutionSettings, *, history_ms: int = DEFAULT_HISTORY_MS
    ) -> None:
        if history_ms <= 0:
            raise ValueError("history_ms must be positive")
        self._latency_ns = settings.paper_latency_ms * _NS_PER_MS
        self._fill_on_trades = settings.paper_fill_on_trades
        self._window_ns = history_ms * _NS_PER_MS
        self._symbols: dict[str, _Symbol] = {}
        self._orders: dict[str, _Order] = {}
        self._on_event: EventCallback | None = None
        self._outbox: list[BrokerEvent] = []

    # ---- Broker ------------------------------------------------------------------------
    def connect(self, on_event: EventCallback) -> None:
        self._on_event = on_event
        self._flush()  # anything restore() produced before there was anyone to tell

    def submit(self, order: OrderSubmission) -> BrokerOrder:
        self._require_connected()
        known = self._orders.get(order.client_order_id)
        if known is not None:  # a retried submit: the venue already has it, say how it is
            return known.view()
        self._validate(order)
        symbol = self._symbol(order.symbol)
        eligible_at = order.ts_event + self._latency_ns
        if symbol.history.seen_up_to(eligible_at) and not symbol.history.covers(eligible_at):
            raise BrokerRejected(
                f"order time {order.ts_event} is older than the paper venue's market history "
                f"of {order.symbol} ({self._window_ns // _NS_PER_MS} ms)"
            )
        entry = _Order(
            client_order_id=order.client_order_id,
            venue_order_id=f"{VENUE}-{order.client_order_id}",
            symbol=order.symbol,
            side=order.side,
            order_type=order.order_type,
            time_in_force=order.time_in_force,
            quantity=order.quantity,
            limit_price=order.limit_price if order.order_type is OrderType.LIMIT else None,
            eligible_at=eligible_at,
            ts_event=order.ts_event,
        )
        self._orders[entry.client_order_id] = entry
        ack = entry.view()
        self._emit(entry, ExecType.NEW)
        self._schedule(entry, symbol)
        self._flush()
        return ack

    def cancel(self, client_order_id: str, venue_order_id: str | None) -> None:
        self._require_connected()
        order = self._working(client_order_id)
        symbol = self._symbols[order.symbol]
        self._unschedule(order, symbol)
        order.ts_event = max(order.ts_event, symbol.history.newest_ts or order.ts_event)
        self._finish(order, OrderStatus.CANCELED, ExecType.CANCELED, "canceled by request")
        self._flush()

    def get_order(self, client_order_id: str) -> BrokerOrder | None:
        order = self._orders.get(client_order_id)
        return None if order is None else order.view()

    def open_orders(self) -> list[BrokerOrder]:
        return [o.view() for o in self._orders.values() if o.status in _WORKING]

    def modify(
        self,
        client_order_id: str,
        venue_order_id: str | None,
        *,
        quantity: int | None = None,
        limit_price: int | None = None,
    ) -> BrokerOrder:
        """Change quantity and/or limit. The order is offered liquidity again from the next
        tick on (the current quote was already offered to it). A new quantity must exceed
        what has filled; a limit price needs a LIMIT order."""
        self._require_connected()
        order = self._working(client_order_id)
        if quantity is None and limit_price is None:
            raise BrokerRejected("modify needs a quantity or a limit price")
        if quantity is not None and quantity <= order.filled:
            raise BrokerRejected(
                f"new quantity {quantity} must exceed the filled quantity {order.filled}"
            )
        if limit_price is not None:
            if order.order_type is not OrderType.LIMIT:
                raise BrokerRejected("a limit price can only be set on a LIMIT order")
            if limit_price <= 0:
                raise BrokerRejected(f"limit price must be positive, got {limit_price}")
            order.limit_price = limit_price
        if quantity is not None:
            order.quantity = quantity
        newest = self._symbols[order.symbol].history.newest_ts
        order.ts_event = max(order.ts_event, newest if newest is not None else order.ts_event)
        self._emit(order, ExecType.REPLACED)
        self._flush()
        return order.view()

    def restore(
        self,
        orders: Sequence[BrokerOrder],
        *,
        submissions: Mapping[str, OrderSubmission] | None = None,
    ) -> None:
        """Re-adopt orders that were working here before a restart, with what is left of
        them. They are offered every tick later than their ``ts_event`` (what came before
        was offered before the restart). A :class:`BrokerOrder` does not carry the order
        type, limit or time in force: pass the original ``submissions`` (by client order id)
        to keep them; without one an order is worked as a MARKET DAY order. An IOC/FOK order
        still open after a restart missed its moment: it expires at the first tick."""
        submissions = submissions or {}
        for view in orders:
            if view.client_order_id in self._orders or view.status not in _WORKING:
                continue
            if view.quantity <= view.filled_quantity:
                continue
            original = submissions.get(view.client_order_id)
            entry = _Order(
                client_order_id=view.client_order_id,
                venue_order_id=view.venue_order_id or f"{VENUE}-{view.client_order_id}",
                symbol=view.symbol,
                side=view.side,
                order_type=original.order_type if original else OrderType.MARKET,
                time_in_force=original.time_in_force if original else TimeInForce.DAY,
                quantity=view.quantity,
                limit_price=original.limit_price
                if original and original.order_type is OrderType.LIMIT
                else None,
                eligible_at=view.ts_event,
                ts_event=view.ts_event,
                status=view.status,
                filled=view.filled_quantity,
                # the exact notional is gone with the old process; avg × qty reproduces avg
                notional=(view.avg_price or 0) * view.filled_quantity,
                fills=1 if view.filled_quantity else 0,
                restored=True,
            )
            self._orders[entry.client_order_id] = entry
            self._schedule(entry, self._symbol(entry.symbol))
        self._flush()

    def on_market_data(self, record: dict[str, Any]) -> None:
        """A decoded Trade or Quote dict (keys as in :mod:`schemas.models`); others are
        ignored. O(1) amortised for a symbol with no working orders."""
        symbol_name = record.get("symbol")
        ts = record.get("ts_event")
        if not isinstance(symbol_name, str) or not isinstance(ts, int):
            return
        symbol = self._symbols.get(symbol_name)
        if symbol is None:
            symbol = self._symbols[symbol_name] = _Symbol(self._window_ns)
        history = symbol.history
        tick: Tick
        if "price" in record and "size" in record:
            price = record["price"]
            if not isinstance(price, int) or price <= 0:
                return
            tick, in_order = history.add_trade(ts, price)
        elif "bid_price" in record or "ask_price" in record:
            tick, in_order = history.add_quote(
                ts,
                record.get("bid_price"),
                record.get("bid_size"),
                record.get("ask_price"),
                record.get("ask_size"),
            )
        else:
            return
        if not in_order or not (symbol.active or symbol.parked):
            # a late tick is kept for later as-of pricing but offered to no one: the
            # working orders have already been offered the market after it
            return
        for order in list(symbol.active.values()):
            self._offer_tick(order, tick, symbol)
        if symbol.next_eligible is not None and symbol.next_eligible <= ts:
            self._activate_due(symbol, ts)
        self._flush()

    # ---- scheduling --------------------------------------------------------------------
    def _symbol(self, name: str) -> _Symbol:
        symbol = self._symbols.get(name)
        if symbol is None:
            symbol = self._symbols[name] = _Symbol(self._window_ns)
        return symbol

    def _schedule(self, order: _Order, symbol: _Symbol) -> None:
        if symbol.history.seen_up_to(order.eligible_at):
            self._activate(order, symbol)
            return
        symbol.parked.append(order)
        if symbol.next_eligible is None or order.eligible_at < symbol.next_eligible:
            symbol.next_eligible = order.eligible_at

    def _unschedule(self, order: _Order, symbol: _Symbol) -> None:
        symbol.active.pop(order.client_order_id, None)
        if order in symbol.parked:
            symbol.parked.remove(order)
            symbol.next_eligible = min((o.eligible_at for o in symbol.parked), default=None)

    def _activate_due(self, symbol: _Symbol, ts: int) -> None:
        due = sorted((o for o in symbol.parked if o.eligible_at <= ts), key=lambda o: o.eligible_at)
        symbol.parked = [o for o in symbol.parked if o.eligible_at > ts]
        symbol.next_eligible = min((o.eligible_at for o in symbol.parked), default=None)
        for order in due:
            self._activate(order, symbol)

    def _activate(self, order: _Order, symbol: _Symbol) -> None:
        """Price as of eligibility, then offer every later tick already seen."""
        history = symbol.history
        at = order.eligible_at
        if order.restored and order.time_in_force in (TimeInForce.IOC, TimeInForce.FOK):
            self._expire(order, at, f"{order.time_in_force} order outlived a restart")
            return
        cut = history.cut(at)
        if not order.restored:
            quote, trade = history.as_of(cut)
            if order.time_in_force is TimeInForce.FOK:
                self._fill_or_kill(order, quote, trade, at)
                return
            if quote is not None:
                self._offer_quote(order, quote, at)
            elif trade is not None:
                self._offer_trade(order, trade, at)
            if order.time_in_force is TimeInForce.IOC:
                if order.status in _WORKING:
                    self._expire(order, at, "IOC: the rest was not available")
                return
        if order.status not in _WORKING:
            return
        order.active = True
        symbol.active[order.client_order_id] = order
        for tick in history.after(cut):
            if order.status not in _WORKING:
                break
            self._offer_tick(order, tick, symbol)

    def _fill_or_kill(
        self, order: _Order, quote: QuoteTick | None, trade: TradeTick | None, at: int
    ) -> None:
        if quote is not None:
            price, size = self._quote_side(order, quote)
            if price is not None and size >= order.remaining and order.marketable(price):
                self._fill(order, order.remaining, price, at)
                return
        elif trade is not None and self._fill_on_trades and order.marketable(trade.price):
            self._fill(order, order.remaining, trade.price, at)
            return
        self._expire(order, at, "FOK: the whole quantity was not available")

    # ---- matching ----------------------------------------------------------------------
    def _offer_tick(self, order: _Order, tick: Tick, symbol: _Symbol) -> None:
        if isinstance(tick, QuoteTick):
            self._offer_quote(order, tick, tick.ts)
        elif not symbol.history.quoted_before(tick):
            self._offer_trade(order, tick, tick.ts)
        if order.status not in _WORKING:
            symbol.active.pop(order.client_order_id, None)

    @staticmethod
    def _quote_side(order: _Order, quote: QuoteTick) -> tuple[int | None, int]:
        if order.side is Side.BUY:
            price, size = quote.ask_price, quote.ask_size
        else:
            price, size = quote.bid_price, quote.bid_size
        if price is None or price <= 0 or size is None or size <= 0:
            return None, 0
        return price, size

    def _offer_quote(self, order: _Order, quote: QuoteTick, at: int) -> None:
        price, size = self._quote_side(order, quote)
        if price is not None and order.marketable(price):
            self._fill(order, min(order.remaining, size), price, at)

    def _offer_trade(self, order: _Order, trade: TradeTick, at: int) -> None:
        if self._fill_on_trades and order.marketable(trade.price):
            self._fill(order, order.remaining, trade.price, at)

    def _fill(self, order: _Order, quantity: int, price: int, at: int) -> None:
        order.filled += quantity
        order.notional += price * quantity
        order.fills += 1
        order.ts_event = max(order.ts_event, at)
        done = order.filled >= order.quantity
        order.status = OrderStatus.FILLED if done else OrderStatus.PARTIALLY_FILLED
        self._emit(
            order,
            ExecType.FILL if done else ExecType.PARTIAL_FILL,
            last_quantity=quantity,
            last_price=price,
            fill_id=f"{order.venue_order_id}-F{order.fills}",
        )

    def _expire(self, order: _Order, at: int, reason: str) -> None:
        order.ts_event = max(order.ts_event, at)
        self._finish(order, OrderStatus.EXPIRED, ExecType.EXPIRED, reason)

    def _finish(self, order: _Order, status: OrderStatus, exec_type: ExecType, reason: str) -> None:
        order.status = status
        order.reason = reason
        self._emit(order, exec_type, reason=reason)

    # ---- plumbing ----------------------------------------------------------------------
    @staticmethod
    def _validate(order: OrderSubmission) -> None:
        if order.quantity <= 0:
            raise BrokerRejected(f"quantity must be positive, got {order.quantity}")
        if order.order_type is OrderType.LIMIT:
            if order.limit_price is None:
                raise BrokerRejected("a LIMIT order needs a limit price")
            if order.limit_price <= 0:
                raise BrokerRejected(f"limit price must be positive, got {order.limit_price}")

    def _working(self, client_order_id: str) -> _Order:
        order = self._orders.get(client_order_id)
        if order is None:
            raise BrokerRejected(f"unknown order {client_order_id}")
        if order.status not in _WORKING:
            raise BrokerRejected(f"order {client_order_id} is {order.status}, not working")
        return order

    def _require_connected(self) -> None:
        if self._on_event is None:
            raise BrokerUnavailable("paper venue: connect() first")

    def _emit(
        self,
        order: _Order,
        exec_type: ExecType,
        *,
        last_quantity: int = 0,
        last_price: int | None = None,
        fill_id: str | None = None,
        reason: str | None = None,
    ) -> None:
        self._outbox.append(
            BrokerEvent(
                client_order_id=order.client_order_id,
                venue_order_id=order.venue_order_id,
                exec_type=exec_type,
                status=order.status,
                last_quantity=last_quantity,
                last_price=last_price,
                cum_quantity=order.filled,
                avg_price=order.avg_price,
                fill_id=fill_id,
                reason=reason,
                raw_event=exec_type.value,
                ts_event=order.ts_event,
            )
        )

    def _flush(self) -> None:
        """Deliver queued events, oldest first (state is already up to date)."""
        callback: Callable[[BrokerEvent], None] | None = self._on_event
        while self._outbox and callback is not None:
            events, self._outbox = self._outbox, []
            for event in events:
                callback(event)
