"""SmaCrossover (event-time bars → SMA crossovers) and signal_to_order (target-position orders)."""

from __future__ import annotations

from fractions import Fraction

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.fixedpoint import to_fixed
from schemas.models import OrderType, Side, Signal, SignalDirection
from streams.logic.orders import client_order_id_for, signal_to_order, target_position
from streams.logic.sma import Crossover, SmaCrossover, TradeResult

SEC = 1_000_000_000  # ns; bars of 1000 ms


def px(value: str | int) -> int:
    return to_fixed(str(value))


def make(fast: int = 2, slow: int = 3, interval_ms: int = 1000) -> SmaCrossover:
    return SmaCrossover(symbol="AAPL", bar_interval_ms=interval_ms, fast=fast, slow=slow)


def feed_closes(sma: SmaCrossover, closes: list[int], first_bucket: int = 0) -> list[Crossover]:
    """One trade per 1 s bucket, then one more trade so the last bar closes."""
    crossovers = []
    for i, close in enumerate([*closes, closes[-1]]):
        result = sma.on_trade(close, (first_bucket + i) * SEC + 1)
        if result.crossover is not None:
            crossovers.append(result.crossover)
    return crossovers


# -- bars -----------------------------------------------------------------------------------


def test_first_trade_opens_a_bar_without_closing_one() -> None:
    sma = make()
    assert sma.on_trade(px(10), 5) == TradeResult()
    assert sma.closes == ()


