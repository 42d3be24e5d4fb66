"""`omniquant backtest` in the default suite: a short synthetic day through the real stages,
for an account of its own, with the HTML report — fills and PnL against the same plain
pandas/numpy reference as the full-day test (``test_backtest_reference.reference``), the
report's table against the summary and the run's rows, and the page in headless Chromium.

The full-day SPY runs (minutes each) are ``make test-backtest``.
"""

from __future__ import annotations

import json
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from test_backtest_reference import backtest_env, reference  # noqa: F401 - fixture
from test_report import _assert_loaded, _dump_dom, _stats_table
from typer.testing import CliRunner

from core.config import load_settings
from core.topics import TopicNames
from omniquant.backtest import app, read_topic, write_synthetic_day
from schemas.fixedpoint import to_fixed
from schemas.models import Fill, OrderRequest, RiskDecision

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

TRADES = 3_000  # one 6.5-hour session: ~8 trades a minute, enough 1-minute SMA crossings


def _csv_ticks(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(ts ns, price raw 1e-9) straight from the CSV, exact (Decimal, not float)."""
    frame = pd.read_csv(path, dtype={"price": str})
    raw = np.array([int(Decimal(p) * 10**9) for p in frame["price"]], dtype=np.int64)
    return frame["ts_event"].to_numpy(dtype=np.int64), raw


@pytest.mark.timeout(900)
def test_a_synthetic_day_for_an_own_account_matches_the_reference_and_reports(
    backtest_env: Path,  # noqa: F811
) -> None:
    ticks = write_synthetic_day(backtest_env / "day.csv", trades=TRADES)
    ts, price = _csv_ticks(ticks)
    want_fills, want_pnl = reference(ts, price)
    assert len(want_fills) >= 4, "the synthetic day should cross a few times"
    run_id = f"quick{os.getpid()}"
    report_dir = backtest_env / "report"
    args = [
        str(ticks), "--strategy", "sma-crossover", "--param", "fast=10", "--param", "slow=30",
        "--bar", "1m", "--quantity", "100", "--long-only", "--account", "desk-7",
        "--run-id", run_id, "--report", str(report_dir), "--json",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.stdout[-3000:], repr(result.exception))
    summary: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])

    assert summary["account"] == "desk-7" and summary["ticks"] == TRADES
    settings = load_settings(topic_prefix=f"bt-{run_id}.")
    names = TopicNames(settings.topic_prefix)
    orders = read_topic(settings, names.order_requests, OrderRequest)
    fills = read_topic(settings, names.fills, Fill)
    assert {o["account"] for o in orders} == {f["account"] for f in fills} == {"desk-7"}
    got = [(str(f["side"]), f["quantity"] // 10**9, f["price"], f["ts_event"]) for f in fills]
    decisions = read_topic(settings, names.risk_decisions, RiskDecision)
    rejected = [(d["ts_event"], d["reason"]) for d in decisions if d["decision"] != "APPROVED"]
    assert not rejected  # the gate's view of the position is exact (fills at approval)
    # in time order, as the reference makes them
    assert sorted(got, key=lambda f: f[3]) == want_fills
    assert to_fixed(Decimal(summary["pnl"])) == want_pnl
    assert summary["clickhouse_rows"]["trades"] == TRADES
    assert summary["clickhouse_rows"]["fills"] == len(want_fills)
    assert set(summary["timings_s"]) >= {"feed", "results"}

    page = Path(summary["report"])
    assert page == report_dir / "index.html" and page.exists()
    assert json.loads((report_dir / "summary.json").read_text())["digest"] == summary["digest"]
    table = _stats_table(page.read_text())
    assert table["Fills"] == str(len(want_fills))
    assert table["Round trips"] == str(sum(1 for side, *_ in want_fills if side == "SELL"))
    if summary["sharpe"] is not None:
        assert float(table["Sharpe (annualised)"]) == pytest.approx(summary["sharpe"], abs=1e-4)
    charts = sorted(p.name for p in report_dir.glob("*.png"))
    assert {"equity.png", "drawdown.png", "fills.png"} <= set(charts)
    _assert_loaded(_dump_dom(page), len(charts))


@pytest.mark.timeout(900)
def test_from_topics_backtests_a_time_range_of_the_live_trades(
    backtest_env: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--from-topics: the window's trades are found with offsets_for_times in the live
    namespace and copied; the fills equal the reference over exactly those ticks."""
    from core.kafka import ensure_topics
    from omniquant.stages import topic_catalog
    from producers.replay import replay

    ticks = write_synthetic_day(backtest_env / "live.csv", trades=TRADES, seed=11)
    live_prefix = f"live{os.getpid()}."
    monkeypatch.setenv("OMNIQUANT_TOPIC_PREFIX", live_prefix)
    live = load_settings()
    ensure_topics(live, topic_catalog())
    assert replay([ticks], live, speed="max").ok
    ts, price = _csv_ticks(ticks)
    start, end = "2013-10-07T14:00:00Z", "2013-10-07T18:00:00Z"
    lo = int(pd.Timestamp(start).value)
    hi = int(pd.Timestamp(end).value)
    keep = (ts >= lo) & (ts < hi)
    want_fills, want_pnl = reference(ts[keep], price[keep])
    assert want_fills, "the window should hold crossings"
    run_id = f"topics{os.getpid()}"
    args = [
        "--from-topics", "--start", start, "--end", end, "--strategy", "sma-crossover",
        "--param", "fast=10", "--param", "slow=30", "--bar", "1m", "--quantity", "100",
        "--long-only", "--run-id", run_id, "--json",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.stdout[-3000:], repr(result.exception))
    summary: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["ticks"] == int(keep.sum())
    settings = load_settings(topic_prefix=f"bt-{run_id}.")
    fills = read_topic(settings, TopicNames(settings.topic_prefix).fills, Fill)
    got = [(str(f["side"]), f["quantity"] // 10**9, f["price"], f["ts_event"]) for f in fills]
    assert sorted(got, key=lambda f: f[3]) == want_fills
    assert to_fixed(Decimal(summary["pnl"])) == want_pnl
