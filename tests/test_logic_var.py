"""RiskMetricsEngine (VaR, ES, volatility, drawdown, daily PnL, alerts) against an independent
vectorised numpy/pandas computation over real SPY prices, plus properties and the day cut."""

from __future__ import annotations

import csv
import io
import math
import zipfile
from collections import Counter
from dataclasses import replace
from datetime import date, datetime
from fractions import Fraction
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import orjson
import pytest
from conftest import shared_file
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.fixedpoint import FACTOR, to_fixed
from schemas.models import AlertSeverity
from streams.logic.daily_loss import DailyLossTracker, SessionCalendar
from streams.logic.drawdown import DrawdownTracker
from streams.logic.var import (
    AlertKind,
    RiskConfig,
    RiskMetricsEngine,
    RiskSnapshot,
    VarMethod,
    historical_es,
    historical_var,
    normal_es,
    normal_var,
    tail_count,
)

pd = pytest.importorskip("pandas")

NY = ZoneInfo("America/New_York")
SEC = 1_000_000_000
HOUR = 3600 * SEC
SPY_DAILY = "Lean/Data/equity/usa/daily/spy.zip"
SPY_HOURLY = "Lean/Data/equity/usa/hour/spy.zip"
SHARES = 1_000  # the fixed position whose equity is observed ...
CASH = 50_000 * FACTOR  # ... next to this cash
# Standard normal quantiles to 17 digits (tables), independent of statistics.NormalDist
Z = {0.95: 1.6448536269514722, 0.975: 1.959963984540054, 0.99: 2.3263478740408408}
TAIL = {0.95: 0.05, 0.975: 0.025, 0.99: 0.01}  # 1 - α as the decimal literal numpy gets
REL = 1e-9


def px(value: str | int) -> int:
    return to_fixed(str(value))


# -- real data --------------------------------------------------------------------------


def lean_bars(path: Path) -> tuple[list[datetime], list[int]]:
    """Bar start (naive New York wall time) and close (raw fixed-point) of a Lean zip."""
    with zipfile.ZipFile(path) as archive:
        (name,) = archive.namelist()
        text = archive.read(name).decode()
    starts, closes = [], []
    for row in csv.reader(io.StringIO(text)):
        starts.append(datetime.strptime(row[0], "%Y%m%d %H:%M"))
        closes.append(int(row[4]) * 10**5)  # deci-cents → raw 1e-9
    return starts, closes


def spy_daily_equity(shared_data: Path) -> tuple[np.ndarray, np.ndarray]:
    """(ts_event ns at the 16:00 New York close, equity raw) of SHARES SPY + CASH, daily."""
    starts, closes = lean_bars(shared_file(shared_data, SPY_DAILY))
    ts = [int(day.replace(hour=16, tzinfo=NY).timestamp()) * SEC for day in starts]
    equity = SHARES * np.array(closes, dtype=np.int64) + CASH
    return np.array(ts, dtype=np.int64), equity


def run(engine: RiskMetricsEngine, ts: np.ndarray, equity: np.ndarray) -> list[RiskSnapshot]:
    return [engine.on_equity(int(t), int(e)) for t, e in zip(ts, equity, strict=True)]


def close(actual: float | None, expected: float) -> bool:
    return actual is not None and math.isclose(actual, expected, rel_tol=REL)


# -- the independent reference ----------------------------------------------------------


