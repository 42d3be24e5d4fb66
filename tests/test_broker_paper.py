"""The paper venue (brokers.paper): pure, no Kafka. Fills as of eligibility, whatever the
order in which the order and the market data arrive; quotes limit the size, trades do not."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import shared_file
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brokers.base import (
    BrokerEvent,
    BrokerOrder,
    BrokerRejected,
    BrokerUnavailable,
    OrderSubmission,
)
from brokers.paper import PaperBroker
from core.config import ExecutionSettings
from producers.replay import open_file
from schemas.fixedpoint import to_fixed
from schemas.models import ExecType, OrderStatus, OrderType, Quote, Side, TimeInForce, Trade

MS = 1_000_000
T0 = 1_700_000_000_000_000_000
SPY_TRADES = "Lean/Data/equity/usa/tick/spy/20131007_trade.zip"
BAC_QUOTES = "Lean/Data/equity/usa/tick/bac/20131007_quote.zip"


def px(text: str) -> int:
    return to_fixed(text)


def trade(price: str, ts: int, symbol: str = "AAPL", size: str = "100") -> dict[str, Any]:
    return Trade(
        symbol=symbol,
        venue="XNAS",
        price=px(price),
        size=px(size),
        source="test",
        ts_event=ts,
        ts_init=ts,
    ).model_dump()


def quote(
    bid: str | None,
    bid_size: str | None,
    ask: str | None,
    ask_size: str | None,
    ts: int,
    symbol: str = "AAPL",
) -> dict[str, Any]:
    return Quote(
        symbol=symbol,
        venue="XNAS",
        bid_price=None if bid is None else px(bid),
        bid_size=None if bid_size is None else px(bid_size),
        ask_price=None if ask is None else px(ask),
        ask_size=None if ask_size is None else px(ask_size),
        source="test",
        ts_event=ts,
        ts_init=ts,
    ).model_dump()


def order(
    coid: str = "o-1",
    *,
    side: Side = Side.BUY,
    qty: str = "100",
    ts: int = T0,
    order_type: OrderType = OrderType.MARKET,
    limit: str | None = None,
    tif: TimeInForce = TimeInForce.DAY,
    symbol: str = "AAPL",
) -> OrderSubmission:
    return OrderSubmission(
        client_order_id=coid,
        account="paper",
        symbol=symbol,
        side=side,
        order_type=order_type,
        quantity=px(qty),
        time_in_force=tif,
        limit_price=None if limit is None else px(limit),
        ts_event=ts,
    )


def broker(
    latency_ms: int = 0, fill_on_trades: bool = True
) -> tuple[PaperBroker, list[BrokerEvent]]:
    events: list[BrokerEvent] = []
    venue = PaperBroker(
        ExecutionSettings(paper_latency_ms=latency_ms, paper_fill_on_trades=fill_on_trades)
    )
    venue.connect(events.append)
    return venue, events


def fills(events: Sequence[BrokerEvent]) -> list[tuple[ExecType, int, int | None]]:
    return [
        (e.exec_type, e.last_quantity, e.last_price)
        for e in events
        if e.exec_type in (ExecType.PARTIAL_FILL, ExecType.FILL)
    ]


# ---- the contract the end-to-end pipeline relies on -------------------------------------
@pytest.mark.parametrize("order_first", [True, False])
def test_trades_only_order_at_a_trade_time_fills_in_full_at_that_trade(order_first: bool) -> None:
    venue, events = broker(latency_ms=0)
    before, at = trade("187.10", T0 - MS), trade("187.25", T0)
    venue.on_market_data(before)
    if order_first:
        ack = venue.submit(order(ts=T0))
        venue.on_market_data(at)
    else:
        venue.on_market_data(at)
        ack = venue.submit(order(ts=T0))
    assert ack.status is OrderStatus.NEW and ack.venue_order_id == "PAPER-o-1"
    assert [e.exec_type for e in events] == [ExecType.NEW, ExecType.FILL]
    fill = events[1]
    assert (fill.last_quantity, fill.last_price) == (px("100"), px("187.25"))
    assert (fill.cum_quantity, fill.avg_price, fill.status) == (
        px("100"),
        px("187.25"),
        OrderStatus.FILLED,
    )
    assert fill.fill_id == "PAPER-o-1-F1" and fill.ts_event == T0
    assert venue.get_order("o-1") == BrokerOrder(
        client_order_id="o-1",
        venue_order_id="PAPER-o-1",
        symbol="AAPL",
        side=Side.BUY,
        quantity=px("100"),
        status=OrderStatus.FILLED,
        filled_quantity=px("100"),
        avg_price=px("187.25"),
        ts_event=T0,
    )
    assert venue.open_orders() == []


def test_order_waits_for_market_data_at_or_after_its_time_then_prices_as_of_it() -> None:
    venue, events = broker(latency_ms=0)
    venue.on_market_data(trade("10.00", T0 - 5 * MS))
    venue.submit(order(ts=T0))
    assert fills(events) == []  # nothing at or after T0 yet: the market at T0 is not known
    venue.on_market_data(trade("10.50", T0 + 5 * MS))
    # as of T0 the last print was 10.00; the later print only told us T0 has passed
    assert fills(events) == [(ExecType.FILL, px("100"), px("10.00"))]
    assert events[-1].ts_event == T0


def test_latency_moves_eligibility_and_the_as_of_price() -> None:
    venue, events = broker(latency_ms=3)
    for ms, price in [(0, "10.00"), (2, "10.10"), (3, "10.20"), (4, "10.30")]:
        venue.on_market_data(trade(price, T0 + ms * MS))
    venue.submit(order(ts=T0))
    assert fills(events) == [(ExecType.FILL, px("100"), px("10.20"))]
    assert events[-1].ts_event == T0 + 3 * MS


def test_no_market_data_the_order_rests_and_can_be_canceled() -> None:
    venue, events = broker()
    venue.submit(order())
    venue.on_market_data(trade("5.00", T0 + MS, symbol="MSFT"))
    assert [o.client_order_id for o in venue.open_orders()] == ["o-1"]
    venue.cancel("o-1", "PAPER-o-1")
    assert [(e.exec_type, e.status) for e in events] == [
        (ExecType.NEW, OrderStatus.NEW),
        (ExecType.CANCELED, OrderStatus.CANCELED),
    ]
    assert venue.open_orders() == []
    with pytest.raises(BrokerRejected, match="not working"):
        venue.cancel("o-1", None)
    with pytest.raises(BrokerRejected, match="unknown order"):
        venue.cancel("nope", None)


# ---- quotes: displayed size, partial fills ------------------------------------------------
def test_buy_takes_the_ask_up_to_its_size_and_the_rest_fills_on_later_quotes() -> None:
    venue, events = broker()
    venue.on_market_data(quote("99.98", "500", "100.02", "100", T0))
    venue.submit(order(qty="300", ts=T0))
    venue.on_market_data(trade("100.01", T0 + MS))  # quoted symbol: a print offers nothing
    venue.on_market_data(quote("99.99", "500", "100.03", "150", T0 + 2 * MS))
    venue.on_market_data(quote("99.99", "500", "100.06", "400", T0 + 3 * MS))
    assert fills(events) == [
        (ExecType.PARTIAL_FILL, px("100"), px("100.02")),
        (ExecType.PARTIAL_FILL, px("150"), px("100.03")),
        (ExecType.FILL, px("50"), px("100.06")),
    ]
    assert [e.cum_quantity for e in events[1:]] == [px("100"), px("250"), px("300")]
    assert [e.status for e in events[1:]] == [
        OrderStatus.PARTIALLY_FILLED,
        OrderStatus.PARTIALLY_FILLED,
        OrderStatus.FILLED,
    ]
    # (100×100.02 + 150×100.03 + 50×100.06) / 300 = 100.0316666… → 100.031666667 half-even
    assert events[-1].avg_price == 100_031_666_667
    assert [e.fill_id for e in events[1:]] == [f"PAPER-o-1-F{n}" for n in (1, 2, 3)]


def test_sell_takes_the_bid_and_a_one_sided_quote_without_a_bid_offers_nothing() -> None:
    venue, events = broker()
    venue.on_market_data(quote(None, None, "50.10", "1000", T0))
    venue.submit(order(side=Side.SELL, qty="200", ts=T0))
    assert fills(events) == []
    venue.on_market_data(quote("50.05", "200", None, None, T0 + MS))
    assert fills(events) == [(ExecType.FILL, px("200"), px("50.05"))]


def test_average_price_is_exact_half_even() -> None:
    venue, events = broker()
    venue.on_market_data(quote("1", "1", "0.000000001", "1", T0))
    venue.submit(order(qty="2", ts=T0))
    venue.on_market_data(quote("1", "1", "0.000000002", "1", T0 + MS))
    # (1e-9 + 2e-9) / 2 = 1.5e-9 → 2 raw units (half to even); 0.000000003 would be 3
    assert [e.avg_price for e in events[1:]] == [1, 2]
    assert events[-1].exec_type is ExecType.FILL


# ---- limits, IOC, FOK --------------------------------------------------------------------
def test_limit_buy_rests_until_the_ask_is_at_or_below_the_limit() -> None:
    venue, events = broker()
    venue.on_market_data(quote("9.98", "100", "10.02", "100", T0))
    venue.submit(order(order_type=OrderType.LIMIT, limit="10.00", ts=T0))
    venue.on_market_data(quote("9.99", "100", "10.01", "100", T0 + MS))
    assert fills(events) == []
    venue.on_market_data(quote("9.99", "100", "10.00", "100", T0 + 2 * MS))
    assert fills(events) == [(ExecType.FILL, px("100"), px("10.00"))]


def test_limit_sell_against_trades_fills_only_at_or_above_the_limit() -> None:
    venue, events = broker()
    venue.on_market_data(trade("20.00", T0))
    venue.submit(order(side=Side.SELL, order_type=OrderType.LIMIT, limit="20.50", ts=T0))
    venue.on_market_data(trade("20.49", T0 + MS))
    venue.on_market_data(trade("20.60", T0 + 2 * MS))
    assert fills(events) == [(ExecType.FILL, px("100"), px("20.60"))]


def test_ioc_takes_what_is_displayed_and_expires_the_rest() -> None:
    venue, events = broker()
    venue.on_market_data(quote("9.99", "100", "10.01", "40", T0))
    venue.submit(order(qty="100", tif=TimeInForce.IOC, ts=T0))
    venue.on_market_data(quote("9.99", "100", "10.01", "500", T0 + MS))
    assert [(e.exec_type, e.last_quantity, e.cum_quantity, e.status) for e in events] == [
        (ExecType.NEW, 0, 0, OrderStatus.NEW),
        (ExecType.PARTIAL_FILL, px("40"), px("40"), OrderStatus.PARTIALLY_FILLED),
        (ExecType.EXPIRED, 0, px("40"), OrderStatus.EXPIRED),
    ]


def test_fok_without_enough_displayed_size_expires_with_no_fill() -> None:
    venue, events = broker()
    venue.on_market_data(quote("9.99", "100", "10.01", "99", T0))
    venue.submit(order(qty="100", tif=TimeInForce.FOK, ts=T0))
    assert [e.exec_type for e in events] == [ExecType.NEW, ExecType.EXPIRED]
    assert events[-1].cum_quantity == 0


def test_fok_with_enough_displayed_size_fills_in_one_piece() -> None:
    venue, events = broker()
    venue.submit(order(qty="100", tif=TimeInForce.FOK, ts=T0))
    venue.on_market_data(quote("9.99", "100", "10.01", "100", T0))
    assert fills(events) == [(ExecType.FILL, px("100"), px("10.01"))]


def test_ioc_with_no_market_at_its_time_expires_once_the_market_passes_it() -> None:
    venue, events = broker()
    venue.submit(order(tif=TimeInForce.IOC, ts=T0))
    assert [e.exec_type for e in events] == [ExecType.NEW]
    venue.on_market_data(trade("10.00", T0 + MS))
    assert [e.exec_type for e in events] == [ExecType.NEW, ExecType.EXPIRED]


def test_trades_do_not_fill_when_fill_on_trades_is_off() -> None:
    venue, events = broker(fill_on_trades=False)
    venue.on_market_data(trade("10.00", T0))
    venue.submit(order(ts=T0))
    venue.on_market_data(trade("10.00", T0 + MS))
    assert fills(events) == [] and len(venue.open_orders()) == 1


@pytest.mark.parametrize(
    "bad",
    [
        order(qty="0"),
        order(order_type=OrderType.LIMIT),
        order(order_type=OrderType.LIMIT, limit="0"),
        OrderSubmission("neg", "paper", "AAPL", Side.BUY, OrderType.MARKET, -1),
    ],
)
def test_non_positive_quantity_or_price_is_rejected(bad: OrderSubmission) -> None:
    venue, events = broker()
    with pytest.raises(BrokerRejected):
        venue.submit(bad)
    assert events == [] and venue.get_order(bad.client_order_id) is None


def test_submit_before_connect_is_unavailable() -> None:
    with pytest.raises(BrokerUnavailable):
        PaperBroker(ExecutionSettings()).submit(order())


def test_resubmitting_a_known_order_returns_it_without_new_events() -> None:
    venue, events = broker()
    venue.submit(order())
    again = venue.submit(order())
    assert again.client_order_id == "o-1" and again.status is OrderStatus.NEW
    assert len(events) == 1


def test_order_older_than_the_market_history_is_rejected() -> None:
    venue = PaperBroker(ExecutionSettings(), history_ms=1000)
    venue.connect(lambda _: None)
    venue.on_market_data(trade("10", T0))
    venue.on_market_data(trade("10", T0 + 2000 * MS))
    with pytest.raises(BrokerRejected, match="older than"):
        venue.submit(order(ts=T0 + 500 * MS))


# ---- modify, restore ---------------------------------------------------------------------
def test_modify_changes_the_limit_emits_replaced_and_later_quotes_fill_it() -> None:
    venue, events = broker()
    venue.on_market_data(quote("9.99", "100", "10.02", "100", T0))
    venue.submit(order(order_type=OrderType.LIMIT, limit="10.00", ts=T0))
    changed = venue.modify("o-1", "PAPER-o-1", limit_price=px("10.05"), quantity=px("150"))
    assert changed.quantity == px("150") and events[-1].exec_type is ExecType.REPLACED
    venue.on_market_data(quote("9.99", "100", "10.02", "200", T0 + MS))
    assert fills(events) == [(ExecType.FILL, px("150"), px("10.02"))]
    with pytest.raises(BrokerRejected):
        venue.modify("o-1", None, quantity=px("200"))


def test_modify_refuses_a_quantity_at_or_below_the_filled_one() -> None:
    venue, _ = broker()
    venue.on_market_data(quote("9.99", "100", "10.01", "40", T0))
    venue.submit(order(qty="100", ts=T0))
    with pytest.raises(BrokerRejected, match="exceed"):
        venue.modify("o-1", None, quantity=px("40"))
    with pytest.raises(BrokerRejected, match="LIMIT"):
        venue.modify("o-1", None, limit_price=px("10"))


def test_restore_readopts_the_remaining_quantity_and_keeps_the_totals() -> None:
    first, first_events = broker()
    first.on_market_data(quote("9.99", "100", "10.00", "40", T0))
    first.submit(order(qty="100", ts=T0))
    working = first.open_orders()
    assert [o.filled_quantity for o in working] == [px("40")]

    second, events = broker()  # the restarted process: an empty venue
    second.restore(working, submissions={"o-1": order(qty="100", ts=T0)})
    assert second.get_order("o-1") == working[0]
    second.on_market_data(quote("9.99", "100", "10.00", "500", T0))  # already offered: skip
    second.on_market_data(quote("9.99", "100", "10.03", "500", T0 + MS))
    assert fills(events) == [(ExecType.FILL, px("60"), px("10.03"))]
    # (40×10.00 + 60×10.03) / 100 = 10.018
    assert (events[-1].cum_quantity, events[-1].avg_price) == (px("100"), px("10.018"))
    assert events[-1].fill_id == "PAPER-o-1-F2"
    assert first_events[-1].exec_type is ExecType.PARTIAL_FILL


def test_restored_limit_without_its_submission_is_worked_as_market() -> None:
    venue, events = broker()
    venue.restore(
        [BrokerOrder("r-1", "PAPER-r-1", "AAPL", Side.BUY, px("10"), OrderStatus.NEW, ts_event=T0)]
    )
    venue.on_market_data(trade("12.00", T0 + MS))
    assert fills(events) == [(ExecType.FILL, px("10"), px("12.00"))]


# ---- determinism: the arrival of the order among the market data does not matter ---------
@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    with_quotes = draw(st.booleans())
    n = draw(st.integers(min_value=0, max_value=20))
    ts, ticks = T0, []
    for _ in range(n):
        ts += draw(st.integers(min_value=0, max_value=3)) * MS
        cents = draw(st.integers(min_value=9_900, max_value=10_100))
        price = f"{cents // 100}.{cents % 100:02d}"
        if with_quotes and draw(st.booleans()):
            size = str(draw(st.integers(min_value=0, max_value=300)))
            spread = draw(st.integers(min_value=1, max_value=5))
            bid = f"{(cents - spread) // 100}.{(cents - spread) % 100:02d}"
            sides = draw(st.sampled_from(["both", "bid", "ask"]))
            ticks.append(
                quote(
                    bid if sides != "ask" else None,
                    size if sides != "ask" else None,
                    price if sides != "bid" else None,
                    size if sides != "bid" else None,
                    ts,
                )
            )
        else:
            ticks.append(trade(price, ts))
    order_type = draw(st.sampled_from(OrderType))
    limit_cents = draw(st.integers(min_value=9_900, max_value=10_100))
    submission = order(
        side=draw(st.sampled_from(Side)),
        qty=str(draw(st.integers(min_value=1, max_value=400))),
        ts=T0 + draw(st.integers(min_value=-2, max_value=n + 2)) * MS,
        order_type=order_type,
        limit=f"{limit_cents // 100}.{limit_cents % 100:02d}"
        if order_type is OrderType.LIMIT
        else None,
        tif=draw(st.sampled_from(TimeInForce)),
    )
    return {
        "ticks": ticks,
        "order": submission,
        "latency_ms": draw(st.sampled_from([0, 1, 4])),
        "position": draw(st.integers(min_value=0, max_value=n)),
    }


def run_scenario(
    ticks: list[dict[str, Any]], submission: OrderSubmission, latency_ms: int, position: int
) -> list[Any]:
    venue, events = broker(latency_ms=latency_ms)
    for tick in ticks[:position]:
        venue.on_market_data(tick)
    venue.submit(submission)
    for tick in ticks[position:]:
        venue.on_market_data(tick)
    return [
        (
            e.exec_type,
            e.status,
            e.last_quantity,
            e.last_price,
            e.cum_quantity,
            e.avg_price,
            e.fill_id,
            e.ts_event,
        )
        for e in events
    ]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_fills_do_not_depend_on_where_the_order_arrives_among_the_market_data(
    scenario: dict[str, Any],
) -> None:
    ticks, submission, latency = scenario["ticks"], scenario["order"], scenario["latency_ms"]
    reference = run_scenario(ticks, submission, latency, 0)
    assert run_scenario(ticks, submission, latency, scenario["position"]) == reference
    assert run_scenario(ticks, submission, latency, len(ticks)) == reference


@settings(max_examples=200, deadline=None)
@given(
    prices=st.lists(st.integers(min_value=1, max_value=10**6), min_size=1, max_size=15),
    gaps=st.lists(st.integers(min_value=0, max_value=2), min_size=15, max_size=15),
    order_ms=st.integers(min_value=-1, max_value=30),
    latency_ms=st.integers(min_value=0, max_value=3),
    position=st.integers(min_value=0, max_value=15),
)
def test_trades_only_market_order_fills_at_the_last_print_at_or_before_eligibility(
    prices: list[int], gaps: list[int], order_ms: int, latency_ms: int, position: int
) -> None:
    times = [T0 + ms * MS for ms in itertools.accumulate(gaps[: len(prices)])]
    ticks = [trade(str(p), t) for p, t in zip(prices, times, strict=True)]
    eligible = T0 + (order_ms + latency_ms) * MS
    # the oracle, from the definition: the market as of E is every print before E and the
    # first print at E; with none of those, the first print after E; with nothing at or
    # after E the market has not reached the order yet and it rests
    at = [p for p, t in zip(prices, times, strict=True) if t == eligible]
    before = [p for p, t in zip(prices, times, strict=True) if t < eligible]
    after = [p for p, t in zip(prices, times, strict=True) if t > eligible]
    if times[-1] < eligible:
        expected = []
    else:
        price = at[0] if at else before[-1] if before else after[0]
        expected = [(ExecType.FILL, px("100"), px(str(price)))]
    submission = order(ts=T0 + order_ms * MS)
    events = run_scenario(ticks, submission, latency_ms, min(position, len(ticks)))
    assert [(e[0], e[2], e[3]) for e in events if e[0] is ExecType.FILL] == expected


# ---- real prices -------------------------------------------------------------------------
def lean_ticks(root: Path, relative: str, limit: int) -> list[dict[str, Any]]:
    path = shared_file(root, relative)
    records = (r for r in open_file(path) if isinstance(r, Trade | Quote))  # not the Skips
    return [record.model_dump() for record in itertools.islice(records, limit)]


@pytest.mark.parametrize("order_first", [True, False])
def test_spy_prints_fill_a_market_order_at_the_print_as_of_its_eligibility(
    shared_data: Path, order_first: bool
) -> None:
    sample = lean_ticks(shared_data, SPY_TRADES, 3000)

    def as_of(ts: int) -> dict[str, Any]:  # every print before ts and the first one at ts
        at = [t for t in sample if t["ts_event"] == ts]
        return at[0] if at else [t for t in sample if t["ts_event"] < ts][-1]

    # the first order time (past the first thousand prints) at which the 250 ms matter
    order_ts = next(
        t["ts_event"]
        for t in sample[1000:]
        if as_of(t["ts_event"] + 250 * MS)["price"] != as_of(t["ts_event"])["price"]
    )
    eligible = order_ts + 250 * MS
    expected_price = as_of(eligible)["price"]
    ticks = [t for t in sample if abs(t["ts_event"] - order_ts) < 60_000 * MS]
    venue, events = broker(latency_ms=250)
    submission = order(qty="25", side=Side.SELL, ts=order_ts, symbol="SPY")
    if order_first:
        venue.submit(submission)
    for tick in ticks:
        venue.on_market_data(tick)
    if not order_first:
        venue.submit(submission)
    assert fills(events) == [(ExecType.FILL, px("25"), expected_price)]
    assert events[-1].ts_event == eligible


def test_bac_asks_fill_a_large_buy_in_pieces_of_their_displayed_size(shared_data: Path) -> None:
    ticks = lean_ticks(shared_data, BAC_QUOTES, 400)
    order_ts = ticks[100]["ts_event"]
    quantity = 3 * max(t["ask_size"] or 0 for t in ticks)  # more than any one quote shows
    # the oracle: the first quote at the order's time (the market as of it), then each
    # later row in file order, each offering its ask size; a bid-only row offers a buyer
    # nothing
    offered = ticks[[t["ts_event"] for t in ticks].index(order_ts) :]
    expected, left = [], quantity
    for tick in offered:
        if tick["ask_price"] is None or not tick["ask_size"] or left == 0:
            continue
        take = min(left, tick["ask_size"])
        left -= take
        expected.append(
            (ExecType.FILL if left == 0 else ExecType.PARTIAL_FILL, take, tick["ask_price"])
        )
    assert len(expected) > 2
    venue, events = broker()
    for tick in ticks[:50]:
        venue.on_market_data(tick)
    venue.submit(
        OrderSubmission(
            "bac-1", "paper", "BAC", Side.BUY, OrderType.MARKET, quantity, ts_event=order_ts
        )
    )
    for tick in ticks[50:]:
        venue.on_market_data(tick)
    assert fills(events) == expected
    notional = sum(q * p for _, q, p in expected if p is not None)
    filled = sum(q for _, q, _ in expected)
    assert events[-1].cum_quantity == filled
    average, remainder = divmod(notional, filled)
    assert remainder * 2 != filled  # no tie in this sample: plain rounding is half-even
    assert events[-1].avg_price == average + (remainder * 2 > filled)


def spy_dicts(root: Path, limit: int) -> Iterator[dict[str, Any]]:
    path = shared_file(root, SPY_TRADES)
    trades = (r for r in open_file(path) if isinstance(r, Trade))
    for record in itertools.islice(trades, limit):
        yield {
            "symbol": "SPY",
            "price": record.price,
            "size": record.size,
            "ts_event": record.ts_event,
        }


def test_history_stays_bounded_and_unwatched_prints_are_cheap(shared_data: Path) -> None:
    ticks = list(spy_dicts(shared_data, 60_000))
    window_ms = 60_000
    venue = PaperBroker(ExecutionSettings(), history_ms=window_ms)
    venue.connect(lambda _: None)
    started = time.perf_counter()
    for tick in ticks:
        venue.on_market_data(tick)
    per_tick = (time.perf_counter() - started) / len(ticks)
    newest = ticks[-1]["ts_event"]
    in_window = sum(1 for t in ticks if t["ts_event"] >= newest - window_ms * MS)
    assert ticks[-1]["ts_event"] - ticks[0]["ts_event"] > 10 * window_ms * MS
    assert len(venue._symbols["SPY"].history) == in_window + 1  # + the as-of anchor
    assert per_tick < 50e-6, f"{per_tick * 1e6:.1f} µs per print"
