"""PreTradeRisk: every check reported, decisions are data, exposure state updated on approval."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import orjson
import pytest
from conftest import shared_file
from hypothesis import given
from hypothesis import strategies as st

from core.config import RiskLimits
from schemas.fixedpoint import mul, to_fixed
from schemas.models import Decision, Fill, OrderRequest, OrderType, Side, TradingState
from streams.logic.restrictions import FoBanList, parse_fo_ban_list
from streams.logic.risk import (
    MarketPrice,
    OpenOrder,
    PreTradeRisk,
    RiskLimitsRaw,
    SymbolRiskState,
    apply_report,
)
from streams.logic.trading_state import ScopeState

TS = 1_700_000_000_000_000_000


def px(value: str | int) -> int:
    return to_fixed(str(value))


LIMITS = RiskLimitsRaw(
    max_order_notional=px(250_000), max_position_per_symbol=px(5000), max_order_quantity=px(1000)
)
RISK = PreTradeRisk(LIMITS)
_AUTO = object()


def check(risk, request, state, ts_init, trading=None, market=_AUTO):
    """``risk.check`` with, unless given, the gate's market price at the price the order
    names (so these tests drive notional and position through the order's price)."""
    if market is _AUTO:
        named = request.reference_price or request.limit_price
        market = MarketPrice(named if named and named > 0 else px(100), request.ts_event)
    return risk.check(request, state, ts_init=ts_init, trading=trading, market=market)


def order(
    side: Side = Side.BUY,
    quantity: str | int = 100,
    reference_price: str | None = "100",
    *,
    order_type: OrderType = OrderType.MARKET,
    limit_price: str | None = None,
    client_order_id: str = "sma-x-AAPL-abc",
) -> OrderRequest:
    return OrderRequest(
        client_order_id=client_order_id,
        strategy_id="sma-x",
        symbol="AAPL",
        side=side,
        order_type=order_type,
        quantity=px(quantity),
        limit_price=px(limit_price) if limit_price is not None else None,
        reference_price=px(reference_price) if reference_price is not None else None,
        ts_event=TS,
        ts_init=TS + 1,
    )


def test_limits_from_config_are_raw_fixed_point() -> None:
    limits = RiskLimits(
        max_order_notional=Decimal("250000"),
        max_position_per_symbol=Decimal("5000.5"),
        max_order_quantity=Decimal("100000"),
    )
    assert RiskLimitsRaw.from_config(limits) == RiskLimitsRaw(
        max_order_notional=250_000 * 10**9,
        max_position_per_symbol=5_000_500_000_000,
        max_order_quantity=100_000 * 10**9,
    )


def test_non_positive_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="max_order_quantity"):
        RiskLimitsRaw(max_order_notional=1, max_position_per_symbol=1, max_order_quantity=0)