def reference_statistics(
    equity: np.ndarray, window: int, min_returns: int
) -> dict[int, dict[str, float]]:
    """Per observation index i (with >= min_returns returns): window VaR/ES/σ by numpy."""
    eq = equity.astype(np.float64)  # exact: |equity| < 2**53
    returns = np.diff(eq) / eq[:-1]
    ewma = pd.Series(returns**2).ewm(alpha=1 - 0.94, adjust=False).mean().to_numpy()
    out: dict[int, dict[str, float]] = {}
    for n in range(min_returns, window + 1):  # growing windows first, then full ones
        index = np.arange(n, len(eq)) if n == window else np.array([n])
        if index.size == 0:
            continue
        if n == window:
            windows = np.lib.stride_tricks.sliding_window_view(returns, window)
        else:
            windows = returns[None, :n]
        windows = windows[: index.size]
        mean = windows.mean(axis=1)
        sigma = windows.std(axis=1, ddof=1)
        ordered = np.sort(windows, axis=1)
        for j, i in enumerate(index):
            stats: dict[str, float] = {
                "mean": mean[j],
                "sigma": sigma[j],
                "ewma": math.sqrt(ewma[i - 1]),
            }
            for level, tail in TAIL.items():
                k = math.ceil(round(n * tail, 9))  # n·(1-α) is a multiple of 1/1000 here
                stats[f"hist_var_{level}"] = -np.quantile(windows[j], tail, method="inverted_cdf")
                stats[f"hist_es_{level}"] = -ordered[j, :k].mean()
                phi = math.exp(-(Z[level] ** 2) / 2) / math.sqrt(2 * math.pi)
                stats[f"normal_var_{level}"] = Z[level] * sigma[j] - mean[j]
                stats[f"normal_es_{level}"] = sigma[j] * phi / tail - mean[j]
                stats[f"ewma_var_{level}"] = Z[level] * stats["ewma"]
                stats[f"ewma_es_{level}"] = stats["ewma"] * phi / tail
            out[int(i)] = stats
    return out


def reference_money_path(
    equity: np.ndarray, days: np.ndarray, limit: int, warning: tuple[int, int], dd: tuple[int, int]
) -> dict[str, np.ndarray]:
    """Exact integer drawdown, daily PnL and alert indices (numpy int64, vectorised)."""
    peak = np.maximum.accumulate(equity)
    drawdown = peak - equity
    new_day = np.r_[True, days[1:] != days[:-1]]
    base = np.where(new_day, np.r_[equity[0], equity[:-1]], 0)
    base = base[np.maximum.accumulate(np.where(new_day, np.arange(equity.size), 0))]
    pnl = equity - base
    loss = np.maximum(0, -pnl)

    def first_per_day(mask: np.ndarray) -> np.ndarray:
        frame = pd.DataFrame({"day": days[mask], "i": np.flatnonzero(mask)})
        return frame.groupby("day")["i"].min().to_numpy()

    above = drawdown * dd[1] >= dd[0] * peak
    return {
        "peak": peak,
        "drawdown": drawdown,
        "fraction": drawdown / peak,
        "max_drawdown": np.maximum.accumulate(drawdown),
        "max_fraction": np.maximum.accumulate(drawdown / peak),
        "base": base,
        "pnl": pnl,
        "loss": loss,
        "warning": first_per_day(loss * warning[1] >= limit * warning[0]),
        "breach": first_per_day(loss >= limit),
        "drawdown_alert": np.flatnonzero(above & ~np.r_[False, above[:-1]]),
    }


def session_days(ts: np.ndarray, cut: str) -> np.ndarray:
    """Session day (days since 1970-01-01) of each instant, by pandas: the date of the New
    York wall time minus the cut."""
    wall = pd.to_datetime(ts, unit="ns", utc=True).tz_convert("America/New_York").tz_localize(None)
    days = ((wall - pd.Timedelta(cut + ":00")).normalize() - pd.Timestamp(0)) // pd.Timedelta(
        days=1
    )
    return np.asarray(days, dtype=np.int64)


def day_number(day: date) -> int:
    return day.toordinal() - date(1970, 1, 1).toordinal()


def alert_indices(snapshots: list[RiskSnapshot], kind: AlertKind) -> list[int]:
    return [i for i, s in enumerate(snapshots) for a in s.alerts if a.kind == kind]


# -- VaR, ES and volatility on SPY ------------------------------------------------------


@pytest.fixture(scope="module")
def spy_run(shared_data: Path) -> tuple[np.ndarray, np.ndarray, list[RiskSnapshot]]:
    ts, equity = spy_daily_equity(shared_data)
    return ts, equity, run(RiskMetricsEngine("spy"), ts, equity)


