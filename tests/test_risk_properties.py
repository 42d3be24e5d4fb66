"""Properties of the pre-trade risk gate over random event sequences of one account.

The test keeps its own model of the account in Decimal — positions and working orders per
symbol, the last trade per symbol, the approved orders' event times, equity, the day's
loss, drawdown and trading state — builds each order's :class:`AccountContext` from it,
and drives :meth:`PreTradeRisk.check` and :func:`apply_report` the way the gate app does.
Each decision is compared with the model's own reading of the documented limits.

Money follows the fixed-point convention: a price × quantity (a notional, an exposure, a
margin, the collar's band) is a money amount rounded half-even to 1e-9; ratios are not
rounded — a limit on a ratio is compared exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any, TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.fixedpoint import INT64_MAX, to_fixed
from schemas.models import (
    Decision,
    OrderRequest,
    OrderType,
    RiskDecision,
    Side,
    TimeInForce,
    TradingState,
)
from streams.logic.account_checks import AccountContext, AccountLimitsRaw
from streams.logic.risk import (
    MarketPrice,
    OpenOrder,
    PreTradeRisk,
    RiskLimitsRaw,
    SymbolRiskState,
    apply_report,
)
from streams.logic.trading_state import ScopeState

D = Decimal
T = TypeVar("T")
NS = 1_000_000_000
NANO = D(1).scaleb(-9)
TS0 = 1_700_000_000 * NS
ACCOUNT = "desk-1"
SYMBOLS = ("AAPL", "MSFT", "TSLA")
EXPOSURE = {"position_value", "gross_leverage", "concentration", "buying_power"}
FILLING = ("FILL", "PARTIAL_FILL")
RELEASING = ("CANCELED", "REJECTED", "EXPIRED")
OTHER_REPORTS = ("NEW", "REPLACED", "PENDING_CANCEL")


def dec(raw: int) -> Decimal:
    return D(raw).scaleb(-9)


def raw(value: Decimal) -> int:
    scaled = value.scaleb(9)
    assert scaled == scaled.to_integral_value(), value
    return int(scaled)


def money(value: Decimal) -> Decimal:
    """A money amount as the platform holds it: rounded half-even to 1e-9."""
    return value.quantize(NANO, rounding=ROUND_HALF_EVEN)


def floor9(value: Decimal) -> Decimal:
    return value.quantize(NANO, rounding=ROUND_FLOOR)


@contextmanager
def exact() -> Iterator[None]:
    """Enough digits that no product or sum of int64 raw values is ever rounded."""
    with localcontext() as ctx:
        ctx.prec = 120
        yield


# -- limits -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    max_order_quantity: Decimal
    max_order_notional: Decimal
    max_position_per_symbol: Decimal
    price_collar: Decimal
    max_price_age_ns: int
    max_position_value: Decimal
    max_gross_leverage: Decimal
    max_concentration: Decimal
    margin_rate: Decimal
    max_orders_per_second: int
    daily_loss_limit: Decimal
    max_drawdown: Decimal

    def raw(self) -> RiskLimitsRaw:
        return RiskLimitsRaw(
            max_order_notional=to_fixed(self.max_order_notional),
            max_position_per_symbol=to_fixed(self.max_position_per_symbol),
            max_order_quantity=to_fixed(self.max_order_quantity),
            price_collar=to_fixed(self.price_collar),
            max_price_age_ns=self.max_price_age_ns,
            account=AccountLimitsRaw(
                max_position_value=to_fixed(self.max_position_value),
                max_gross_leverage=to_fixed(self.max_gross_leverage),
                max_concentration=to_fixed(self.max_concentration),
                margin_rate=to_fixed(self.margin_rate),
                max_orders_per_second=self.max_orders_per_second,
                daily_loss_limit=to_fixed(self.daily_loss_limit),
                max_drawdown=to_fixed(self.max_drawdown),
            ),
        )


def _decimals(*values: str) -> st.SearchStrategy[Decimal]:
    return st.sampled_from([D(v) for v in values])


limits_strategy = st.builds(
    Limits,
    max_order_quantity=_decimals("1000", "2500.5"),
    max_order_notional=_decimals("250000", "100000"),
    max_position_per_symbol=_decimals("5000", "1500"),
    price_collar=_decimals("0.05", "0.1"),
    max_price_age_ns=st.sampled_from([5 * NS, NS]),
    max_position_value=_decimals("500000", "200000"),
    max_gross_leverage=_decimals("2.0", "1.5"),
    max_concentration=_decimals("0.25", "0.5"),
    margin_rate=_decimals("0.5", "0.25"),
    max_orders_per_second=st.sampled_from([10, 3]),
    daily_loss_limit=_decimals("10000"),
    max_drawdown=_decimals("0.15"),
)


# -- events -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Advance:
    ns: int


@dataclass(frozen=True)
class Tick:
    symbol: str
    price: int  # raw


@dataclass(frozen=True)
class Request:
    symbol: str
    side: Side
    # ("raw", quantity) | ("flat", 0) | ("scale", quarters) | (target, sign × (2 + delta))
    size: tuple[str, int]
    reference: str
    limit: str
    reuse: int | None  # index of an earlier client order id to send again
    context_error: bool


@dataclass(frozen=True)
class Report:
    pick: int
    exec_type: str
    quantity: str


@dataclass(frozen=True)
class Figures:
    equity: int  # raw
    daily_loss: str
    drawdown: str


@dataclass(frozen=True)
class Trading:
    state: TradingState | None


Event = Advance | Tick | Request | Report | Figures | Trading

SPOOFS = ("market", "edge_up", "over_up", "edge_down", "over_down", "zero", "negative", "penny")
PRICE_KINDS = ("none",) * 3 * len(SPOOFS) + SPOOFS + ("market", "market", "ten_x")
HEALTHY = ("none", "none", "none", "zero", "below", "below")
TARGETS = ("position", "value", "concentration", "leverage", "buying_power", "quantity", "notional")


def _now_and_then(strategy: st.SearchStrategy[T], one_in: int) -> st.SearchStrategy[T | None]:
    """``strategy`` about once in ``one_in`` draws, else None (not at the low end of the
    roll, which hypothesis favours)."""
    return st.tuples(st.integers(min_value=1, max_value=one_in), strategy).map(
        lambda roll: roll[1] if roll[0] == one_in else None
    )


def _weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, each ``weight`` times as often (``st.one_of`` draws its
    branches evenly and merges repeated ones)."""
    return st.sampled_from([s for weight, s in choices for _ in range(weight)]).flatmap(
        lambda strategy: strategy
    )


