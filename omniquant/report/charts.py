"""PNG charts of a :class:`~omniquant.report.data.ReportData` (matplotlib, Agg backend).

Each function writes one file and returns its path, or returns None when there is nothing to
draw (the page then says so). Values are converted to float here, for plotting only.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import matplotlib.dates as mdates
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from omniquant.report.data import ReportData, drawdown_series, var_breaches

__all__ = ["CHARTS", "drawdown_chart", "equity_chart", "fills_chart", "var_chart"]

DPI = 100


def _times(ts_ns: Sequence[int]) -> list[datetime]:
    return [datetime.fromtimestamp(t / 1e9, tz=UTC) for t in ts_ns]


def _floats(values: Sequence[Decimal | None]) -> list[float]:
    return [float("nan") if v is None else float(v) for v in values]


def _figure(rows: int = 1, height: float = 4.0) -> tuple[Figure, Any]:
    # A bare Figure on the Agg canvas: no pyplot, no global backend, no display needed.
    fig = Figure(figsize=(11, height * rows), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1, squeeze=False)
    return fig, axes[:, 0]


def _finish(fig: Figure, axes: Sequence[Any], path: Path) -> Path:
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M:%S"))  # type: ignore[no-untyped-call]
        ax.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def equity_chart(data: ReportData, path: Path) -> Path | None:
    if not data.equity:
        return None
    fig, (ax,) = _figure()
    times = _times(data.equity.ts_ns)
    ax.plot(times, _floats(data.equity.values), color="tab:blue", label="equity")
    if data.starting_cash is not None:
        ax.axhline(float(data.starting_cash), color="grey", ls="--", lw=1, label="starting cash")
    ax.set_ylabel("equity")
    ax.set_title("Equity")
    if data.realized_pnl or data.unrealized_pnl:
        pnl = ax.twinx()
        if data.realized_pnl:
            pnl.plot(
                _times(data.realized_pnl.ts_ns),
                _floats(data.realized_pnl.values),
                color="tab:green",
                lw=1,
                label="realized PnL",
            )
        if data.unrealized_pnl:
            pnl.plot(
                _times(data.unrealized_pnl.ts_ns),
                _floats(data.unrealized_pnl.values),
                color="tab:orange",
                lw=1,
                label="unrealized PnL",
            )
        pnl.set_ylabel("PnL")
        lines = ax.get_legend_handles_labels()
        more = pnl.get_legend_handles_labels()
        ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left")
    else:
        ax.legend(loc="upper left")
    return _finish(fig, [ax], path)


def drawdown_chart(data: ReportData, path: Path) -> Path | None:
    if not data.equity:
        return None
    fractions, _ = drawdown_series(data.equity)
    fig, (ax,) = _figure(height=3.0)
    times = _times(data.equity.ts_ns)
    dd = [-100 * f for f in _floats(fractions)]
    ax.fill_between(times, dd, 0, color="tab:red", alpha=0.35, step="post")
    ax.plot(times, dd, color="tab:red", lw=1, drawstyle="steps-post")
    ax.set_ylabel("drawdown (% of peak)")
    ax.set_title("Drawdown from the running peak of equity")
    return _finish(fig, [ax], path)


def var_chart(data: ReportData, path: Path) -> Path | None:
    if len(data.risk_equity) < 2 or not any(v is not None for v in data.var_values):
        return None
    breaches, pnl = var_breaches(data)
    times = _times(data.risk_equity.ts_ns)
    fig, (ax,) = _figure()
    ax.plot(times[1:], _floats(pnl), ".", ms=3, color="tab:blue", label="period PnL (Δ equity)")
    # the forecast made at i-1 covers the period ending at i
    limit = [-x for x in _floats(data.var_values[:-1])]
    ax.plot(times[1:], limit, color="tab:purple", lw=1.2, label=f"−{data.var_metric} (forecast)")
    if any(v is not None for v in data.es_values):
        shortfall = [-x for x in _floats(data.es_values[:-1])]
        ax.plot(
            times[1:],
            shortfall,
            color="tab:brown",
            lw=1,
            ls="--",
            label=f"−{data.es_metric} (forecast)",
        )
    if breaches:
        ax.plot(
            [times[i] for i in breaches],
            [float(pnl[i - 1]) for i in breaches],
            "x",
            color="tab:red",
            ms=9,
            mew=2,
            label=f"breach ({len(breaches)})",
        )
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_ylabel("money per period")
    ax.set_title("VaR and ES forecasts vs realised period PnL")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    return _finish(fig, [ax], path)


def fills_chart(data: ReportData, path: Path) -> Path | None:
    symbols = sorted(data.prices) or sorted({f.symbol for f in data.fills})
    if not symbols or not (data.prices or data.fills):
        return None
    fig, axes = _figure(rows=len(symbols), height=3.2)
    for ax, symbol in zip(axes, symbols, strict=True):
        series = data.prices.get(symbol)
        if series:
            ax.plot(_times(series.ts_ns), _floats(series.values), color="grey", lw=1, label="price")
        for side, marker, color in (("BUY", "^", "tab:green"), ("SELL", "v", "tab:red")):
            points = [f for f in data.fills if f.symbol == symbol and f.side == side]
            if points:
                ax.scatter(
                    _times([f.ts_ns for f in points]),
                    [float(f.price) for f in points],
                    marker=marker,
                    color=color,
                    s=50,
                    zorder=3,
                    label=f"{side.lower()} fills ({len(points)})",
                )
        ax.set_title(f"{symbol}: fills on the price")
        ax.set_ylabel("price")
        ax.legend(loc="upper left")
    return _finish(fig, axes, path)


# file name → (section title, chart function), in page order
CHARTS = {
    "equity.png": ("Equity and PnL", equity_chart),
    "drawdown.png": ("Drawdown", drawdown_chart),
    "var.png": ("VaR vs realised PnL", var_chart),
    "fills.png": ("Fills on the price", fills_chart),
}
