"""`omniquant report`: the page's stats table against an independent numpy/pandas
computation, PNGs that decode to distinct non-trivial images, SQL reads of a hand-filled chDB,
the command through CliRunner, the page over a real pipeline run's store, and the page as
headless Chromium loads it."""

from __future__ import annotations

import html
import itertools
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
import typer
from conftest import chdb_cli_env
from pipeline_store import PipelineStore, pipeline_store  # noqa: F401
from pydantic import BaseModel
from typer.testing import CliRunner

from core.clickhouse import ChdbClickHouse
from omniquant.report import (
    FillPoint,
    ReportData,
    Series,
    from_clickhouse,
    render_report,
    report_stats,
)
from omniquant.report.charts import CHARTS
from omniquant.report.cli import report
from schemas.fixedpoint import to_fixed
from schemas.models import (
    Bar,
    Decision,
    Fill,
    OrderRequest,
    PortfolioSnapshot,
    RiskDecision,
    RiskMetric,
    Side,
)
from sinks.clickhouse import table_specs
from sinks.migrations import create_tables

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
T0 = 1_700_000_000_000_000_000  # 2023-11-14 22:13:20 UTC
STEP = 3_600_000_000_000  # one hour: the 200 snapshots span 10 UTC days
DB = "omniquant"


def _ts(n: int) -> tuple[int, ...]:
    return tuple(T0 + i * STEP for i in range(n))


def _sample() -> ReportData:
    rng = np.random.default_rng(3)
    n = 200
    equity = [Decimal("100000")]
    for step in rng.normal(0, 150, n - 1):
        equity.append((equity[-1] + Decimal(str(round(step, 2)))).quantize(Decimal("0.01")))
    realized = tuple(Decimal(i * 3) for i in range(n))
    unrealized = tuple(e - Decimal("100000") - r for e, r in zip(equity, realized, strict=True))
    # risk observations every 4th snapshot, a VaR forecast from the 5th on
    obs = list(range(0, n, 4))
    var = tuple(None if k < 5 else Decimal("180") for k in range(len(obs)))
    es = tuple(None if v is None else Decimal("230") for v in var)
    prices = {
        "AAPL": Series(_ts(n), tuple(Decimal("190") + Decimal(i % 17) / 10 for i in range(n))),
        "MSFT": Series(_ts(n), tuple(Decimal("410") - Decimal(i % 11) / 10 for i in range(n))),
    }
    fills = tuple(
        FillPoint(T0 + i * STEP, sym, side, Decimal(100), prices[sym].values[i])
        for i, sym, side in [
            (10, "AAPL", "BUY"),
            (40, "AAPL", "SELL"),
            (70, "MSFT", "SELL"),
            (120, "MSFT", "BUY"),
            (150, "AAPL", "BUY"),
        ]
    )
    return ReportData(
        title="unit report",
        namespace="unit.",
        account="paper",
        starting_cash=Decimal("100000"),
        equity=Series(_ts(n), tuple(equity)),
        realized_pnl=Series(_ts(n), realized),
        unrealized_pnl=Series(_ts(n), unrealized),
        risk_equity=Series(tuple(T0 + i * STEP for i in obs), tuple(equity[i] for i in obs)),
        var_metric="VAR_99_HISTORICAL",
        var_values=var,
        es_metric="ES_99_HISTORICAL",
        es_values=es,
        prices=prices,
        price_source="unit prices",
        fills=fills,
        orders=7,
        rejections={"risk gate: MAX_ORDER_NOTIONAL": 2},
    )


