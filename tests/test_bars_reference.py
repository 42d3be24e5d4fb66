"""BarBuilder on real ticks (Lean/AlgoSeek, read by our replay parser) against two references.

1. An independent vectorised pandas resample of the same trades (1 s, 1 min, 5 min; SPY and
   IBM, 2013-10-07): every bar must be equal exactly — integers, and VWAP as an exact
   rational and at the 1e-9 unit rounded half-even.
2. The vendor's own minute bars (Lean ``minute/<sym>/<day>_trade.zip``, labelled by bar
   start): the share of vendor bars whose open/high/low/close all agree, and whose volume
   agrees, with every trade counted (ALL_TRADES) and with the vendor's sale-condition rule
   (LEAN). The rates are printed and held to floors just below what the rule reaches.
"""

from __future__ import annotations

import csv
import io
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction
from functools import cache
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest
from conftest import shared_file

from producers.replay import Skip, read_files
from schemas.models import Trade
from streams.logic.ohlcv import BarBuilder, BarRule, ClosedBar, TradeUse

LEAN = "Lean/Data/equity/usa"
NY = ZoneInfo("America/New_York")
INTERVALS_MS = (1_000, 60_000, 300_000)
REFERENCE_DAYS = {("spy", "20131007"), ("ibm", "20131007")}  # checked against pandas
DECI_CENT = 10**5  # raw fixed-point units per deci-cent
SHARE = 10**9  # raw fixed-point units per share

# Symbol-days with both tick and minute trade files (AIG has no 2013-10-08 tick file).
VENDOR_DAYS = [
    ("spy", "20131007"),
    ("spy", "20131008"),
    ("ibm", "20131007"),
    ("ibm", "20131008"),
    ("bac", "20131007"),
    ("bac", "20131008"),
    ("aig", "20131007"),
]
# LEAN rule floors (OHLC all equal %, volume equal %), a little below the rates reached.
LEAN_FLOORS = {
    ("spy", "20131007"): (99.5, 99.4),
    ("spy", "20131008"): (99.5, 99.5),
    ("ibm", "20131007"): (99.3, 99.3),
    ("ibm", "20131008"): (99.5, 99.0),
    ("bac", "20131007"): (99.4, 99.4),
    ("bac", "20131008"): (99.6, 99.2),
    ("aig", "20131007"): (99.5, 98.6),
}


@dataclass
class Replayed:
    """One tick file through BarBuilders, plus its trades as columns for pandas."""

    price: list[int] = field(default_factory=list)
    size: list[int] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    bars: dict[tuple[int, BarRule], dict[int, ClosedBar]] = field(default_factory=dict)
    builders: dict[tuple[int, BarRule], BarBuilder] = field(default_factory=dict)


@cache
def replay(root: Path, symbol: str, day: str) -> Replayed:
    path = shared_file(root, f"{LEAN}/tick/{symbol}/{day}_trade.zip")
    reference = (symbol, day) in REFERENCE_DAYS
    intervals = INTERVALS_MS if reference else (60_000,)
    configs = [(ms, BarRule.ALL_TRADES) for ms in intervals] + [(60_000, BarRule.LEAN)]
    if reference:
        configs.append((1_000, BarRule.LEAN))
    builders = {config: BarBuilder(symbol.upper(), config[0], rule=config[1]) for config in configs}
    out = Replayed(bars={config: {} for config in configs}, builders=builders)
    for record in read_files([path]):
        assert not isinstance(record, Skip), record
        assert isinstance(record, Trade)
        out.price.append(record.price)
        out.size.append(record.size)
        out.ts.append(record.ts_event)
        for config, builder in builders.items():
            outcome = builder.on_trade(record)
            assert outcome.use is not TradeUse.LATE  # the files are in time order
            out.bars[config].update((bar.start_ns, bar) for bar in outcome.closed)
    for config, builder in builders.items():
        out.bars[config].update((bar.start_ns, bar) for bar in builder.flush())
        assert builder.late_trades == 0
    return out


