"""BarBuilder (event-time OHLCV bars: grace, late trades, trade rules, exact VWAP, state) and
the vendor's sale-condition rule (lean_eligibility)."""

from __future__ import annotations

from collections import defaultdict
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.fixedpoint import to_fixed
from schemas.models import Bar, Trade
from streams.logic.ohlcv import (
    BarBuilder,
    BarRule,
    ClosedBar,
    Eligibility,
    TradeOutcome,
    TradeUse,
    classify,
    lean_eligibility,
)

MS = 1_000_000
SEC = 1_000 * MS
MIN = 60 * SEC
T0 = 1_381_152_600 * SEC  # 2013-10-07 13:30:00 UTC, a whole 5-minute multiple


def px(value: str | int) -> int:
    return to_fixed(str(value))


def shares(n: int) -> int:
    return to_fixed(n)


def make(
    interval_ms: int = 60_000, grace_ms: int = 0, rule: BarRule = BarRule.ALL_TRADES
) -> BarBuilder:
    return BarBuilder("SPY", interval_ms, grace_ms=grace_ms, rule=rule)


def feed(builder: BarBuilder, trades: list[tuple[Any, ...]]) -> list[ClosedBar]:
    """(price, size, ts[, conditions[, flags]]) each; the bars they close, in order."""
    closed: list[ClosedBar] = []
    for trade in trades:
        closed.extend(builder.add_trade(*trade).closed)
    return closed


def half_even(numerator: int, denominator: int) -> int:
    """Independent of the module: Decimal division, quantized half-even."""
    exact = Decimal(numerator) / Decimal(denominator)
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


# -- alignment and the bar's numbers ---------------------------------------------------


@pytest.mark.parametrize("interval_ms", [1, 7, 1_000, 60_000, 300_000, 3_600_000])
def test_bars_are_aligned_to_the_epoch_on_event_time(interval_ms: int) -> None:
    builder = make(interval_ms)
    ts = T0 + 123_456_789_123
    outcome = builder.add_trade(px(10), shares(1), ts)
    interval = interval_ms * MS
    assert outcome.bar_start_ns == ts - ts % interval
    assert outcome.bar_start_ns % interval == 0
    assert outcome.bar_start_ns <= ts < outcome.bar_start_ns + interval


def test_bar_start_is_inclusive_and_end_exclusive() -> None:
    builder = make(1_000)
    assert builder.add_trade(px(1), shares(1), T0).bar_start_ns == T0
    assert builder.add_trade(px(1), shares(1), T0 + SEC - 1).bar_start_ns == T0
    outcome = builder.add_trade(px(1), shares(1), T0 + SEC)
    assert outcome.bar_start_ns == T0 + SEC
    assert [bar.start_ns for bar in outcome.closed] == [T0]
    assert outcome.closed[0].end_ns == T0 + SEC


def test_negative_event_times_align_downwards() -> None:
    builder = make(1_000)
    assert builder.add_trade(px(1), shares(1), -1).bar_start_ns == -SEC


def test_ohlcv_count_and_vwap_of_one_bar() -> None:
    builder = make()
    trades = [
        (px("10.00"), shares(100), T0 + 1),
        (px("10.50"), shares(200), T0 + 2),
        (px("9.75"), shares(300), T0 + 3),
        (px("10.25"), shares(400), T0 + 4),
    ]
    feed(builder, trades)
    (bar,) = builder.flush()
    assert (bar.open, bar.high, bar.low, bar.close) == (
        px("10.00"),
        px("10.50"),
        px("9.75"),
        px("10.25"),
    )
    assert (bar.volume, bar.trade_count) == (shares(1000), 4)
    assert bar.pv_sum == sum(p * s for p, s, _ in trades)
    assert bar.vwap == px("10.125")  # (1000 + 2100 + 2925 + 4100) / 1000


def test_open_and_close_follow_event_time_not_arrival() -> None:
    builder = make(grace_ms=0)
    feed(
        builder,
        [
            (px(11), shares(1), T0 + 500),
            (px(10), shares(1), T0 + 100),
            (px(12), shares(1), T0 + 900),
            (px(13), shares(1), T0 + 700),
        ],
    )
    (bar,) = builder.flush()
    assert (bar.open, bar.close) == (px(10), px(12))
    assert (bar.high, bar.low) == (px(13), px(10))