def test_spy_var_es_and_volatility_equal_numpy(spy_run) -> None:
    _, equity, snapshots = spy_run
    config = RiskConfig()
    reference = reference_statistics(equity, config.window, config.min_returns)
    assert len(reference) == len(equity) - config.min_returns
    checked = 0
    for i, snap in enumerate(snapshots):
        expected = reference.get(i)
        if expected is None:
            assert snap.tail == () and snap.volatility is None and snap.ewma_volatility is None
            continue
        assert snap.returns == min(i, config.window)
        assert close(snap.mean_return, expected["mean"])
        assert close(snap.volatility, expected["sigma"])
        assert close(snap.ewma_volatility, expected["ewma"])
        for level in config.levels:
            for method, name in (
                (VarMethod.HISTORICAL, "hist"),
                (VarMethod.NORMAL, "normal"),
                (VarMethod.EWMA, "ewma"),
            ):
                estimate = snap.tail_risk(method, level)
                assert estimate is not None
                var, es = expected[f"{name}_var_{level}"], expected[f"{name}_es_{level}"]
                assert close(estimate.var_fraction, var), (i, method, level)
                assert close(estimate.es_fraction, es), (i, method, level)
                assert math.isclose(estimate.var, equity[i] * var, rel_tol=REL, abs_tol=1)
                assert math.isclose(estimate.es, equity[i] * es, rel_tol=REL, abs_tol=1)
                checked += 1
    assert checked == 9 * (len(equity) - config.min_returns)


def test_spy_historical_var_is_an_observed_loss(spy_run) -> None:
    _, equity, snapshots = spy_run
    eq = equity.astype(np.float64)
    returns = np.diff(eq) / eq[:-1]
    last = snapshots[-1]
    window = returns[-250:]
    for level, rank in ((0.95, 13), (0.975, 7), (0.99, 3)):
        estimate = last.tail_risk(VarMethod.HISTORICAL, level)
        assert estimate is not None
        assert estimate.var_fraction == -np.sort(window)[rank - 1]  # bit for bit
    assert last.period_return == returns[-1]


def test_spy_drawdown_is_exact(spy_run) -> None:
    ts, equity, snapshots = spy_run
    ref = reference_money_path(equity, session_days(ts, "00:00"), 10_000 * FACTOR, (4, 5), (3, 20))
    assert [s.peak for s in snapshots] == ref["peak"].tolist()
    assert [s.drawdown for s in snapshots] == ref["drawdown"].tolist()
    assert [s.max_drawdown for s in snapshots] == ref["max_drawdown"].tolist()
    # float of an exact rational: bit-identical to numpy's correctly rounded division
    assert [s.drawdown_fraction for s in snapshots] == ref["fraction"].tolist()
    assert [s.max_drawdown_fraction for s in snapshots] == ref["max_fraction"].tolist()
    assert alert_indices(snapshots, AlertKind.DRAWDOWN) == ref["drawdown_alert"].tolist()
    assert len(ref["drawdown_alert"]) >= 1  # 2008 takes the position below 15 %


# -- daily PnL on hourly SPY bars (several observations a day, 46 DST changes) ----------


@pytest.fixture(scope="module")
def spy_hourly(shared_data: Path) -> tuple[np.ndarray, np.ndarray]:
    """(ts_event ns at the bar's end, one hour after its New York start; equity raw)."""
    starts, closes = lean_bars(shared_file(shared_data, SPY_HOURLY))
    ts = [int(start.replace(tzinfo=NY).timestamp()) * SEC + HOUR for start in starts]
    return np.array(ts, dtype=np.int64), SHARES * np.array(closes, dtype=np.int64) + CASH


@pytest.mark.parametrize("cut", ["00:00", "12:00"])
def test_spy_hourly_daily_pnl_and_alerts_equal_numpy(spy_hourly, cut: str) -> None:
    ts, equity = spy_hourly
    config = RiskConfig(window=10, min_returns=5, day_cut=cut)
    snapshots = run(RiskMetricsEngine("spy", config), ts, equity)
    days = session_days(ts, cut)
    ref = reference_money_path(equity, days, config.daily_loss_limit, (4, 5), (3, 20))
    assert [day_number(s.session_day) for s in snapshots] == days.tolist()
    assert [s.day_start_equity for s in snapshots] == ref["base"].tolist()
    assert [s.daily_pnl for s in snapshots] == ref["pnl"].tolist()
    assert [s.daily_loss for s in snapshots] == ref["loss"].tolist()
    assert [s.drawdown for s in snapshots] == ref["drawdown"].tolist()
    warnings = alert_indices(snapshots, AlertKind.DAILY_LOSS_WARNING)
    breaches = alert_indices(snapshots, AlertKind.DAILY_LOSS_BREACH)
    assert warnings == ref["warning"].tolist()
    assert breaches == ref["breach"].tolist()
    assert len(breaches) >= 1 and len(warnings) > len(breaches)


