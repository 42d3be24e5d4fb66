"""Strategy plugins: each shipped strategy against an independent vectorised implementation
over the real SPY day, snapshot/restore anywhere, loading by name / entry point / dotted path,
and parameter errors that name the parameter.

The vectorised side knows only the rules as documented (bars as the stage closes them, each
strategy's rule) and computes with pandas/numpy on whole columns; exact strategies are
computed in int64 on prices in 1e-4 units (SPY's tick), the EMA in float64 (pandas ``ewm``).
"""

from __future__ import annotations

import importlib
import json
import random
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from conftest import shared_file
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.config import load_settings
from producers.replay import open_file
from producers.synthetic import GbmTradeGenerator
from schemas.fixedpoint import to_fixed
from schemas.models import Signal, SignalDirection, Trade
from streams.logic.orders import signal_to_order
from streams.logic.sma import SmaCrossover
from streams.logic.strategies import (
    ENTRY_POINT_GROUP,
    Bar,
    Emission,
    Strategy,
    StrategyError,
    StrategyParams,
    StrategyRunner,
    Target,
    available_strategies,
    configure,
    load_strategy,
)
from streams.logic.strategies.donchian_breakout import DonchianBreakoutStrategy
from streams.logic.strategies.ema_crossover import EmaCrossoverStrategy
from streams.logic.strategies.sma_crossover import SmaCrossoverStrategy, adopt_sma_machine
from streams.logic.strategies.zscore_mean_reversion import ZScoreMeanReversionStrategy

SPY_TRADES = "Lean/Data/equity/usa/tick/spy/20131007_trade.zip"
MINUTE_MS = 60_000
MINUTE_NS = MINUTE_MS * 1_000_000
TICK = 100_000  # raw units (1e-9) per 1e-4, SPY's price increment
QUANTITY = "100"

# (strategy, params) run over the day; the long-only variant is the same SMA rule.
CASES: dict[str, tuple[str, dict[str, str]]] = {
    "sma": ("sma-crossover", {"fast": "5", "slow": "20"}),
    "sma-long-only": ("sma-crossover", {"fast": "5", "slow": "20", "long_only": "true"}),
    "ema": ("ema-crossover", {"fast": "12", "slow": "26"}),
    "donchian": ("donchian-breakout", {"window": "20"}),
    "zscore": ("zscore-mean-reversion", {"window": "20", "entry": "2", "exit": "0.5"}),
}


# -- data -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spy(shared_data: Path) -> list[tuple[int, int, int]]:
    """(price, size, ts_event) of every SPY trade of 2013-10-07, in file order."""
    path = shared_file(shared_data, SPY_TRADES)
    trades = [(r.price, r.size, r.ts_event) for r in open_file(path) if isinstance(r, Trade)]
    assert len(trades) == 250_601
    return trades


def run(
    name: str,
    params: Mapping[str, str],
    trades: list[tuple[int, int, int]],
    cuts: list[int] = (),  # type: ignore[assignment]
    interval_ms: int = MINUTE_MS,
) -> tuple[list[Emission], StrategyRunner]:
    """The plugin over ``trades``; at each cut the runner is snapshotted to JSON text and a
    new one restored from it carries on."""
    configured = configure(name, {**params, "quantity": QUANTITY})
    runner = StrategyRunner(configured, interval_ms)
    out: list[Emission] = []
    start = 0
    for cut in [*sorted(cuts), len(trades)]:
        for price, size, ts in trades[start:cut]:
            out.extend(runner.on_trade(price, size, ts).emissions)
        if cut < len(trades):
            bar, strategy = (
                orjson.loads(orjson.dumps(s)) for s in (runner.bar_state(), runner.strategy_state())
            )
            runner = StrategyRunner(configured, interval_ms)
            runner.restore(strategy, bar)
        start = cut
    return out, runner


