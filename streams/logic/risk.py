"""Pre-trade risk for one symbol: order request + exposure state → decision + new state.

Pure: no I/O, no clock (``ts_init`` is passed in). A rejection is data — a
:class:`~schemas.models.RiskDecision` listing every check with its value, limit and
message — never an exception. All checks run even after one fails, so a decision always
shows every input.

Checks, in this order (values and limits are raw fixed-point):

``quantity``
    ``0 < quantity <= max_order_quantity``.
``price``
    The gate's own market price of the symbol (:class:`MarketPrice`: the last trade the gate
    saw on the market topics, never a price the requester claims), at most
    ``max_price_age_ns`` of event time away from the order's event time either way: a
    trade too old prices nothing, and an order made long before the last trade was decided
    on prices that are gone. No market price, or one out of age, rejects the order.
``price_collar``
    The order's ``reference_price`` and ``limit_price``, where given, lie within
    ``± price_collar`` (a fraction) of the market price.
``notional``
    ``|quantity × market price| <= max_order_notional`` (``fixedpoint.mul``). Fails when
    there is no usable market price (the notional is unknown; value is None).
``trading_state``
    The account's trading state (the kill switch, :mod:`streams.logic.trading_state`):
    HALTED rejects every order; REDUCING passes only a reduction (below); ACTIVE passes.
``position``
    The worst case of the symbol's position, this order included: the filled position
    plus every working buy, or minus every working sell, whichever is larger in size
    (working orders of the two sides are never netted: either side may be canceled).
    ``|worst case| <= max_position_per_symbol``; an order that leaves the worst case no
    larger also passes (so a book over a lowered limit can still be reduced).

``restricted_list``
    The symbol (or its underlying after an exchange prefix) is not on the desk's restricted
    list (``OMNIQUANT_RISK__RESTRICTED_SYMBOLS``).
``fo_ban``
    A symbol in NSE's F&O ban period (:mod:`streams.logic.restrictions`) accepts only
    reductions.
``duplicate_client_order_id``
    A client order id this gate has already decided on is rejected (it never gets a second
    decision that could approve it twice).
account checks
    Given an :class:`~streams.logic.account_checks.AccountContext` (the gate always gives
    one): position value, gross leverage, concentration, buying power, order rate, daily
    loss, drawdown and account state — see :mod:`streams.logic.account_checks`.

A **reduction** (REDUCING, F&O ban, drawdown, daily loss) trades against the filled
position and, with every working order of its side, cannot take it past zero
(:meth:`SymbolRiskState.reduces`). The exposure limits are looser on purpose: they pass
an order that does not enlarge the worst case, a flip to a smaller position included.

Approved orders add their quantity to the working quantity of their side, and each is
kept as an :class:`OpenOrder` (side, leaves). The venue's execution reports release it
(:func:`apply_report`): fills move the filled quantity to the position, cancels, rejects
and expiries free the leaves, and a FILL ends the order. So open exposure is never
reserved for ever.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from core.config import RiskLimits
from schemas.fixedpoint import INT64_MAX, from_fixed, mul, to_fixed
from schemas.models import (
    Decision,
    Fill,
    OrderRequest,
    RiskCheck,
    RiskDecision,
    Side,
    TradingState,
)
from streams.logic.account_checks import AccountContext, AccountLimitsRaw, account_checks
from streams.logic.restrictions import FoBanList, underlying
from streams.logic.trading_state import ScopeState

__all__ = [
    "MarketPrice",
    "OpenOrder",
    "PreTradeRisk",
    "RiskLimitsRaw",
    "SymbolRiskState",
    "apply_report",
]

APPROVED_REASON: Final = "approved"
CHECK_QUANTITY: Final = "quantity"
CHECK_PRICE: Final = "price"
CHECK_COLLAR: Final = "price_collar"
CHECK_NOTIONAL: Final = "notional"
CHECK_POSITION: Final = "position"
CHECK_DUPLICATE: Final = "duplicate_client_order_id"
CHECK_RESTRICTED: Final = "restricted_list"
CHECK_FO_BAN: Final = "fo_ban"
CHECK_TRADING_STATE: Final = "trading_state"


def _signed(side: Side, quantity: int) -> int:
    return quantity if side == Side.BUY else -quantity


def _clamp64(value: int) -> int:
    """Keep a reported value inside the int64 range of the record fields."""
    return max(-INT64_MAX, min(INT64_MAX, value))


def _fmt(raw: int) -> str:
    return f"{from_fixed(raw):f}"


#: The issue's seed limits, for a RiskLimitsRaw built without config (tests, tools).
SEED_ACCOUNT_LIMITS: Final = AccountLimitsRaw(
    max_position_value=to_fixed(500_000),
    max_gross_leverage=to_fixed("2.0"),
    max_concentration=to_fixed("0.25"),
    margin_rate=to_fixed("0.5"),
    max_orders_per_second=10,
    daily_loss_limit=to_fixed(10_000),
    max_drawdown=to_fixed("0.15"),
)


@dataclass(frozen=True, slots=True)
class RiskLimitsRaw:
    """:class:`core.config.RiskLimits` in raw fixed-point ints (all positive)."""

    max_order_notional: int
    max_position_per_symbol: int
    max_order_quantity: int
    price_collar: int = to_fixed("0.05")  # fraction of the market price, raw
    max_price_age_ns: int = 5 * 1_000_000_000
    restricted: frozenset[str] = frozenset()  # symbols no order may trade
    account: AccountLimitsRaw = SEED_ACCOUNT_LIMITS

    def __post_init__(self) -> None:
        for name in (
            "max_order_notional",
            "max_position_per_symbol",
            "max_order_quantity",
            "price_collar",
            "max_price_age_ns",
        ):
            value = getattr(self, name)
            if not 0 < value <= INT64_MAX:
                raise ValueError(f"{name} must be a positive int64 raw value, got {value}")

    @classmethod
    def from_config(cls, limits: RiskLimits) -> RiskLimitsRaw:
        return cls(
            max_order_notional=to_fixed(limits.max_order_notional),
            max_position_per_symbol=to_fixed(limits.max_position_per_symbol),
            max_order_quantity=to_fixed(limits.max_order_quantity),
            price_collar=to_fixed(limits.price_collar),
            max_price_age_ns=limits.max_price_age_ms * 1_000_000,
            restricted=frozenset(underlying(s) for s in limits.restricted_symbols),
            account=AccountLimitsRaw(
                max_position_value=to_fixed(limits.max_position_value),
                max_gross_leverage=to_fixed(limits.max_gross_leverage),
                max_concentration=to_fixed(limits.max_concentration),
                margin_rate=to_fixed(limits.margin_rate),
                max_orders_per_second=limits.max_orders_per_second,
                daily_loss_limit=to_fixed(limits.daily_loss_limit),
                max_drawdown=to_fixed(limits.max_drawdown),
            ),
        )


@dataclass(frozen=True, slots=True)
class MarketPrice:
    """The gate's view of a symbol's market: the last trade it saw (raw price, event ns)."""

    price: int
    ts_event: int

    def to_list(self) -> list[int]:
        return [self.price, self.ts_event]

    @classmethod
    def from_list(cls, data: list[int]) -> MarketPrice:
        return cls(int(data[0]), int(data[1]))


@dataclass(frozen=True, slots=True)
class SymbolRiskState:
    """Exposure of one symbol as the risk gate sees it (raw; positions signed, long > 0).

    Working buys and sells are kept apart, never netted: a working sell does not make room
    for another buy, because the sell can be canceled (or never fill) while the buys fill.
    Checks use the worst case of the two sides: :attr:`long_case` if every working buy
    fills and no sell does, :attr:`short_case` the other way round.
    """

    position: int = 0  # filled
    open_buy: int = 0  # approved buys not yet filled or released (>= 0)
    open_sell: int = 0  # approved sells not yet filled or released (>= 0)

    def __post_init__(self) -> None:
        if self.open_buy < 0 or self.open_sell < 0:
            raise ValueError(
                f"open quantities must not be negative, got buy {self.open_buy} "
                f"sell {self.open_sell}"
            )

    @property
    def long_case(self) -> int:
        """Position if every working buy fills and no working sell does."""
        return self.position + self.open_buy

    @property
    def short_case(self) -> int:
        """Position if every working sell fills and no working buy does."""
        return self.position - self.open_sell

    @property
    def worst(self) -> int:
        """The larger of the two cases in size (signed): what the exposure limits see."""
        return _larger(self.long_case, self.short_case)

    @property
    def is_flat(self) -> bool:
        """Nothing held and nothing working."""
        return self.position == 0 and self.open_buy == 0 and self.open_sell == 0

    def with_order(self, side: Side, quantity: int) -> SymbolRiskState:
        """An approved order starts working."""
        if side == Side.BUY:
            return replace(self, open_buy=self.open_buy + quantity)
        return replace(self, open_sell=self.open_sell + quantity)

    def after_order(self, side: Side, quantity: int) -> tuple[int, int]:
        """(worst case before, worst case after) the order starts working (signed). Any
        quantity, so a request refused for its quantity still gets every check's figures."""
        if side == Side.BUY:
            return self.worst, _larger(self.long_case + quantity, self.short_case)
        return self.worst, _larger(self.long_case, self.short_case - quantity)

    def reduces(self, side: Side, quantity: int) -> bool:
        """The order only reduces the filled position: it trades against it, and with every
        working order of its side it cannot take the position past zero."""
        if side == Side.SELL:
            return self.position > 0 and self.position - self.open_sell - quantity >= 0
        return self.position < 0 and self.position + self.open_buy + quantity <= 0

    def apply_fill(self, fill: Fill) -> SymbolRiskState:
        """A fill of an approved order: its quantity moves from working to position."""
        return self.filled(fill.side, fill.quantity)

    def filled(self, side: Side, quantity: int) -> SymbolRiskState:
        released = self.release(side, quantity)
        return replace(released, position=self.position + _signed(side, quantity))

    def release(self, side: Side, quantity: int) -> SymbolRiskState:
        """An approved order's unfilled ``quantity`` will never fill (canceled, rejected,
        expired): it stops working."""
        if quantity < 0:
            raise ValueError(f"quantity must not be negative, got {quantity}")
        if side == Side.BUY:
            return replace(self, open_buy=max(0, self.open_buy - quantity))
        return replace(self, open_sell=max(0, self.open_sell - quantity))

    def to_dict(self) -> dict[str, int]:
        return {"position": self.position, "open_buy": self.open_buy, "open_sell": self.open_sell}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SymbolRiskState:
        """Inverse of :meth:`to_dict`; missing keys default to 0. A state stored before the
        sides were kept apart (one netted ``open_quantity``) is read as working on its side."""
        if "open_quantity" in data and "open_buy" not in data:
            net = int(data["open_quantity"])
            return cls(int(data.get("position", 0)), max(net, 0), max(-net, 0))
        return cls(
            position=int(data.get("position", 0)),
            open_buy=int(data.get("open_buy", 0)),
            open_sell=int(data.get("open_sell", 0)),
        )