# -- estimator functions ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "level", "k"),
    [(250, 0.95, 13), (250, 0.975, 7), (250, 0.99, 3), (100, 0.95, 5), (40, 0.975, 1),
     (20, 0.95, 1), (21, 0.95, 2), (1, 0.99, 1), (1000, 0.99, 10)],
)  # fmt: skip
def test_tail_count_is_exact_on_the_decimal_level(n: int, level: float, k: int) -> None:
    assert tail_count(n, level) == k


def test_historical_estimators_match_numpy_inverted_cdf() -> None:
    rng = np.random.default_rng(7)
    for n in (20, 40, 100, 101, 250):
        returns = rng.standard_t(4, n) * 0.01
        for level, tail in TAIL.items():
            k = tail_count(n, level)
            assert historical_var(list(returns), level) == -np.quantile(
                returns, tail, method="inverted_cdf"
            )
            assert math.isclose(
                historical_es(list(returns), level), -np.sort(returns)[:k].mean(), rel_tol=REL
            )


def test_normal_estimators_closed_forms() -> None:
    assert math.isclose(normal_var(0.0, 1.0, 0.99), 2.3263478740408408, rel_tol=1e-15)
    assert math.isclose(normal_es(0.0, 1.0, 0.975), 2.3378027922013, rel_tol=1e-12)
    assert math.isclose(normal_var(0.001, 0.02, 0.95), 0.02 * Z[0.95] - 0.001, rel_tol=1e-14)


# -- engine behaviour -------------------------------------------------------------------

T0 = int(datetime(2021, 3, 1, 16, tzinfo=NY).timestamp()) * SEC
DAY = 24 * HOUR


def small_engine(**overrides: object) -> RiskMetricsEngine:
    config = RiskConfig(window=5, min_returns=3, **overrides)
    return RiskMetricsEngine("acct", config)


def test_first_observation_has_no_return_and_no_statistics() -> None:
    snap = small_engine().on_equity(T0, px(100_000))
    assert (snap.period_pnl, snap.period_return, snap.returns) == (None, None, 0)
    assert (snap.daily_pnl, snap.day_start_equity, snap.peak, snap.drawdown) == (
        0, px(100_000), px(100_000), 0,
    )  # fmt: skip
    assert snap.tail == () and snap.volatility is None and snap.alerts == ()
    assert snap.session_day == date(2021, 3, 1)


def test_statistics_start_at_min_returns_and_window_rolls() -> None:
    engine = small_engine()
    values = [100, 101, 99, 103, 100, 98, 104, 97]
    snaps = [engine.on_equity(T0 + i * DAY, px(v * 1000)) for i, v in enumerate(values)]
    assert [s.returns for s in snaps] == [0, 1, 2, 3, 4, 5, 5, 5]
    assert [s.volatility is not None for s in snaps] == [False] * 3 + [True] * 5
    assert len(snaps[3].tail) == 9
    expected = [(b - a) / a for a, b in zip(values[-6:-1], values[-5:], strict=True)]
    assert engine.returns == pytest.approx(expected, rel=1e-15)


def test_late_observation_is_ignored_and_counted() -> None:
    engine = small_engine()
    engine.on_equity(T0, px(100))
    current = engine.on_equity(T0 + DAY, px(90))
    late = engine.on_equity(T0 + DAY - 1, px(1))
    assert late == replace(current, alerts=(), late=True)
    assert engine.late_observations == 1
    assert engine.on_equity(T0 + DAY, px(95)).period_pnl == px(5)  # equal time is accepted


def test_non_positive_equity_records_no_return_and_no_tail() -> None:
    engine = small_engine()
    for i, v in enumerate([100, 110, 105, 120]):
        engine.on_equity(T0 + i * DAY, px(v))
    below = engine.on_equity(T0 + 4 * DAY, px(-5))
    assert below.tail == () and below.volatility is not None
    assert below.drawdown_fraction == 1.0 and below.drawdown == px(125)
    after = engine.on_equity(T0 + 5 * DAY, px(50))
    assert after.returns == below.returns  # no return from a negative equity
    assert after.period_return is None and after.period_pnl == px(55)
    assert after.max_drawdown_fraction == 1.0