def test_trade_in_later_bucket_closes_bar_with_last_trade_price() -> None:
    sma = make()
    sma.on_trade(px(10), 0)
    sma.on_trade(px(11), SEC // 2)
    sma.on_trade(px(12), SEC - 1)
    result = sma.on_trade(px(50), SEC)
    assert result.bar_closed and not result.late
    assert sma.closes == (px(12),)


def test_close_is_latest_in_event_time_not_latest_arrival() -> None:
    sma = make()
    sma.on_trade(px(10), 100)
    sma.on_trade(px(11), 500)
    sma.on_trade(px(99), 300)  # same bucket, arrives late but older than the close so far
    sma.on_trade(px(12), 500)  # same ts_event as the close: the later arrival wins
    sma.on_trade(px(1), SEC)
    assert sma.closes == (px(12),)


def test_trade_older_than_open_bar_is_late_ignored_and_counted() -> None:
    sma = make()
    sma.on_trade(px(10), 0)
    sma.on_trade(px(11), 2 * SEC)
    result = sma.on_trade(px(99), SEC + 5)
    assert result == TradeResult(late=True)
    assert sma.late_trades == 1
    sma.on_trade(px(12), 3 * SEC)
    assert sma.closes == (px(10), px(11))


def test_empty_buckets_produce_no_bars() -> None:
    sma = make()
    sma.on_trade(px(10), 0)
    sma.on_trade(px(11), 100 * SEC)
    sma.on_trade(px(12), 101 * SEC)
    assert sma.closes == (px(10), px(11))


def test_buckets_are_aligned_to_the_epoch() -> None:
    sma = make(interval_ms=60_000)
    sma.on_trade(px(10), 59 * SEC)
    assert not sma.on_trade(px(11), 60 * SEC - 1).bar_closed
    assert sma.on_trade(px(12), 60 * SEC).bar_closed


def test_only_the_last_slow_closes_are_kept() -> None:
    sma = make(fast=2, slow=3)
    feed_closes(sma, [px(c) for c in (1, 2, 3, 4, 5)])
    assert sma.closes == (px(3), px(4), px(5))


# -- SMAs and crossovers --------------------------------------------------------------------


def test_no_smas_and_no_crossover_before_slow_closes_exist() -> None:
    sma = make(fast=2, slow=3)
    assert feed_closes(sma, [px(10), px(1)]) == []
    assert sma.sma_values() is None


def test_first_relation_is_a_baseline_not_a_crossover() -> None:
    sma = make(fast=2, slow=3)
    assert feed_closes(sma, [px(10), px(10), px(20)]) == []  # fast above slow from the start
    assert sma.sequence == 0


def test_fast_crossing_below_slow_emits_short_with_exact_values() -> None:
    sma = make(fast=2, slow=3)
    crossovers = feed_closes(sma, [px(10), px(10), px(11), px(8)])
    assert crossovers == [
        Crossover(
            direction=SignalDirection.SHORT,
            price=px(8),
            fast=px("9.5"),
            slow=px("9.666666667"),  # 29 / 3 rounded half-even at 1e-9
            ts_event=4 * SEC + 1,  # the trade that closed the bar
            bar_start_ns=3 * SEC,
            sequence=1,
        )
    ]


def test_fast_crossing_above_slow_emits_long() -> None:
    sma = make(fast=2, slow=3)
    crossovers = feed_closes(sma, [px(c) for c in (10, 10, 9, 12)])
    assert [c.direction for c in crossovers] == [SignalDirection.LONG]
    assert crossovers[0].price == px(12)


def test_relation_that_persists_emits_only_once() -> None:
    sma = make(fast=2, slow=3)
    crossovers = feed_closes(sma, [px(c) for c in (10, 10, 11, 8, 7, 6, 5, 4)])
    assert [c.direction for c in crossovers] == [SignalDirection.SHORT]


def test_each_flip_emits_and_sequence_counts_crossovers() -> None:
    sma = make(fast=2, slow=3)
    crossovers = feed_closes(sma, [px(c) for c in (10, 10, 11, 8, 12, 15, 5)])
    assert [(c.direction, c.sequence) for c in crossovers] == [
        (SignalDirection.SHORT, 1),
        (SignalDirection.LONG, 2),
        (SignalDirection.SHORT, 3),
    ]
    assert sma.sequence == 3


def test_touching_slow_and_turning_back_is_not_a_crossover() -> None:
    sma = make(fast=1, slow=2)
    # closes 10, 12 → above; 12 → fast 12 = slow 12 (touch); 13 → above again
    assert feed_closes(sma, [px(c) for c in (10, 12, 12, 13)]) == []


def test_passing_through_equality_is_one_crossover() -> None:
    sma = make(fast=1, slow=2)
    crossovers = feed_closes(sma, [px(c) for c in (10, 12, 12, 11)])
    assert [c.direction for c in crossovers] == [SignalDirection.SHORT]


def test_sma_values_round_half_even() -> None:
    sma = make(fast=2, slow=3)
    feed_closes(sma, [1, 2, 1])  # raw units: fast 3/2 → 2, slow 4/3 → 1
    assert sma.sma_values() == (2, 1)
    sma = make(fast=2, slow=3)
    feed_closes(sma, [1, 1, 2])  # fast 3/2 → 2 (half to even), slow 4/3 → 1
    assert sma.sma_values() == (2, 1)
    sma = make(fast=2, slow=3)
    feed_closes(sma, [3, 2, 3])  # fast 5/2 → 2 (half to even), slow 8/3 → 3
    assert sma.sma_values() == (2, 3)


def test_cross_is_decided_exactly_even_when_rounded_values_are_equal() -> None:
    # fast = 3/2 raw, slow = 4/3 raw: both round to... fast 2, slow 1 — and exactly 1.5 > 1.33
    sma = make(fast=2, slow=3)
    crossovers = feed_closes(sma, [2, 2, 1, 1, 2])  # raw units
    # windows: [2,2,1] fast 1.5 < slow 1.67 (baseline below); [2,1,1] 1 < 1.33;
    # [1,1,2] 1.5 > 1.33 → LONG although the rounded values are 2 and 1
    assert [(c.direction, c.fast, c.slow) for c in crossovers] == [(SignalDirection.LONG, 2, 1)]


@pytest.mark.parametrize(("fast", "slow", "interval"), [(0, 3, 1), (3, 3, 1), (4, 3, 1), (1, 2, 0)])
def test_invalid_windows_or_interval_are_refused(fast: int, slow: int, interval: int) -> None:
    with pytest.raises(ValueError):
        SmaCrossover(symbol="AAPL", bar_interval_ms=interval, fast=fast, slow=slow)


def test_restore_refuses_unknown_snapshot_version() -> None:
    snapshot = make().snapshot()
    snapshot["version"] = 99
    with pytest.raises(ValueError, match="version"):
        SmaCrossover.restore(snapshot)


def test_fresh_snapshot_restores_to_an_equal_machine() -> None:
    sma = make()
    assert SmaCrossover.restore(sma.snapshot()).snapshot() == sma.snapshot()


# -- property tests -------------------------------------------------------------------------


def _cumulative(steps: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(price, time step) → (price, ts): mostly forward in time, sometimes back (late)."""
    ts, out = 10 * SEC, []
    for price, step in steps:
        ts = max(0, ts + step)
        out.append((price, ts))
    return out


trades_strategy = st.lists(
    st.tuples(
        st.integers(min_value=1, max_value=20).map(lambda p: p * 250_000_000),  # few prices: ties
        st.integers(min_value=-2 * SEC, max_value=4 * SEC),
    ),
    max_size=150,
).map(_cumulative)
windows_strategy = st.tuples(st.integers(1, 4), st.integers(1, 4)).map(
    lambda fs: (fs[0], fs[0] + fs[1])
)


def naive_crossovers(
    trades: list[tuple[int, int]], fast: int, slow: int, interval_ns: int
) -> tuple[list[tuple[SignalDirection, int, int, int, int, int]], int]:
    """Recompute from scratch: accepted trades → bars → Fraction SMAs → relation flips."""
    open_bucket: int | None = None
    bars: list[tuple[int, int, int]] = []  # (bucket, close, closing trade ts)
    close: tuple[int, int] | None = None  # (ts, price) of the open bar's close
    late = 0
    for price, ts in trades:
        bucket = (ts // interval_ns) * interval_ns
        if open_bucket is None or bucket > open_bucket:
            if open_bucket is not None and close is not None:
                bars.append((open_bucket, close[1], ts))
            open_bucket, close = bucket, (ts, price)
        elif bucket < open_bucket:
            late += 1
        elif close is not None and ts >= close[0]:
            close = (ts, price)
    out = []
    relation: int | None = None
    for i in range(slow - 1, len(bars)):
        window = [c for _, c, _ in bars[i + 1 - slow : i + 1]]
        fast_mean = Fraction(sum(window[-fast:]), fast)
        slow_mean = Fraction(sum(window), slow)
        if fast_mean == slow_mean:
            continue
        rel = 1 if fast_mean > slow_mean else -1
        if relation is not None and rel != relation:
            direction = SignalDirection.LONG if rel == 1 else SignalDirection.SHORT
            bucket, price, ts = bars[i]
            out.append((direction, price, round(fast_mean), round(slow_mean), ts, bucket))
        relation = rel
    return out, late


@given(trades=trades_strategy, windows=windows_strategy, interval_ms=st.sampled_from([1000, 3000]))
def test_crossovers_match_a_naive_recomputation(
    trades: list[tuple[int, int]], windows: tuple[int, int], interval_ms: int
) -> None:
    fast, slow = windows
    sma = SmaCrossover(symbol="X", bar_interval_ms=interval_ms, fast=fast, slow=slow)
    got = []
    late = 0
    for price, ts in trades:
        result = sma.on_trade(price, ts)
        late += result.late
        if result.crossover is not None:
            c = result.crossover
            got.append((c.direction, c.price, c.fast, c.slow, c.ts_event, c.bar_start_ns))
    expected, expected_late = naive_crossovers(trades, fast, slow, interval_ms * 1_000_000)
    assert got == expected
    assert late == expected_late == sma.late_trades
    assert sma.sequence == len(expected)


@given(trades=trades_strategy, windows=windows_strategy, cut=st.integers(min_value=0))
def test_snapshot_restore_midway_gives_identical_results(
    trades: list[tuple[int, int]], windows: tuple[int, int], cut: int
) -> None:
    fast, slow = windows
    cut = cut % (len(trades) + 1)
    straight = SmaCrossover(symbol="X", bar_interval_ms=1000, fast=fast, slow=slow)
    expected = [straight.on_trade(p, ts) for p, ts in trades]

    first = SmaCrossover(symbol="X", bar_interval_ms=1000, fast=fast, slow=slow)
    got = [first.on_trade(p, ts) for p, ts in trades[:cut]]
    stored = orjson.loads(orjson.dumps(first.snapshot()))  # what Quix state stores
    resumed = SmaCrossover.restore(stored)
    got += [resumed.on_trade(p, ts) for p, ts in trades[cut:]]
    assert got == expected
    assert resumed.snapshot() == straight.snapshot()


@given(trades=trades_strategy, windows=windows_strategy, cut=st.integers(min_value=0))
def test_split_state_restored_midway_gives_identical_results(
    trades: list[tuple[int, int]], windows: tuple[int, int], cut: int
) -> None:
    fast, slow = windows
    cut = cut % (len(trades) + 1)
    straight = SmaCrossover(symbol="X", bar_interval_ms=1000, fast=fast, slow=slow)
    expected = [straight.on_trade(p, ts) for p, ts in trades]

    first = SmaCrossover(symbol="X", bar_interval_ms=1000, fast=fast, slow=slow)
    got = [first.on_trade(p, ts) for p, ts in trades[:cut]]
    sma = orjson.loads(orjson.dumps(first.sma_state()))  # what Quix state stores
    bar = orjson.loads(orjson.dumps(first.bar_state()))
    resumed = SmaCrossover.from_states(sma, bar)
    got += [resumed.on_trade(p, ts) for p, ts in trades[cut:]]
    assert got == expected
    assert resumed.snapshot() == straight.snapshot()


@given(trades=trades_strategy, windows=windows_strategy)
def test_only_a_bar_close_changes_the_sma_state(
    trades: list[tuple[int, int]], windows: tuple[int, int]
) -> None:
    fast, slow = windows
    sma = SmaCrossover(symbol="X", bar_interval_ms=1000, fast=fast, slow=slow)
    for price, ts in trades:
        before = sma.sma_state()
        if not sma.on_trade(price, ts).bar_closed:
            assert sma.sma_state() == before


def test_split_state_of_a_fresh_machine_restores_to_an_equal_machine() -> None:
    sma = make()
    assert sma.bar_state() == [None, None, None, 0]
    restored = SmaCrossover.from_states(sma.sma_state(), sma.bar_state())
    assert restored.snapshot() == sma.snapshot()
    assert SmaCrossover.from_states(sma.sma_state(), None).snapshot() == sma.snapshot()


def test_late_trades_are_counted_in_the_bar_state() -> None:
    sma = make()
    sma.on_trade(px(10), 2 * SEC)
    sma.on_trade(px(11), SEC)  # late
    assert sma.bar_state() == [2 * SEC, px(10), 2 * SEC, 1]
    assert SmaCrossover.from_states(sma.sma_state(), sma.bar_state()).late_trades == 1


def test_a_version_1_snapshot_restores_with_a_newer_bar_state() -> None:
    old = make()
    feed_closes(old, [px(1), px(2), px(3)])  # leaves an open bar
    newer = SmaCrossover.restore(old.snapshot())
    newer.on_trade(px(7), 10 * SEC)  # closes that bar, opens another
    restored = SmaCrossover.from_states(old.snapshot(), newer.bar_state())
    assert restored.bar_state() == newer.bar_state()
    assert restored.closes == old.closes  # closes come from the snapshot given
    assert SmaCrossover.from_states(old.snapshot(), None).snapshot() == old.snapshot()


@pytest.mark.parametrize(
    ("sma_update", "bar", "match"),
    [
        ({"version": 99}, None, "version"),
        ({"relation": "SIDEWAYS"}, None, "relation"),
        ({"closes": [1, 2, 3, 4]}, None, "closes"),
        ({}, [0, None, 5, 0], "partly defined"),
        ({}, [0, 1, 5], "bar state"),
    ],
)
def test_from_states_refuses_state_that_is_not_ours(
    sma_update: dict[str, object], bar: list[int | None] | None, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        SmaCrossover.from_states(make(fast=2, slow=3).sma_state() | sma_update, bar)


# -- signal → order -------------------------------------------------------------------------

QTY = px(100)


def make_signal(
    direction: SignalDirection = SignalDirection.LONG,
    *,
    strategy_id: str = "sma-x",
    symbol: str = "AAPL",
    signal_id: str = "sma-x-AAPL-1",
    ts_event: int = 1_700_000_000_000_000_000,
) -> Signal:
    return Signal(
        signal_id=signal_id,
        strategy_id=strategy_id,
        symbol=symbol,
        direction=direction,
        price=px("187.25"),
        fast_value=px("187.3"),
        slow_value=px("187.1"),
        ts_event=ts_event,
        ts_init=ts_event,
    )


def test_target_position_is_signed_quantity_by_direction() -> None:
    assert target_position(SignalDirection.LONG, QTY) == QTY
    assert target_position(SignalDirection.SHORT, QTY) == -QTY
    assert target_position(SignalDirection.FLAT, QTY) == 0
    with pytest.raises(ValueError):
        target_position(SignalDirection.LONG, 0)


def test_long_signal_from_flat_buys_the_quantity_at_market() -> None:
    signal = make_signal(SignalDirection.LONG)
    order = signal_to_order(signal, current_position=0, quantity=QTY, ts_init=42)
    assert order is not None
    assert (order.side, order.quantity, order.order_type) == (Side.BUY, QTY, OrderType.MARKET)
    assert order.reference_price == signal.price
    assert (order.ts_event, order.ts_init) == (signal.ts_event, 42)
    assert (order.strategy_id, order.symbol, order.account) == ("sma-x", "AAPL", "paper")


def test_short_signal_from_long_sells_twice_the_quantity() -> None:
    order = signal_to_order(
        make_signal(SignalDirection.SHORT), current_position=QTY, quantity=QTY, ts_init=0
    )
    assert order is not None
    assert (order.side, order.quantity) == (Side.SELL, 2 * QTY)


def test_signal_at_target_produces_no_order() -> None:
    signal = make_signal(SignalDirection.SHORT)
    assert signal_to_order(signal, current_position=-QTY, quantity=QTY, ts_init=0) is None


def test_flat_signal_closes_the_position() -> None:
    order = signal_to_order(
        make_signal(SignalDirection.FLAT), current_position=-px(30), quantity=QTY, ts_init=0
    )
    assert order is not None
    assert (order.side, order.quantity) == (Side.BUY, px(30))


def test_client_order_id_is_the_same_on_replay_and_differs_between_signals() -> None:
    signal = make_signal()
    a = signal_to_order(signal, current_position=0, quantity=QTY, ts_init=1)
    b = signal_to_order(signal, current_position=0, quantity=QTY, ts_init=999)
    assert a is not None and b is not None
    assert a.client_order_id == b.client_order_id == client_order_id_for(signal)
    assert a.client_order_id.startswith("sma-x-AAPL-")
    other = make_signal(signal_id="sma-x-AAPL-2", ts_event=signal.ts_event + 1)
    assert client_order_id_for(other) != a.client_order_id
    assert client_order_id_for(signal, account="live") != a.client_order_id


@given(
    strategy_id=st.text(min_size=1, max_size=80),
    symbol=st.text(min_size=1, max_size=64),
    ts_event=st.integers(min_value=0, max_value=2**63 - 1),
)
def test_client_order_id_fits_64_safe_characters(
    strategy_id: str, symbol: str, ts_event: int
) -> None:
    signal = make_signal(strategy_id=strategy_id, symbol=symbol, ts_event=ts_event)
    cid = client_order_id_for(signal)
    assert 1 <= len(cid) <= 64
    assert all(ch.isascii() and (ch.isalnum() or ch in "._-") for ch in cid)
    assert cid == client_order_id_for(signal)
