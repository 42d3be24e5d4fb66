"""`omniquant backtest` against a plain vectorised SMA crossover, and run against run.

The reference is pandas/numpy on the raw Lean file (no project code): 1-minute bars aligned
to the epoch; a bar closes when the first trade of a later minute arrives (its close: the
bar's last trade; the file is in time order, checked); SMA 10/30 of the closes compared
exactly on integer sums; the first strict relation is the baseline, each flip after it a
signal (equality keeps the relation); long-only, 100 shares: up-cross → buy to +100,
down-cross → sell to 0; the order is sent at that close and fills at the price of the trade
that closed the bar, at its event time. PnL: cash + position marked at the portfolio stage's
last mark (its rule: the first trade of each 1-second interval of event time).

The backtest runs the real stages (subprocesses) on the session's Kafka, Redis and a fresh
chDB. Durations on a 2-core box: see the test ids in the report (full day ≈ several minutes
under load; the determinism slice about half of that per run).
"""

from __future__ import annotations

import json
import os
import time
import zipfile
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest
from conftest import shared_file
from typer.testing import CliRunner

from core.config import load_settings
from core.topics import TopicNames
from omniquant.backtest import app, phases, read_topic
from schemas.fixedpoint import to_fixed
from schemas.models import Fill

# Minutes per run on 2 cores: outside the default suite (`make test-backtest` runs it).
pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.backtest]

SPY = "Lean/Data/equity/usa/tick/spy/20131007_trade.zip"
NS_PER_MINUTE = 60_000_000_000
MARK_NS = 1_000_000_000
RAW_PER_DECICENT = 100_000  # fixed point 1e-9 per 1e-4 USD
QUANTITY = 100
ARGS = [
    "--strategy", "sma-crossover", "--param", "fast=10", "--param", "slow=30",
    "--bar", "1m", "--quantity", "100", "--long-only", "--json",
]  # fmt: skip