def test_daily_loss_alerts_fire_once_per_level_per_day() -> None:
    engine = small_engine(daily_loss_limit=px(1000), drawdown_alert=0.5)
    base = T0 + 2 * HOUR  # 18:00 New York
    steps = [10_000, 9_300, 9_150, 9_500, 9_100, 8_900, 8_950, 8_000]
    alerts = [engine.on_equity(base + i * 60 * SEC, px(v)).alerts for i, v in enumerate(steps)]
    kinds = [[a.kind for a in group] for group in alerts]
    assert kinds == [
        [], [], [AlertKind.DAILY_LOSS_WARNING], [], [], [AlertKind.DAILY_LOSS_BREACH], [], [],
    ]  # fmt: skip
    warning = alerts[2][0]
    assert warning.severity == AlertSeverity.WARNING and alerts[5][0].severity == "CRITICAL"
    assert (warning.value, warning.fraction, warning.level) == (px(850), 0.85, 0.8)
    assert warning.key == "acct|DAILY_LOSS_WARNING|2021-03-01"
    assert "85.0%" in warning.message
    # next session day: measured from the last equity of the previous one, re-armed
    next_day = engine.on_equity(base + 6 * HOUR, px(7_100))  # 00:00 New York, 2021-03-02
    assert next_day.session_day == date(2021, 3, 2)
    assert (next_day.day_start_equity, next_day.daily_pnl) == (px(8_000), px(-900))
    assert [a.kind for a in next_day.alerts] == [AlertKind.DAILY_LOSS_WARNING]


def test_a_jump_past_both_levels_fires_both() -> None:
    engine = small_engine(daily_loss_limit=px(1000), drawdown_alert=0.5)
    engine.on_equity(T0, px(5000))
    kinds = [a.kind for a in engine.on_equity(T0 + 1, px(3999)).alerts]
    assert kinds == [AlertKind.DAILY_LOSS_WARNING, AlertKind.DAILY_LOSS_BREACH]


def test_drawdown_alert_once_per_crossing_and_rearms() -> None:
    engine = small_engine(drawdown_alert=0.1)
    values = [100, 95, 90, 85, 91, 89, 92, 95, 80]  # 10 % exactly at 90: a crossing
    fired = [
        [(a.kind, a.key) for a in engine.on_equity(T0 + i * DAY, px(v)).alerts]
        for i, v in enumerate(values)
    ]
    assert [i for i, f in enumerate(fired) if f] == [2, 5, 8]
    assert fired[8] == [(AlertKind.DRAWDOWN, "acct|DRAWDOWN|3")]


def test_snapshot_restore_with_a_new_config() -> None:
    engine = small_engine()
    for i, v in enumerate([100, 101, 102, 99, 98, 97, 103]):
        engine.on_equity(T0 + i * DAY, px(v))
    data = orjson.loads(orjson.dumps(engine.snapshot()))
    same = RiskMetricsEngine.restore(data)
    assert same.config == engine.config and same.current() == engine.current()
    smaller = RiskMetricsEngine.restore(data, RiskConfig(window=3, min_returns=2))
    assert smaller.returns == engine.returns[-3:]
    with pytest.raises(ValueError, match="version"):
        RiskMetricsEngine.restore({**data, "version": 99})


