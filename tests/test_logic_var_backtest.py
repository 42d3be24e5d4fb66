"""VaR backtests (Kupiec, Christoffersen, traffic light) against published vectors, closed
forms and an independent vectorised numpy backtest of historical VaR on real SPY prices."""

from __future__ import annotations

import math
from itertools import pairwise
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_logic_var import spy_daily_equity

from streams.logic.var import RiskMetricsEngine, VarMethod
from streams.logic.var_backtest import (
    LikelihoodRatio,
    TrafficLight,
    TransitionCounts,
    VarBacktester,
    backtest,
    chi2_sf,
    christoffersen_independence,
    conditional_coverage,
    exception_indicators,
    kupiec_pof,
    traffic_light,
    zone_bounds,
)

REL = 1e-9


# -- the test vectors -------------------------------------------------------------------


def test_kupiec_vector_t1043_x57_p005() -> None:
    pof = kupiec_pof(1043, 57, 0.05)
    print(f"LR_pof(T=1043, x=57, p=0.05) = {pof.statistic:.5f}, p-value {pof.p_value:.5f}")
    assert round(pof.statistic, 5) == 0.46147
    assert pof.dof == 1 and pof.p_value == pytest.approx(math.erfc(math.sqrt(0.46147 / 2)), 1e-5)


def test_christoffersen_vector_932_53_53_4() -> None:
    ind = christoffersen_independence(TransitionCounts(n00=932, n01=53, n10=53, n11=4))
    print(f"LR_ind(932, 53, 53, 4) = {ind.statistic:.5f}, p-value {ind.p_value:.5f}")
    assert round(ind.statistic, 5) == 0.25866
    cc = conditional_coverage(kupiec_pof(1043, 57, 0.05), ind)
    print(f"LR_cc = {cc.statistic:.5f}, p-value {cc.p_value:.5f}")
    assert round(cc.statistic, 5) == round(0.4614663953283298 + 0.25866315258514305, 5)
    assert cc.dof == 2 and cc.p_value == pytest.approx(math.exp(-cc.statistic / 2), rel=1e-15)


# -- closed forms and edge cases --------------------------------------------------------


@pytest.mark.parametrize(
    ("x", "dof", "p"),
    [(3.841458820694124, 1, 0.05), (6.634896601021214, 1, 0.01), (2.705543454095404, 1, 0.10),
     (5.991464547107979, 2, 0.05), (9.210340371976182, 2, 0.01), (0.0, 1, 1.0), (-1.0, 2, 1.0)],
)  # fmt: skip
def test_chi2_survival_at_the_table_critical_values(x: float, dof: int, p: float) -> None:
    assert chi2_sf(x, dof) == pytest.approx(p, rel=1e-12)


def test_chi2_refuses_other_degrees_of_freedom() -> None:
    with pytest.raises(ValueError, match="degrees"):
        chi2_sf(1.0, 3)


def test_kupiec_with_no_or_only_exceptions_uses_zero_log_zero() -> None:
    assert kupiec_pof(250, 0, 0.01).statistic == pytest.approx(-2 * 250 * math.log(0.99))
    assert kupiec_pof(20, 20, 0.05).statistic == pytest.approx(-2 * 20 * math.log(0.05))
    exact = kupiec_pof(100, 1, 0.01)  # x / T == p: no evidence against the model
    assert exact.statistic == pytest.approx(0.0, abs=1e-12) and exact.statistic >= 0.0
    assert exact.p_value == pytest.approx(1.0)


def test_independence_with_zero_counts() -> None:
    def direct(n00: int, n01: int, n10: int, n11: int) -> float:
        def xlog(count: int, total: int) -> float:
            return count * math.log(count / total) if count else 0.0

        pi_terms = xlog(n00, n00 + n01) + xlog(n01, n00 + n01)
        pi_terms += xlog(n10, n10 + n11) + xlog(n11, n10 + n11)
        n = n00 + n01 + n10 + n11
        return 2 * (pi_terms - xlog(n00 + n10, n) - xlog(n01 + n11, n))

    for counts in [(249, 0, 0, 0), (240, 5, 5, 0), (0, 1, 1, 0), (0, 0, 0, 0), (3, 2, 0, 0)]:
        ind = christoffersen_independence(TransitionCounts(*counts))
        assert ind.statistic == pytest.approx(max(0.0, direct(*counts)), abs=1e-12)
    assert christoffersen_independence(TransitionCounts()).p_value == 1.0
    clustered = christoffersen_independence(TransitionCounts(240, 2, 2, 6))
    assert clustered.p_value < 1e-6  # exceptions in a row are evidence of dependence