# ---- the reference -------------------------------------------------------------------------
def spy_trades(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(event time ns UTC, price raw 1e-9) of every row, in file order."""
    with zipfile.ZipFile(path) as archive:
        frame = pd.read_csv(
            archive.open(archive.namelist()[0]),
            header=None,
            names=["ms", "price", "size", "exchange", "condition", "suspicious"],
            dtype={"ms": str},
        )
    day = datetime.strptime(path.name[:8], "%Y%m%d").replace(tzinfo=ZoneInfo("America/New_York"))
    midnight = int(day.timestamp()) * 1_000_000_000
    whole, _, frac = frame["ms"].str.partition(".").T.values
    frac_ns = pd.Series(frac).str.ljust(6, "0").replace("", "000000").astype("int64").values
    ts = midnight + whole.astype("int64") * 1_000_000 + frac_ns
    return ts, frame["price"].astype("int64").values * RAW_PER_DECICENT


def reference(
    ts: np.ndarray, price: np.ndarray, fast: int = 10, slow: int = 30
) -> tuple[list[tuple[str, int, int, int]], int]:
    """Fills (side, quantity, price raw, ts ns) and PnL (raw) of the long-only crossover."""
    assert (np.diff(ts) >= 0).all(), "the file is not in time order"
    minute = ts // NS_PER_MINUTE
    starts = np.flatnonzero(np.r_[True, minute[1:] != minute[:-1]])
    ends = np.r_[starts[1:], len(ts)] - 1
    closes = price[ends][:-1]  # the last bar never closes: no later trade
    close_at = starts[1:]  # index of the trade that closed each bar
    sums = np.r_[0, np.cumsum(closes)]
    at = np.arange(slow - 1, len(closes))
    fast_sum, slow_sum = sums[at + 1] - sums[at + 1 - fast], sums[at + 1] - sums[at + 1 - slow]
    relation = np.sign(fast_sum * slow - slow_sum * fast)
    strict = pd.Series(np.where(relation == 0, np.nan, relation)).ffill().values
    previous = np.r_[np.nan, strict[:-1]]
    flips = at[(~np.isnan(previous)) & (strict != previous) & ~np.isnan(strict)]
    position = cash = 0
    fills: list[tuple[str, int, int, int]] = []
    for bar in flips:
        target = QUANTITY if strict[bar - (slow - 1)] > 0 else 0
        delta = target - position
        if delta == 0:
            continue
        i = close_at[bar]
        fills.append(("BUY" if delta > 0 else "SELL", abs(delta), int(price[i]), int(ts[i])))
        cash -= delta * int(price[i])
        position = target
    last_bucket = ts[-1] // MARK_NS
    mark = int(price[np.flatnonzero(ts // MARK_NS == last_bucket)[0]])
    return fills, cash + position * mark


def test_reference_of_the_full_day_is_not_trivial(shared_data: Path) -> None:
    ts, price = spy_trades(shared_file(shared_data, SPY))
    fills, _ = reference(ts, price)
    assert len(ts) == 250_601
    assert len(fills) > 10 and {side for side, *_ in fills} == {"BUY", "SELL"}


# ---- running it ------------------------------------------------------------------------------
@pytest.fixture
def backtest_env(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    for name in list(os.environ):
        if name.startswith("OMNIQUANT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("OMNIQUANT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("OMNIQUANT_CLICKHOUSE__CHDB_PATH", str(tmp_path / "chdb"))
    return tmp_path


def run(args: list[str]) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    result = CliRunner().invoke(app, args)
    took = time.monotonic() - started
    assert result.exit_code == 0, (result.stdout[-3000:], repr(result.exception))
    line = [x for x in result.stdout.splitlines() if x.startswith("{")][-1]
    summary: dict[str, Any] = json.loads(line)
    print(f"backtest {args[0]} ... took {took:.1f} s: {summary}")
    return summary, took


def backtest_fills(run_id: str) -> list[tuple[str, int, int, int]]:
    settings = load_settings(topic_prefix=f"bt-{run_id}.")
    rows = read_topic(settings, TopicNames(settings.topic_prefix).fills, Fill)
    rows.sort(key=lambda f: (f["ts_event"], f["client_order_id"]))
    return [(str(f["side"]), f["quantity"] // 10**9, f["price"], f["ts_event"]) for f in rows]


def test_phases_wait_for_every_stage_a_stage_reads() -> None:
    names = [[s.name for s in group] for group in phases()]
    assert names == [
        ["bars", "signals"],
        ["risk-gate", "execution"],
        ["portfolio", "risk-metrics", "sink-clickhouse"],  # each drained after the one before
    ]


@pytest.mark.timeout(1500)
def test_full_day_backtest_fills_and_pnl_equal_the_vectorised_reference(
    shared_data: Path, backtest_env: Path
) -> None:
    path = shared_file(shared_data, SPY)
    ts, price = spy_trades(path)
    want_fills, want_pnl = reference(ts, price)
    summary, _ = run([str(path), *ARGS, "--run-id", f"ref{os.getpid()}"])
    got = backtest_fills(summary["run_id"])
    assert got == want_fills
    assert summary["ticks"] == len(ts)
    assert summary["fills"] == len(want_fills) == summary["orders"] == summary["approved"]
    assert to_fixed(Decimal(summary["pnl"])) == want_pnl
    assert summary["clickhouse_rows"]["fills"] == len(want_fills)
    assert summary["clickhouse_rows"]["trades"] == len(ts)


@pytest.mark.timeout(1500)
def test_two_runs_over_the_same_ticks_give_the_same_digest(
    shared_data: Path, backtest_env: Path
) -> None:
    path = shared_file(shared_data, SPY)
    window = ["--start", "2013-10-07T13:30:00Z", "--end", "2013-10-07T15:30:00Z"]
    first, _ = run([str(path), *ARGS, *window, "--run-id", f"det{os.getpid()}a"])
    second, _ = run([str(path), *ARGS, *window, "--run-id", f"det{os.getpid()}b"])
    assert first["digest"] == second["digest"]
    assert first["fills"] > 0
    assert backtest_fills(first["run_id"]) == backtest_fills(second["run_id"])
    ts, price = spy_trades(path)
    lo = int(datetime(2013, 10, 7, 13, 30, tzinfo=UTC).timestamp()) * 10**9
    keep = (ts >= lo) & (ts < lo + 2 * 3600 * 10**9)
    assert backtest_fills(first["run_id"]) == reference(ts[keep], price[keep])[0]