def test_ties_on_event_time_open_with_first_arrival_and_close_with_last() -> None:
    builder = make()
    feed(
        builder,
        [(px(10), shares(1), T0 + 5), (px(11), shares(1), T0 + 5), (px(12), shares(1), T0 + 5)],
    )
    (bar,) = builder.flush()
    assert (bar.open, bar.close) == (px(10), px(12))


def test_vwap_rounds_half_even_to_the_raw_unit() -> None:
    # pv / volume = 2.5 raw units -> 2; 3.5 -> 4
    builder = make()
    closed = feed(builder, [(1, 1, T0), (4, 1, T0 + 1), (3, 1, T0 + MIN), (4, 1, T0 + MIN + 1)])
    first, second = [*closed, *builder.flush()]
    assert (first.pv_sum, first.volume, first.vwap) == (5, 2, 2)
    assert (second.pv_sum, second.volume, second.vwap) == (7, 2, 4)


def test_vwap_is_exact_even_when_sums_pass_int64() -> None:
    builder = make()
    trades = [(px("183.31"), shares(2_000_000), T0 + i) for i in range(5)]
    trades.append((px("183.29"), shares(3), T0 + 9))
    feed(builder, trades)
    (bar,) = builder.flush()
    pv = sum(p * s for p, s, _ in trades)
    assert pv > 2**63
    assert bar.pv_sum == pv
    assert bar.vwap == half_even(pv, bar.volume)


def test_zero_volume_bar_has_no_vwap() -> None:
    builder = make()
    builder.add_trade(px(10), 0, T0)
    (bar,) = builder.flush()
    assert (bar.volume, bar.trade_count, bar.vwap, bar.open) == (0, 1, None, px(10))


def test_buckets_without_trades_produce_no_bar() -> None:
    builder = make()
    closed = feed(builder, [(px(1), shares(1), T0), (px(2), shares(1), T0 + 5 * MIN)])
    assert [bar.start_ns for bar in closed] == [T0]
    assert [bar.start_ns for bar in builder.flush()] == [T0 + 5 * MIN]


# -- grace, lateness, advance and flush ------------------------------------------------


def test_without_grace_the_first_trade_of_a_later_bar_closes_the_bar() -> None:
    builder = make()
    builder.add_trade(px(1), shares(1), T0 + 10)
    outcome = builder.add_trade(px(2), shares(1), T0 + MIN)
    assert [bar.start_ns for bar in outcome.closed] == [T0]
    assert outcome.closed[0].closed_at_ns == T0 + MIN


def test_trade_within_grace_is_added_to_its_still_open_bar() -> None:
    builder = make(grace_ms=2_000)
    builder.add_trade(px(10), shares(1), T0 + 10)
    assert builder.add_trade(px(11), shares(1), T0 + MIN + SEC).closed == ()  # next bar, in grace
    late_but_in_grace = builder.add_trade(px(9), shares(5), T0 + 20 * SEC)
    assert late_but_in_grace.use is TradeUse.BAR and late_but_in_grace.bar_start_ns == T0
    outcome = builder.add_trade(px(12), shares(1), T0 + MIN + 2 * SEC)  # reaches end + grace
    (bar,) = outcome.closed
    assert (bar.start_ns, bar.low, bar.close, bar.volume, bar.trade_count) == (
        T0,
        px(9),
        px(9),
        shares(6),
        2,
    )
    assert builder.open_bar_starts == (T0 + MIN,)


def test_trade_for_a_closed_bar_is_late_returned_and_counted_never_merged() -> None:
    builder = make(grace_ms=1_000)
    builder.add_trade(px(10), shares(1), T0)
    (bar,) = builder.add_trade(px(11), shares(1), T0 + MIN + SEC).closed
    late = builder.add_trade(px(99), shares(7), T0 + 30 * SEC)
    assert late == TradeOutcome(TradeUse.LATE, None, T0)
    assert builder.late_trades == 1
    (after,) = builder.flush()
    assert after.start_ns == T0 + MIN and after.volume == shares(1)  # not the late one's
    assert bar.high == px(10) and bar.volume == shares(1)


def test_late_trade_does_not_move_event_time() -> None:
    builder = make()
    builder.add_trade(px(10), shares(1), T0 + 2 * MIN)
    builder.add_trade(px(10), shares(1), T0)  # late: bar T0 closed at watermark 2 min
    assert builder.watermark_ns == T0 + 2 * MIN
    assert builder.late_trades == 1