def orders_of(emissions: list[Emission], symbol: str = "SPY") -> list[tuple[str, int, int]]:
    """(side, quantity, ts_event) of the orders the emissions lead to, as the stage makes them."""
    position, out = 0, []
    for e in emissions:
        signal = Signal(
            signal_id=f"t-{symbol}-{e.sequence}",
            strategy_id="t",
            symbol=symbol,
            direction=e.direction,
            price=e.price,
            fast_value=e.values[0],
            slow_value=e.values[1],
            ts_event=e.ts_event,
            ts_init=0,
        )
        order = signal_to_order(
            signal, current_position=position, quantity=to_fixed(QUANTITY), ts_init=0
        )
        if order is not None:
            position += order.quantity if order.side == "BUY" else -order.quantity
            out.append((order.side.value, order.quantity, order.ts_event))
    return out


# -- the independent, vectorised side ------------------------------------------------------


def minute_bars(trades: list[tuple[int, int, int]]) -> pd.DataFrame:
    """Bars as the stage closes them: per epoch-aligned minute with trades, high/low over
    its trades, close the last in event time (file order breaks ties), closed at the first
    trade of the next minute with trades (the day's last minute never closes). Prices in 1e-4."""
    df = pd.DataFrame(trades, columns=["price", "size", "ts"])
    assert df["ts"].is_monotonic_increasing, "the vectorised bars assume no late trades"
    assert (df["price"] % TICK == 0).all()
    df["price"] //= TICK
    df["bucket"] = df["ts"] - df["ts"] % MINUTE_NS
    bars = df.groupby("bucket", sort=True).agg(
        high=("price", "max"), low=("price", "min"), close=("price", "last"), first=("ts", "min")
    )
    bars["ts_close"] = bars["first"].shift(-1, fill_value=0)  # int64 throughout
    bars = bars.iloc[:-1].copy()
    return bars.reset_index().rename(columns={"bucket": "start"})


def rolling_sum(values: np.ndarray, n: int) -> np.ndarray:
    """Exact int64 sums of the last ``n`` values (NaN-free: invalid positions are 0)."""
    c = np.concatenate([[0], np.cumsum(values, dtype=np.int64)])
    out = np.zeros(len(values), dtype=np.int64)
    out[n - 1 :] = c[n:] - c[:-n]
    return out


def crossings(relation: pd.Series, long_only: bool) -> pd.Series:
    """Targets (+1 / -1 / 0) at flips of a relation (+1 / -1, 0 = equal, NaN = undefined):
    equality keeps the previous relation, the first one is a baseline."""
    rel = relation.replace(0, np.nan).ffill()
    flip = rel.ne(rel.shift()) & rel.shift().notna() & rel.notna()
    down = 0 if long_only else -1
    return pd.Series(np.where(rel > 0, 1, down), index=relation.index).where(flip)


def vec_sma(bars: pd.DataFrame, fast: int, slow: int, long_only: bool = False) -> pd.Series:
    close = bars["close"].to_numpy(np.int64)
    lhs = rolling_sum(close, fast) * slow
    rhs = rolling_sum(close, slow) * fast
    rel = pd.Series(np.sign(lhs - rhs), dtype=float).where(bars.index >= slow - 1)
    return crossings(rel, long_only)


def vec_ema(bars: pd.DataFrame, fast: int, slow: int) -> tuple[pd.Series, pd.Series]:
    close = bars["close"].astype(float) * TICK  # raw units
    f = close.ewm(span=fast, adjust=False).mean()
    s = close.ewm(span=slow, adjust=False).mean()
    diff = (f - s).where(bars.index >= slow - 1)
    return crossings(np.sign(diff), long_only=False), diff


def vec_donchian(bars: pd.DataFrame, window: int) -> pd.Series:
    upper = bars["high"].rolling(window).max().shift(1)
    lower = bars["low"].rolling(window).min().shift(1)
    sig = pd.Series(np.nan, index=bars.index)
    sig[bars["close"] > upper] = 1
    sig[bars["close"] < lower] = -1
    return sig


