"""Lag status and time lag, pure (streams/logic/lag.py).

Part 1 replays Burrow's own evaluator test table (linkedin/Burrow ced55ba,
core/internal/evaluator/caching_test.go ``tests``: every rule's expected result and the
status) against the port. Part 2 drives a :class:`PartitionWindow` through hand-built poll
sequences, one per status. Part 3 is time lag (peek, interpolation, extrapolation).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.models import LagStatus
from streams.logic.lag import (
    EVENT_TIME_SKEW_NS,
    STATUS_LEVEL,
    BurrowOffset,
    BurrowStatus,
    EndPoint,
    GroupLag,
    LagBook,
    LagRules,
    Observation,
    PartitionWindow,
    calculate_partition_status,
    check_if_lag_not_decreasing,
    check_if_offsets_rewind,
    check_if_offsets_stalled,
    check_if_offsets_stopped,
    check_if_recent_lag_zero,
    interpolate_time_lag,
    is_lag_always_not_zero,
)

S = 1_000_000_000  # ns per second

# ---- Part 1: Burrow's table ------------------------------------------------------------
# (offsets as (offset, timestamp ms, lag or None), broker offsets, current lag, now (s),
#  allowed lag, isLagAlwaysNotZero, checkIfOffsetsRewind, checkIfOffsetsStopped,
#  checkIfOffsetsStalled, checkIfLagNotDecreasing, checkIfRecentLagZero, status)
# fmt: off
_RISING = [(1000, 100000, 0), (2000, 200000, 50), (3000, 300000, 100), (4000, 400000, 150),
           (5000, 500000, 200)]
_RISING_LAG = [(1000, 100000, 50), (2000, 200000, 100), (3000, 300000, 150),
               (4000, 400000, 200), (5000, 500000, 250)]
_FLAT = [(1000, t, lag) for t, lag in
         [(100000, 0), (200000, 50), (300000, 100), (400000, 150), (500000, 200)]]
_STALLED = [(1000, t, lag) for t, lag in
            [(100000, 100), (200000, 150), (300000, 200), (400000, 250), (500000, 300)]]
_REWOUND = [(1000, 100000, 100), (2000, 200000, 150), (3000, 300000, 200),
            (2000, 400000, 1250), (4000, 500000, 300)]
_CAUGHT = [(792748079 + i, t, 0) for i, t in enumerate(
    [1512224618356, 1512224619362, 1512224620366, 1512224621367, 1512224622370, 1512224623373,
     1512224624378, 1512224625379, 1512224626383, 1512224627383, 1512224628383, 1512224629388,
     1512224630391, 1512224631394, 1512224632397])]
_WITH_NILS = [(1000, 100000, 0), (1500, 150000, None), (2000, 200000, 50), (2500, 250000, None),
              (3000, 300000, 100), (3500, 350000, None), (4000, 400000, 150),
              (4500, 450000, None), (5000, 500000, 200), (5500, 550000, None)]

BURROW_TESTS = [
    # 0 - returns OK because there is zero lag somewhere
    (_RISING, [5200], 200, 600, 0, False, -1, False, False, True, False, "OK"),
    # 1 - time since last commit (400 s) equals the commit span (500-100): not stopped
    (_RISING, [5200], 200, 900, 0, False, -1, False, False, True, False, "OK"),
    # 2 - STOP: time since last commit (500 s) is long enough, though lag was zero at the start
    (_RISING, [5200], 200, 1000, 0, False, -1, True, False, True, False, "STOP"),
    # 3 - STOP when lag is always non-zero as well
    (_RISING_LAG, [5250], 250, 1000, 0, True, -1, True, False, True, False, "STOP"),
    # 4 - OK because of zero lag, though the offset never moves
    (_FLAT, [1200], 200, 600, 0, False, -1, False, True, True, False, "OK"),
    # 5 - STALL: the offset never moves and the lag is always non-zero
    (_STALLED, [1300], 300, 600, 0, True, -1, False, True, True, False, "STALL"),
    # 6 - still STALL when the lag stays the same
    ([(1000, t, 100) for t in (100000, 200000, 300000, 400000, 500000)],
     [1100], 100, 600, 0, True, -1, False, True, True, False, "STALL"),
    # 7 - OK: the offsets go backwards but the lag decreases within the window (caught up)
    (_REWOUND, [4300], 300, 600, 0, True, 3, False, False, False, False, "OK"),
    # 8 - OK because the current lag is 0, though the timestamps say stopped
    (_RISING_LAG, [5250], 0, 1000, 0, True, -1, True, False, True, False, "OK"),
    # 9 - STOP: current lag non-zero and the commits are old, though lag was always zero (#290)
    (_CAUGHT, [792749024, 792749000, 792748800, 792748600, 792748500], 931, 1512224650, 0,
     False, -1, True, False, True, False, "STOP"),
    # 10 - OK: would be STOP, but the lag was zero within the recent broker offsets (#303)
    (_CAUGHT, [792748094, 792748093, 792748093, 792748093], 1, 1512224650, 0,
     False, -1, True, False, True, True, "OK"),
    # 11 - case 0 with nil lag entries, which must not change anything
    (_WITH_NILS, [5700], 200, 600, 0, False, -1, False, False, True, False, "OK"),
    # 12 - OK: lag 1 and old commits, but allowed lag is 1
    ([(1000, 100000, 2), (2000, 200000, 1), (2000, 300000, 1)], [2001], 1, 550, 1,
     False, -1, True, False, False, False, "OK"),
    # 13 - case 5 with an allowed lag
    (_STALLED, [1300], 300, 600, 99, True, -1, False, True, True, False, "STALL"),
    # 14 - case 7 with an allowed lag
    (_REWOUND, [4300], 300, 600, 99, True, 3, False, False, False, False, "OK"),
    # 15 - REWIND: went backwards and did not get back to the previous point
    ([(1000, 100000, 100), (2000, 200000, 150), (3000, 300000, 200), (2000, 400000, 1250),
      (2500, 500000, 300)], [4300], 300, 600, 0, True, 3, False, False, False, False,
     "REWIND"),
]
# fmt: on


@pytest.mark.parametrize("case", BURROW_TESTS, ids=[str(i) for i in range(len(BURROW_TESTS))])
def test_burrow_evaluator_table_gives_burrows_results_rule_by_rule(case: tuple) -> None:
    (
        raw,
        broker,
        current,
        now_s,
        allowed,
        not_zero,
        rewind,
        stopped,
        stalled,
        not_dec,
        recent,
        want,
    ) = case
    offsets = [BurrowOffset(o, ts, lag) for o, ts, lag in raw]
    now_ms = now_s * 1000  # Burrow's timeNow is in seconds, timestamps in ms
    assert is_lag_always_not_zero(offsets, allowed) is not_zero
    assert check_if_offsets_rewind(offsets) == rewind
    assert check_if_offsets_stopped(offsets, now_ms) is stopped
    assert check_if_offsets_stalled(offsets) is stalled
    assert check_if_lag_not_decreasing(offsets) is not_dec
    assert check_if_recent_lag_zero(offsets, broker) is recent
    assert calculate_partition_status(offsets, broker, current, now_ms, allowed) == want


def test_burrow_table_has_no_warn_case_so_here_is_one() -> None:
    # offsets advance, the lag is never zero and never decreases: a slow consumer
    offsets = [BurrowOffset(1000 * i, 100_000 * i, 100 * i) for i in range(1, 6)]
    assert calculate_partition_status(offsets, [5500], 500, 600_000, 0) == BurrowStatus.WARN


def test_our_stop_floor_delays_stop_but_never_makes_one() -> None:
    offsets = [BurrowOffset(1000, 100_000, 50), BurrowOffset(2000, 200_000, 100)]
    assert calculate_partition_status(offsets, [2100], 100, 400_000, 0) == BurrowStatus.STOP
    floored = calculate_partition_status(offsets, [2100], 100, 400_000, 0, min_stop_ms=300_000)
    assert floored == BurrowStatus.WARN  # not yet stopped: the next rules decide
    assert (
        calculate_partition_status(offsets, [2100], 100, 500_000, 0, min_stop_ms=300_000)
        == BurrowStatus.STOP
    )


# ---- Part 2: windows of polls ----------------------------------------------------------
RULES = LagRules(window=5, stop_after_ns=10 * S, minimum_complete=1.0)


def run(seq: list[tuple[int, int | None]], *, rules: LagRules = RULES, step_s: int = 1,
        caught_up: bool = False) -> PartitionWindow:  # fmt: skip
    """A window fed one poll per ``step_s`` from (committed, end) pairs, starting at t=1 s."""
    window = PartitionWindow(rules)
    for i, (committed, end) in enumerate(seq, start=1):
        window.observe(Observation(i * step_s * S, committed, end, caught_up=caught_up))
    return window


def status_at(window: PartitionWindow, now_s: float) -> LagStatus:
    return window.status(int(now_s * S))[0]


def test_a_group_at_the_end_at_every_poll_is_ok() -> None:
    window = run([(10 * i, 10 * i) for i in range(1, 8)])
    assert status_at(window, 7) == LagStatus.OK
    assert status_at(window, 1000) == LagStatus.OK  # lag 0: never in error, however old


def test_a_group_whose_lag_grows_while_it_advances_is_warn() -> None:
    window = run([(100 * i, 150 * i) for i in range(1, 6)])
    assert status_at(window, 5) == LagStatus.WARN


def test_a_group_catching_up_is_ok() -> None:
    window = run([(100 * i, 1000) for i in range(1, 6)])  # lag 900, 800, ... decreasing
    assert status_at(window, 5) == LagStatus.OK


def test_a_group_that_stops_moving_goes_stall_then_stop() -> None:
    window = run([(100, 200), (200, 300), (300, 400), (300, 450), (300, 500), (300, 550),
                  (300, 600), (300, 650)])  # fmt: skip
    # moved last at t=3; the window (t=4..8) holds only offset 300, behind every time
    assert status_at(window, 8) == LagStatus.STALL
    assert status_at(window, 12.9) == LagStatus.STALL  # stop_after is 10 s
    assert status_at(window, 13.1) == LagStatus.STOP
    assert "no commit" in window.status(14 * S)[1]


def test_a_stopped_group_whose_end_does_not_move_is_still_stop() -> None:
    window = run([(300, 500)] * 5)
    assert status_at(window, 5) == LagStatus.STALL
    assert status_at(window, 11.5) == LagStatus.STOP


def test_a_group_that_was_caught_up_recently_is_not_stop() -> None:
    # the end was at the committed offset within the window: Burrow's #303 rule
    window = run([(300, 300), (300, 300), (300, 300), (300, 301), (300, 301)])
    assert status_at(window, 60) == LagStatus.OK


def test_committed_offset_going_backwards_unrecovered_is_error() -> None:
    window = run([(100, 1000), (200, 1000), (300, 1000), (150, 1000), (200, 1000)])
    status, reason = window.status(5 * S)
    assert status == LagStatus.ERROR and "backwards" in reason
    recovered = run([(100, 1000), (200, 1000), (300, 1000), (150, 1000), (350, 1000)])
    assert status_at(recovered, 5) == LagStatus.OK


def test_partition_gone_or_log_restarted_is_error() -> None:
    gone = run([(100, 200), (200, 300), (300, 400), (400, 500), (500, None)])
    assert gone.status(5 * S) == (LagStatus.ERROR, "partition gone: no end offset")
    past = run([(100, 200), (200, 300), (300, 400), (400, 500), (600, 20)])
    assert "past the end" in past.status(5 * S)[1]
    truncated = run([(10, 500), (20, 500), (30, 500), (5, 40), (10, 40)])
    assert "end offset went backwards" in truncated.status(5 * S)[1]
    # the end-offset history restarted with the log: committed 10 is before it
    assert truncated.time_lag(5 * S).method == "extrapolated"


def test_an_incomplete_window_is_not_judged() -> None:
    rules = LagRules(window=10, stop_after_ns=S, minimum_complete=0.5)
    window = run([(300, 500)] * 4, rules=rules)
    assert window.status(100 * S) == (LagStatus.OK, "window 40% full: not judged yet")
    window.observe(Observation(5 * S, 300, 500))
    assert status_at(window, 100) == LagStatus.STOP


def test_transaction_markers_alone_do_not_make_a_caught_up_group_stall() -> None:
    # committed = end - 1 forever (the commit marker), but a read from there finds nothing
    stuck = run([(99, 100)] * 5)
    assert status_at(stuck, 5) == LagStatus.STALL
    caught = run([(99, 100)] * 5, caught_up=True)
    assert status_at(caught, 500) == LagStatus.OK
    assert caught.evaluate("g", "t", 0, 5 * S).lag == 0


def test_time_lag_limit_raises_ok_to_warn_but_not_worse_to_warn() -> None:
    rules = LagRules(window=5, stop_after_ns=10 * S, minimum_complete=1.0, max_lag_seconds=2.0)
    window = PartitionWindow(rules)
    for i in range(1, 6):  # catching up (OK by Burrow), but its next record is 4 s old
        window.observe(Observation(i * S, 100 * i, 1000, head_ts_ns=(i - 3) * S))
    verdict = window.evaluate("g", "t", 0, 5 * S)
    assert verdict.status == LagStatus.WARN and "time lag" in verdict.reason
    stalled = run([(300, 500)] * 5, rules=rules)
    assert stalled.evaluate("g", "t", 0, 30 * S).status == LagStatus.STOP


def test_group_status_is_the_worst_partition_and_gone_partitions_are_forgotten() -> None:
    book = LagBook(RULES)
    for i in range(1, 6):
        book.observe("g", "t", 0, Observation(i * S, 10 * i, 10 * i))
        book.observe("g", "t", 1, Observation(i * S, 300, 500))
        book.observe("h", "t", 0, Observation(i * S, 10 * i, 10 * i))
    groups = {g.group: g for g in book.evaluate(5 * S)}
    assert groups["g"].status == LagStatus.STALL and groups["g"].lag == 200
    assert groups["h"].status == LagStatus.OK
    assert book.retain([("g", "t", 0)]) == [("g", "t", 1), ("h", "t", 0)]
    assert [g.group for g in book.evaluate(5 * S)] == ["g"]
    assert GroupLag("empty", ()).status == LagStatus.OK
    assert [STATUS_LEVEL[s] for s in LagStatus] == [0, 1, 2, 3, 4]


@settings(max_examples=200, deadline=None)
@given(
    ends=st.lists(st.integers(0, 10_000), min_size=1, max_size=40),
    gaps=st.lists(st.integers(1, 60_000), min_size=40, max_size=40),
    later_s=st.integers(0, 10**6),
    window=st.integers(2, 15),
    completeness=st.floats(0, 1),
)
def test_a_group_at_the_end_offset_at_every_observation_is_always_ok(
    ends: list[int], gaps: list[int], later_s: int, window: int, completeness: float
) -> None:
    rules = LagRules(window=window, stop_after_ns=S, minimum_complete=completeness)
    part = PartitionWindow(rules)
    ts = 0
    end = 0
    for step, gap in zip(ends, gaps, strict=False):
        ts += gap * 1_000_000
        end += step  # the end only grows; the group is always exactly there
        part.observe(Observation(ts, end, end))
        verdict = part.evaluate("g", "t", 0, ts + later_s * S)
        assert verdict.status == LagStatus.OK
        assert verdict.lag == 0 and verdict.time_lag.ns == 0


@settings(max_examples=200, deadline=None)
@given(
    seq=st.lists(
        st.tuples(st.integers(0, 1000), st.integers(0, 1000) | st.none()), min_size=1, max_size=30
    ),
    now_s=st.integers(0, 10**5),
)
def test_any_sequence_gets_a_status_and_a_non_negative_lag(
    seq: list[tuple[int, int | None]], now_s: int
) -> None:
    window = run(seq, rules=LagRules(window=6, stop_after_ns=3 * S, minimum_complete=0.0))
    verdict = window.evaluate("g", "t", 0, (len(seq) + now_s) * S)
    assert verdict.status in STATUS_LEVEL and verdict.lag >= 0 and verdict.time_lag.ns >= 0


# ---- Part 3: time lag ------------------------------------------------------------------
def test_interpolation_finds_when_the_end_passed_the_committed_offset() -> None:
    # end 100 seen at t=10..12 s, then 200 at t=14 s: records 100..199 arrived in (12, 14]
    points = [EndPoint(10 * S, 12 * S, 100), EndPoint(14 * S, 14 * S, 200)]
    lag = interpolate_time_lag(points, 149, 20 * S)  # record 149: the 50th of 100 → t=13 s
    assert lag.method == "interpolated" and lag.ns == 7 * S
    assert interpolate_time_lag(points, 100, 20 * S).ns == 20 * S - (12 * S + 2 * S // 100)
    assert interpolate_time_lag(points, 200, 20 * S).method == "unknown"  # nothing behind


def test_before_the_history_the_time_lag_is_extrapolated_at_the_mean_rate() -> None:
    points = [EndPoint(10 * S, 10 * S, 100), EndPoint(20 * S, 20 * S, 200)]  # 10 records/s
    lag = interpolate_time_lag(points, 50, 20 * S)  # 50 records before t=10 → t=5
    assert lag.method == "extrapolated" and lag.ns == 15 * S
    flat = interpolate_time_lag([EndPoint(10 * S, 30 * S, 100)], 50, 40 * S)
    assert flat == interpolate_time_lag([EndPoint(10 * S, 10 * S, 100)], 50, 40 * S)
    assert flat.ns == 30 * S  # at least as old as the oldest point


def test_peek_timestamp_is_used_when_credible_and_interpolation_otherwise() -> None:
    window = PartitionWindow(RULES)
    window.observe(Observation(10 * S, 100, 100))
    window.observe(Observation(12 * S, 100, 200, head_ts_ns=11 * S))
    lag = window.time_lag(15 * S)
    assert (lag.method, lag.ns) == ("peek", 4 * S)
    # a replayed record stamped with an event time years ago: not the group's time lag
    window.observe(Observation(13 * S, 100, 200, head_ts_ns=10 * S - EVENT_TIME_SKEW_NS - S))
    lag = window.time_lag(15 * S)
    assert lag.method == "interpolated" and 3 * S <= lag.ns <= 5 * S
    # committed before the history: the peek is all we know, so it is used
    old = PartitionWindow(RULES)
    old.observe(Observation(10 * S, 5, 100, head_ts_ns=S))
    assert old.time_lag(10 * S) == old.time_lag(10 * S) and old.time_lag(10 * S).method == "peek"
    assert old.time_lag(10 * S).ns == 9 * S