def test_several_bars_can_be_open_within_a_long_grace_and_close_in_order() -> None:
    builder = make(interval_ms=1_000, grace_ms=5_000)
    feed(builder, [(px(1), shares(1), T0 + i * SEC) for i in range(5)])
    assert builder.open_bar_starts == tuple(T0 + i * SEC for i in range(5))
    closed = builder.advance(T0 + 8 * SEC)  # ends 1, 2 and 3 s are 5 s behind; 4 s is not
    assert [bar.start_ns for bar in closed] == [T0, T0 + SEC, T0 + 2 * SEC]
    assert all(bar.closed_at_ns == T0 + 8 * SEC for bar in closed)


def test_advance_closes_a_quiet_bar_and_ignores_earlier_times() -> None:
    builder = make()
    builder.add_trade(px(1), shares(1), T0 + 1)
    assert builder.advance(T0 + 30 * SEC) == ()
    assert builder.advance(T0) == ()
    (bar,) = builder.advance(T0 + MIN)
    assert bar.start_ns == T0 and bar.closed_at_ns == T0 + MIN
    assert builder.watermark_ns == T0 + MIN


def test_flush_closes_everything_and_later_trades_for_those_bars_are_late() -> None:
    builder = make(grace_ms=120_000)
    feed(
        builder,
        [(px(1), shares(1), T0), (px(2), shares(1), T0 + MIN), (px(3), shares(1), T0 + 90 * SEC)],
    )
    closed = builder.flush()
    assert [bar.start_ns for bar in closed] == [T0, T0 + MIN]
    assert all(bar.closed_at_ns == T0 + 90 * SEC for bar in closed)
    assert builder.flush() == ()
    assert builder.add_trade(px(4), shares(1), T0 + 100 * SEC).use is TradeUse.LATE
    assert builder.add_trade(px(4), shares(1), T0 + 2 * MIN).use is TradeUse.BAR


def test_flush_of_an_empty_builder_is_empty() -> None:
    assert make().flush() == ()


# -- rules: excluded and volume-only trades are reported -------------------------------


def test_all_trades_rule_takes_every_trade() -> None:
    builder = make(rule=BarRule.ALL_TRADES)
    outcome = builder.add_trade(px(1), shares(1), T0, ["4000000"], ["suspicious"])
    assert (outcome.use, outcome.reason) == (TradeUse.BAR, None)
    assert classify(BarRule.ALL_TRADES, ["zz"], ["suspicious"]) == Eligibility(TradeUse.BAR)


def test_lean_rule_excludes_and_counts_by_reason_and_keeps_them_out_of_the_bar() -> None:
    builder = make(rule=BarRule.LEAN)
    feed(
        builder,
        [
            (px(10), shares(100), T0 + 1, ["1"]),
            (px(50), shares(900), T0 + 2, ["1"], ["suspicious"]),
            (px(11), shares(64), T0 + 3, ["4000000"]),
            (px(12), shares(22), T0 + 4, ["1000000"]),
            (px(13), shares(5), T0 + 5, ["1@"]),
        ],
    )
    assert builder.excluded == {
        "suspicious": 1,
        "official_open": 1,
        "official_close": 1,
        "unknown_condition": 1,
    }
    (bar,) = builder.flush()
    assert (bar.open, bar.high, bar.low, bar.close) == (px(10),) * 4
    assert (bar.volume, bar.trade_count) == (shares(100), 1)


def test_lean_volume_only_trades_count_in_volume_and_vwap_not_in_prices() -> None:
    builder = make(rule=BarRule.LEAN)
    outcomes = [
        builder.add_trade(px(10), shares(100), T0 + 1, ["1"]),
        builder.add_trade(px(20), shares(100), T0 + 2, ["20000020"]),  # sweep
        builder.add_trade(px(5), shares(100), T0 + 3, ["100000"]),  # average price
        builder.add_trade(px(30), shares(100), T0 + 4, ["20000200"]),  # derivatively priced
    ]
    assert [o.use for o in outcomes] == [TradeUse.BAR] + [TradeUse.VOLUME_ONLY] * 3
    assert [o.reason for o in outcomes[1:]] == [
        "intermarket_sweep",
        "average_price",
        "derivatively_priced",
    ]
    assert builder.volume_only == {
        "intermarket_sweep": 1,
        "average_price": 1,
        "derivatively_priced": 1,
    }
    (bar,) = builder.flush()
    assert (bar.open, bar.high, bar.low, bar.close) == (px(10),) * 4
    assert (bar.volume, bar.trade_count, bar.vwap) == (shares(400), 4, px("16.25"))