def vec_zscore(bars: pd.DataFrame, window: int, entry: tuple[int, int], exit_: tuple[int, int]):
    """Path-dependent hysteresis, vectorised: entries (|z| > entry) set ±1 and |z| <= exit
    sets 0 whatever the position; between them, a zone that ends the current side (z below
    the mean ends a SHORT, above it a LONG) sets 0 from there until the next decisive bar."""
    n = window
    close = bars["close"].to_numpy(np.int64)
    s = rolling_sum(close, n)
    x = n * rolling_sum(close * close, n) - s * s
    d = n * close - s
    valid = (bars.index >= n - 1) & (x != 0)
    d2n1, nx = d * d * (n - 1), n * x
    (pe, qe), (px_, qx) = entry, exit_
    past_entry = d2n1 * qe * qe > pe * pe * nx
    within_exit = d2n1 * qx * qx <= px_ * px_ * nx
    decisive = pd.Series(np.nan, index=bars.index)
    decisive[valid & past_entry & (d < 0)] = 1
    decisive[valid & past_entry & (d > 0)] = -1
    decisive[valid & within_exit] = 0
    group = decisive.notna().cumsum()
    side = decisive.ffill().fillna(0)
    ends = valid & ~past_entry & ~within_exit & (((d < 0) & (side == -1)) | ((d > 0) & (side == 1)))
    ended = pd.Series(ends, index=bars.index).groupby(group).cummax()
    return side.where(~ended, 0)


def vec_emissions(bars: pd.DataFrame, targets: pd.Series) -> list[tuple[int, int, int]]:
    """(target position, bar start, ts_close) where the target changes (FLAT at first)."""
    position = targets.ffill().fillna(0).astype(int)
    change = position.ne(position.shift(fill_value=0))
    q = to_fixed(QUANTITY)
    return [
        (int(p) * q, int(b), int(t))
        for p, b, t in zip(
            position[change], bars["start"][change], bars["ts_close"][change], strict=True
        )
    ]


def vectorised(case: str, bars: pd.DataFrame) -> pd.Series:
    _, p = CASES[case]
    if case.startswith("sma"):
        return vec_sma(bars, int(p["fast"]), int(p["slow"]), p.get("long_only") == "true")
    if case == "ema":
        return vec_ema(bars, int(p["fast"]), int(p["slow"]))[0]
    if case == "donchian":
        return vec_donchian(bars, int(p["window"]))
    return vec_zscore(bars, int(p["window"]), (2, 1), (1, 2))


def vec_orders(emissions: list[tuple[int, int, int]]) -> list[tuple[str, int, int]]:
    position, out = 0, []
    for target, _, ts in emissions:
        delta = target - position
        if delta:
            out.append(("BUY" if delta > 0 else "SELL", abs(delta), ts))
        position = target
    return out


# -- the plugins against the vectorised implementations -------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_plugin_signals_and_orders_equal_the_vectorised_implementation_on_spy(
    spy: list[tuple[int, int, int]], case: str
) -> None:
    name, params = CASES[case]
    emissions, _ = run(name, params, spy)
    bars = minute_bars(spy)
    expected = vec_emissions(bars, vectorised(case, bars))
    got = [(e.target_position, e.bar_start_ns, e.ts_event) for e in emissions]
    assert len(got) >= 3, f"{case}: too few signals to mean anything ({len(got)})"
    assert got == expected
    assert orders_of(emissions) == vec_orders(expected)
    assert [e.sequence for e in emissions] == list(range(1, len(emissions) + 1))
    closes = dict(zip(bars["start"], bars["close"] * TICK, strict=True))
    assert all(e.price == closes[e.bar_start_ns] for e in emissions)  # the bar's close