raw_quantities = st.one_of(
    st.integers(min_value=1, max_value=to_fixed(3000)),
    st.sampled_from([0, -1, -to_fixed(7), 1, to_fixed(1000), INT64_MAX, -INT64_MAX]),
    st.integers(min_value=-INT64_MAX, max_value=INT64_MAX),
)
sizes = _weighted(
    (3, st.tuples(st.just("raw"), st.integers(min_value=1, max_value=to_fixed(50)))),
    (1, st.tuples(st.just("raw"), raw_quantities)),
    (1, st.just(("flat", 0))),
    (2, st.tuples(st.just("scale"), st.integers(min_value=-6, max_value=6))),
    (4, st.tuples(st.sampled_from(TARGETS), st.sampled_from([-3, -2, -1, 1, 2, 3]))),
)
requests = st.builds(
    Request,
    symbol=st.sampled_from(SYMBOLS),
    side=st.sampled_from(Side),
    size=sizes,
    reference=st.sampled_from(PRICE_KINDS),
    limit=st.sampled_from(PRICE_KINDS + ("none",) * len(PRICE_KINDS)),
    reuse=_now_and_then(st.integers(min_value=0, max_value=50), 8),
    context_error=_now_and_then(st.just(True), 12).map(bool),
)
trade_prices = st.one_of(
    st.integers(min_value=to_fixed(1), max_value=to_fixed(500)),
    st.integers(min_value=1, max_value=to_fixed(1000)),
    st.sampled_from([to_fixed(1), to_fixed(100), to_fixed("187.25"), to_fixed("0.01"), 1, 0]),
)
ticks = st.builds(Tick, symbol=st.sampled_from(SYMBOLS), price=trade_prices)
pauses = st.builds(
    Advance,
    ns=st.sampled_from([0, 1, NS // 10, NS // 4, NS - 1, NS, NS + 1, 5 * NS, 5 * NS + 1, 60 * NS]),
)
reports = st.builds(
    Report,
    pick=st.integers(min_value=0, max_value=50),
    exec_type=st.sampled_from(FILLING + FILLING + RELEASING + OTHER_REPORTS),
    quantity=st.sampled_from(["all", "half", "over", "zero", "one"]),
)
figures = st.builds(
    Figures,
    equity=_weighted(
        (3, st.integers(min_value=to_fixed(200_000), max_value=to_fixed(5_000_000))),
        (1, st.integers(min_value=-to_fixed(100_000), max_value=to_fixed(200_000))),
        (1, st.sampled_from([0, 1, -1, to_fixed(1_000_000)])),
    ),
    daily_loss=st.sampled_from((*HEALTHY, "at", "over")),
    drawdown=st.sampled_from((*HEALTHY, "at", "over")),
)
trading = st.builds(Trading, state=st.sampled_from([None, None, *TradingState]))
events: st.SearchStrategy[Event] = _weighted(
    (6, requests), (4, ticks), (2, pauses), (3, reports), (1, figures), (1, trading)
)


# -- the test's own model of the account ----------------------------------------------------


@dataclass
class Working:
    symbol: str
    side: Side
    leaves: Decimal


def _signed(side: Side, quantity: Decimal) -> Decimal:
    return quantity if side == Side.BUY else -quantity


def _worst(long_case: Decimal, short_case: Decimal) -> Decimal:
    return long_case if abs(long_case) >= abs(short_case) else short_case


@dataclass
class Model:
    limits: Limits
    now: int = TS0
    positions: dict[str, Decimal] = field(default_factory=dict)
    working: dict[str, Working] = field(default_factory=dict)
    prices: dict[str, tuple[Decimal, int]] = field(default_factory=dict)
    approved_at: list[int] = field(default_factory=list)
    decided: list[str] = field(default_factory=list)
    equity: Decimal = field(default_factory=lambda: D(1_000_000))
    daily_loss: Decimal | None = None
    drawdown: Decimal | None = None
    trading: TradingState | None = None

    def position(self, symbol: str) -> Decimal:
        return self.positions.get(symbol, D(0))

    def working_on(self, symbol: str, side: Side) -> Decimal:
        return sum(
            (w.leaves for w in self.working.values() if w.symbol == symbol and w.side == side),
            D(0),
        )

    def cases(self, symbol: str) -> tuple[Decimal, Decimal]:
        """The position if every working buy fills (and no sell), and the other way round:
        working orders of the two sides are never netted, either may be canceled."""
        position = self.position(symbol)
        return (
            position + self.working_on(symbol, Side.BUY),
            position - self.working_on(symbol, Side.SELL),
        )

    def worst(self, symbol: str) -> Decimal:
        return _worst(*self.cases(symbol))

    def reduces(self, symbol: str, side: Side, quantity: Decimal) -> bool:
        """Against the filled position, and not past zero with its side's working orders."""
        position = self.position(symbol)
        if side == Side.SELL:
            return position > 0 and position - self.working_on(symbol, side) - quantity >= 0
        return position < 0 and position + self.working_on(symbol, side) + quantity <= 0

    def value(self, symbol: str, quantity: Decimal) -> Decimal:
        price = self.prices[symbol][0]
        return money(abs(quantity * price))

    def others(self, symbol: str) -> tuple[Decimal, Decimal]:
        """Gross exposure and initial margin of the account's other symbols."""
        gross = margin = D(0)
        for other in SYMBOLS:
            worst = self.worst(other)
            if other == symbol or worst == 0:
                continue
            value = self.value(other, worst)  # every held symbol has been priced
            gross += value
            margin += money(value * self.limits.margin_rate)
        return gross, margin

    def recent_orders(self) -> int:
        return sum(1 for ts in self.approved_at if self.now - NS < ts <= self.now)

    def fresh_price(self, symbol: str) -> Decimal | None:
        known = self.prices.get(symbol)
        if (
            known is None
            or known[0] <= 0
            or abs(self.now - known[1]) > self.limits.max_price_age_ns
        ):
            return None
        return known[0]

    def context(self, symbol: str, error: bool) -> AccountContext:
        gross, margin = self.others(symbol)
        return AccountContext(
            equity=raw(self.equity),
            equity_source="the test's model",
            others_gross=raw(gross),
            others_margin=raw(margin),
            recent_orders=self.recent_orders(),
            daily_loss=raw(self.daily_loss) if self.daily_loss is not None else None,
            drawdown=raw(self.drawdown) if self.drawdown is not None else None,
            error="ConnectionError('exposure book')" if error else None,
        )

    def violations(self, order: OrderRequest, duplicate: bool, error: bool) -> set[str]:
        """Every documented limit the order breaks, by the name of its check."""
        lim = self.limits
        bad: set[str] = set()
        quantity = dec(order.quantity)
        if not 0 < quantity <= lim.max_order_quantity:
            bad.add("quantity")
        market = self.fresh_price(order.symbol)
        if market is None:
            bad.add("price")
        claimed = [dec(p) for p in (order.reference_price, order.limit_price) if p is not None]
        if market is None:
            bad.add("notional")
            if claimed:
                bad.add("price_collar")
        else:
            band = money(market * lim.price_collar)
            if any(abs(p - market) > band for p in claimed):
                bad.add("price_collar")
            if money(abs(quantity * market)) > lim.max_order_notional:
                bad.add("notional")

        long_case, short_case = self.cases(order.symbol)
        before = _worst(long_case, short_case)
        if order.side == Side.BUY:
            after = _worst(long_case + quantity, short_case)
        else:
            after = _worst(long_case, short_case - quantity)
        reduces = self.reduces(order.symbol, order.side, quantity)
        if self.trading == TradingState.HALTED or (
            self.trading == TradingState.REDUCING and not reduces
        ):
            bad.add("trading_state")
        if abs(after) > lim.max_position_per_symbol and abs(after) > abs(before):
            bad.add("position")
        if duplicate:
            bad.add("duplicate_client_order_id")

        if market is None:
            bad |= EXPOSURE  # exposure unknown: even a reduction is refused
        else:
            value_before = money(abs(before * market))
            value_after = money(abs(after * market))
            adds = value_after > value_before  # only these are held to the exposure limits
            gross, others_margin = self.others(order.symbol)
            if adds and value_after > lim.max_position_value:
                bad.add("position_value")
            if adds and (
                self.equity <= 0 or gross + value_after > lim.max_gross_leverage * self.equity
            ):
                bad.add("gross_leverage")
            if adds and (self.equity <= 0 or value_after > lim.max_concentration * self.equity):
                bad.add("concentration")
            margin_before = money(value_before * lim.margin_rate)
            required = money(value_after * lim.margin_rate) - margin_before
            if required > 0 and required > self.equity - others_margin - margin_before:
                bad.add("buying_power")
        if self.recent_orders() + 1 > lim.max_orders_per_second:
            bad.add("order_rate")
        if self.daily_loss is not None and self.daily_loss >= lim.daily_loss_limit and not reduces:
            bad.add("daily_loss")
        if self.drawdown is not None and self.drawdown >= lim.max_drawdown and not reduces:
            bad.add("drawdown")
        if error:
            bad.add("account_state")
        return bad


# -- turning an event into gate inputs -------------------------------------------------------


def _level(kind: str, limit: Decimal) -> Decimal | None:
    return {
        "none": None,
        "zero": D(0),
        "below": limit - NANO,
        "at": limit,
        "over": limit + NANO,
    }[kind]


def _claimed_price(kind: str, model: Model, symbol: str) -> int | None:
    known = model.prices.get(symbol)
    market = known[0] if known is not None and known[0] > 0 else D(100)
    band = money(market * model.limits.price_collar)
    price = {
        "none": None,
        "market": market,
        "edge_up": market + band,
        "over_up": market + band + NANO,
        "edge_down": market - band,
        "over_down": market - band - NANO,
        "zero": D(0),
        "negative": -D("5"),
        "penny": D("0.01"),
        "ten_x": market * 10,
    }[kind]
    return raw(price) if price is not None else None


def _size(request: Request, model: Model) -> tuple[Side, int]:
    """Side and raw quantity of the request; targets land on a limit ± a raw unit or two."""
    kind, arg = request.size
    if kind == "raw":
        return request.side, arg
    position = model.position(request.symbol)
    long_case, short_case = model.cases(request.symbol)
    if kind == "flat":  # close the filled position (working orders may make it more)
        return (Side.SELL if position > 0 else Side.BUY), raw(abs(position))
    if kind == "scale":  # to arg/4 of the position: reduce, flat, flip smaller or larger, add
        change = floor9(position * arg / 4) - position
        return (Side.BUY if change > 0 else Side.SELL), raw(abs(change))
    sign, delta = (1 if arg > 0 else -1), (abs(arg) - 2) * NANO
    lim, known = model.limits, model.prices.get(request.symbol)
    if kind == "quantity":
        return request.side, raw(lim.max_order_quantity + delta)
    if known is None or known[0] <= 0:
        return request.side, raw(lim.max_order_quantity + delta)
    price = known[0]
    if kind == "notional":
        return request.side, min(raw(floor9(lim.max_order_notional / price) + delta), INT64_MAX)
    gross, others_margin = model.others(request.symbol)
    equity = max(model.equity, D(0))
    if kind == "position":
        size = lim.max_position_per_symbol
    else:
        value = {
            "value": lim.max_position_value,
            "concentration": lim.max_concentration * equity,
            "leverage": max(lim.max_gross_leverage * equity - gross, D(0)),
            "buying_power": max(equity - others_margin, D(0)) / lim.margin_rate,
        }[kind]
        size = floor9(value / price)
    # the side's own case lands on the target (a buy moves only the long case, a sell the
    # short case); a target already passed on that side gives the smallest order
    target = sign * (size + delta)
    change = target - long_case if sign > 0 else target - short_case
    side = Side.BUY if sign > 0 else Side.SELL
    if change * sign <= 0:
        return side, 1
    return side, min(raw(abs(change)), INT64_MAX)  # at a price of 1e-9 a unit it can be huge


def _order(coid: str, symbol: str, side: Side, quantity: int, ref: int | None, limit: int | None,
           now: int) -> OrderRequest:  # fmt: skip
    fields: dict[str, Any] = {
        "client_order_id": coid,
        "strategy_id": "prop",
        "account": ACCOUNT,
        "symbol": symbol,
        "side": side,
        "order_type": OrderType.LIMIT if limit is not None else OrderType.MARKET,
        "quantity": quantity,
        "limit_price": limit,
        "time_in_force": TimeInForce.DAY,
        "reference_price": ref,
        "ts_event": now,
        "ts_init": now,
    }
    if quantity > 0:
        return OrderRequest(**fields)
    return OrderRequest.model_construct(**fields)  # the record type refuses it; the gate must too


# -- the property ---------------------------------------------------------------------------


@dataclass
class Gate:
    """What the gate app keeps: the exposure per symbol and the orders it approved."""

    risk: PreTradeRisk
    states: dict[str, SymbolRiskState] = field(
        default_factory=lambda: {s: SymbolRiskState() for s in SYMBOLS}
    )
    open_orders: dict[str, tuple[str, OpenOrder]] = field(default_factory=dict)
    markets: dict[str, MarketPrice] = field(default_factory=dict)
    decisions: list[RiskDecision] = field(default_factory=list)


def _request(gate: Gate, model: Model, event: Request, serial: int) -> None:
    if event.reuse is not None and model.decided:
        coid = model.decided[event.reuse % len(model.decided)]
    else:
        coid = f"prop-{serial}"
    side, quantity = _size(event, model)
    order = _order(
        coid,
        event.symbol,
        side,
        quantity,
        _claimed_price(event.reference, model, event.symbol),
        _claimed_price(event.limit, model, event.symbol),
        model.now,
    )
    duplicate = coid in model.decided
    scope = ScopeState(model.trading, "ops", "cmd", "ops", model.now) if model.trading else None
    expected = model.violations(order, duplicate, event.context_error)

    before = gate.states[event.symbol]
    decision, after = gate.risk.check(
        order,
        before,
        ts_init=model.now + 7,
        trading=scope,
        market=gate.markets.get(event.symbol),
        duplicate=duplicate,
        account=model.context(event.symbol, event.context_error),
    )
    gate.decisions.append(decision)

    # (a) one decision for this request, named after it
    assert decision.client_order_id == coid
    assert coid in decision.decision_id
    assert (decision.ts_event, decision.ts_init) == (model.now, model.now + 7)
    assert (decision.symbol, decision.side, decision.quantity) == (event.symbol, side, quantity)
    names = [c.name for c in decision.checks]
    assert len(names) == len(set(names)) == 17

    # (b) approved exactly when the model finds no limit broken (so no approved order
    # breaks one), and each failing check is one the model finds broken
    failed = [c for c in decision.checks if not c.passed]
    assert {c.name for c in failed} == expected, (order, model.context(event.symbol, False))
    if not expected:
        assert decision.decision == Decision.APPROVED
        assert decision.reason == "approved"
        buys, sells = (quantity, 0) if side == Side.BUY else (0, quantity)
        assert after == SymbolRiskState(
            before.position, before.open_buy + buys, before.open_sell + sells
        )
    else:
        # (d) a rejection names its failing checks and changes nothing
        assert decision.decision == Decision.REJECTED
        assert failed
        for check in failed:
            assert check.message in decision.reason
        assert after == before

    model.decided.append(coid)
    if decision.decision == Decision.APPROVED:
        model.working[coid] = Working(event.symbol, side, dec(quantity))
        model.approved_at.append(model.now)
        gate.open_orders[coid] = (event.symbol, OpenOrder(side, quantity))
    gate.states[event.symbol] = after


def _report(gate: Gate, model: Model, event: Report) -> None:
    if not model.working:
        return
    coid = sorted(model.working)[event.pick % len(model.working)]
    working = model.working[coid]
    last = {
        "all": working.leaves,
        "half": floor9(working.leaves / 2),
        "over": working.leaves + 5,
        "zero": D(0),
        "one": NANO,
    }[event.quantity]
    # the model: a fill moves what it fills (never more than is left) to the position
    if event.exec_type in FILLING:
        filled = min(last, working.leaves)
        model.positions[working.symbol] = model.position(working.symbol) + _signed(
            working.side, filled
        )
        working.leaves -= filled
        if working.leaves == 0 or event.exec_type == "FILL":  # a FILL ends the order
            del model.working[coid]
    elif event.exec_type in RELEASING:
        del model.working[coid]
    # the gate app: its state and the open order through apply_report
    symbol, open_order = gate.open_orders.pop(coid)
    state, still = apply_report(gate.states[symbol], open_order, event.exec_type, raw(last))
    gate.states[symbol] = state
    if still is not None:
        gate.open_orders[coid] = (symbol, still)


def _agree(gate: Gate, model: Model) -> None:
    """(c) the gate's exposure is the model's, exactly."""
    for symbol in SYMBOLS:
        assert gate.states[symbol] == SymbolRiskState(
            position=raw(model.position(symbol)),
            open_buy=raw(model.working_on(symbol, Side.BUY)),
            open_sell=raw(model.working_on(symbol, Side.SELL)),
        ), symbol
    assert {c: (s, o.side, o.leaves) for c, (s, o) in gate.open_orders.items()} == {
        c: (w.symbol, w.side, raw(w.leaves)) for c, w in model.working.items()
    }


def _calm(event: Event) -> Event | None:
    """The event in a healthy account: no metrics or kill switch, short pauses, the
    exposure book answers."""
    if isinstance(event, Figures | Trading) or (isinstance(event, Advance) and event.ns > NS // 10):
        return None
    if isinstance(event, Request):
        return replace(event, context_error=False)
    return event


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    limits=limits_strategy,
    opening=st.lists(
        st.integers(min_value=1, max_value=to_fixed(1000)),
        min_size=len(SYMBOLS),
        max_size=len(SYMBOLS),
    ),
    holdings=st.lists(
        _weighted(
            (1, st.just(0)),
            (2, st.integers(min_value=-to_fixed(6000), max_value=to_fixed(6000))),
        ),
        min_size=len(SYMBOLS),
        max_size=len(SYMBOLS),
    ),
    sequence=st.lists(events, min_size=20, max_size=80),
    calm=st.booleans(),
)
def test_gate_decisions_follow_the_limits_over_random_event_sequences(
    limits: Limits, opening: list[int], holdings: list[int], sequence: list[Event], calm: bool
) -> None:
    """The account starts with a trade and a position (possibly over a limit) per symbol."""
    if calm:  # half the sequences keep a healthy account, so orders get approved and add up
        sequence = [calmed for event in sequence if (calmed := _calm(event)) is not None]
    with exact():
        model = Model(limits)
        gate = Gate(PreTradeRisk(limits.raw()))
        for symbol, held in zip(SYMBOLS, holdings, strict=True):
            model.positions[symbol] = dec(held)
            gate.states[symbol] = SymbolRiskState(position=held)
        opening_trades: list[Event] = [Tick(s, p) for s, p in zip(SYMBOLS, opening, strict=True)]
        requests_seen = 0
        for serial, event in enumerate(opening_trades + sequence):
            if isinstance(event, Advance):
                model.now += event.ns
            elif isinstance(event, Tick):
                model.prices[event.symbol] = (dec(event.price), model.now)
                gate.markets[event.symbol] = MarketPrice(event.price, model.now)
            elif isinstance(event, Request):
                requests_seen += 1
                _request(gate, model, event, serial)
            elif isinstance(event, Report):
                _report(gate, model, event)
            elif isinstance(event, Figures):
                model.equity = dec(event.equity)
                model.daily_loss = _level(event.daily_loss, limits.daily_loss_limit)
                model.drawdown = _level(event.drawdown, limits.max_drawdown)
            else:
                model.trading = event.state
            _agree(gate, model)

        # (a) exactly one decision per request; one client order id, one decision id
        assert len(gate.decisions) == requests_seen
        ids: dict[str, str] = {}
        for decision in gate.decisions:
            assert ids.setdefault(decision.client_order_id, decision.decision_id) == (
                decision.decision_id
            )
        assert len(set(ids.values())) == len(ids)
        # a client order id is approved at most once
        approved = [d.client_order_id for d in gate.decisions if d.decision == Decision.APPROVED]
        assert len(approved) == len(set(approved))


def test_a_rejected_decision_gives_every_failing_check_its_message_in_the_reason() -> None:
    with exact():
        limits = RiskLimitsRaw(
            max_order_notional=to_fixed(1000),
            max_position_per_symbol=to_fixed(50),
            max_order_quantity=to_fixed(20),
        )
        order = _order("dup-1", "AAPL", Side.BUY, to_fixed(100), to_fixed("0.01"), None, TS0)
        context = AccountContext(
            equity=-to_fixed(1),
            equity_source="the test",
            recent_orders=limits.account.max_orders_per_second,
            daily_loss=limits.account.daily_loss_limit,
            drawdown=limits.account.max_drawdown,
            error="TimeoutError('exposure book')",
        )
        decision, after = PreTradeRisk(limits).check(
            order,
            SymbolRiskState(position=to_fixed(10)),
            ts_init=TS0,
            trading=ScopeState(TradingState.HALTED, "loss limit", "auto-1", "risk-metrics", TS0),
            market=MarketPrice(to_fixed(100), TS0),
            duplicate=True,
            account=context,
        )
    failed = [c for c in decision.checks if not c.passed]
    assert decision.decision == Decision.REJECTED
    assert after == SymbolRiskState(position=to_fixed(10))
    assert {c.name for c in failed} >= {
        "quantity", "price_collar", "notional", "trading_state", "position",
        "duplicate_client_order_id", "gross_leverage", "concentration", "buying_power",
        "order_rate", "daily_loss", "drawdown", "account_state",
    }  # fmt: skip
    for check in failed:
        assert check.message, check.name
        assert check.message in decision.reason, check.name
    for check in decision.checks:
        if check.passed:
            assert check.message not in decision.reason, check.name