def test_exceptions_are_strict_and_transitions_count_pairs() -> None:
    assert exception_indicators([10, 10, 10], [9, 10, 11]) == [False, False, True]
    with pytest.raises(ValueError, match="forecasts"):
        exception_indicators([1], [])
    hits = [False, True, True, False, False, True]
    assert TransitionCounts.of(hits) == TransitionCounts(n00=1, n01=2, n10=1, n11=1)
    assert TransitionCounts.of([True]) == TransitionCounts()


def test_kupiec_refuses_nonsense() -> None:
    for args in [(0, 0, 0.01), (10, 11, 0.01), (10, -1, 0.01), (10, 1, 0.0), (10, 1, 1.0)]:
        with pytest.raises(ValueError):
            kupiec_pof(*args)


# -- the traffic light ------------------------------------------------------------------


def test_basel_zones_for_99_percent_over_250_days() -> None:
    assert zone_bounds(250, 0.01) == (5, 10)
    zones = [traffic_light(x, 250) for x in range(14)]
    assert zones == [TrafficLight.GREEN] * 5 + [TrafficLight.YELLOW] * 5 + [TrafficLight.RED] * 4


def float_binomial_cdf(n: int, p: float) -> np.ndarray:
    k = np.arange(n + 1)
    log_pmf = (
        np.array([math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in k])
        + k * math.log(p)
        + (n - k) * math.log1p(-p)
    )
    return np.cumsum(np.exp(log_pmf))


def test_basel_table_cumulative_probabilities() -> None:
    cdf = float_binomial_cdf(250, 0.01)  # Basel (1996), table 1, in per cent
    table = [8.11, 28.58, 54.32, 75.81, 89.22, 95.88, 98.63, 99.60, 99.89, 99.97, 99.99]
    assert np.round(100 * cdf[:11], 2).tolist() == table


@pytest.mark.parametrize("p", [0.01, 0.025, 0.05])
def test_zones_of_other_windows_follow_the_binomial_rule(p: float) -> None:
    for n in (*range(1, 60), 100, 125, 250, 500, 750, 1000):
        cdf = float_binomial_cdf(n, p)
        yellow = int(np.argmax(cdf >= 0.95)) if (cdf >= 0.95).any() else n + 1
        red = int(np.argmax(cdf >= 0.9999)) if (cdf >= 0.9999).any() else n + 1
        assert zone_bounds(n, p) == (max(1, yellow), max(1, red)), n
    assert zone_bounds(5, 0.01)[0] == 1  # 0.99**5 > 0.95, yet no exceptions stays green
    assert traffic_light(0, 1, 0.00001) == TrafficLight.GREEN


# -- the state machine ------------------------------------------------------------------


def test_backtester_rolls_its_window() -> None:
    tester = VarBacktester(level=0.99, window=4)
    reports = [tester.observe(10, loss) for loss in [11, 0, 12, 0, 0, 0, 0]]
    assert [r.observations for r in reports] == [1, 2, 3, 4, 4, 4, 4]
    assert [r.exceptions for r in reports] == [1, 1, 2, 2, 1, 1, 0]
    assert [r.last_exception for r in reports] == [True, False, True] + [False] * 4
    assert reports[-1].zone == TrafficLight.GREEN and reports[2].zone == TrafficLight.RED
    assert reports[3] == backtest([True, False, True, False], level=0.99)
    with pytest.raises(ValueError, match="at least one"):
        VarBacktester().report()


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 100), st.integers(0, 120)), max_size=40),
    st.integers(1, 12),
    st.data(),
)
def test_backtester_snapshot_restore_anywhere(
    pairs: list[tuple[int, int]], window: int, data: st.DataObject
) -> None:
    cut = data.draw(st.integers(0, len(pairs)))
    uninterrupted = VarBacktester(level=0.95, window=window)
    expected = [uninterrupted.observe(f, loss) for f, loss in pairs]
    tester = VarBacktester(level=0.95, window=window)
    got = [tester.observe(f, loss) for f, loss in pairs[:cut]]
    tester = VarBacktester.restore(orjson.loads(orjson.dumps(tester.snapshot())))
    got += [tester.observe(f, loss) for f, loss in pairs[cut:]]
    assert got == expected and tester.pairs == uninterrupted.pairs
    for report in expected:
        assert report.pof.statistic >= 0 and report.independence.statistic >= 0
        assert 0.0 <= report.conditional_coverage.p_value <= 1.0


def test_backtester_refuses_a_foreign_snapshot() -> None:
    with pytest.raises(ValueError, match="version"):
        VarBacktester.restore({"version": 0})
    with pytest.raises(ValueError, match="window"):
        VarBacktester.restore({"version": 1, "level": 0.99, "window": 1, "pairs": [[1, 2]] * 2})


# -- historical VaR of SPY, backtested two ways -----------------------------------------


def xlogy_ratio(count: np.ndarray, total: np.ndarray) -> np.ndarray:
    """count · ln(count / total), 0 where count is 0 (vectorised)."""
    safe_count = np.where(count > 0, count, 1)
    safe_total = np.where(total > 0, total, 1)
    return np.where(count > 0, count * np.log(safe_count / safe_total), 0.0)