def test_ema_decisions_are_far_from_float_rounding(spy: list[tuple[int, int, int]]) -> None:
    """The float64 reference agrees by margin, not by luck: at every bar the EMAs differ by
    far more than float error, and the plugin's exact EMAs match pandas' closely."""
    bars = minute_bars(spy)
    _, diff = vec_ema(bars, 12, 26)
    assert diff.dropna().abs().min() > 1e3  # raw units (1e-6 $), float error is ~1e-4
    emissions, _ = run("ema-crossover", {"fast": "12", "slow": "26"}, spy)
    close = bars["close"].astype(float) * TICK
    f = close.ewm(span=12, adjust=False).mean()
    by_start = dict(zip(bars["start"], f, strict=True))
    assert all(abs(e.values[0] - by_start[e.bar_start_ns]) < 1 for e in emissions)


def test_sma_plugin_reproduces_the_sma_machine_with_late_trades() -> None:
    """sma-crossover gives exactly SmaCrossover's crossovers (the signals restart test and
    earlier runs rely on it), late and out-of-order trades included."""
    gen = GbmTradeGenerator(("X",), seed=3, start_ns=1_700_000_000_000_000_000,
                            mean_interval_ms=0.8, sigma_annual=2.0)  # fmt: skip
    trades = []
    for i in range(40_000):
        t = gen.next_trade()
        ts = t.ts_event - (i % 5 + 1) * 9_000_000 if i % 37 == 36 else t.ts_event
        trades.append((t.price, t.size, ts))
    machine = SmaCrossover("X", bar_interval_ms=20, fast=3, slow=8)
    expected = []
    for price, _, ts in trades:
        c = machine.on_trade(price, ts).crossover
        if c is not None:
            expected.append((c.direction, c.price, (c.fast, c.slow), c.ts_event, c.bar_start_ns,
                             c.sequence))  # fmt: skip
    emissions, runner = run("sma-crossover", {"fast": "3", "slow": "8"}, trades, interval_ms=20)
    got = [(e.direction, e.price, e.values, e.ts_event, e.bar_start_ns, e.sequence)
           for e in emissions]  # fmt: skip
    assert len(expected) > 100 and got == expected
    assert runner.late_trades == machine.late_trades > 100


def test_state_of_the_sma_machine_is_taken_over(spy: list[tuple[int, int, int]]) -> None:
    """The signals stage's state from before plugins (sma + bar) continues seamlessly."""
    half = len(spy) // 2
    straight, _ = run("sma-crossover", {"fast": "5", "slow": "20"}, spy)
    machine = SmaCrossover("SPY", bar_interval_ms=MINUTE_MS, fast=5, slow=20)
    for price, _, ts in spy[:half]:
        machine.on_trade(price, ts)
    runner = StrategyRunner(configure("sma-crossover", {"fast": "5", "slow": "20"}), MINUTE_MS)
    assert adopt_sma_machine(runner, machine.sma_state(), machine.bar_state())
    rest = [e for p, s, ts in spy[half:] for e in runner.on_trade(p, s, ts).emissions]
    assert [(e.direction, e.ts_event, e.sequence) for e in rest] == [
        (e.direction, e.ts_event, e.sequence) for e in straight if e.sequence > machine.sequence
    ]


# -- snapshot / restore ---------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_restoring_a_snapshot_anywhere_gives_the_same_outputs(
    spy: list[tuple[int, int, int]], case: str, data: st.DataObject
) -> None:
    name, params = CASES[case]
    straight, end = _straight(spy, case)
    cuts = data.draw(st.lists(st.integers(0, len(spy)), min_size=1, max_size=3, unique=True))
    restored, end_restored = run(name, params, spy, cuts=cuts)
    assert restored == straight
    assert end_restored.bar_state() == end.bar_state()
    assert end_restored.strategy_state() == end.strategy_state()


_STRAIGHT: dict[str, tuple[list[Emission], StrategyRunner]] = {}