def test_order_within_all_limits_is_approved_and_opens_its_quantity() -> None:
    decision, state = check(RISK, order(Side.BUY, 100, "187.25"), SymbolRiskState(), ts_init=TS + 5)
    assert decision.decision == Decision.APPROVED
    assert decision.reason == "approved"
    assert [c.name for c in decision.checks] == [
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
    assert all(c.passed for c in decision.checks)
    checks = {c.name: c for c in decision.checks}
    assert checks["notional"].value == px("18725")
    assert checks["notional"].limit == px(250_000)
    assert checks["position"].value == px(100)
    assert state == SymbolRiskState(position=0, open_buy=px(100))
    assert (decision.ts_event, decision.ts_init) == (TS, TS + 5)
    assert (decision.side, decision.quantity, decision.symbol, decision.account) == (
        Side.BUY,
        px(100),
        "AAPL",
        "paper",
    )


def test_order_over_notional_limit_is_rejected() -> None:
    decision, state = check(RISK, order(Side.BUY, 1000, "250.01"), SymbolRiskState(), ts_init=TS)
    assert decision.decision == Decision.REJECTED
    notional = {c.name: c for c in decision.checks}["notional"]
    assert not notional.passed
    assert notional.value == px("250010")
    assert decision.reason == notional.message
    assert "exceeds max_order_notional 250000" in decision.reason
    assert state == SymbolRiskState()


def test_order_at_exactly_the_notional_limit_is_approved() -> None:
    decision, _ = check(RISK, order(Side.SELL, 1000, "250"), SymbolRiskState(), ts_init=TS)
    assert decision.decision == Decision.APPROVED


def test_order_over_max_quantity_is_rejected() -> None:
    decision, _ = check(RISK, order(Side.BUY, 1001, "1"), SymbolRiskState(), ts_init=TS)
    assert decision.decision == Decision.REJECTED
    assert decision.reason == "order quantity 1001 exceeds max_order_quantity 1000"


def test_market_order_without_reference_price_is_valued_at_the_gates_market_price() -> None:
    market = MarketPrice(px(300), TS - 1)
    decision, state = check(
        RISK, order(Side.BUY, 1000, None), SymbolRiskState(), ts_init=TS, market=market
    )
    checks = {c.name: c for c in decision.checks}
    assert checks["price"].passed and checks["price"].value == px(300)
    assert checks["price_collar"].passed  # it names no price to check
    assert not checks["notional"].passed and checks["notional"].value == px(300_000)
    assert decision.decision == Decision.REJECTED and state == SymbolRiskState()


def test_an_order_claiming_a_price_far_from_the_market_is_valued_at_the_market() -> None:
    # The hole the gate had: 4,999 SPY "at 0.01" while SPY trades at 167.
    spy = MarketPrice(px("167.10"), TS - 1_000_000)
    decision, _ = check(RISK, order(Side.BUY, 4999, "0.01"), SymbolRiskState(), TS, market=spy)
    checks = {c.name: c for c in decision.checks}
    assert decision.decision == Decision.REJECTED
    assert not checks["price_collar"].passed
    assert "reference price 0.01 outside ±5% of market 167.1" in checks["price_collar"].message
    assert not checks["notional"].passed and checks["notional"].value == px("835332.9")


def test_no_market_price_or_a_stale_one_rejects_with_that_reason() -> None:
    none, _ = check(RISK, order(), SymbolRiskState(), TS, market=None)
    assert none.decision == Decision.REJECTED
    assert none.reason.startswith("no market price for AAPL")
    stale = MarketPrice(px(100), TS - LIMITS.max_price_age_ns - 1)
    old, _ = check(RISK, order(), SymbolRiskState(), TS, market=stale)
    assert old.decision == Decision.REJECTED and "stale" in old.reason
    fresh = MarketPrice(px(100), TS - LIMITS.max_price_age_ns)
    ok, _ = check(RISK, order(), SymbolRiskState(), TS, market=fresh)
    assert ok.decision == Decision.APPROVED
    # an order made long before the last trade was decided on prices that are gone
    later = MarketPrice(px(100), TS + LIMITS.max_price_age_ns + 1)
    late, _ = check(RISK, order(), SymbolRiskState(), TS, market=later)
    assert late.decision == Decision.REJECTED
    assert "order for AAPL is stale: made" in late.reason
    just = MarketPrice(px(100), TS + LIMITS.max_price_age_ns)
    assert check(RISK, order(), SymbolRiskState(), TS, market=just)[0].decision == (
        Decision.APPROVED
    )


def test_limit_price_outside_the_collar_is_rejected() -> None:
    limit = order(Side.BUY, 10, None, order_type=OrderType.LIMIT, limit_price="110")
    decision, _ = check(RISK, limit, SymbolRiskState(), TS, market=MarketPrice(px(100), TS))
    assert decision.decision == Decision.REJECTED
    assert "limit price 110 outside ±5% of market 100" in decision.reason
    inside = order(Side.BUY, 10, None, order_type=OrderType.LIMIT, limit_price="104.99")
    decision, _ = check(RISK, inside, SymbolRiskState(), TS, market=MarketPrice(px(100), TS))
    assert decision.decision == Decision.APPROVED


def test_limit_order_without_reference_price_is_valued_at_its_limit_price() -> None:
    limit_order = order(
        Side.BUY, 1000, None, order_type=OrderType.LIMIT, limit_price="300"
    )  # 300k notional
    decision, _ = check(RISK, limit_order, SymbolRiskState(), ts_init=TS)
    checks = {c.name: c for c in decision.checks}
    assert checks["price"].passed and checks["price"].value == px(300)
    assert not checks["notional"].passed and checks["notional"].value == px(300_000)


def test_order_with_non_positive_reference_price_is_rejected() -> None:
    decision, _ = check(RISK, order(reference_price="0"), SymbolRiskState(), ts_init=TS)
    assert decision.decision == Decision.REJECTED
    assert "reference price 0 outside ±5% of market 100" in decision.reason


def test_worst_case_position_counts_position_and_working_buys() -> None:
    state = SymbolRiskState(position=px(4000), open_buy=px(900))
    decision, after = check(RISK, order(Side.BUY, 101, "10"), state, ts_init=TS)
    assert decision.decision == Decision.REJECTED
    position = {c.name: c for c in decision.checks}["position"]
    assert position.value == px(5001) and position.limit == px(5000)
    assert decision.reason.startswith(
        "worst-case position 5001 exceeds ±max_position_per_symbol 5000"
    )
    assert after == state
    decision, after = check(RISK, order(Side.BUY, 100, "10"), state, ts_init=TS)
    assert decision.decision == Decision.APPROVED
    assert after == SymbolRiskState(position=px(4000), open_buy=px(1000))


def test_a_working_sell_does_not_make_room_for_another_buy() -> None:
    """Buy to the limit, sell the same, buy again: netting would approve the second buy,
    and cancelling the sell would leave twice the limit. Sides are never netted."""
    risk = PreTradeRisk(
        RiskLimitsRaw(
            max_order_notional=px(10**6),
            max_position_per_symbol=px(500),
            max_order_quantity=px(500),
        )
    )
    state = SymbolRiskState()
    buy, state = check(risk, order(Side.BUY, 500, "10", client_order_id="b1"), state, TS)
    sell, state = check(risk, order(Side.SELL, 500, "10", client_order_id="s1"), state, TS)
    again, after = check(risk, order(Side.BUY, 1, "10", client_order_id="b2"), state, TS)
    assert [buy.decision, sell.decision] == [Decision.APPROVED] * 2
    assert state == SymbolRiskState(position=0, open_buy=px(500), open_sell=px(500))
    assert again.decision == Decision.REJECTED
    assert {c.name: c for c in again.checks}["position"].value == px(501)
    assert after == state
    # once the sell is canceled the book is what the buy alone makes it
    released, _ = apply_report(state, OpenOrder(Side.SELL, px(500)), "CANCELED", 0)
    assert released.worst == px(500)
    # and once the buy fills, the working sell is a reduction of the position
    filled, _ = apply_report(state, OpenOrder(Side.BUY, px(500)), "FILL", px(500))
    assert filled == SymbolRiskState(position=px(500), open_sell=px(500))
    assert filled.worst == px(500) and filled.short_case == 0


def test_short_worst_case_position_over_limit_is_rejected() -> None:
    state = SymbolRiskState(position=-px(4500))
    decision, _ = check(RISK, order(Side.SELL, 600, "10"), state, ts_init=TS)
    assert decision.decision == Decision.REJECTED
    assert {c.name: c for c in decision.checks}["position"].value == -px(5100)


def test_order_reducing_exposure_over_a_lowered_limit_is_approved() -> None:
    state = SymbolRiskState(position=px(6000))
    decision, after = check(RISK, order(Side.SELL, 500, "10"), state, ts_init=TS)
    assert decision.decision == Decision.APPROVED
    assert "not larger than before" in {c.name: c for c in decision.checks}["position"].message
    assert after == SymbolRiskState(position=px(6000), open_sell=px(500))
    assert after.worst == px(6000)  # the sell may never fill


def test_order_flipping_past_the_limit_is_rejected() -> None:
    small = PreTradeRisk(
        RiskLimitsRaw(
            max_order_notional=px(10**6),
            max_position_per_symbol=px(100),
            max_order_quantity=px(10**6),
        )
    )
    state = SymbolRiskState(position=px(120))  # over the limit of 100
    decision, _ = check(small, order(Side.SELL, 250, "1"), state, ts_init=TS)
    assert decision.decision == Decision.REJECTED  # 120 → -130: smaller, but flipped past -100


def test_all_failed_checks_are_reported_and_joined_in_the_reason() -> None:
    state = SymbolRiskState(position=px(5000))
    decision, _ = check(RISK, order(Side.BUY, 2000, "500"), state, ts_init=TS)
    assert decision.decision == Decision.REJECTED
    failed = [c for c in decision.checks if not c.passed]
    assert [c.name for c in failed] == ["quantity", "notional", "position"]
    assert decision.reason == "; ".join(c.message for c in failed)
    # every check reports its value (the trading state is a state, not a number)
    # states and lists, not numbers
    stateless = {"trading_state", "duplicate_client_order_id", "restricted_list", "fo_ban"}
    assert all(c.value is not None for c in decision.checks if c.name not in stateless)


def test_decision_id_is_deterministic_from_client_order_id() -> None:
    a, _ = check(RISK, order(client_order_id="x-1"), SymbolRiskState(), ts_init=1)
    b, _ = check(RISK, order(client_order_id="x-1"), SymbolRiskState(position=px(7)), ts_init=2)
    c, _ = check(RISK, order(client_order_id="x-2"), SymbolRiskState(), ts_init=1)
    assert a.decision_id == b.decision_id != c.decision_id
    assert a.client_order_id == "x-1"


def test_fill_moves_quantity_from_open_to_position() -> None:
    _, state = check(RISK, order(Side.SELL, 300, "10"), SymbolRiskState(), ts_init=TS)
    fill = Fill(
        fill_id="f1",
        client_order_id="sma-x-AAPL-abc",
        account="paper",
        symbol="AAPL",
        side=Side.SELL,
        quantity=px(100),
        price=px(10),
        venue="PAPER",
        ts_event=TS,
        ts_init=TS,
    )
    state = state.apply_fill(fill)
    assert state == SymbolRiskState(position=-px(100), open_sell=px(200))
    assert state.worst == -px(300)


def test_release_frees_the_working_quantity_of_an_order_that_will_not_fill() -> None:
    state = SymbolRiskState(position=px(10), open_buy=px(300), open_sell=px(5))
    assert state.release(Side.BUY, px(300)) == SymbolRiskState(position=px(10), open_sell=px(5))
    assert state.release(Side.SELL, px(5)) == SymbolRiskState(position=px(10), open_buy=px(300))
    with pytest.raises(ValueError):
        state.release(Side.BUY, -1)


def test_state_round_trips_through_json() -> None:
    state = SymbolRiskState(position=-px("12.5"), open_buy=px(300), open_sell=px(7))
    assert SymbolRiskState.from_dict(orjson.loads(orjson.dumps(state.to_dict()))) == state
    assert SymbolRiskState.from_dict({}) == SymbolRiskState()
    # a state saved before the sides were kept apart reads as working on its side
    legacy = {"position": px(1), "open_quantity": -px(3)}
    assert SymbolRiskState.from_dict(legacy) == SymbolRiskState(position=px(1), open_sell=px(3))
    with pytest.raises(ValueError, match="must not be negative"):
        SymbolRiskState(open_buy=-1)


@given(
    side=st.sampled_from(Side),
    quantity=st.integers(min_value=1, max_value=px(3000)),
    price=st.none() | st.integers(min_value=-px(1), max_value=px(1000)),
    position=st.integers(min_value=-px(8000), max_value=px(8000)),
    open_buy=st.integers(min_value=0, max_value=px(3000)),
    open_sell=st.integers(min_value=0, max_value=px(3000)),
)
def test_decision_is_approved_iff_every_check_passes_and_state_follows(
    side: Side, quantity: int, price: int | None, position: int, open_buy: int, open_sell: int
) -> None:
    request = OrderRequest(
        client_order_id="c",
        strategy_id="s",
        symbol="AAPL",
        side=side,
        quantity=quantity,
        reference_price=price,
        ts_event=TS,
        ts_init=TS,
    )
    state = SymbolRiskState(position=position, open_buy=open_buy, open_sell=open_sell)
    decision, after = check(RISK, request, state, ts_init=TS)
    # independent worst case: every buy fills and no sell, or the other way round
    long_before, short_before = position + open_buy, position - open_sell
    if side == Side.BUY:
        long_after, short_after = long_before + quantity, short_before
    else:
        long_after, short_after = long_before, short_before - quantity
    worst_before = max(abs(long_before), abs(short_before))
    worst_after = max(abs(long_after), abs(short_after))
    # the market the helper gives: the named price when positive, else 100
    market = price if price is not None and price > 0 else px(100)
    expected_ok = (
        quantity <= LIMITS.max_order_quantity
        and (price is None or abs(price - market) <= mul(market, LIMITS.price_collar))
        and abs(mul(quantity, market)) <= LIMITS.max_order_notional
        and (worst_after <= LIMITS.max_position_per_symbol or worst_after <= worst_before)
    )
    assert len(decision.checks) == 9
    assert (decision.decision == Decision.APPROVED) == expected_ok
    assert (decision.decision == Decision.APPROVED) == all(c.passed for c in decision.checks)
    if expected_ok:
        assert decision.reason == "approved"
        assert after == SymbolRiskState(
            position=position,
            open_buy=open_buy + (quantity if side == Side.BUY else 0),
            open_sell=open_sell + (quantity if side == Side.SELL else 0),
        )
    else:
        assert decision.reason == "; ".join(c.message for c in decision.checks if not c.passed)
        assert after == state


# -- trading state (kill switch) -------------------------------------------------------


def _scope(state: TradingState) -> ScopeState:
    return ScopeState(state, "desk limit", "cmd-1", "ops", TS)


def test_a_halted_account_has_every_order_rejected_with_reason_halted() -> None:
    decision, after = check(
        RISK, order(), SymbolRiskState(), ts_init=TS, trading=_scope(TradingState.HALTED)
    )
    assert decision.decision == Decision.REJECTED
    assert decision.reason.startswith("HALTED")
    assert "desk limit" in decision.reason
    assert after == SymbolRiskState()  # nothing reserved


def test_a_reducing_account_may_only_reduce_exposure() -> None:
    long = SymbolRiskState(position=px(300))
    reducing = _scope(TradingState.REDUCING)
    sell, _ = check(RISK, order(Side.SELL, 100), long, ts_init=TS, trading=reducing)
    buy, _ = check(RISK, order(Side.BUY, 100), long, ts_init=TS, trading=reducing)
    flip, _ = check(RISK, order(Side.SELL, 400), long, ts_init=TS, trading=reducing)
    flat, _ = check(RISK, order(Side.BUY, 1), SymbolRiskState(), ts_init=TS, trading=reducing)
    # with 250 already working to sell, another 100 would take the position past zero
    working = SymbolRiskState(position=px(300), open_sell=px(250))
    past_zero, _ = check(RISK, order(Side.SELL, 100), working, ts_init=TS, trading=reducing)
    # a working buy (it may fill) does not turn a sell of the position into anything else
    with_buy = SymbolRiskState(position=px(300), open_buy=px(500))
    sell_too, _ = check(RISK, order(Side.SELL, 300), with_buy, ts_init=TS, trading=reducing)
    assert sell.decision == Decision.APPROVED and sell_too.decision == Decision.APPROVED
    assert [d.decision for d in (buy, flip, flat, past_zero)] == [Decision.REJECTED] * 4
    assert buy.reason.startswith("REDUCING")


# -- duplicates and open exposure ------------------------------------------------------


def test_a_client_order_id_decided_before_is_rejected_as_a_duplicate() -> None:
    first, _ = check(RISK, order(), SymbolRiskState(), TS)
    again, after = RISK.check(
        order(), SymbolRiskState(), ts_init=TS, market=MarketPrice(px(100), TS), duplicate=True
    )
    assert first.decision == Decision.APPROVED
    assert again.decision == Decision.REJECTED
    assert "already decided on" in again.reason and after == SymbolRiskState()


def test_fills_move_working_quantity_to_the_position_and_cancels_release_the_rest() -> None:
    state = SymbolRiskState(open_buy=px(4999))
    open_order = OpenOrder(Side.BUY, px(4999))
    state, open_order = apply_report(state, open_order, "PARTIAL_FILL", px(1000))
    assert state == SymbolRiskState(position=px(1000), open_buy=px(3999))
    assert open_order == OpenOrder(Side.BUY, px(3999))
    state, still = apply_report(state, open_order, "NEW", 0)  # no change
    assert still == open_order
    state, done = apply_report(state, open_order, "CANCELED", 0)
    assert state == SymbolRiskState(position=px(1000)) and done is None
    # the case: an approved 4,999 that never fills no longer blocks the symbol
    blocked = SymbolRiskState(open_buy=px(4999))
    released, _ = apply_report(blocked, OpenOrder(Side.BUY, px(4999)), "REJECTED", 0)
    decision, _ = check(RISK, order(Side.BUY, 100), released, TS)
    assert decision.decision == Decision.APPROVED


def test_a_fill_larger_than_the_leaves_books_only_the_leaves() -> None:
    state, done = apply_report(
        SymbolRiskState(open_sell=px(10)), OpenOrder(Side.SELL, px(10)), "FILL", px(15)
    )
    assert state == SymbolRiskState(position=-px(10)) and done is None


def test_a_fill_that_ends_the_order_short_of_its_leaves_releases_the_rest() -> None:
    state, done = apply_report(
        SymbolRiskState(open_buy=px(10)), OpenOrder(Side.BUY, px(10)), "FILL", px(4)
    )
    assert state == SymbolRiskState(position=px(4)) and done is None


# -- restricted list and NSE F&O ban -----------------------------------------------------

IST_NOON_2026_10_07 = 1_791_354_600_000_000_000  # 2026-10-07 12:00 Asia/Kolkata


def test_a_restricted_symbol_is_rejected_with_or_without_an_exchange_prefix() -> None:
    limits = RiskLimitsRaw(
        max_order_notional=px(10**6), max_position_per_symbol=px(10**4),
        max_order_quantity=px(10**4), restricted=frozenset({"AAPL"}),
    )  # fmt: skip
    decision, _ = check(PreTradeRisk(limits), order(), SymbolRiskState(), TS)
    assert decision.decision == Decision.REJECTED
    assert "AAPL is on the restricted list" in decision.reason


def test_nse_ban_list_file_parses_and_bans_only_on_its_trade_date(shared_data) -> None:
    path = shared_file(shared_data, "nse-oi-tracker/data/fo_secban.csv")
    bans = parse_fo_ban_list(path.read_text())
    assert bans.trade_date.isoformat() == "2026-10-07"
    assert bans.symbols == {"AMBUJACEM", "BANDHANBNK", "SAIL"}
    assert bans.bans("NSE:SAIL", IST_NOON_2026_10_07)
    assert not bans.bans("NSE:SAIL", IST_NOON_2026_10_07 + 86_400 * 10**9)  # the next day
    assert not bans.bans("NSE:INFY", IST_NOON_2026_10_07)
    nil = parse_fo_ban_list("Securities in Ban For Trade Date 08-OCT-2026: NIL\n")
    assert nil.symbols == frozenset()
    with pytest.raises(ValueError, match="line 2"):
        parse_fo_ban_list("Securities in Ban For Trade Date 08-OCT-2026:\nSAIL\n")
    with pytest.raises(ValueError, match="line 1"):
        parse_fo_ban_list("serial,symbol\n1,SAIL\n")


def test_a_banned_symbol_accepts_only_position_reducing_orders() -> None:
    bans = FoBanList(date(2026, 10, 7), frozenset({"SAIL"}))

    def sail(side: Side, qty: int) -> OrderRequest:
        return order(side, qty).model_copy(
            update={"symbol": "NSE:SAIL", "ts_event": IST_NOON_2026_10_07}
        )

    long = SymbolRiskState(position=px(500))
    sell, _ = RISK.check(sail(Side.SELL, 200), long, ts_init=TS, fo_ban=bans,
                         market=MarketPrice(px(100), IST_NOON_2026_10_07))  # fmt: skip
    buy, _ = RISK.check(sail(Side.BUY, 200), long, ts_init=TS, fo_ban=bans,
                        market=MarketPrice(px(100), IST_NOON_2026_10_07))  # fmt: skip
    assert sell.decision == Decision.APPROVED
    assert buy.decision == Decision.REJECTED
    assert "F&O ban on 2026-10-07: only position-reducing orders" in buy.reason
