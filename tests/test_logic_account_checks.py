"""Account-level pre-trade checks: each check's pass/fail boundary, to the raw unit.

Expected values are worked out here in Decimal from the issue's seed limits, never with the
module's own helpers: exactly at a limit passes, one raw unit (1e-9) over fails.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from schemas.fixedpoint import to_fixed
from schemas.models import Decision, OrderRequest, RiskCheck, Side
from streams.logic.account_checks import AccountContext, AccountLimitsRaw, account_checks
from streams.logic.risk import MarketPrice, PreTradeRisk, RiskLimitsRaw, SymbolRiskState

D = Decimal
RAW = D("0.000000001")  # one raw fixed-point unit
TS = 1_700_000_000_000_000_000

# The seed limits, as written there.
POSITION_VALUE = D("500000")
GROSS_LEVERAGE = D("2.0")
CONCENTRATION = D("0.25")
MARGIN_RATE = D("0.5")
ORDERS_PER_SECOND = 10
DAILY_LOSS = D("10000")
DRAWDOWN = D("0.15")

LIMITS = AccountLimitsRaw(
    max_position_value=to_fixed(POSITION_VALUE),
    max_gross_leverage=to_fixed(GROSS_LEVERAGE),
    max_concentration=to_fixed(CONCENTRATION),
    margin_rate=to_fixed(MARGIN_RATE),
    max_orders_per_second=ORDERS_PER_SECOND,
    daily_loss_limit=to_fixed(DAILY_LOSS),
    max_drawdown=to_fixed(DRAWDOWN),
)

ACCOUNT_CHECK_NAMES = [
    "position_value",
    "gross_leverage",
    "concentration",
    "buying_power",
    "order_rate",
    "daily_loss",
    "drawdown",
    "account_state",
]
SYMBOL_CHECK_NAMES = [
    "quantity",
    "price",
    "price_collar",
    "notional",
    "trading_state",
    "position",
    "restricted_list",
    "fo_ban",
    "duplicate_client_order_id",
]
EXPOSURE = ("position_value", "gross_leverage", "concentration", "buying_power")


def fx(value: Decimal | int | str) -> int:
    return to_fixed(D(value))


def context(
    equity: Decimal | str = "100000000",
    *,
    others_gross: Decimal | str = "0",
    others_margin: Decimal | str = "0",
    recent_orders: int = 0,
    daily_loss: Decimal | str | None = None,
    drawdown: Decimal | str | None = None,
    error: str | None = None,
) -> AccountContext:
    return AccountContext(
        equity=fx(equity),
        equity_source="portfolio snapshot",
        others_gross=fx(others_gross),
        others_margin=fx(others_margin),
        recent_orders=recent_orders,
        daily_loss=fx(daily_loss) if daily_loss is not None else None,
        drawdown=fx(drawdown) if drawdown is not None else None,
        error=error,
    )


def run(
    before: Decimal | str,
    after: Decimal | str,
    price: Decimal | str | None = "1",
    ctx: AccountContext | None = None,
) -> dict[str, RiskCheck]:
    """The account checks of an order taking the worst-case position from ``before`` to
    ``after`` (signed quantities, no other working orders, so the order reduces the
    position when it moves it toward zero without crossing) at the market ``price``."""
    b, a = fx(before), fx(after)
    checks = account_checks(
        LIMITS,
        ctx if ctx is not None else context(),
        account="desk-1",
        symbol="AAPL",
        before=b,
        after=a,
        reduces=abs(a) < abs(b) and a * b >= 0,
        price=fx(price) if price is not None else None,
    )
    assert [c.name for c in checks] == ACCOUNT_CHECK_NAMES
    return {c.name: c for c in checks}


def _request(side: Side, quantity: str, coid: str = "c-1") -> OrderRequest:
    return OrderRequest(
        client_order_id=coid,
        strategy_id="sma",
        account="desk-1",
        symbol="AAPL",
        side=side,
        quantity=fx(quantity),
        ts_event=TS,
        ts_init=TS,
    )


# -- every check, in order, with its value and limit -------------------------------------


def test_account_checks_are_listed_in_the_documented_order_each_with_value_and_limit() -> None:
    checks = run("0", "100", "10", context(daily_loss="10", drawdown="0.01"))
    for name in ACCOUNT_CHECK_NAMES[:-1]:
        assert checks[name].value is not None, name
        assert checks[name].limit is not None, name
    assert checks["account_state"].passed
    assert all(c.passed for c in checks.values())


def test_every_decision_lists_every_symbol_and_account_check() -> None:
    risk = PreTradeRisk(
        RiskLimitsRaw(
            max_order_notional=fx(10**6), max_position_per_symbol=fx(10**6),
            max_order_quantity=fx(10**6),
        )
    )  # fmt: skip
    market = MarketPrice(fx(100), TS)
    small = _request(Side.BUY, "10")
    huge = _request(Side.BUY, "9000")
    for request in (small, huge):
        decision, _ = risk.check(
            request, SymbolRiskState(), TS, market=market, account=context("1000000")
        )
        assert [c.name for c in decision.checks] == SYMBOL_CHECK_NAMES + ACCOUNT_CHECK_NAMES
    approved, _ = risk.check(small, SymbolRiskState(), TS, market=market, account=context())
    rejected, _ = risk.check(huge, SymbolRiskState(), TS, market=market, account=context("1000000"))
    assert approved.decision == Decision.APPROVED
    assert rejected.decision == Decision.REJECTED
    # 900k of exposure on 1M of equity: over 500k and over 25 %, but 0.9x leverage and
    # 450k of margin are within.
    failed = [c.name for c in rejected.checks if not c.passed]
    assert failed == ["position_value", "concentration"]


# -- position value ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quantity", "price"),
    [("500000", "1"), ("2000", "250"), ("-2000", "250"), ("3125", "160")],
)
def test_position_value_at_the_seed_limit_passes_and_a_raw_unit_of_quantity_over_fails(
    quantity: str, price: str
) -> None:
    at = D(quantity)
    assert abs(at * D(price)) == POSITION_VALUE  # the case is built on the limit
    check = run("0", at, price)["position_value"]
    assert check.passed
    assert (check.value, check.limit) == (fx(POSITION_VALUE), fx(POSITION_VALUE))

    over = at + (RAW if at > 0 else -RAW)
    check = run("0", over, price)["position_value"]
    assert not check.passed
    assert check.value == fx(abs(over * D(price)))


def test_position_value_counts_open_orders_through_the_gate() -> None:
    # position 100,000 + open 300,000 + the order 100,000 = 500,000 at $1: the seed limit.
    risk = PreTradeRisk(
        RiskLimitsRaw(
            max_order_notional=fx(10**9), max_position_per_symbol=fx(10**9),
            max_order_quantity=fx(10**9),
        )
    )  # fmt: skip
    state = SymbolRiskState(position=fx(100_000), open_buy=fx(300_000))
    market = MarketPrice(fx(1), TS)
    at, after = risk.check(
        _request(Side.BUY, "100000"), state, TS, market=market, account=context()
    )
    over, kept = risk.check(
        _request(Side.BUY, "100000.000000001"), state, TS, market=market, account=context()
    )
    assert at.decision == Decision.APPROVED
    assert after.worst == fx(POSITION_VALUE)
    assert over.decision == Decision.REJECTED
    assert [c.name for c in over.checks if not c.passed] == ["position_value"]
    assert kept == state


def test_position_value_over_the_limit_may_be_reduced_or_flipped_to_a_smaller_one() -> None:
    assert run("600000", "550000")["position_value"].passed
    assert run("-600000", "-1")["position_value"].passed
    assert run("600000", "-550000")["position_value"].passed
    flipped_larger = run("600000", "-600000.000000001")["position_value"]
    assert not flipped_larger.passed
    assert not run("600000", "600000.000000001")["position_value"].passed


# -- gross leverage ------------------------------------------------------------------------


def test_gross_leverage_at_two_times_with_other_symbols_passes_and_a_raw_unit_over_fails() -> None:
    equity, others, mine = D("2000000"), D("3500000"), D("500000")
    assert (others + mine) / equity == GROSS_LEVERAGE
    check = run("0", mine, "1", context(equity, others_gross=others))["gross_leverage"]
    assert check.passed
    assert (check.value, check.limit) == (fx(GROSS_LEVERAGE), fx(GROSS_LEVERAGE))
    # one raw unit more of another symbol's exposure, or of this one's
    assert not run("0", mine, "1", context(equity, others_gross=others + RAW))[
        "gross_leverage"
    ].passed
    assert not run("0", mine + RAW, "1", context(equity, others_gross=others))[
        "gross_leverage"
    ].passed
    # the same order is well within without the other symbols
    assert run("0", mine + RAW, "1", context(equity))["gross_leverage"].passed


def test_gross_leverage_over_the_limit_passes_an_order_that_does_not_add_exposure() -> None:
    ctx = context("1000000", others_gross="2500000")  # 2.5x before this symbol
    assert run("100000", "50000", "1", ctx)["gross_leverage"].passed
    assert run("100000", "-99999", "1", ctx)["gross_leverage"].passed
    assert not run("0", "1", "1", ctx)["gross_leverage"].passed
    assert not run("100000", "100000.000000001", "1", ctx)["gross_leverage"].passed


# -- concentration -------------------------------------------------------------------------


@pytest.mark.parametrize("sign", [D(1), D(-1)])
def test_concentration_at_25_percent_passes_and_a_raw_unit_over_fails(sign: Decimal) -> None:
    equity = D("1000000")
    at = equity * CONCENTRATION  # at $1 a unit, the quantity is the exposure
    check = run("0", sign * at, "1", context(equity))["concentration"]
    assert check.passed
    assert (check.value, check.limit) == (fx(CONCENTRATION), fx(CONCENTRATION))
    assert not run("0", sign * (at + RAW), "1", context(equity))["concentration"].passed


def test_concentration_is_one_symbol_whatever_the_others_hold() -> None:
    equity, mine = D("1000000"), D("250000")
    for others in ("0", "1750000", "5000000"):  # 0.25x, 2.0x, 5.25x gross
        checks = run("0", mine, "1", context(equity, others_gross=others))
        assert checks["concentration"].passed, others
        assert checks["concentration"].value == fx(CONCENTRATION)
    assert not run("0", mine, "1", context(equity, others_gross="5000000"))["gross_leverage"].passed


def test_concentration_at_a_fractional_price_is_exact() -> None:
    # 1,000,003 of equity: 25 % is 250,000.75; at 0.5 a unit that is 500,001.5 units.
    equity, price = D("1000003"), D("0.5")
    at = equity * CONCENTRATION / price
    assert run("0", at, price, context(equity))["concentration"].passed
    assert not run("0", at + RAW * 2, price, context(equity))["concentration"].passed


# -- buying power --------------------------------------------------------------------------


def test_buying_power_with_others_margin_fits_an_order_exactly_and_not_a_raw_unit_more() -> None:
    equity, others_margin = D("1000000"), D("400000")
    mine = D("1200000")  # at $1: 600k of margin at 0.5, all the buying power left
    required = mine * MARGIN_RATE
    power = equity - others_margin
    assert required == power
    check = run("0", mine, "1", context(equity, others_margin=others_margin))["buying_power"]
    assert check.passed
    assert (check.value, check.limit) == (fx(required), fx(power))
    short = run("0", mine, "1", context(equity, others_margin=others_margin + RAW))
    assert not short["buying_power"].passed
    assert short["buying_power"].limit == fx(power - RAW)


def test_buying_power_counts_the_margin_this_symbol_already_uses() -> None:
    equity, others_margin, before = D("1000000"), D("400000"), D("200000")
    power = equity - others_margin - before * MARGIN_RATE  # 500k
    after = before + power / MARGIN_RATE  # 1.2M: 500k more margin
    check = run(before, after, "1", context(equity, others_margin=others_margin))["buying_power"]
    assert check.passed
    assert (check.value, check.limit) == (fx(power), fx(power))
    # two raw units more of exposure is one raw unit more of margin at 0.5
    over = run(before, after + 2 * RAW, "1", context(equity, others_margin=others_margin))
    assert not over["buying_power"].passed
    assert over["buying_power"].value == fx(power + RAW)


def test_buying_power_exhausted_still_passes_an_order_that_frees_margin() -> None:
    ctx = context("1000000", others_margin="2000000")  # buying power -1M
    assert run("100000", "50000", "1", ctx)["buying_power"].passed
    assert run("100000", "-50000", "1", ctx)["buying_power"].passed
    assert not run("100000", "100000.000000002", "1", ctx)["buying_power"].passed


# -- order rate ----------------------------------------------------------------------------


def test_tenth_order_in_a_second_passes_and_the_eleventh_fails() -> None:
    tenth = run("0", "1", ctx=context(recent_orders=ORDERS_PER_SECOND - 1))["order_rate"]
    assert tenth.passed
    assert (tenth.value, tenth.limit) == (fx(ORDERS_PER_SECOND), fx(ORDERS_PER_SECOND))
    eleventh = run("0", "1", ctx=context(recent_orders=ORDERS_PER_SECOND))["order_rate"]
    assert not eleventh.passed
    assert eleventh.value == fx(ORDERS_PER_SECOND + 1)


@pytest.mark.parametrize("recent", [0, 1, 5, 9, 10, 50])
def test_order_rate_counts_every_recent_order_and_this_one(recent: int) -> None:
    # no exemption: a reducing order, or one in a flat book, counts the same
    for before, after in (("0", "1"), ("100", "50"), ("-100", "-99")):
        check = run(before, after, ctx=context(recent_orders=recent))["order_rate"]
        assert check.value == fx(recent + 1)
        assert check.passed == (recent + 1 <= ORDERS_PER_SECOND)


# -- daily loss ----------------------------------------------------------------------------


def test_daily_loss_none_yet_passes_and_reports_the_limit() -> None:
    check = run("0", "1", ctx=context(daily_loss=None))["daily_loss"]
    assert check.passed
    assert (check.value, check.limit) == (None, fx(DAILY_LOSS))


def test_daily_loss_at_the_limit_refuses_new_risk_but_lets_positions_be_reduced() -> None:
    below = run("0", "1", ctx=context(daily_loss=DAILY_LOSS - RAW))["daily_loss"]
    assert below.passed
    assert (below.value, below.limit) == (fx(DAILY_LOSS - RAW), fx(DAILY_LOSS))
    for before, after in (("0", "1"), ("100", "150"), ("100", "-50")):
        at = run(before, after, ctx=context(daily_loss=DAILY_LOSS))["daily_loss"]
        assert not at.passed, (before, after)
        assert at.value == fx(DAILY_LOSS)
        assert "only position-reducing orders" in at.message
    # flattening after an operator resumes the halted account
    for before, after in (("100", "50"), ("100", "0"), ("-100", "-1")):
        at = run(before, after, ctx=context(daily_loss=DAILY_LOSS))["daily_loss"]
        assert at.passed, (before, after)
        assert "reduces a position" in at.message
    assert not run("0", "1", ctx=context(daily_loss=DAILY_LOSS + RAW))["daily_loss"].passed
    assert run("0", "1", ctx=context(daily_loss="0"))["daily_loss"].passed


# -- drawdown ------------------------------------------------------------------------------


def test_drawdown_none_or_below_the_limit_passes_any_order() -> None:
    for drawdown in (None, "0", DRAWDOWN - RAW):
        for before, after in (("0", "1"), ("100", "150"), ("100", "-50")):
            check = run(before, after, ctx=context(drawdown=drawdown))["drawdown"]
            assert check.passed, (drawdown, before, after)
            assert check.limit == fx(DRAWDOWN)


@pytest.mark.parametrize("drawdown", [DRAWDOWN, DRAWDOWN + RAW, D("0.4")])
def test_drawdown_at_or_beyond_the_limit_passes_only_strict_reductions(drawdown: Decimal) -> None:
    def passes(before: str, after: str) -> bool:
        check = run(before, after, ctx=context(drawdown=drawdown))["drawdown"]
        assert check.value == fx(drawdown)
        return check.passed

    assert passes("100", "50")
    assert passes("-100", "-99.999999999")
    assert passes("100", "0")  # flat is a reduction
    assert not passes("0", "1")
    assert not passes("100", "100.000000001")
    assert not passes("100", "-50")  # a flip to a smaller short still fails
    assert not passes("-100", "1")


# -- no market price, non-positive equity, unreadable context ------------------------------


@pytest.mark.parametrize("price", [None, "0", "-1"])
def test_without_a_market_price_every_exposure_check_fails(price: str | None) -> None:
    for before, after in (("0", "1"), ("100", "50")):  # a reduction too: its value is unknown
        checks = run(before, after, price)
        for name in EXPOSURE:
            assert not checks[name].passed, name
            assert checks[name].value is None
        assert all(checks[n].passed for n in ACCOUNT_CHECK_NAMES if n not in EXPOSURE)


@pytest.mark.parametrize("equity", ["0", "-1000", "-0.000000001"])
def test_non_positive_equity_passes_only_orders_that_do_not_add_exposure(equity: str) -> None:
    increasing = run("0", "100", "1", context(equity))
    assert not increasing["gross_leverage"].passed
    assert not increasing["concentration"].passed
    assert not increasing["buying_power"].passed
    assert increasing["position_value"].passed  # 100 of value: that limit is not equity's
    for before, after in (("100", "50"), ("100", "-50"), ("-100", "0")):
        checks = run(before, after, "1", context(equity))
        assert all(checks[n].passed for n in EXPOSURE), (before, after)


def test_an_unreadable_account_context_fails_account_state_with_the_reason() -> None:
    checks = run("100", "50", ctx=context(error="ConnectionError('redis down')"))
    assert not checks["account_state"].passed
    assert "ConnectionError('redis down')" in checks["account_state"].message
    assert [n for n, c in checks.items() if not c.passed] == ["account_state"]
    assert run("100", "50")["account_state"].passed


def test_an_unreadable_context_rejects_the_order_at_the_gate() -> None:
    risk = PreTradeRisk(
        RiskLimitsRaw(max_order_notional=fx(10**6), max_position_per_symbol=fx(10**6),
                      max_order_quantity=fx(10**6))
    )  # fmt: skip
    state = SymbolRiskState(position=fx(100))
    decision, after = risk.check(
        _request(Side.SELL, "50"),
        state,
        TS,
        market=MarketPrice(fx(1), TS),
        account=context(error="TimeoutError()"),
    )
    assert decision.decision == Decision.REJECTED
    assert "TimeoutError()" in decision.reason
    assert after == state