def _straight(spy: list[tuple[int, int, int]], case: str) -> tuple[list[Emission], StrategyRunner]:
    if case not in _STRAIGHT:
        _STRAIGHT[case] = run(*CASES[case], spy)
    return _STRAIGHT[case]


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_trades_give_byte_identical_orders(spy: list[tuple[int, int, int]], case: str) -> None:
    name, params = CASES[case]
    cut = random.Random(case).randrange(len(spy))
    runs = [run(name, params, spy)[0], run(name, params, spy, cuts=[cut])[0]]
    encoded = [orjson.dumps(orders_of(r)) + orjson.dumps([e.values for e in r]) for r in runs]
    assert encoded[0] == encoded[1]


# -- loading --------------------------------------------------------------------------------


class BuyEveryOtherBar(Strategy):
    """A plugin defined here, loaded by its dotted path: LONG on even bars, FLAT on odd."""

    class Params(StrategyParams):
        every: int = 2

    def __init__(self, params: Params) -> None:
        super().__init__(params)
        self.every = params.every
        self.bars = 0

    def on_bar(self, bar: Bar) -> Target | None:
        self.bars += 1
        up = self.bars % self.every == 0
        return Target(SignalDirection.LONG if up else SignalDirection.FLAT, (bar.high, bar.low))

    def snapshot(self) -> dict[str, Any]:
        return {"bars": self.bars}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.bars = int(state["bars"])


class NotAStrategy:
    pass


SHIPPED = {
    "sma-crossover": SmaCrossoverStrategy,
    "ema-crossover": EmaCrossoverStrategy,
    "donchian-breakout": DonchianBreakoutStrategy,
    "zscore-mean-reversion": ZScoreMeanReversionStrategy,
}


def test_shipped_strategies_load_by_name_from_the_entry_point_group() -> None:
    registered = available_strategies()
    assert set(SHIPPED) <= set(registered), "reinstall: pip install -e . (entry points)"
    for name, cls in SHIPPED.items():
        assert load_strategy(name) is cls
        assert registered[name] == f"{cls.__module__}:{cls.__name__}"