def half_even(fraction: Fraction) -> int:
    """Independent of the module's rounding: Decimal division quantized half-even."""
    exact = Decimal(fraction.numerator) / Decimal(fraction.denominator)
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def pandas_bars(data: Replayed, interval_ms: int) -> pd.DataFrame:
    """The same bars by a plain vectorised resample: open=first, high=max, low=min,
    close=last in event-time order (ties in arrival order), volume=sum, count, sum(p*s)."""
    price = np.array(data.price, dtype=np.int64)
    size = np.array(data.size, dtype=np.int64)
    # Lean prices are whole deci-cents and sizes whole shares: p*s in those units fits int64.
    assert (price % DECI_CENT == 0).all() and (size % SHARE == 0).all()
    frame = pd.DataFrame(
        {
            "price": price,
            "size": size,
            "pv": (price // DECI_CENT) * (size // SHARE),
            "arrival": np.arange(len(price)),
        },
        index=pd.to_datetime(np.array(data.ts, dtype=np.int64), unit="ns", utc=True),
    )
    frame = frame.rename_axis("ts").reset_index()
    frame = frame.sort_values(["ts", "arrival"], kind="stable").set_index("ts")
    grouped = frame.resample(f"{interval_ms}ms", origin="epoch", closed="left", label="left")
    bars = pd.DataFrame(
        {
            "open": grouped["price"].first(),
            "high": grouped["price"].max(),
            "low": grouped["price"].min(),
            "close": grouped["price"].last(),
            "volume": grouped["size"].sum(),
            "trade_count": grouped["price"].count(),
            "pv": grouped["pv"].sum(),
        }
    )
    bars = bars[bars["trade_count"] > 0]
    bars.index = bars.index.as_unit("ns").asi8
    return bars


@pytest.mark.parametrize("interval_ms", INTERVALS_MS)
@pytest.mark.parametrize("symbol", ["spy", "ibm"])
def test_bars_equal_an_independent_pandas_resample_exactly(
    shared_data: Path, symbol: str, interval_ms: int
) -> None:
    assert (symbol, "20131007") in REFERENCE_DAYS
    data = replay(shared_data, symbol, "20131007")
    ours = data.bars[(interval_ms, BarRule.ALL_TRADES)]
    expected = pandas_bars(data, interval_ms)
    assert list(expected.index) == sorted(ours)
    mismatches = []
    for start, row in zip(expected.index, expected.itertuples(index=False), strict=True):
        bar = ours[int(start)]
        pv_sum = int(row.pv) * DECI_CENT * SHARE
        want = (
            int(row.open),
            int(row.high),
            int(row.low),
            int(row.close),
            int(row.volume),
            int(row.trade_count),
            pv_sum,
            Fraction(pv_sum, int(row.volume)),
            half_even(Fraction(pv_sum, int(row.volume))),
        )
        got = (
            bar.open,
            bar.high,
            bar.low,
            bar.close,
            bar.volume,
            bar.trade_count,
            bar.pv_sum,
            Fraction(bar.pv_sum, bar.volume),
            bar.vwap,
        )
        if got != want:
            mismatches.append((start, got, want))
    assert mismatches == []
    assert sum(bar.trade_count for bar in ours.values()) == len(data.ts)
    print(f"\n{symbol.upper()} 2013-10-07 {interval_ms} ms: {len(ours)} bars equal to pandas")


def vendor_bars(root: Path, resolution: str, symbol: str, day: str) -> dict[int, tuple[int, ...]]:
    """Lean second/minute trade bars: bar start (ms since midnight New York) → raw o, h, l,
    c, v."""
    path = shared_file(root, f"{LEAN}/{resolution}/{symbol}/{day}_trade.zip")
    midnight = datetime.combine(
        date(int(day[:4]), int(day[4:6]), int(day[6:])), datetime.min.time()
    )
    with zipfile.ZipFile(path) as zf:
        (name,) = zf.namelist()
        text = zf.read(name).decode("ascii")
    bars = {}
    for ms, o, h, low, c, v in csv.reader(io.StringIO(text)):
        wall = (midnight + timedelta(milliseconds=int(ms))).replace(tzinfo=NY)
        delta = wall.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
        start = (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1_000
        prices = tuple(int(x) * DECI_CENT for x in (o, h, low, c))
        bars[start] = (*prices, int(v) * SHARE)
    return bars


def agreement(
    ours: dict[int, ClosedBar], vendor: dict[int, tuple[int, ...]]
) -> tuple[float, float, float, int]:
    """(% of vendor bars with o/h/l/c all equal, % with volume equal, % with volume equal
    once each price-less bar's volume is added to the bar before, our priced bars the
    vendor does not have)."""
    folded: dict[int, int] = {}  # the vendor's consolidator opens bars on priced trades only
    previous = None
    for start in sorted(ours):
        closed = ours[start]
        if closed.open is not None or previous is None:
            previous = start
            folded[start] = closed.volume
        else:
            folded[previous] += closed.volume
    ohlc = volume = volume_folded = 0
    for start, (o, h, low, c, v) in vendor.items():
        bar = ours.get(start)
        if bar is None:
            continue
        ohlc += (bar.open, bar.high, bar.low, bar.close) == (o, h, low, c)
        volume += bar.volume == v
        volume_folded += folded.get(start) == v
    extra = sum(1 for start, bar in ours.items() if bar.open is not None and start not in vendor)
    n = len(vendor)
    return 100 * ohlc / n, 100 * volume / n, 100 * volume_folded / n, extra


@pytest.mark.parametrize(("symbol", "day"), VENDOR_DAYS)
def test_lean_rule_reproduces_the_vendors_minute_bars(
    shared_data: Path, symbol: str, day: str
) -> None:
    vendor = vendor_bars(shared_data, "minute", symbol, day)
    data = replay(shared_data, symbol, day)
    every_trade = agreement(data.bars[(60_000, BarRule.ALL_TRADES)], vendor)
    lean = agreement(data.bars[(60_000, BarRule.LEAN)], vendor)
    builder = data.builders[(60_000, BarRule.LEAN)]
    unpriced = sum(1 for bar in data.bars[(60_000, BarRule.LEAN)].values() if bar.open is None)
    print(
        f"\n{symbol.upper()} {day} vendor minute bars {len(vendor)}:"
        f" ALL_TRADES OHLC {every_trade[0]:.1f} % volume {every_trade[1]:.1f} %"
        f" | LEAN OHLC {lean[0]:.1f} % volume {lean[1]:.1f} %"
        f" (price-less bars folded: {lean[2]:.1f} %)"
        f" | LEAN excluded {builder.excluded} volume-only {builder.volume_only}"
        f" | bars without price {unpriced}, priced bars the vendor lacks {lean[3]}"
    )
    ohlc_floor, volume_floor = LEAN_FLOORS[(symbol, day)]
    assert lean[0] >= ohlc_floor
    assert lean[1] >= volume_floor
    assert lean[0] > every_trade[0] and lean[1] >= every_trade[1]
    assert lean[3] == 0  # every bar we give a price to is one the vendor has
    assert "unknown_condition" not in builder.excluded  # the rule reads every code in the file


def test_lean_rule_reproduces_the_vendors_second_bars(shared_data: Path) -> None:
    """SPY 2013-10-07 second bars (the only second trade file): prices agree on all but the
    auction seconds; the volume gap is the vendor folding price-less seconds into the
    second before."""
    vendor = vendor_bars(shared_data, "second", "spy", "20131007")
    data = replay(shared_data, "spy", "20131007")
    every_trade = agreement(data.bars[(1_000, BarRule.ALL_TRADES)], vendor)
    lean = agreement(data.bars[(1_000, BarRule.LEAN)], vendor)
    print(
        f"\nSPY 20131007 vendor second bars {len(vendor)}:"
        f" ALL_TRADES OHLC {every_trade[0]:.2f} % volume {every_trade[1]:.2f} %"
        f" | LEAN OHLC {lean[0]:.2f} % volume {lean[1]:.2f} %"
        f" (price-less bars folded: {lean[2]:.2f} %) | priced bars the vendor lacks {lean[3]}"
    )
    assert lean[0] >= 99.95
    assert lean[1] >= 92.7
    assert lean[2] >= 99.95
    assert lean[3] == 0
