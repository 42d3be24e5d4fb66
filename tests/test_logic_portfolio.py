"""SymbolBook / AccountBook / MarkSchedule: exact books against an independent cash-flow
computation, invariants under random fills and marks, snapshot/restore anywhere."""

from __future__ import annotations

from fractions import Fraction

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.fixedpoint import FACTOR, INT64_MAX, to_fixed
from schemas.models import Fill, Position, Side
from streams.logic.portfolio import (
    AccountBook,
    AccountTotals,
    MarkSchedule,
    SymbolBook,
    next_interval,
)

SEC = 1_000_000_000
START = to_fixed(1_000_000)


def fill(account: str, symbol: str, side: Side, qty: int, price: int, ts: int, n: int) -> Fill:
    return Fill(
        fill_id=f"f{n}",
        client_order_id=f"c{n}",
        venue_order_id=f"v{n}",
        account=account,
        symbol=symbol,
        side=side,
        quantity=to_fixed(qty),
        price=price,
        venue="T",
        ts_event=ts,
        ts_init=ts,
    )


def test_mark_schedule_publishes_the_first_trade_of_each_interval() -> None:
    schedule = MarkSchedule(100, 0, next_interval(0, SEC))
    due = []
    for ts in (SEC // 2, SEC, SEC + 1, 3 * SEC + 5, 3 * SEC + 6):
        schedule, publish = schedule.on_trade(101, ts, SEC)
        due.append(publish)
    assert due == [False, True, False, True, False]
    # interval 0: every trade publishes
    schedule = MarkSchedule(100, 0, next_interval(0, 0))
    for ts in (1, 2, 3):
        schedule, publish = schedule.on_trade(1, ts, 0)
        assert publish


def test_an_older_trade_does_not_replace_the_latest_price() -> None:
    schedule = MarkSchedule(100, 10, 20)
    later, _ = schedule.on_trade(99, 5, SEC)
    assert (later.last_price, later.last_ts) == (100, 10)


def test_a_fill_is_marked_at_the_later_trade_not_its_own_price() -> None:
    book = SymbolBook("SPY")
    latest = MarkSchedule(to_fixed(110), 10 * SEC, 11 * SEC)
    position = book.on_fill(
        fill("a", "SPY", Side.BUY, 10, to_fixed(100), 5 * SEC, 1), latest, ts_init=0
    )
    assert position.last_price == to_fixed(110)
    assert position.unrealized_pnl == to_fixed(10 * 10)
    older = MarkSchedule(to_fixed(90), 1 * SEC, 2 * SEC)  # trade before the fill: fill price
    position = book.on_fill(fill("a", "SPY", Side.BUY, 10, to_fixed(100), 6 * SEC, 2), older, 0)
    assert position.last_price == to_fixed(100)


def test_leverage_and_concentration_are_unbounded_when_equity_is_gone() -> None:
    book = AccountBook("a", starting_cash=to_fixed(1_000))
    symbols = SymbolBook("X")
    position = symbols.on_fill(fill("a", "X", Side.SELL, 100, to_fixed(10), 1, 1), None, 0)
    snap = book.on_position(position, 0)
    assert snap.leverage == to_fixed(1) and snap.largest_concentration == to_fixed(1)
    (crashed,) = symbols.mark(to_fixed(30), 2, 0)  # short 100 from 10 to 30: -2,000
    snap = book.on_position(crashed, 0)
    assert snap.equity == to_fixed(-1_000)
    assert snap.leverage == INT64_MAX and snap.largest_concentration == INT64_MAX


# -- random books against a cash-flow reference --------------------------------------------

ACCOUNTS = ("alice", "bob")
SYMBOLS = ("AAA", "BBB", "CCC")

events = st.lists(
    st.one_of(
        st.tuples(
            st.just("fill"),
            st.sampled_from(ACCOUNTS),
            st.sampled_from(SYMBOLS),
            st.sampled_from([Side.BUY, Side.SELL]),
            st.integers(1, 500),
            st.integers(1, 50_000),  # price in cents
        ),
        st.tuples(st.just("trade"), st.sampled_from(SYMBOLS), st.integers(1, 50_000)),
    ),
    min_size=1,
    max_size=40,
)


def replay(
    stream: list[tuple], restore_at: set[int] | None = None
) -> tuple[dict[str, list[dict]], dict[str, AccountBook]]:
    """Run events through one SymbolBook per symbol and one AccountBook per account,
    restoring every book from its (orjson round-tripped) snapshot before events in
    ``restore_at``. Returns the snapshots published per account and the final books."""
    symbol_books = {s: SymbolBook(s) for s in SYMBOLS}
    schedules: dict[str, MarkSchedule | None] = dict.fromkeys(SYMBOLS)
    accounts = {a: AccountBook(a, START) for a in ACCOUNTS}
    published: dict[str, list[dict]] = {a: [] for a in ACCOUNTS}
    for i, event in enumerate(stream):
        ts = (i + 1) * SEC
        if restore_at and i in restore_at:
            symbol_books = {
                s: SymbolBook.restore(orjson.loads(orjson.dumps(b.snapshot())))
                for s, b in symbol_books.items()
            }
            accounts = {
                a: AccountBook.restore(orjson.loads(orjson.dumps(b.snapshot())))
                for a, b in accounts.items()
            }
        if event[0] == "fill":
            _, account, symbol, side, qty, cents = event
            f = fill(account, symbol, side, qty, cents * FACTOR // 100, ts, i)
            positions = [symbol_books[symbol].on_fill(f, schedules[symbol], ts_init=ts)]
        else:
            _, symbol, cents = event
            price = cents * FACTOR // 100
            schedules[symbol] = MarkSchedule(price, ts, ts + 1)
            positions = symbol_books[symbol].mark(price, ts, ts_init=ts)
        for p in positions:
            published[p.account].append(accounts[p.account].on_position(p, ts).model_dump())
    return published, accounts


def cash_flow_reference(stream: list[tuple]) -> dict[str, tuple[Fraction, Fraction, Fraction]]:
    """account → (cash, net exposure, equity) in dollars, from cash flows alone: a fill is
    marked at its own price, a trade marks every account that has traded the symbol."""
    cash = {a: Fraction(START, FACTOR) for a in ACCOUNTS}
    qty = {(a, s): 0 for a in ACCOUNTS for s in SYMBOLS}
    mark: dict[tuple[str, str], Fraction] = {}
    for event in stream:
        if event[0] == "fill":
            _, account, symbol, side, q, cents = event
            signed = q if side == Side.BUY else -q
            cash[account] -= signed * Fraction(cents, 100)
            qty[(account, symbol)] += signed
            mark[(account, symbol)] = Fraction(cents, 100)
        else:
            _, symbol, cents = event
            for key in mark:
                if key[1] == symbol:
                    mark[key] = Fraction(cents, 100)
    out = {}
    for account in ACCOUNTS:
        net = sum(
            (q * mark[key] for key, q in qty.items() if key[0] == account and key in mark),
            Fraction(0),
        )
        out[account] = (cash[account], net, cash[account] + net)
    return out


@settings(max_examples=150, deadline=None)
@given(events)
def test_books_equal_a_cash_flow_computation_and_keep_their_invariants(stream: list) -> None:
    published, _ = replay(stream)
    reference = cash_flow_reference(stream)
    for account, snapshots in published.items():
        for snap in snapshots:
            # equity = cash + Σ marked positions, and = start + realized + unrealized, exactly
            assert snap["equity"] == snap["cash"] + snap["net_exposure"]
            assert snap["equity"] == START + snap["realized_pnl"] + snap["unrealized_pnl"]
            assert snap["gross_exposure"] >= abs(snap["net_exposure"])
            if snap["gross_exposure"] and snap["equity"] > 0:
                assert snap["largest_concentration"] <= snap["leverage"]
        if snapshots:
            cash, net, equity = reference[account]
            last = snapshots[-1]
            # prices are whole cents and sizes whole shares: every figure is exact
            assert Fraction(last["equity"], FACTOR) == equity
            assert Fraction(last["net_exposure"], FACTOR) == net
            assert Fraction(last["cash"], FACTOR) == cash


@settings(max_examples=100, deadline=None)
@given(events, st.sets(st.integers(0, 39)))
def test_snapshot_restore_anywhere_gives_the_same_books(stream: list, restore_at: set) -> None:
    straight, _ = replay(stream)
    restored, _ = replay(stream, restore_at)
    assert restored == straight


def brute_force_totals(book: AccountBook, symbols: tuple[str, ...], as_of: int) -> AccountTotals:
    """The sums recomputed from every holding, largest ties to the first symbol."""
    holdings = {s: h for s in symbols if (h := book.holding(s)) is not None}
    largest_symbol, largest = None, 0
    for symbol in sorted(holdings):
        if abs(holdings[symbol].value) > largest:
            largest_symbol, largest = symbol, abs(holdings[symbol].value)
    return AccountTotals(
        realized=sum(h.realized for h in holdings.values()),
        unrealized=sum(h.unrealized for h in holdings.values()),
        net=sum(h.value for h in holdings.values()),
        gross=sum(abs(h.value) for h in holdings.values()),
        open_positions=sum(1 for h in holdings.values() if h.quantity),
        largest_symbol=largest_symbol,
        largest_value=largest,
        as_of=as_of,
    )


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(SYMBOLS), st.integers(-50, 50), st.integers(1, 5)),
        min_size=1,
        max_size=60,
    )
)
def test_running_totals_equal_a_recomputation_over_every_holding(updates: list) -> None:
    book = AccountBook("a", START)
    for i, (symbol, qty, price) in enumerate(updates):
        position = Position(
            account="a", symbol=symbol, quantity=to_fixed(qty), avg_price=to_fixed(price),
            realized_pnl=to_fixed(i), last_price=to_fixed(price), unrealized_pnl=to_fixed(-i),
            ts_event=i, ts_init=i,
        )  # fmt: skip
        book.on_position(position, i)
        assert book.totals == brute_force_totals(book, SYMBOLS, as_of=i)


def test_a_snapshot_is_stamped_with_the_latest_event_time_in_the_book() -> None:
    book = AccountBook("a", START)
    stamps = []
    for symbol, ts in (("AAA", 10), ("BBB", 30), ("AAA", 20)):  # BBB's mark arrived first
        position = Position(
            account="a", symbol=symbol, quantity=to_fixed(1), last_price=to_fixed(1),
            ts_event=ts, ts_init=ts,
        )  # fmt: skip
        stamps.append(book.on_position(position, 0).ts_event)
    assert stamps == [10, 30, 30]


def test_foreign_snapshots_are_refused() -> None:
    with pytest.raises(ValueError, match="version"):
        SymbolBook.restore({"version": 99})
    with pytest.raises(ValueError, match="version"):
        AccountBook.restore({"version": 99})