@pytest.mark.parametrize(
    "bad",
    [{"window": 1}, {"min_returns": 1}, {"min_returns": 300}, {"levels": ()},
     {"levels": (0.95, 1.0)}, {"levels": (0.99, 0.99)}, {"ewma_lambda": 1.0},
     {"daily_loss_limit": 0}, {"daily_loss_warning": 1.5}, {"drawdown_alert": 0.0},
     {"timezone": "Mars/Olympus"}, {"day_cut": "25:00"}, {"day_cut": "17:00+01:00"}],
)  # fmt: skip
def test_config_is_validated(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RiskConfig(**bad)


def test_config_round_trips_through_json() -> None:
    config = RiskConfig(levels=(0.9, 0.99), day_cut="17:00", timezone="Europe/London")
    assert RiskConfig.from_dict(orjson.loads(orjson.dumps(config.to_dict()))) == config


# -- the day cut across DST in America/New_York -----------------------------------------


def utc_ns(*args: int) -> int:
    return int(datetime(*args, tzinfo=ZoneInfo("UTC")).timestamp()) * SEC


def test_midnight_cut_across_spring_forward_and_fall_back() -> None:
    calendar = SessionCalendar("America/New_York", "00:00")
    # 2021-03-14: EST (UTC-5) until 02:00, then EDT (UTC-4): a 23-hour day
    assert calendar.start_ns(date(2021, 3, 14)) == utc_ns(2021, 3, 14, 5)
    assert calendar.start_ns(date(2021, 3, 15)) == utc_ns(2021, 3, 15, 4)
    # 2021-11-07: EDT until 02:00, then EST: a 25-hour day
    assert calendar.start_ns(date(2021, 11, 7)) == utc_ns(2021, 11, 7, 4)
    assert calendar.start_ns(date(2021, 11, 8)) == utc_ns(2021, 11, 8, 5)
    assert calendar.day_of(utc_ns(2021, 3, 15, 4) - 1) == date(2021, 3, 14)
    assert calendar.day_of(utc_ns(2021, 3, 15, 4)) == date(2021, 3, 15)
    assert calendar.day_of(utc_ns(2021, 11, 8, 4, 30)) == date(2021, 11, 7)  # 23:30 EST
    assert calendar.day_of(utc_ns(2021, 11, 8, 5)) == date(2021, 11, 8)


def test_evening_cut_moves_with_the_clock() -> None:
    calendar = SessionCalendar("America/New_York", "17:00")
    assert calendar.start_ns(date(2021, 3, 12)) == utc_ns(2021, 3, 12, 22)  # 17:00 EST
    assert calendar.start_ns(date(2021, 3, 14)) == utc_ns(2021, 3, 14, 21)  # 17:00 EDT
    assert calendar.day_of(utc_ns(2021, 3, 15, 14)) == date(2021, 3, 14)  # Monday 10:00
    assert calendar.day_of(utc_ns(2021, 3, 15, 21)) == date(2021, 3, 15)


def test_cut_in_the_gap_or_the_repeated_hour_follows_fold_zero() -> None:
    gap = SessionCalendar("America/New_York", "02:30")  # does not exist on 2021-03-14
    assert gap.start_ns(date(2021, 3, 14)) == utc_ns(2021, 3, 14, 7, 30)  # 03:30 EDT
    repeated = SessionCalendar("America/New_York", "01:30")  # twice on 2021-11-07
    first = utc_ns(2021, 11, 7, 5, 30)  # 01:30 EDT, the first occurrence
    assert repeated.start_ns(date(2021, 11, 7)) == first
    instants = range(first - HOUR, first + 3 * HOUR, 60 * SEC)
    days = [repeated.day_of(t) for t in instants]
    assert days == sorted(days) and set(days) == {date(2021, 11, 6), date(2021, 11, 7)}
    assert repeated.day_of(first + HOUR) == date(2021, 11, 7)  # 01:30 EST: same day


def test_daily_pnl_across_the_spring_forward_night() -> None:
    engine = small_engine(daily_loss_limit=px(100))
    before = engine.on_equity(utc_ns(2021, 3, 14, 4, 59), px(1000))  # 23:59 EST, 03-13
    after = engine.on_equity(utc_ns(2021, 3, 14, 5, 1), px(950))  # 00:01 EST, 03-14
    late_evening = engine.on_equity(utc_ns(2021, 3, 15, 3, 59), px(900))  # 23:59 EDT
    next_day = engine.on_equity(utc_ns(2021, 3, 15, 4), px(880))  # 00:00 EDT, 03-15
    assert [s.session_day.day for s in (before, after, late_evening, next_day)] == [13, 14, 14, 15]
    assert [s.daily_pnl for s in (after, late_evening, next_day)] == [px(-50), px(-100), px(-20)]
    assert [a.kind for a in after.alerts] == []  # 50 % of the limit
    assert [a.kind for a in late_evening.alerts] == [
        AlertKind.DAILY_LOSS_WARNING,
        AlertKind.DAILY_LOSS_BREACH,
    ]


# -- properties -------------------------------------------------------------------------

equity_steps = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=30 * HOUR),  # time to the next observation
        st.integers(min_value=-3 * 10**13, max_value=3 * 10**13),  # equity change, raw
    ),
    min_size=1,
    max_size=60,
)
start_equity = st.integers(min_value=1, max_value=2 * 10**14)
PROPERTY_CONFIG = RiskConfig(window=8, min_returns=3, daily_loss_limit=px(10_000))