def test_volume_only_trade_does_not_open_or_close_prices_but_moves_event_time() -> None:
    builder = make(rule=BarRule.LEAN)
    builder.add_trade(px(10), shares(1), T0, ["1"])
    outcome = builder.add_trade(px(20), shares(1), T0 + MIN, ["20"])
    assert [bar.start_ns for bar in outcome.closed] == [T0]


def test_excluded_trade_does_not_move_event_time() -> None:
    builder = make(rule=BarRule.LEAN)
    builder.add_trade(px(10), shares(1), T0, ["1"])
    assert builder.add_trade(px(10), shares(1), T0 + MIN, ["1"], ["suspicious"]).closed == ()
    assert builder.watermark_ns == T0


def test_bar_of_volume_only_trades_has_no_price_and_no_bar_record() -> None:
    builder = make(rule=BarRule.LEAN)
    builder.add_trade(px(20), shares(300), T0, ["20000020"])
    (bar,) = builder.flush()
    assert (bar.open, bar.high, bar.low, bar.close) == (None, None, None, None)
    assert (bar.volume, bar.trade_count, bar.vwap) == (shares(300), 1, px(20))
    assert bar.to_bar(venue="XNAS", source="lean") is None


def test_price_of_a_bar_comes_from_its_first_priced_trade_after_volume_only_ones() -> None:
    builder = make(rule=BarRule.LEAN)
    builder.add_trade(px(20), shares(1), T0 + 1, ["20"])
    builder.add_trade(px(10), shares(1), T0 + 2, ["1"])
    (bar,) = builder.flush()
    assert (bar.open, bar.high, bar.low, bar.close) == (px(10),) * 4


@pytest.mark.parametrize(
    ("code", "flags", "expected"),
    [
        ("1", (), Eligibility(TradeUse.BAR)),  # regular
        ("0", (), Eligibility(TradeUse.BAR)),  # no condition
        ("20000001", (), Eligibility(TradeUse.BAR)),  # regular, trade-through exempt
        ("20000040", (), Eligibility(TradeUse.BAR)),  # opening prints
        ("80", (), Eligibility(TradeUse.BAR)),  # closing prints
        ("2000", (), Eligibility(TradeUse.BAR)),  # extended hours (Form T)
        ("4800", (), Eligibility(TradeUse.BAR)),  # out of sequence, sold last
        ("20", (), Eligibility(TradeUse.VOLUME_ONLY, "intermarket_sweep")),
        ("20000020", (), Eligibility(TradeUse.VOLUME_ONLY, "intermarket_sweep")),
        ("20002020", (), Eligibility(TradeUse.BAR)),  # sweep reported as extended hours
        ("100000", (), Eligibility(TradeUse.VOLUME_ONLY, "average_price")),
        ("20100200", (), Eligibility(TradeUse.VOLUME_ONLY, "average_price")),
        ("102000", (), Eligibility(TradeUse.BAR)),  # average price, extended hours
        ("20000200", (), Eligibility(TradeUse.VOLUME_ONLY, "derivatively_priced")),
        ("80000000", (), Eligibility(TradeUse.VOLUME_ONLY, "odd_lot")),
        ("4000000", (), Eligibility(TradeUse.EXCLUDED, "official_open")),
        ("1000000", (), Eligibility(TradeUse.EXCLUDED, "official_close")),
        ("1000001", (), Eligibility(TradeUse.EXCLUDED, "official_close")),
        ("1", ("suspicious",), Eligibility(TradeUse.EXCLUDED, "suspicious")),
        ("@", (), Eligibility(TradeUse.EXCLUDED, "unknown_condition")),
        ("0x20", (), Eligibility(TradeUse.EXCLUDED, "unknown_condition")),
        ("100000000", (), Eligibility(TradeUse.EXCLUDED, "unknown_condition")),  # > 32 bits
    ],
)
def test_lean_eligibility_of_documented_sale_condition_codes(
    code: str, flags: tuple[str, ...], expected: Eligibility
) -> None:
    assert lean_eligibility([code], flags) == expected
    assert classify(BarRule.LEAN, [code], flags) == expected