def rolling_sum(values: np.ndarray, window: int) -> np.ndarray:
    """Sum of the last ``window`` values (fewer at the start), for each position."""
    cumulative = np.r_[0, np.cumsum(values)]
    ends = np.arange(1, values.size + 1)
    return cumulative[ends] - cumulative[np.maximum(0, ends - window)]


def test_spy_historical_var_backtest_equals_numpy(shared_data: Path) -> None:
    _, equity = spy_daily_equity(shared_data)
    level, p, window, n_returns = 0.99, 0.01, 250, 250
    # the engine's forecasts, paired with the next day's realised loss
    engine = RiskMetricsEngine("spy")
    snapshots = [engine.on_equity(i, int(e)) for i, e in enumerate(equity)]
    tester = VarBacktester(level=level, window=window)
    reports = []
    for before, after in pairwise(snapshots):
        forecast = before.tail_risk(VarMethod.HISTORICAL, level)
        if before.returns < n_returns or forecast is None:
            continue
        assert after.period_pnl is not None
        reports.append(tester.observe(forecast.var, -after.period_pnl))

    # numpy: forecasts from full 250-return windows, exceptions, rolling tests
    eq = equity.astype(np.float64)
    returns = np.diff(eq) / eq[:-1]
    windows = np.lib.stride_tricks.sliding_window_view(returns, n_returns)[:-1]
    var_fraction = -np.quantile(windows, p, method="inverted_cdf", axis=1)
    forecasts = np.rint(eq[n_returns:-1] * var_fraction).astype(np.int64)
    losses = -(equity[n_returns + 1 :] - equity[n_returns:-1])
    hits = (losses > forecasts).astype(np.int64)
    assert [r.last_exception for r in reports] == hits.astype(bool).tolist()

    t = np.minimum(np.arange(1, hits.size + 1), window)
    x = rolling_sum(hits, window)
    restricted = (t - x) * np.log1p(-p) + x * math.log(p)
    pof = 2 * (xlogy_ratio(t - x, t) + xlogy_ratio(x, t) - restricted)
    pair = np.r_[-1, 2 * hits[:-1] + hits[1:]]  # transition code ending at each period
    n = {code: rolling_sum((pair == code).astype(np.int64), window - 1) for code in range(4)}
    n00, n01, n10, n11 = n[0], n[1], n[2], n[3]
    total = n00 + n01 + n10 + n11
    unrestricted = (
        xlogy_ratio(n00, n00 + n01)
        + xlogy_ratio(n01, n00 + n01)
        + xlogy_ratio(n10, n10 + n11)
        + xlogy_ratio(n11, n10 + n11)
    )
    ind = 2 * (unrestricted - xlogy_ratio(n00 + n10, total) - xlogy_ratio(n01 + n11, total))

    assert [r.observations for r in reports] == t.tolist()
    assert [r.exceptions for r in reports] == x.tolist()
    assert [
        (r.transitions.n00, r.transitions.n01, r.transitions.n10, r.transitions.n11)
        for r in reports
    ] == list(zip(n00.tolist(), n01.tolist(), n10.tolist(), n11.tolist(), strict=True))
    np.testing.assert_allclose([r.pof.statistic for r in reports], np.maximum(pof, 0), REL, 1e-9)
    np.testing.assert_allclose(
        [r.independence.statistic for r in reports], np.maximum(ind, 0), REL, 1e-9
    )
    np.testing.assert_allclose(
        [r.conditional_coverage.statistic for r in reports],
        np.maximum(pof, 0) + np.maximum(ind, 0),
        REL,
        1e-9,
    )
    cdf = {n: float_binomial_cdf(n, p) for n in set(t.tolist())}
    zones = [
        "GREEN"
        if k == 0
        else "RED"
        if cdf[n][k] >= 0.9999
        else "YELLOW"
        if cdf[n][k] >= 0.95
        else "GREEN"
        for n, k in zip(t.tolist(), x.tolist(), strict=True)
    ]
    assert [r.zone for r in reports] == zones
    full = [r for r in reports if r.observations == window]
    print(
        f"SPY historical 99 % VaR, {len(reports)} days backtested: "
        f"{sum(hits)} exceptions; zones of the 250-day windows: "
        f"{ {z: sum(r.zone == z for r in full) for z in TrafficLight} }"
    )
    assert {r.zone for r in full} >= {TrafficLight.GREEN, TrafficLight.RED}  # 2008 is red


def test_likelihood_ratio_is_plain_data() -> None:
    ratio = LikelihoodRatio(statistic=1.5, dof=1, p_value=chi2_sf(1.5, 1))
    assert ratio == LikelihoodRatio(1.5, 1, math.erfc(math.sqrt(0.75)))