def test_a_plugin_defined_in_a_module_loads_by_dotted_path() -> None:
    path = f"{__name__}:BuyEveryOtherBar"
    assert load_strategy(path) is BuyEveryOtherBar
    configured = configure(path, {"every": "3"})
    runner = StrategyRunner(configured, 1000)
    out = [e for i in range(10) for e in runner.on_trade(10, 1, i * 1_000_000_000).emissions]
    long, flat = SignalDirection.LONG, SignalDirection.FLAT
    # the 3rd, 6th, 9th bar (starting at 2, 5, 8 s) LONG, the others FLAT; only changes count
    assert [e.direction for e in out] == [long, flat, long, flat, long]
    assert [e.bar_start_ns // 1_000_000_000 for e in out] == [2, 3, 5, 6, 8]
    assert out[0].values == (10, 10)  # (high, low) of the bar, as the plugin chose


def test_a_user_package_adds_a_strategy_through_the_entry_point_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A distribution on sys.path (as `pip install` of a user's package makes one) with an
    entry point in the group: found by name, like the shipped ones."""
    (tmp_path / "user_strategies.py").write_text(
        textwrap.dedent(
            """
            from streams.logic.strategies import Strategy, Target
            from schemas.models import SignalDirection

            class AlwaysShort(Strategy):
                def on_bar(self, bar):
                    return Target(SignalDirection.SHORT)
                def snapshot(self):
                    return {}
                def restore(self, state):
                    pass
            """
        )
    )
    dist = tmp_path / "user_strategies-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: user-strategies\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nalways-short = user_strategies:AlwaysShort\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    assert available_strategies()["always-short"] == "user_strategies:AlwaysShort"
    cls = load_strategy("always-short")
    assert cls.__name__ == "AlwaysShort" and cls.__module__ == "user_strategies"
    runner = StrategyRunner(configure("always-short", {}), 1000)
    runner.on_trade(10, 1, 0)
    (emission,) = runner.on_trade(11, 1, 1_000_000_000).emissions
    assert emission.target_position == -to_fixed("100")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("no-such-strategy", "unknown strategy 'no-such-strategy'.*sma-crossover"),
        ("no_such_module:Thing", "cannot be imported"),
        (f"{__name__}:Missing", "cannot be imported"),
        (f"{__name__}:NotAStrategy", "not a Strategy subclass"),
    ],
)
def test_a_strategy_that_cannot_be_loaded_is_a_clear_error(name: str, message: str) -> None:
    with pytest.raises(StrategyError, match=message):
        load_strategy(name)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("sma-crossover", {"fsat": "3"}, "unknown parameter 'fsat'"),
        ("sma-crossover", {"fast": "ten"}, "parameter 'fast'.*'ten'"),
        ("sma-crossover", {"fast": "30", "slow": "10"}, "fast \\(30\\) must be smaller"),
        ("sma-crossover", {"long_only": "maybe"}, "parameter 'long_only'"),
        ("ema-crossover", {"slow": "1"}, "parameter 'slow'"),
        ("donchian-breakout", {"window": "0"}, "parameter 'window'"),
        ("zscore-mean-reversion", {"exit": "3"}, "exit \\(3\\) must be smaller than entry"),
        ("zscore-mean-reversion", {"quantity": "-1"}, "parameter 'quantity'"),
    ],
)
def test_bad_params_fail_naming_the_parameter(
    name: str, params: dict[str, str], message: str
) -> None:
    with pytest.raises(StrategyError, match=message):
        configure(name, params)


def test_settings_choose_the_strategy_and_feed_sma_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from streams.signals import SignalsProcessor

    monkeypatch.setenv("OMNIQUANT_STRATEGY__FAST_WINDOW", "3")
    monkeypatch.setenv("OMNIQUANT_STRATEGY__SLOW_WINDOW", "8")
    monkeypatch.setenv("OMNIQUANT_STRATEGY__ORDER_QUANTITY", "7")
    processor = SignalsProcessor(load_settings())  # name defaults to sma-crossover
    assert processor.configured.name == "sma-crossover"
    assert processor.configured.params_json() == {
        "quantity": "7", "fast": 3, "slow": 8, "long_only": False}  # fmt: skip
    assert processor.quantity == to_fixed("7")

    monkeypatch.setenv("OMNIQUANT_STRATEGY__PARAMS", json.dumps({"fast": "10", "slow": 30,
                                                                 "long_only": True}))  # fmt: skip
    params = SignalsProcessor(load_settings()).configured.params_json()
    assert (params["fast"], params["slow"], params["long_only"]) == (10, 30, True)

    monkeypatch.setenv("OMNIQUANT_STRATEGY__NAME", "donchian-breakout")
    monkeypatch.setenv("OMNIQUANT_STRATEGY__PARAMS", '{"window": "15"}')
    configured = SignalsProcessor(load_settings()).configured
    assert configured.cls is DonchianBreakoutStrategy
    assert configured.params_json() == {"quantity": "7", "window": 15, "long_only": False}

    monkeypatch.setenv("OMNIQUANT_STRATEGY__PARAMS", '{"fast": "15"}')
    with pytest.raises(StrategyError, match=r"donchian-breakout.*unknown parameter 'fast'"):
        SignalsProcessor(load_settings())


def test_strategies_package_exports_exactly_its_names() -> None:
    import streams.logic.strategies as package

    assert sorted(package.__all__) == sorted(
        ["ENTRY_POINT_GROUP", "Bar", "Configured", "Emission", "RunnerStep", "Strategy",
         "StrategyError", "StrategyParams", "StrategyRunner", "Target",
         "available_strategies", "configure", "load_strategy"]
    )  # fmt: skip
