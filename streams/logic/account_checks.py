"""Account-level pre-trade checks: what one order does to its account. Pure: no I/O.

The symbol's own exposure is exact (the gate's state: filled position plus working
orders); the rest of the account comes in an :class:`AccountContext` the app assembles
from the portfolio and risk-metrics streams and the gate's shared exposure book. Values
are raw fixed-point ints (money and quantities at 1e-9, ratios at 1e-9 too).

Each check returns a :class:`~schemas.models.RiskCheck` with its input, limit and result:

``position_value``
    ``|worst-case position × market price| <= max_position_value``.
``gross_leverage``
    ``(other symbols' gross exposure + this symbol's after the order) / equity <=
    max_gross_leverage``.
``concentration``
    ``this symbol's exposure after the order / equity <= max_concentration``.
``buying_power``
    buying power = equity − initial margin of what is held and working (``margin_rate``
    per unit of exposure, per symbol); the order's extra margin must fit in it.
``order_rate``
    approved orders of the account in the last second of event time, this one included,
    ``<= max_orders_per_second``.
``daily_loss``
    the day's loss from risk-metrics ``< daily_loss_limit``. At the limit the account is
    HALTED (risk-metrics issues the command; until it lands this check refuses new risk);
    after an operator resumes, only position-reducing orders pass for the rest of the day.
``drawdown``
    drawdown from peak equity ``< max_drawdown``; beyond it only position-reducing orders
    pass (REDUCING).
``account_state``
    the account's context could be read (the shared exposure book answered).

The symbol's exposure is its worst case (filled position plus every working buy, or
minus every working sell, whichever is larger: the sides are never netted). An order that
does not enlarge it in value (a reduction, or a flip to a smaller position) passes the
exposure checks: a book over a lowered limit can always be reduced. A position-reducing
order (``reduces``) is stricter: it trades against the filled position and cannot take it
past zero with the working orders of its side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from schemas.fixedpoint import FACTOR, INT64_MAX, from_fixed, mul
from schemas.models import RiskCheck

__all__ = [
    "AccountContext",
    "AccountLimitsRaw",
    "account_checks",
]

CHECK_POSITION_VALUE: Final = "position_value"
CHECK_LEVERAGE: Final = "gross_leverage"
CHECK_CONCENTRATION: Final = "concentration"
CHECK_BUYING_POWER: Final = "buying_power"
CHECK_ORDER_RATE: Final = "order_rate"
CHECK_DAILY_LOSS: Final = "daily_loss"
CHECK_DRAWDOWN: Final = "drawdown"
CHECK_ACCOUNT_STATE: Final = "account_state"
ACCOUNT_CHECKS: Final = (
    CHECK_POSITION_VALUE,
    CHECK_LEVERAGE,
    CHECK_CONCENTRATION,
    CHECK_BUYING_POWER,
    CHECK_ORDER_RATE,
    CHECK_DAILY_LOSS,
    CHECK_DRAWDOWN,
    CHECK_ACCOUNT_STATE,
)


def _clamp(value: int) -> int:
    return max(-INT64_MAX, min(INT64_MAX, value))


def _money(raw: int) -> str:
    return f"{from_fixed(raw):,.2f}"


def _ratio(raw: int) -> str:
    return f"{from_fixed(raw):.4f}"


def _pct(raw: int) -> str:
    return f"{from_fixed(raw * 100):.2f}%"


def ratio(numerator: int, denominator: int) -> int:
    """numerator / denominator as a raw ratio (1e-9), rounded half up; denominator > 0."""
    return (2 * numerator * FACTOR + denominator) // (2 * denominator)


@dataclass(frozen=True, slots=True)
class AccountLimitsRaw:
    """The account-level limits of one order (resolved for its account, strategy and
    symbol), raw."""

    max_position_value: int
    max_gross_leverage: int  # ratio
    max_concentration: int  # ratio
    margin_rate: int  # ratio
    max_orders_per_second: int  # count
    daily_loss_limit: int
    max_drawdown: int  # ratio

    def __post_init__(self) -> None:
        for name in self.__slots__:
            value = getattr(self, name)
            if not 0 < value <= INT64_MAX:
                raise ValueError(f"{name} must be a positive int64 raw value, got {value}")


@dataclass(frozen=True, slots=True)
class AccountContext:
    """The rest of the account, as the gate knows it when the order arrives.

    ``others_gross``/``others_margin``: gross exposure and initial margin of the account's
    other symbols (held and working). ``equity``: from the latest portfolio snapshot, or
    the account's starting cash before the first one (``equity_source`` says which).
    ``recent_orders``: approved orders in the second of event time before this one.
    ``daily_loss``/``drawdown``: the latest risk metrics (None: none yet).
    ``error``: why the context could not be read; every order is then refused.
    """

    equity: int
    equity_source: str
    others_gross: int = 0
    others_margin: int = 0
    recent_orders: int = 0
    daily_loss: int | None = None
    drawdown: int | None = None  # ratio
    error: str | None = None


def account_checks(
    limits: AccountLimitsRaw,
    context: AccountContext,
    *,
    account: str,
    symbol: str,
    before: int,
    after: int,
    reduces: bool,
    price: int | None,
) -> list[RiskCheck]:
    """Every account-level check of an order that takes the symbol's worst-case position
    (signed raw, see :class:`~streams.logic.risk.SymbolRiskState`) from ``before`` to
    ``after``, valued at the market ``price`` (None: no usable market price, so exposure
    is unknown and those checks fail). ``reduces``: the order only reduces the filled
    position (what an account past its loss or drawdown limit may still do)."""
    checks = _exposure_checks(limits, context, symbol, before, after, price)
    checks.append(_order_rate(limits, context, account))
    checks.append(_daily_loss(limits, context, account, reduces))
    checks.append(_drawdown(limits, context, account, reduces))
    checks.append(
        RiskCheck(
            name=CHECK_ACCOUNT_STATE,
            passed=context.error is None,
            message=f"account state unavailable: {context.error}"
            if context.error is not None
            else f"account {account}: equity {_money(context.equity)} ({context.equity_source})",
        )
    )
    return checks


def _exposure_checks(
    limits: AccountLimitsRaw,
    context: AccountContext,
    symbol: str,
    before: int,
    after: int,
    price: int | None,
) -> list[RiskCheck]:
    names = (CHECK_POSITION_VALUE, CHECK_LEVERAGE, CHECK_CONCENTRATION, CHECK_BUYING_POWER)
    if price is None or price <= 0:
        return [
            RiskCheck(name=n, passed=False, message=f"{n} unknown without a market price")
            for n in names
        ]
    value_before = abs(mul(before, price))
    value_after = abs(mul(after, price))
    increases = value_after > value_before
    equity = context.equity
    reduce_note = " but does not increase exposure" if not increases else ""

    within = value_after <= limits.max_position_value
    position_value = RiskCheck(
        name=CHECK_POSITION_VALUE,
        passed=within or not increases,
        value=_clamp(value_after),
        limit=limits.max_position_value,
        message=f"{symbol} exposure {_money(value_after)} "
        f"{'within' if within else 'exceeds'} max_position_value "
        f"{_money(limits.max_position_value)}{'' if within else reduce_note}",
    )

    gross_after = context.others_gross + value_after
    if equity > 0:
        leverage = ratio(gross_after, equity)
        # Compare exactly: the rounded ratio is for the report only (rounding it first
        # passed exposure up to 5e-10 × equity over the limit).
        lev_ok = gross_after * FACTOR <= limits.max_gross_leverage * equity
        gross_leverage = RiskCheck(
            name=CHECK_LEVERAGE,
            passed=lev_ok or not increases,
            value=_clamp(leverage),
            limit=limits.max_gross_leverage,
            message=f"gross leverage {_ratio(leverage)}x (gross {_money(gross_after)} / equity "
            f"{_money(equity)}) {'within' if lev_ok else 'exceeds'} max_gross_leverage "
            f"{_ratio(limits.max_gross_leverage)}x{'' if lev_ok else reduce_note}",
        )
        share = ratio(value_after, equity)
        conc_ok = value_after * FACTOR <= limits.max_concentration * equity
        concentration = RiskCheck(
            name=CHECK_CONCENTRATION,
            passed=conc_ok or not increases,
            value=_clamp(share),
            limit=limits.max_concentration,
            message=f"{symbol} would be {_pct(share)} of equity, "
            f"{'within' if conc_ok else 'above'} max_concentration "
            f"{_pct(limits.max_concentration)}{'' if conc_ok else reduce_note}",
        )
    else:
        why = f"equity {_money(equity)} is not positive"
        gross_leverage = RiskCheck(
            name=CHECK_LEVERAGE,
            passed=not increases,
            limit=limits.max_gross_leverage,
            message=f"{why}: only exposure-reducing orders",
        )
        concentration = RiskCheck(
            name=CHECK_CONCENTRATION,
            passed=not increases,
            limit=limits.max_concentration,
            message=f"{why}: only exposure-reducing orders",
        )

    margin_before = context.others_margin + mul(value_before, limits.margin_rate)
    buying_power = equity - margin_before
    required = mul(value_after, limits.margin_rate) - mul(value_before, limits.margin_rate)
    bp_ok = required <= 0 or required <= buying_power
    buying = RiskCheck(
        name=CHECK_BUYING_POWER,
        passed=bp_ok,
        value=_clamp(required),
        limit=_clamp(buying_power),
        message=f"order needs {_money(max(required, 0))} of margin "
        f"({_pct(limits.margin_rate)} of exposure); buying power {_money(buying_power)}"
        + ("" if bp_ok else ": insufficient"),
    )
    return [position_value, gross_leverage, concentration, buying]


def _order_rate(limits: AccountLimitsRaw, context: AccountContext, account: str) -> RiskCheck:
    count = context.recent_orders + 1
    limit = limits.max_orders_per_second
    passed = count <= limit
    return RiskCheck(
        name=CHECK_ORDER_RATE,
        passed=passed,
        value=count * FACTOR,
        limit=limit * FACTOR,
        message=f"order {count} of account {account} in 1 s, "
        f"{'within' if passed else 'above'} max_orders_per_second {limit}",
    )


def _daily_loss(
    limits: AccountLimitsRaw, context: AccountContext, account: str, reduces: bool
) -> RiskCheck:
    limit = limits.daily_loss_limit
    if context.daily_loss is None:
        return RiskCheck(
            name=CHECK_DAILY_LOSS,
            passed=True,
            limit=limit,
            message=f"no daily PnL for account {account} yet",
        )
    loss = context.daily_loss
    below = loss < limit
    if below:
        note = f"below daily_loss_limit {_money(limit)}"
    elif reduces:
        # The HALTED command stops everything; once an operator resumes, the account may
        # flatten but not add risk for the rest of the day.
        note = f"reached daily_loss_limit {_money(limit)}; the order reduces a position"
    else:
        note = f"reached daily_loss_limit {_money(limit)}: only position-reducing orders"
    return RiskCheck(
        name=CHECK_DAILY_LOSS,
        passed=below or reduces,
        value=_clamp(loss),
        limit=limit,
        message=f"daily loss {_money(loss)} {note} (account {account})",
    )


def _drawdown(
    limits: AccountLimitsRaw, context: AccountContext, account: str, reduces: bool
) -> RiskCheck:
    limit = limits.max_drawdown
    if context.drawdown is None:
        return RiskCheck(
            name=CHECK_DRAWDOWN,
            passed=True,
            limit=limit,
            message=f"no drawdown for account {account} yet",
        )
    drawdown = context.drawdown
    if drawdown < limit:
        return RiskCheck(
            name=CHECK_DRAWDOWN,
            passed=True,
            value=drawdown,
            limit=limit,
            message=f"drawdown {_pct(drawdown)} below max_drawdown {_pct(limit)}",
        )
    return RiskCheck(
        name=CHECK_DRAWDOWN,
        passed=reduces,
        value=drawdown,
        limit=limit,
        message=f"drawdown {_pct(drawdown)} reached max_drawdown {_pct(limit)}: REDUCING, "
        + ("the order reduces a position" if reduces else "only position-reducing orders"),
    )