def test_lean_eligibility_ors_several_codes_and_takes_no_code_as_regular() -> None:
    assert lean_eligibility(["20", "2000"]) == Eligibility(TradeUse.BAR)
    assert lean_eligibility([]) == Eligibility(TradeUse.BAR)


# -- records ---------------------------------------------------------------------------


def trade(
    price: int, size: int, ts: int, symbol: str = "SPY", conditions: list[str] | None = None
) -> Trade:
    return Trade(
        symbol=symbol,
        venue="ARCX",
        price=price,
        size=size,
        conditions=conditions or [],
        source="lean",
        ts_event=ts,
        ts_init=ts,
    )


def test_on_trade_takes_records_of_its_symbol_only() -> None:
    builder = make(rule=BarRule.LEAN)
    assert (
        builder.on_trade(trade(px(1), shares(1), T0, conditions=["20"])).use is TradeUse.VOLUME_ONLY
    )
    with pytest.raises(ValueError, match="IBM"):
        builder.on_trade(trade(px(1), shares(1), T0, symbol="IBM"))


def test_closed_bar_becomes_a_bar_record_labelled_by_its_start() -> None:
    builder = make()
    builder.on_trade(trade(px("167.41"), shares(100), T0 + 464 * MS))
    builder.on_trade(trade(px("167.43"), shares(300), T0 + 30 * SEC))
    (closed,) = builder.on_trade(trade(px("167.40"), shares(1), T0 + MIN)).closed
    bar = closed.to_bar(venue="ARCX", source="lean")
    assert bar == Bar(
        symbol="SPY",
        venue="ARCX",
        interval_ms=60_000,
        open=px("167.41"),
        high=px("167.43"),
        low=px("167.41"),
        close=px("167.43"),
        volume=shares(400),
        trade_count=2,
        vwap=px("167.425"),
        source="lean",
        ts_event=T0,
        ts_init=T0 + MIN,
    )
    stamped = closed.to_bar(venue="ARCX", source="lean", ts_init=5)
    assert stamped is not None and stamped.ts_init == 5


def test_constructor_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="symbol"):
        BarBuilder("", 1_000)
    with pytest.raises(ValueError, match="interval_ms"):
        BarBuilder("SPY", 0)
    with pytest.raises(ValueError, match="grace_ms"):
        BarBuilder("SPY", 1_000, grace_ms=-1)


# -- state -----------------------------------------------------------------------------


def test_snapshot_is_json_and_keeps_exact_sums_as_text() -> None:
    builder = make(grace_ms=1_000, rule=BarRule.LEAN)
    feed(
        builder,
        [
            (px("183.31"), shares(9_000_000), T0, ["1"]),
            (px(1), shares(1), T0, ["1"], ["suspicious"]),
        ],
    )
    snap = builder.snapshot()
    assert orjson.loads(orjson.dumps(snap)) == snap
    (bar,) = snap["bars"]
    assert bar["pv_sum"] == str(px("183.31") * shares(9_000_000))
    assert snap["excluded"] == {"suspicious": 1}
    assert snap["rule"] == "LEAN"


def test_restore_rejects_foreign_or_broken_snapshots() -> None:
    snap = make().snapshot()
    with pytest.raises(ValueError, match="version"):
        BarBuilder.restore({**snap, "version": 99})
    bad_bar = {
        "start_ns": T0 + 1,
        "open": None,
        "open_ts": None,
        "high": None,
        "low": None,
        "close": None,
        "close_ts": None,
        "volume": "0",
        "trade_count": 0,
        "pv_sum": "0",
    }
    with pytest.raises(ValueError, match="grid"):
        BarBuilder.restore({**snap, "bars": [bad_bar]})
    with pytest.raises(ValueError, match="partly"):
        BarBuilder.restore({**snap, "bars": [{**bad_bar, "start_ns": T0, "open": 5}]})