def _assert_png(path: Path) -> np.ndarray:
    raw = path.read_bytes()
    assert raw[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    assert len(raw) > 5_000, f"{path.name} is only {len(raw)} bytes"
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert float(pixels.std()) > 0.01, f"{path.name} is uniform"
    rgb = (pixels[..., :3] * 255).astype(np.uint32)
    colours = np.unique((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2])
    assert len(colours) > 20, f"{path.name} has only {len(colours)} colours"
    return pixels


def _stats_table(doc: str) -> dict[str, str]:
    """The page's stats table as label → cell text."""
    table = re.search(r'<table class="stats" id="stats-table">(.*?)</table>', doc, re.S)
    assert table is not None, "no stats table"
    rows = re.findall(r"<tr><th>(.*?)</th><td>(.*?)</td></tr>", table.group(1))
    return {html.unescape(k): html.unescape(v) for k, v in rows}


def _money(cell: str) -> float:
    return float(cell.replace(",", ""))


def _percent(cell: str) -> float:
    assert cell.endswith(" %"), cell
    return float(cell.removesuffix(" %")) / 100


def _exceed(obs: np.ndarray, forecast: tuple[Decimal | None, ...]) -> tuple[int, int]:
    """(breaches, periods tested): loss from i-1 to i above the forecast made at i-1."""
    pnl = np.diff(obs)
    f = np.array([np.nan if v is None else float(v) for v in forecast])[:-1]
    tested = ~np.isnan(f)
    return int(np.sum(tested & (-pnl > np.nan_to_num(f)))), int(tested.sum())


# ---- unit ---------------------------------------------------------------------------------
def test_stats_match_an_independent_numpy_computation() -> None:
    data = _sample()
    stats = report_stats(data)
    eq = np.array([float(v) for v in data.equity.values])
    peak = np.maximum.accumulate(eq)
    assert isinstance(stats.total_return, Decimal) and isinstance(stats.max_drawdown, Decimal)
    assert isinstance(stats.max_drawdown_amount, Decimal)
    assert float(stats.max_drawdown) == pytest.approx(((peak - eq) / peak).max(), rel=1e-12)
    assert float(stats.max_drawdown_amount) == pytest.approx((peak - eq).max(), abs=1e-9)
    assert float(stats.total_return) == pytest.approx(eq[-1] / 100000 - 1, rel=1e-12)

    obs = np.array([float(v) for v in data.risk_equity.values])
    var_hits, var_tested = _exceed(obs, data.var_values)
    es_hits, es_tested = _exceed(obs, data.es_values)
    assert (stats.var_breaches, stats.var_observations) == (var_hits, var_tested)
    assert (stats.es_breaches, stats.es_observations) == (es_hits, es_tested)
    assert var_hits > es_hits > 0, "the sample should have VaR and ES exceedances to mark"
    assert (stats.orders, stats.fills) == (7, 5)
    assert stats.rejections == {"risk gate: MAX_ORDER_NOTIONAL": 2}

    # daily PnL: pandas groups the snapshots by UTC day; the days sum to the total PnL, exactly
    series = pd.Series(eq, index=pd.to_datetime(list(data.equity.ts_ns), unit="ns", utc=True))
    closes = series.groupby(series.index.date).last()
    expected = closes.diff().fillna(closes.iloc[0] - 100000)
    assert [d for d, _ in stats.daily_pnl] == list(closes.index)
    assert [float(p) for _, p in stats.daily_pnl] == pytest.approx(list(expected), abs=1e-6)
    assert len(stats.daily_pnl) == 10  # 2023-11-14 22:13 to 11-23 05:13 UTC
    assert all(isinstance(p, Decimal) for _, p in stats.daily_pnl)
    assert sum(p for _, p in stats.daily_pnl) == data.equity.values[-1] - Decimal(100000)


def _minute_returns_pandas(data: ReportData) -> np.ndarray:
    """Per-minute returns the pandas way: last equity per event-time minute, carried forward."""
    eq = pd.Series(
        [float(v) for v in data.equity.values],
        index=pd.to_datetime(list(data.equity.ts_ns), unit="ns", utc=True),
    )
    return eq.resample("1min").last().ffill().pct_change().dropna().to_numpy()


def _trips_numpy(fills: Sequence[FillPoint]) -> list[float]:
    """Closed round trips' PnL from cash flows: a trip's PnL is the sum of its fills' signed
    cash (sell +, buy -) between two flat points of the symbol's cumulative position."""
    out: list[float] = []
    for symbol in sorted({f.symbol for f in fills}):
        own = sorted((f for f in fills if f.symbol == symbol), key=lambda f: f.ts_ns)
        signed = np.array([float(f.quantity) * (1 if f.side == "BUY" else -1) for f in own])
        cash = np.array([-q * float(f.price) for q, f in zip(signed, own, strict=True)])
        flat = np.flatnonzero(np.cumsum(signed) == 0)
        start = 0
        for end in flat:
            out.append(float(cash[start : end + 1].sum()))
            start = end + 1
    return out


def test_performance_figures_match_pandas() -> None:
    data = _sample()
    stats = report_stats(data)
    r = _minute_returns_pandas(data)
    periods = 252 * 390
    assert stats.performance.periods == len(r) > 10_000
    sharpe = r.mean() / r.std(ddof=1) * np.sqrt(periods)
    sortino = r.mean() / np.sqrt(np.mean(np.minimum(r, 0) ** 2)) * np.sqrt(periods)
    growth = float(data.equity.values[-1]) / 100000
    assert float(stats.performance.sharpe) == pytest.approx(sharpe, rel=1e-9)
    assert float(stats.performance.sortino) == pytest.approx(sortino, rel=1e-9)
    assert float(stats.performance.annualised_return) == pytest.approx(
        growth ** (periods / len(r)) - 1, rel=1e-9
    )
    trips = _trips_numpy(data.fills)
    assert stats.trips.count == len(trips) == 2
    assert [float(p) for p in stats.trips.pnl] == pytest.approx(trips, abs=1e-9)
    assert stats.trips.winners == sum(p > 0 for p in trips)
    notional = sum(float(f.quantity * f.price) for f in data.fills)
    assert float(stats.turnover) == pytest.approx(notional / 100000, rel=1e-12)
    # exposure: the hours with an open position (cumulative |position| over all symbols > 0)
    ts = np.array(data.equity.ts_ns)
    held = np.zeros(len(ts), dtype=bool)
    for symbol in {f.symbol for f in data.fills}:
        pos = np.zeros(len(ts))
        for f in data.fills:
            if f.symbol == symbol:
                pos[ts >= f.ts_ns] += float(f.quantity) * (1 if f.side == "BUY" else -1)
        held |= pos != 0
    expected = held[:-1].sum() / (len(ts) - 1)  # each step's state is the one at its start
    assert float(stats.exposure) == pytest.approx(expected, rel=1e-12)


def test_a_reversal_closes_one_trip_and_opens_the_next() -> None:
    fills = (
        FillPoint(T0, "X", "BUY", Decimal(100), Decimal("10")),
        FillPoint(T0 + 1, "X", "SELL", Decimal(300), Decimal("11")),  # +100 closed, short 200
        FillPoint(T0 + 2, "X", "BUY", Decimal(200), Decimal("12")),  # short loses 200
    )
    stats = report_stats(ReportData(fills=fills))
    assert stats.trips.pnl == (Decimal(100), Decimal(-200))
    assert stats.trips.hit_rate == Decimal("0.5")
    assert _trips_numpy(fills) != [100.0, -200.0]  # the cash-flow method cannot split a flip


def test_the_page_s_stats_table_shows_the_independently_computed_figures(tmp_path: Path) -> None:
    data = _sample()
    table = _stats_table(render_report(data, tmp_path).read_text())
    eq = np.array([float(v) for v in data.equity.values])
    peak = np.maximum.accumulate(eq)
    assert _percent(table["Total return"]) == pytest.approx(eq[-1] / 100000 - 1, abs=1e-6)
    assert _percent(table["Max drawdown"]) == pytest.approx(((peak - eq) / peak).max(), abs=1e-6)
    assert _money(table["Max drawdown (money)"]) == pytest.approx((peak - eq).max(), abs=0.005)
    assert _money(table["Final equity"]) == pytest.approx(eq[-1], abs=0.005)

    series = pd.Series(eq, index=pd.to_datetime(list(data.equity.ts_ns), unit="ns", utc=True))
    closes = series.groupby(series.index.date).last()
    daily = closes.diff().fillna(closes.iloc[0] - 100000)
    for day, pnl in daily.items():
        assert _money(table[f"Daily PnL {day.isoformat()}"]) == pytest.approx(pnl, abs=0.005)
    assert table["Days (UTC)"] == str(len(daily))
    assert _money(table["Best day"]) == pytest.approx(daily.max(), abs=0.005)
    assert _money(table["Worst day"]) == pytest.approx(daily.min(), abs=0.005)

    obs = np.array([float(v) for v in data.risk_equity.values])
    var_hits, var_tested = _exceed(obs, data.var_values)
    es_hits, es_tested = _exceed(obs, data.es_values)
    assert table["VaR breaches (VAR_99_HISTORICAL)"] == f"{var_hits} of {var_tested} periods"
    assert table["ES exceedances (ES_99_HISTORICAL)"] == f"{es_hits} of {es_tested} periods"
    assert (table["Orders"], table["Fills"], table["Rejections"]) == ("7", "5", "2")
    r = _minute_returns_pandas(data)
    sharpe = r.mean() / r.std(ddof=1) * np.sqrt(252 * 390)
    assert float(table["Sharpe (annualised)"]) == pytest.approx(sharpe, abs=5e-5)
    assert table["Round trips"] == "2"
    assert _percent(table["Hit rate"]) == pytest.approx(0.5)
    assert float(table["Turnover (notional / start)"]) == pytest.approx(
        sum(float(f.quantity * f.price) for f in data.fills) / 100000, abs=5e-5
    )
    assert table["— risk gate: MAX_ORDER_NOTIONAL"] == "2"


def test_render_report_writes_decodable_distinct_pngs(tmp_path: Path) -> None:
    page = render_report(_sample(), tmp_path / "out")
    assert page.name == "index.html"
    doc = page.read_text()
    images = {}
    for name in CHARTS:
        assert f'<img src="{name}"' in doc
        images[name] = _assert_png(page.parent / name)
    for (a, pa_), (b, pb) in itertools.combinations(images.items(), 2):
        assert pa_.shape != pb.shape or not np.array_equal(pa_, pb), f"{a} and {b} are the same"
    assert "No data" not in doc
    # self-contained: nothing fetched from elsewhere
    assert not re.search(r"(src|href)=\"(https?:)?//", doc)
    assert "<link" not in doc


def test_empty_data_says_so_instead_of_crashing(tmp_path: Path) -> None:
    page = render_report(ReportData(), tmp_path)
    doc = page.read_text()
    assert "<img" not in doc
    assert doc.count('class="empty"') == 1 + len(CHARTS)
    assert not list(tmp_path.glob("*.png"))
    stats = report_stats(ReportData())
    assert stats.max_drawdown is None and stats.total_return is None and stats.var_breaches == 0
    assert stats.daily_pnl == ()
    assert _stats_table(doc)["Daily PnL"] == "n/a"


def test_a_second_render_leaves_no_stale_chart(tmp_path: Path) -> None:
    render_report(_sample(), tmp_path)
    render_report(ReportData(equity=Series((T0,), (Decimal(5),))), tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["drawdown.png", "equity.png"]


# ---- a hand-filled chDB ---------------------------------------------------------------------
H = 3_600_000_000_000


def _put(client: ChdbClickHouse, prefix: str, logical: str, records: Sequence[BaseModel]) -> None:
    spec = table_specs()[logical]
    rows = [spec.row(r, prefix + logical, 0, i, T0 // 1_000_000) for i, r in enumerate(records)]
    client.insert(f"{DB}.{spec.table}", spec.column_names, rows)


def _snapshot(i: int, equity: str) -> PortfolioSnapshot:
    money = to_fixed(Decimal(equity))
    return PortfolioSnapshot(
        account="paper",
        starting_cash=to_fixed(Decimal(1000)),
        cash=money,
        equity=money,
        realized_pnl=money - to_fixed(Decimal(1000)),
        unrealized_pnl=0,
        gross_exposure=0,
        net_exposure=0,
        leverage=0,
        largest_concentration=0,
        open_positions=0,
        ts_event=T0 + i * H,
        ts_init=T0 + i * H,
    )


def _fill(i: int, symbol: str, side: Side, price: str) -> Fill:
    return Fill(
        fill_id=f"f{i}",
        client_order_id=f"o{i}",
        account="paper",
        symbol=symbol,
        side=side,
        quantity=to_fixed(Decimal(10)),
        price=to_fixed(Decimal(price)),
        venue="paper",
        ts_event=T0 + i * H,
        ts_init=T0 + i * H,
    )


def _order(i: int, symbol: str) -> OrderRequest:
    return OrderRequest(
        client_order_id=f"o{i}",
        strategy_id="s",
        symbol=symbol,
        side=Side.BUY,
        quantity=to_fixed(Decimal(10)),
        ts_event=T0 + i * H,
        ts_init=T0 + i * H,
    )


def _metric(i: int, name: str, value: str) -> RiskMetric:
    return RiskMetric(
        metric=name,
        scope="paper",
        value=to_fixed(Decimal(value)),
        ts_event=T0 + i * H,
        ts_init=T0 + i * H,
    )


def _bar(i: int, symbol: str, close: str) -> Bar:
    price = to_fixed(Decimal(close))
    return Bar(
        symbol=symbol,
        venue="paper",
        interval_ms=60_000,
        open=price,
        high=price,
        low=price,
        close=price,
        volume=0,
        trade_count=1,
        source="unit",
        ts_event=T0 + i * H,
        ts_init=T0 + i * H,
    )


def _fill_store(path: Path) -> None:
    """Namespace ``old.`` (a decoy) then ``unit.`` (written last): known figures."""
    client = ChdbClickHouse(path)
    try:
        create_tables(client, DB)
        _put(client, "old.", "portfolio", [_snapshot(0, "5")])
        _put(client, "unit.", "portfolio", [_snapshot(0, "1000"), _snapshot(1, "1100.5")])
        _put(client, "unit.", "portfolio", [_snapshot(2, "990.25"), _snapshot(30, "1010")])
        _put(
            client,
            "unit.",
            "risk.metrics",
            [_metric(i, "EQUITY", e) for i, e in enumerate(("1000", "1100.5", "990.25"))]
            + [_metric(i, "VAR_99_HISTORICAL", "50") for i in range(3)]
            + [_metric(i, "ES_99_HISTORICAL", "200") for i in range(3)]
            + [_metric(i, "VAR_95_HISTORICAL", "1") for i in range(3)]
            + [_metric(2, "VAR_BACKTEST_EXCEPTIONS", "1")],
        )
        _put(
            client,
            "unit.",
            "fills",
            [_fill(0, "AAPL", Side.BUY, "190.5"), _fill(2, "MSFT", Side.SELL, "410.123456789")],
        )
        _put(client, "unit.", "orders.requests", [_order(0, "AAPL"), _order(1, "MSFT")])
        _put(
            client,
            "unit.",
            "risk.decisions",
            [
                RiskDecision(
                    decision_id="d1",
                    client_order_id="o1",
                    account="paper",
                    symbol="MSFT",
                    side=Side.BUY,
                    quantity=to_fixed(Decimal(10)),
                    decision=Decision.REJECTED,
                    reason="MAX_ORDER_NOTIONAL",
                    ts_event=T0 + H,
                    ts_init=T0 + H,
                )
            ],
        )
        _put(client, "unit.", "market.bars", [_bar(i, "AAPL", f"19{i}") for i in range(3)])
    finally:
        client.close()


def test_from_clickhouse_reads_exact_decimals_of_the_namespace_written_last(
    chdb_dir: Path,
) -> None:
    _fill_store(chdb_dir)
    client = ChdbClickHouse(chdb_dir)
    try:
        data = from_clickhouse(client, DB)
        aapl = from_clickhouse(client, DB, prefix="unit.", symbol="AAPL")
        nobody = from_clickhouse(client, DB, prefix="nobody.")
    finally:
        client.close()
    assert (data.namespace, data.account) == ("unit.", "paper")
    assert data.starting_cash == Decimal(1000)
    assert data.equity.values == tuple(Decimal(v) for v in ("1000", "1100.5", "990.25", "1010"))
    assert data.risk_equity.values == (Decimal("1000"), Decimal("1100.5"), Decimal("990.25"))
    assert (data.var_metric, data.es_metric) == ("VAR_99_HISTORICAL", "ES_99_HISTORICAL")
    assert data.var_values == (Decimal(50),) * 3 and data.es_values == (Decimal(200),) * 3
    assert [f.price for f in data.fills] == [Decimal("190.5"), Decimal("410.123456789")]
    assert (data.orders, data.rejections) == (2, {"risk gate: MAX_ORDER_NOTIONAL": 1})
    assert set(data.prices) == {"AAPL"} and data.price_source == "bar closes (60000 ms bars)"
    # a bar's close is charted at the bar's end
    assert data.prices["AAPL"].ts_ns[0] == T0 + 60_000_000_000

    stats = report_stats(data)
    assert stats.total_return == Decimal("0.01")
    assert stats.max_drawdown_amount == Decimal("110.25")
    assert stats.max_drawdown == Decimal("110.25") / Decimal("1100.5")
    # 1100.5 → 990.25: a loss of 110.25 over VaR 50, under ES 200
    assert (stats.var_breaches, stats.var_observations) == (1, 2)
    assert (stats.es_breaches, stats.es_observations) == (0, 2)
    # UTC days: 11-14 (22:13, 23:13), 11-15 (00:13), 11-16 (04:13)
    assert [p for _, p in stats.daily_pnl] == [
        Decimal("100.5"),
        Decimal("-110.25"),
        Decimal("19.75"),
    ]

    assert aapl.symbol == "AAPL" and [f.symbol for f in aapl.fills] == ["AAPL"]
    assert (aapl.orders, aapl.rejections) == (1, {})
    assert aapl.equity == data.equity, "equity stays the account's"
    assert nobody.account is None and not nobody.equity


def _report_app() -> typer.Typer:
    app = typer.Typer()
    app.command()(report)
    return app


def test_report_command_writes_the_page_of_a_store(chdb_dir: Path, tmp_path: Path) -> None:
    _fill_store(chdb_dir)
    out = tmp_path / "r"
    result = CliRunner().invoke(
        _report_app(), ["--out", str(out), "--symbol", "AAPL"], env=chdb_cli_env(chdb_dir)
    )
    assert result.exit_code == 0, result.output
    page = Path(result.output.strip().splitlines()[-1])
    assert page == (out / "index.html").resolve()
    doc = page.read_text()
    assert "symbol <code>AAPL</code>" in doc
    assert _stats_table(doc)["Fills"] == "1"
    for name in CHARTS:
        _assert_png(out / name)


def test_report_command_on_an_empty_store_says_there_is_no_data(
    chdb_dir: Path, tmp_path: Path
) -> None:
    client = ChdbClickHouse(chdb_dir)
    try:
        create_tables(client, DB)
    finally:
        client.close()
    result = CliRunner().invoke(
        _report_app(), ["--out", str(tmp_path / "r")], env=chdb_cli_env(chdb_dir)
    )
    assert result.exit_code == 0, result.output
    assert "No data for this namespace and account." in (tmp_path / "r" / "index.html").read_text()


def test_report_command_refuses_prefix_and_run_together(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        _report_app(), ["--prefix", "a.", "--run", "b"], env=chdb_cli_env(tmp_path / "none")
    )
    assert result.exit_code == 2
    assert "not both" in result.output


# ---- integration ---------------------------------------------------------------------------
# (the run's data, the data of "the namespace written last", the rendered page, SQL counts)
StoreReport = tuple[ReportData, ReportData, Path, dict[str, Any]]


@pytest.fixture(scope="module")
def store_report(
    pipeline_store: PipelineStore,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> StoreReport:
    prefix = pipeline_store.env["OMNIQUANT_TOPIC_PREFIX"]
    client = ChdbClickHouse(pipeline_store.chdb_path)
    try:
        data = from_clickhouse(client, DB, prefix=prefix)
        latest = from_clickhouse(client, DB)
        counts: dict[str, Any] = {
            "fills": client.query(
                f"SELECT count() FROM {DB}.fills WHERE _topic = '{prefix}fills' "
                "AND account = 'paper'"
            ).rows[0][0],
            "rejected": client.query(
                f"SELECT count() FROM {DB}.risk_decisions WHERE _topic = '{prefix}risk.decisions' "
                "AND account = 'paper' AND decision = 'REJECTED'"
            ).rows[0][0],
            "aapl_fills": client.query(
                f"SELECT count() FROM {DB}.fills WHERE _topic = '{prefix}fills' "
                "AND account = 'paper' AND symbol = 'AAPL'"
            ).rows[0][0],
        }
    finally:
        client.close()
    return data, latest, render_report(data, tmp_path_factory.mktemp("report")), counts


@pytest.mark.integration
def test_report_from_a_real_run_has_every_chart(store_report: StoreReport) -> None:
    data, latest, page, counts = store_report
    assert data.account == "paper"
    assert latest.namespace == data.namespace, "prefix None should pick the namespace written last"
    assert data.equity and data.fills and data.orders >= len(data.fills) > 0
    assert data.prices and set(data.prices) >= {f.symbol for f in data.fills}
    assert data.starting_cash is not None and data.starting_cash > 0
    for name in ("equity.png", "drawdown.png", "fills.png"):
        _assert_png(page.parent / name)
    forecasts = sum(v is not None for v in data.var_values)
    assert (page.parent / "var.png").exists(), (
        f"no VaR chart: the store has {len(data.risk_equity)} risk observation(s), {forecasts} "
        f"with a VaR forecast, {len(data.equity)} portfolio snapshot(s), {len(data.fills)} fill(s)"
    )
    _assert_png(page.parent / "var.png")
    doc = page.read_text()
    assert "No data" not in doc
    stats = report_stats(data)
    assert stats.max_drawdown is not None and stats.max_drawdown >= 0
    table = _stats_table(doc)
    assert table["Fills"] == f"{counts['fills']:,}"
    assert table["Rejections"] == f"{counts['rejected']:,}"
    assert counts["rejected"] > 0, "the pipeline store's notional limit should reject some"
    assert data.es_metric is not None and any(v is not None for v in data.es_values)
    eq = np.array([float(v) for v in data.equity.values])
    peak = np.maximum.accumulate(eq)
    assert _percent(table["Max drawdown"]) == pytest.approx(((peak - eq) / peak).max(), abs=1e-6)


@pytest.mark.integration
def test_report_command_over_the_real_run_for_one_symbol(
    store_report: StoreReport,
    pipeline_store: PipelineStore,  # noqa: F811
    tmp_path: Path,
) -> None:
    counts = store_report[3]
    env = chdb_cli_env(pipeline_store.chdb_path, pipeline_store.env)
    prefix = pipeline_store.env["OMNIQUANT_TOPIC_PREFIX"]
    result = CliRunner().invoke(
        _report_app(),
        ["--out", str(tmp_path), "--prefix", prefix, "--symbol", "AAPL", "--account", "paper"],
        env=env,
    )
    assert result.exit_code == 0, result.output
    doc = (tmp_path / "index.html").read_text()
    assert _stats_table(doc)["Fills"] == f"{counts['aapl_fills']:,}"
    assert (tmp_path / "fills.png").exists() and (tmp_path / "equity.png").exists()


# ---- headless Chromium ----------------------------------------------------------------------
def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail("chromium is not installed (CI must run this test): make deps")
        pytest.skip("chromium is not installed (bash scripts/ensure-system-deps.sh installs it)")
    return found


def _dump_dom(page: Path) -> str:
    proc = subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=5000",
            "--dump-dom",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _assert_loaded(dom: str, expected: int = len(CHARTS)) -> None:
    imgs = re.findall(r"<img\b[^>]*>", dom)
    assert len(imgs) == expected, dom[:3000]
    for img in imgs:
        loaded = re.search(r'data-loaded="(\d+)"', img)
        assert loaded is not None and int(loaded.group(1)) > 0, img
    assert 'id="stats-table"' in dom and "<td>" in dom
    assert 'data-ready="1"' in dom, "the page's load handler did not run"


def test_chromium_loads_every_chart_of_a_hand_built_report(tmp_path: Path) -> None:
    _assert_loaded(_dump_dom(render_report(_sample(), tmp_path)))


def test_chromium_check_sees_a_chart_that_does_not_load(tmp_path: Path) -> None:
    page = render_report(_sample(), tmp_path)
    (tmp_path / "var.png").unlink()
    dom = _dump_dom(page)
    assert re.search(r'<img src="var.png"[^>]*data-loaded="0"', dom), dom[:3000]
    with pytest.raises(AssertionError):
        _assert_loaded(dom)


@pytest.mark.integration
def test_chromium_loads_every_chart_of_a_real_runs_report(store_report: StoreReport) -> None:
    page = store_report[2]
    written = len(list(page.parent.glob("*.png")))
    assert written >= 3, "equity, drawdown and fills charts at least"
    _assert_loaded(_dump_dom(page), written)
