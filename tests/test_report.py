"""`omniquant report`: stats against an independent numpy computation, PNGs that decode, the
page over a real pipeline run's store, and the page as headless Chromium loads it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
from pipeline_store import PipelineStore, pipeline_store  # noqa: F401

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

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
T0 = 1_700_000_000_000_000_000
STEP = 1_000_000_000


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
        prices=prices,
        price_source="unit prices",
        fills=fills,
        orders=7,
        rejections={"risk gate: MAX_ORDER_NOTIONAL": 2},
    )


def _assert_png(path: Path) -> None:
    raw = path.read_bytes()
    assert raw[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    assert len(raw) > 5_000, f"{path.name} is only {len(raw)} bytes"
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert float(pixels.std()) > 0.01, f"{path.name} is uniform"


# ---- unit ---------------------------------------------------------------------------------
def test_stats_match_an_independent_numpy_computation() -> None:
    data = _sample()
    stats = report_stats(data)
    eq = np.array([float(v) for v in data.equity.values])
    peak = np.maximum.accumulate(eq)
    assert float(stats.max_drawdown) == pytest.approx(((peak - eq) / peak).max(), rel=1e-12)
    assert float(stats.max_drawdown_amount) == pytest.approx((peak - eq).max(), abs=1e-9)
    assert float(stats.total_return) == pytest.approx(eq[-1] / 100000 - 1, rel=1e-12)
    assert isinstance(stats.total_return, Decimal) and isinstance(stats.max_drawdown, Decimal)

    obs = np.array([float(v) for v in data.risk_equity.values])
    pnl = np.diff(obs)
    var = np.array([np.nan if v is None else float(v) for v in data.var_values])
    tested = ~np.isnan(var[:-1])
    expected = int(np.sum(tested & (-pnl > np.nan_to_num(var[:-1]))))
    assert stats.var_observations == int(tested.sum())
    assert stats.var_breaches == expected
    assert expected > 0, "the sample should have breaches to mark"
    assert (stats.orders, stats.fills) == (7, 5)
    assert stats.rejections == {"risk gate: MAX_ORDER_NOTIONAL": 2}


def test_render_report_writes_decodable_pngs_and_the_stats(tmp_path: Path) -> None:
    page = render_report(_sample(), tmp_path / "out")
    assert page.name == "index.html"
    doc = page.read_text()
    for name in CHARTS:
        assert f'<img src="{name}"' in doc
        _assert_png(page.parent / name)
    assert 'id="stats-table"' in doc
    assert "Max drawdown" in doc and "VaR breaches" in doc
    assert "risk gate: MAX_ORDER_NOTIONAL" in doc
    assert "No data" not in doc


def test_empty_data_says_so_instead_of_crashing(tmp_path: Path) -> None:
    page = render_report(ReportData(), tmp_path)
    doc = page.read_text()
    assert "<img" not in doc
    assert doc.count('class="empty"') == 1 + len(CHARTS)
    assert not list(tmp_path.glob("*.png"))
    stats = report_stats(ReportData())
    assert stats.max_drawdown is None and stats.total_return is None and stats.var_breaches == 0


# ---- integration ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def store_report(pipeline_store: PipelineStore, tmp_path_factory: pytest.TempPathFactory):  # noqa: F811
    prefix = pipeline_store.env["OMNIQUANT_TOPIC_PREFIX"]
    client = ChdbClickHouse(pipeline_store.chdb_path)
    try:
        data = from_clickhouse(client, "omniquant", prefix=prefix)
        latest = from_clickhouse(client, "omniquant")
    finally:
        client.close()
    return data, latest, render_report(data, tmp_path_factory.mktemp("report"))


@pytest.mark.integration
def test_report_from_a_real_run_has_every_chart(store_report) -> None:
    data, latest, page = store_report
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
    assert "No data" not in page.read_text()
    stats = report_stats(data)
    assert stats.max_drawdown is not None and stats.max_drawdown >= 0


# ---- headless Chromium ----------------------------------------------------------------------
def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
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


def test_chromium_loads_every_chart_of_a_hand_built_report(tmp_path: Path) -> None:
    _assert_loaded(_dump_dom(render_report(_sample(), tmp_path)))


@pytest.mark.integration
def test_chromium_loads_every_chart_of_a_real_runs_report(store_report) -> None:
    page = store_report[2]
    written = len(list(page.parent.glob("*.png")))
    assert written >= 3, "equity, drawdown and fills charts at least"
    _assert_loaded(_dump_dom(page), written)
