"""One self-contained HTML page: inline CSS, a stats table, the charts as relative <img>.

A small inline script marks each image, once the page has loaded, with
``data-loaded="<naturalWidth>"`` (0 when it failed to load): a headless browser's DOM dump
then shows whether every chart rendered.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from omniquant.report.charts import CHARTS
from omniquant.report.data import ReportData, ReportStats, report_stats

__all__ = ["render_page", "render_report"]

# Up to this many days, the stats table lists each day's PnL.
MAX_DAY_ROWS = 31

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1150px; color: #222; }
h1 { margin-bottom: 0.2rem; } .meta { color: #666; margin-top: 0; }
table.stats { border-collapse: collapse; margin: 1rem 0; }
table.stats th, table.stats td { border: 1px solid #ccc; padding: 0.3rem 0.8rem; }
table.stats th { text-align: left; background: #f4f4f4; } table.stats td { text-align: right; }
section { margin: 2rem 0; } img { max-width: 100%; border: 1px solid #eee; }
p.empty { color: #a60; font-style: italic; }
"""

_SCRIPT = """
window.addEventListener("load", function () {
  document.querySelectorAll("img").forEach(function (img) {
    img.setAttribute("data-loaded", String(img.naturalWidth));
  });
  document.body.setAttribute("data-ready", "1");
});
"""


def _money(value: Decimal | None) -> str:
    return "n/a" if value is None else f"{value:,.2f}"


def _percent(value: Decimal | None) -> str:
    return "n/a" if value is None else f"{value * 100:.4f} %"


def _ratio(value: Decimal | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _stats_rows(data: ReportData, stats: ReportStats) -> list[tuple[str, str]]:
    perf, trips = stats.performance, stats.trips
    rows = [
        ("Total return", _percent(stats.total_return)),
        ("Annualised return", _percent(perf.annualised_return)),
        ("Sharpe (annualised)", _ratio(perf.sharpe)),
        ("Sortino (annualised)", _ratio(perf.sortino)),
        ("Minute returns", f"{perf.periods:,}"),
        ("Max drawdown", _percent(stats.max_drawdown)),
        ("Max drawdown (money)", _money(stats.max_drawdown_amount)),
        ("Starting cash", _money(data.starting_cash)),
        ("Final equity", _money(stats.final_equity)),
        ("Realized PnL (last)", _money(stats.realized_pnl)),
        ("Unrealized PnL (last)", _money(stats.unrealized_pnl)),
    ]
    days = stats.daily_pnl
    if days:
        pnls = [p for _, p in days]
        rows += [
            ("Days (UTC)", f"{len(days):,}"),
            ("Best day", _money(max(pnls))),
            ("Worst day", _money(min(pnls))),
        ]
        if len(days) <= MAX_DAY_ROWS:
            rows += [(f"Daily PnL {day.isoformat()}", _money(p)) for day, p in days]
    else:
        rows.append(("Daily PnL", "n/a"))
    rows += [
        ("Orders", f"{stats.orders:,}"),
        ("Fills", f"{stats.fills:,}"),
        ("Round trips", f"{trips.count:,}"),
        ("Hit rate", _percent(trips.hit_rate)),
        ("Turnover (notional / start)", _ratio(stats.turnover)),
        ("Exposure (time in market)", _percent(stats.exposure)),
        ("Rejections", f"{sum(stats.rejections.values()):,}"),
    ]
    rows += [(f"— {reason}", f"{n:,}") for reason, n in stats.rejections.items()]
    var_name = data.var_metric or "VaR"
    rows.append(
        (
            f"VaR breaches ({var_name})",
            f"{stats.var_breaches:,} of {stats.var_observations:,} periods"
            if stats.var_observations
            else "n/a (no forecasts)",
        )
    )
    if data.es_metric is not None:
        rows.append(
            (
                f"ES exceedances ({data.es_metric})",
                f"{stats.es_breaches:,} of {stats.es_observations:,} periods"
                if stats.es_observations
                else "n/a (no forecasts)",
            )
        )
    return rows


def render_page(data: ReportData, charts: dict[str, Path | None]) -> str:
    """The HTML of the page; ``charts`` maps each CHARTS file name to the written file (or
    None when that chart had no data)."""
    stats = report_stats(data)
    esc = html.escape
    meta = [
        f"namespace <code>{esc(data.namespace)}</code>" if data.namespace is not None else "",
        f"account <code>{esc(data.account)}</code>" if data.account else "",
        f"symbol <code>{esc(data.symbol)}</code> (prices, orders, fills, rejections; equity, "
        "drawdown and VaR are the account's)"
        if data.symbol
        else "",
        f"generated {datetime.now(UTC).strftime('%Y-%m-%d %H:%M:%S UTC')}",
    ]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(data.title)}</title>",
        f"<style>{_CSS}</style>",
        f"<script>{_SCRIPT}</script>",
        "</head><body>",
        f"<h1>{esc(data.title)}</h1>",
        f'<p class="meta">{" · ".join(m for m in meta if m)}</p>',
        '<section id="stats"><h2>Summary</h2>',
    ]
    if not (data.equity or data.fills or data.orders or data.risk_equity):
        parts.append('<p class="empty">No data for this namespace and account.</p>')
    parts.append('<table class="stats" id="stats-table"><tbody>')
    for label, value in _stats_rows(data, stats):
        parts.append(f"<tr><th>{esc(label)}</th><td>{esc(value)}</td></tr>")
    parts.append("</tbody></table></section>")
    for name, (title, _) in CHARTS.items():
        anchor = name.removesuffix(".png")
        parts.append(f'<section id="{anchor}"><h2>{esc(title)}</h2>')
        path = charts.get(name)
        if path is None:
            parts.append(f'<p class="empty">No data for the {esc(title.lower())} chart.</p>')
        else:
            parts.append(f'<img src="{esc(path.name)}" alt="{esc(title)}">')
        if name == "fills.png" and data.price_source:
            parts.append(f'<p class="meta">prices: {esc(data.price_source)}</p>')
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def render_report(data: ReportData, out_dir: Path) -> Path:
    """Write the charts and ``index.html`` into ``out_dir`` (created); returns the page."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    charts: dict[str, Path | None] = {}
    for name, (_, draw) in CHARTS.items():
        target = out_dir / name
        target.unlink(missing_ok=True)  # no stale chart from an earlier report
        charts[name] = draw(data, target)
    page = out_dir / "index.html"
    page.write_text(render_page(data, charts), encoding="utf-8")
    return page