def _larger(long_case: int, short_case: int) -> int:
    return long_case if abs(long_case) >= abs(short_case) else short_case


@dataclass(frozen=True, slots=True)
class OpenOrder:
    """An order this gate approved that the venue has not finished: what is still open."""

    side: Side
    leaves: int  # raw quantity not yet filled

    def to_list(self) -> list[Any]:
        return [self.side.value, self.leaves]

    @classmethod
    def from_list(cls, data: list[Any]) -> OpenOrder:
        return cls(Side(data[0]), int(data[1]))


_RELEASING: Final = frozenset({"CANCELED", "REJECTED", "EXPIRED"})
_FILLING: Final = frozenset({"FILL", "PARTIAL_FILL"})


def apply_report(
    state: SymbolRiskState, order: OpenOrder, exec_type: str, last_quantity: int
) -> tuple[SymbolRiskState, OpenOrder | None]:
    """An execution report of an open order: the symbol's exposure and what stays open
    (None once the order is done). A FILL ends the order: whatever its report leaves
    unaccounted for stops working too. Other report types change nothing."""
    if exec_type in _FILLING:
        filled = max(0, min(last_quantity, order.leaves))
        after = state.filled(order.side, filled)
        leaves = order.leaves - filled
        if exec_type == "FILL" and leaves > 0:
            return after.release(order.side, leaves), None
        return after, (OpenOrder(order.side, leaves) if leaves > 0 else None)
    if exec_type in _RELEASING:
        return state.release(order.side, order.leaves), None
    return state, order