def feed(steps: list[tuple[int, int]], first: int) -> list[tuple[int, int]]:
    points, t, e = [], T0, first
    for dt, de in steps:
        points.append((t, e))
        t, e = t + dt, e + de
    return points


@settings(max_examples=200, deadline=None)
@given(equity_steps, start_equity)
def test_drawdown_bounds_and_monotone_maxima(steps: list[tuple[int, int]], first: int) -> None:
    engine = RiskMetricsEngine("p", PROPERTY_CONFIG)
    previous: RiskSnapshot | None = None
    for t, e in feed(steps, first):
        snap = engine.on_equity(t, e)
        assert 0.0 <= snap.drawdown_fraction <= 1.0
        assert 0.0 <= snap.max_drawdown_fraction <= 1.0
        assert snap.drawdown_fraction <= snap.max_drawdown_fraction
        assert 0 <= snap.drawdown <= snap.max_drawdown and snap.peak >= e
        if previous is not None:
            assert snap.max_drawdown_fraction >= previous.max_drawdown_fraction
            assert snap.max_drawdown >= previous.max_drawdown
        previous = snap


@settings(max_examples=200, deadline=None)
@given(equity_steps, start_equity)
def test_es_is_at_least_var_at_the_same_level(steps: list[tuple[int, int]], first: int) -> None:
    engine = RiskMetricsEngine("p", PROPERTY_CONFIG)
    for t, e in feed(steps, first):
        for estimate in engine.on_equity(t, e).tail:
            assert estimate.es_fraction >= estimate.var_fraction
            assert estimate.es >= estimate.var


@settings(max_examples=150, deadline=None)
@given(equity_steps, start_equity, st.data())
def test_snapshot_restore_anywhere_equals_an_uninterrupted_run(
    steps: list[tuple[int, int]], first: int, data: st.DataObject
) -> None:
    points = feed(steps, first)
    if len(points) > 3:  # with a late one somewhere
        late = data.draw(st.integers(min_value=2, max_value=len(points) - 1))
        points.insert(late, (points[late - 1][0] - 1, 7))
    cut = data.draw(st.integers(min_value=0, max_value=len(points)))
    uninterrupted = RiskMetricsEngine("p", PROPERTY_CONFIG)
    expected = [uninterrupted.on_equity(t, e) for t, e in points]
    engine = RiskMetricsEngine("p", PROPERTY_CONFIG)
    got = [engine.on_equity(t, e) for t, e in points[:cut]]
    engine = RiskMetricsEngine.restore(orjson.loads(orjson.dumps(engine.snapshot())))
    got += [engine.on_equity(t, e) for t, e in points[cut:]]
    assert got == expected
    assert engine.snapshot() == uninterrupted.snapshot()


@settings(max_examples=200, deadline=None)
@given(equity_steps, start_equity)
def test_daily_loss_alerts_once_per_level_per_day(steps: list[tuple[int, int]], first: int) -> None:
    engine = RiskMetricsEngine("p", PROPERTY_CONFIG)
    limit = PROPERTY_CONFIG.daily_loss_limit
    snaps = [engine.on_equity(t, e) for t, e in feed(steps, first)]
    fired = Counter(
        (s.session_day, a.kind) for s in snaps for a in s.alerts if a.kind != AlertKind.DRAWDOWN
    )
    assert all(count == 1 for count in fired.values())
    for kind, threshold in (
        (AlertKind.DAILY_LOSS_WARNING, limit * 4 // 5),
        (AlertKind.DAILY_LOSS_BREACH, limit),
    ):
        for day in {s.session_day for s in snaps}:
            today = [s for s in snaps if s.session_day == day]
            reached = [s for s in today if s.daily_loss >= threshold]
            firing = [s for s in today if any(a.kind == kind for a in s.alerts)]
            assert firing == reached[:1]


def test_trackers_refuse_bad_input() -> None:
    with pytest.raises(ValueError):
        DrawdownTracker(threshold=Fraction(0))
    with pytest.raises(ValueError, match="no equity"):
        DrawdownTracker(threshold=Fraction(1, 2)).current()
    tracker = DailyLossTracker(px(10), Fraction(4, 5))
    tracker.update(date(2021, 3, 2), px(100))
    with pytest.raises(ValueError, match="before"):
        tracker.update(date(2021, 3, 1), px(100))