CODES = ["1", "20", "20000020", "2000", "20002020", "100000", "4000000", "zz"]
trade_rows = st.lists(
    st.tuples(
        st.integers(min_value=1, max_value=50),  # price
        st.integers(min_value=0, max_value=5),  # size
        st.integers(min_value=0, max_value=12_000),  # ms after T0
        st.sampled_from(CODES),
        st.booleans(),  # suspicious
    ),
    max_size=60,
)
configs = st.tuples(
    st.sampled_from([1, 250, 1_000, 3_000]),  # interval ms
    st.sampled_from([0, 100, 1_000, 5_000]),  # grace ms
    st.sampled_from(list(BarRule)),
)


def rows_to_trades(rows: list[tuple[int, int, int, str, bool]]) -> list[tuple[Any, ...]]:
    return [
        (p, s, T0 + ms * MS, [code], ["suspicious"] if sus else []) for p, s, ms, code, sus in rows
    ]


def run(
    builder: BarBuilder, trades: list[tuple[Any, ...]], restore_each_step: bool
) -> tuple[list[TradeOutcome], tuple[ClosedBar, ...], dict[str, Any]]:
    outcomes = []
    for row in trades:
        if restore_each_step:
            builder = BarBuilder.restore(orjson.loads(orjson.dumps(builder.snapshot())))
        outcomes.append(builder.add_trade(*row))
    if restore_each_step:
        builder = BarBuilder.restore(orjson.loads(orjson.dumps(builder.snapshot())))
    return outcomes, builder.flush(), builder.snapshot()


@settings(max_examples=300, deadline=None)
@given(rows=trade_rows, config=configs)
def test_snapshot_and_restore_at_every_point_gives_the_uninterrupted_output(
    rows: list[tuple[int, int, int, str, bool]], config: tuple[int, int, BarRule]
) -> None:
    interval_ms, grace_ms, rule = config
    trades = rows_to_trades(rows)
    straight = run(BarBuilder("SPY", interval_ms, grace_ms, rule), trades, restore_each_step=False)
    restored = run(BarBuilder("SPY", interval_ms, grace_ms, rule), trades, restore_each_step=True)
    assert restored == straight


@settings(max_examples=300, deadline=None)
@given(rows=trade_rows, config=configs)
def test_bars_equal_a_recount_of_the_trades_that_were_not_late_or_excluded(
    rows: list[tuple[int, int, int, str, bool]], config: tuple[int, int, BarRule]
) -> None:
    interval_ms, grace_ms, rule = config
    interval = interval_ms * MS
    builder = BarBuilder("SPY", interval_ms, grace_ms, rule)
    trades = rows_to_trades(rows)
    emitted: list[ClosedBar] = []
    kept: dict[int, list[tuple[int, int, int, int, bool]]] = defaultdict(list)
    for arrival, row in enumerate(trades):
        outcome = builder.add_trade(*row)
        emitted.extend(outcome.closed)
        assert outcome.bar_start_ns == row[2] - row[2] % interval
        if outcome.use in (TradeUse.BAR, TradeUse.VOLUME_ONLY):
            kept[outcome.bar_start_ns].append(
                (row[2], arrival, row[0], row[1], outcome.use is TradeUse.BAR)
            )
    emitted.extend(builder.flush())
    assert builder.late_trades + sum(len(v) for v in kept.values()) + sum(
        builder.excluded.values()
    ) == len(trades)
    assert [bar.start_ns for bar in emitted] == sorted(kept)  # each bar once, in order
    for bar in emitted:
        rows_of_bar = kept[bar.start_ns]
        priced = sorted(
            (ts, arrival, price) for ts, arrival, price, _, is_priced in rows_of_bar if is_priced
        )
        assert bar.volume == sum(size for *_, size, _ in rows_of_bar)
        assert bar.trade_count == len(rows_of_bar)
        assert bar.pv_sum == sum(price * size for _, _, price, size, _ in rows_of_bar)
        if priced:
            first = min(priced, key=lambda r: (r[0], r[1]))
            last = max(priced, key=lambda r: (r[0], r[1]))
            assert (bar.open, bar.close) == (first[2], last[2])
            assert (bar.high, bar.low) == (max(r[2] for r in priced), min(r[2] for r in priced))
        else:
            assert bar.open is None
        if bar.volume:
            assert bar.vwap == half_even(bar.pv_sum, bar.volume)
        # closed only once event time passed end + grace (or at the final flush)
        assert bar.closed_at_ns >= max(ts for ts, *_ in rows_of_bar)