class PreTradeRisk:
    """Stateless checker: the per-symbol state is passed in and returned updated."""

    def __init__(self, limits: RiskLimitsRaw) -> None:
        self.limits = limits

    def check(
        self,
        order: OrderRequest,
        state: SymbolRiskState,
        ts_init: int,
        trading: ScopeState | None = None,
        market: MarketPrice | None = None,
        duplicate: bool = False,
        fo_ban: FoBanList | None = None,
        account: AccountContext | None = None,
    ) -> tuple[RiskDecision, SymbolRiskState]:
        """Decide on ``order``; the returned state includes it only when approved.
        ``trading`` is the account's trading state in force (None: ACTIVE); ``market`` the
        gate's last trade of the symbol (None: none seen); ``duplicate`` whether its client
        order id was decided on before; ``fo_ban`` the F&O ban list in force, if any;
        ``account`` the rest of the account (:mod:`streams.logic.account_checks`) — the
        gate always passes it; without it the account-level checks are not run."""
        price_check = self._check_price(order, market)
        price = market.price if price_check.passed and market is not None else None
        checks = [
            self._check_quantity(order.quantity),
            price_check,
            self._check_collar(order, price),
            self._check_notional(order.quantity, price),
            self._check_trading_state(order, state, trading),
            self._check_position(order, state),
            self._check_restricted(order),
            self._check_fo_ban(order, state, fo_ban),
            RiskCheck(
                name=CHECK_DUPLICATE,
                passed=not duplicate,
                message=f"client order id {order.client_order_id} was already decided on"
                if duplicate
                else f"client order id {order.client_order_id} is new",
            ),
        ]
        if account is not None:
            before, after = state.after_order(order.side, order.quantity)
            checks += account_checks(
                self.limits.account,
                account,
                account=order.account,
                symbol=order.symbol,
                before=before,
                after=after,
                reduces=state.reduces(order.side, order.quantity),
                price=price,
            )
        failed = [c.message for c in checks if not c.passed]
        approved = not failed
        decision = RiskDecision(
            decision_id=f"risk-{order.client_order_id}",
            client_order_id=order.client_order_id,
            account=order.account,
            symbol=order.symbol,
            side=order.side,
            quantity=order.quantity,
            decision=Decision.APPROVED if approved else Decision.REJECTED,
            reason=APPROVED_REASON if approved else "; ".join(failed),
            checks=checks,
            ts_event=order.ts_event,
            ts_init=ts_init,
        )
        if not approved:
            return decision, state
        return decision, state.with_order(order.side, order.quantity)

    def _check_quantity(self, quantity: int) -> RiskCheck:
        limit = self.limits.max_order_quantity
        if quantity <= 0:
            passed, message = False, f"order quantity {_fmt(quantity)} is not positive"
        elif quantity > limit:
            passed = False
            message = f"order quantity {_fmt(quantity)} exceeds max_order_quantity {_fmt(limit)}"
        else:
            passed = True
            message = f"order quantity {_fmt(quantity)} within max_order_quantity {_fmt(limit)}"
        return RiskCheck(
            name=CHECK_QUANTITY, passed=passed, value=quantity, limit=limit, message=message
        )

    def _check_price(self, order: OrderRequest, market: MarketPrice | None) -> RiskCheck:
        limit = self.limits.max_price_age_ns
        if market is None:
            message = f"no market price for {order.symbol}: the gate has seen no trade of it"
            return RiskCheck(name=CHECK_PRICE, passed=False, value=None, message=message)
        age = order.ts_event - market.ts_event
        if market.price <= 0:
            passed, message = False, f"market price {_fmt(market.price)} is not positive"
        elif -age > limit:
            # The market moved on since the order was made: it was decided on old prices.
            passed = False
            message = (
                f"order for {order.symbol} is stale: made {-age / 1e9:.3f} s before the "
                f"last trade, max {limit / 1e9:.3f} s"
            )
        elif age > limit:
            passed = False
            message = (
                f"market price of {order.symbol} is stale: last trade {age / 1e9:.3f} s "
                f"before the order, max {limit / 1e9:.3f} s"
            )
        else:
            passed, message = True, f"market price {_fmt(market.price)} ({age / 1e9:.3f} s old)"
        return RiskCheck(
            name=CHECK_PRICE, passed=passed, value=market.price, limit=None, message=message
        )

    def _check_collar(self, order: OrderRequest, market: int | None) -> RiskCheck:
        collar = self.limits.price_collar
        claimed = [
            (name, value)
            for name, value in (("reference", order.reference_price), ("limit", order.limit_price))
            if value is not None
        ]
        if market is None:
            return RiskCheck(
                name=CHECK_COLLAR,
                passed=not claimed,
                value=None,
                limit=collar,
                message="no market price to check the order's prices against"
                if claimed
                else "the order names no price",
            )
        band = mul(market, collar)
        outside = [(n, v) for n, v in claimed if abs(v - market) > band]
        worst = max((abs(v - market) for _, v in claimed), default=0)
        if outside:
            message = "; ".join(
                f"{n} price {_fmt(v)} outside ±{_fmt(collar * 100)}% of market {_fmt(market)}"
                for n, v in outside
            )
        else:
            message = f"order prices within ±{_fmt(collar * 100)}% of market {_fmt(market)}"
        return RiskCheck(
            name=CHECK_COLLAR,
            passed=not outside,
            value=_clamp64(worst),
            limit=band,
            message=message,
        )

    def _check_notional(self, quantity: int, price: int | None) -> RiskCheck:
        limit = self.limits.max_order_notional
        if price is None or price <= 0:
            return RiskCheck(
                name=CHECK_NOTIONAL,
                passed=False,
                value=None,
                limit=limit,
                message="order notional unknown without a positive price",
            )
        notional = abs(mul(quantity, price))
        passed = notional <= limit
        relation = "within" if passed else "exceeds"
        return RiskCheck(
            name=CHECK_NOTIONAL,
            passed=passed,
            value=_clamp64(notional),
            limit=limit,
            message=f"order notional {_fmt(notional)} {relation} max_order_notional {_fmt(limit)}",
        )

    def _check_restricted(self, order: OrderRequest) -> RiskCheck:
        symbol = underlying(order.symbol)
        if symbol in self.limits.restricted:
            return RiskCheck(
                name=CHECK_RESTRICTED,
                passed=False,
                message=f"{order.symbol} is on the restricted list",
            )
        return RiskCheck(
            name=CHECK_RESTRICTED, passed=True, message=f"{order.symbol} is not restricted"
        )

    @staticmethod
    def _check_fo_ban(
        order: OrderRequest, state: SymbolRiskState, fo_ban: FoBanList | None
    ) -> RiskCheck:
        if fo_ban is None or not fo_ban.bans(order.symbol, order.ts_event):
            return RiskCheck(
                name=CHECK_FO_BAN, passed=True, message=f"{order.symbol} is not in an F&O ban"
            )
        reducing = state.reduces(order.side, order.quantity)
        day = fo_ban.trade_date.isoformat()
        message = (
            f"{order.symbol} is in the F&O ban on {day}; the order reduces the position "
            f"of {_fmt(state.position)}"
            if reducing
            else f"{order.symbol} is in the F&O ban on {day}: only position-reducing orders; "
            f"{_reduction_note(state, order)}"
        )
        return RiskCheck(name=CHECK_FO_BAN, passed=reducing, message=message)

    @staticmethod
    def _check_trading_state(
        order: OrderRequest, state: SymbolRiskState, trading: ScopeState | None
    ) -> RiskCheck:
        current = trading.state if trading is not None else TradingState.ACTIVE
        why = f" ({trading.reason}, by {trading.issued_by})" if trading and trading.reason else ""
        if current == TradingState.HALTED:
            passed, message = False, f"HALTED: account {order.account} is halted{why}"
        elif current == TradingState.REDUCING:
            passed = state.reduces(order.side, order.quantity)
            message = (
                f"REDUCING: order reduces the position of {_fmt(state.position)}"
                if passed
                else f"REDUCING: account {order.account} may only reduce positions{why}; "
                f"{_reduction_note(state, order)}"
            )
        else:
            passed, message = True, f"account {order.account} is ACTIVE"
        return RiskCheck(name=CHECK_TRADING_STATE, passed=passed, message=message)

    def _check_position(self, order: OrderRequest, state: SymbolRiskState) -> RiskCheck:
        limit = self.limits.max_position_per_symbol
        current, projected = state.after_order(order.side, order.quantity)
        within = abs(projected) <= limit
        # Worst cases only grow with a new order, or stay: "not larger" is the reduction.
        not_larger = abs(projected) <= abs(current)
        passed = within or not_larger
        cases = (
            f"(position {_fmt(state.position)}, working buys {_fmt(state.open_buy)}, "
            f"sells {_fmt(state.open_sell)}, this order included)"
        )
        if within:
            message = (
                f"worst-case position {_fmt(projected)} within "
                f"±max_position_per_symbol {_fmt(limit)} {cases}"
            )
        elif not_larger:
            message = (
                f"worst-case position {_fmt(projected)} beyond ±max_position_per_symbol "
                f"{_fmt(limit)} but not larger than before {cases}"
            )
        else:
            message = (
                f"worst-case position {_fmt(projected)} exceeds "
                f"±max_position_per_symbol {_fmt(limit)} {cases}"
            )
        return RiskCheck(
            name=CHECK_POSITION,
            passed=passed,
            value=_clamp64(projected),
            limit=limit,
            message=message,
        )


def _reduction_note(state: SymbolRiskState, order: OrderRequest) -> str:
    """Why an order is not a reduction of the filled position."""
    working = state.open_sell if order.side == Side.SELL else state.open_buy
    return (
        f"a {order.side.value} of {_fmt(order.quantity)} with {_fmt(working)} working on "
        f"its side against a position of {_fmt(state.position)}"
    )
