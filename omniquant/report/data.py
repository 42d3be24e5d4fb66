"""What a report shows, as plain series, and its figures.

Everything here is data: :class:`ReportData` holds tuples of nanosecond timestamps and exact
``Decimal`` values (what ClickHouse gives for ``Decimal64(9)``), so a backtest can build one
without ClickHouse and hand it to :func:`omniquant.report.render_report` the same way
(:func:`omniquant.report.from_clickhouse` builds one from the audit store).
:func:`report_stats` computes the page's figures from it, with ``Decimal`` arithmetic only;
floats appear only in :mod:`omniquant.report.charts`, for plotting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

__all__ = [
    "FillPoint",
    "ReportData",
    "ReportStats",
    "Series",
    "daily_pnl",
    "drawdown_series",
    "exceedances",
    "report_stats",
    "var_breaches",
]


@dataclass(frozen=True)
class Series:
    """One time series: event times (ns since the epoch) and exact values, same length."""

    ts_ns: tuple[int, ...] = ()
    values: tuple[Decimal, ...] = ()

    def __post_init__(self) -> None:
        if len(self.ts_ns) != len(self.values):
            raise ValueError(f"{len(self.ts_ns)} times but {len(self.values)} values")

    def __len__(self) -> int:
        return len(self.values)

    @classmethod
    def of(cls, rows: list[tuple[Any, ...]] | list[tuple[int, Decimal]]) -> Series:
        """From (ts_ns, value) rows; None values are left out."""
        kept = [(int(t), Decimal(v)) for t, v in rows if v is not None]
        return cls(tuple(t for t, _ in kept), tuple(v for _, v in kept))


@dataclass(frozen=True)
class FillPoint:
    ts_ns: int
    symbol: str
    side: str  # BUY / SELL
    quantity: Decimal
    price: Decimal


@dataclass(frozen=True)
class ReportData:
    """Everything one report shows. Empty series are fine: the page says there is no data."""

    title: str = "OmniQuant report"
    namespace: str | None = None
    account: str | None = None
    # When set, prices, fills, orders and rejections are this symbol's only (equity, drawdown
    # and VaR stay the account's).
    symbol: str | None = None
    starting_cash: Decimal | None = None
    equity: Series = field(default_factory=Series)
    realized_pnl: Series = field(default_factory=Series)
    unrealized_pnl: Series = field(default_factory=Series)
    # risk_metrics: the account's equity at each observation and the VaR / ES forecasts made
    # then (positive money loss over the next period); var_values[i] and es_values[i] belong
    # to risk_equity.ts_ns[i].
    risk_equity: Series = field(default_factory=Series)
    var_metric: str | None = None
    var_values: tuple[Decimal | None, ...] = ()
    es_metric: str | None = None
    es_values: tuple[Decimal | None, ...] = ()
    prices: dict[str, Series] = field(default_factory=dict)
    price_source: str = ""
    fills: tuple[FillPoint, ...] = ()
    orders: int = 0
    # "risk gate: <reason>" / "venue: <reason>" → count
    rejections: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("var_values", "es_values"):
            values = getattr(self, name)
            if values and len(values) != len(self.risk_equity):
                raise ValueError(f"{name} must be aligned with risk_equity")


@dataclass(frozen=True)
class ReportStats:
    total_return: Decimal | None  # fraction of the starting equity
    max_drawdown: Decimal | None  # fraction of the running peak, >= 0
    max_drawdown_amount: Decimal | None
    final_equity: Decimal | None
    realized_pnl: Decimal | None
    unrealized_pnl: Decimal | None
    # (UTC day, last equity of the day - last equity before it); sums to final - start
    daily_pnl: tuple[tuple[date, Decimal], ...]
    orders: int
    fills: int
    rejections: dict[str, int]
    var_observations: int  # periods with a VaR forecast to test
    var_breaches: int
    es_observations: int
    es_breaches: int


def drawdown_series(equity: Series) -> tuple[tuple[Decimal, ...], tuple[Decimal, ...]]:
    """(fraction of the running peak, money) below the running peak at each point."""
    fractions: list[Decimal] = []
    amounts: list[Decimal] = []
    peak: Decimal | None = None
    for value in equity.values:
        peak = value if peak is None or value > peak else peak
        amount = peak - value
        amounts.append(amount)
        fractions.append(amount / peak if peak > 0 else Decimal(0))
    return tuple(fractions), tuple(amounts)


def exceedances(
    equity: Series, forecasts: tuple[Decimal | None, ...]
) -> tuple[list[int], list[Decimal], int]:
    """(indexes i of ``equity`` where the loss from i-1 to i exceeded the forecast made at
    i-1, the period PnL at every i >= 1, the number of periods tested). Periods whose
    previous forecast is missing are not tested."""
    eq = equity.values
    pnl = [eq[i] - eq[i - 1] for i in range(1, len(eq))]
    hits = []
    tested = 0
    for i in range(1, len(eq)):
        forecast = forecasts[i - 1] if forecasts else None
        if forecast is None:
            continue
        tested += 1
        if -pnl[i - 1] > forecast:
            hits.append(i)
    return hits, pnl, tested


def var_breaches(data: ReportData) -> tuple[list[int], list[Decimal]]:
    """(indexes i of risk_equity where the loss from i-1 to i exceeded the VaR forecast at i-1,
    the period PnL at every i >= 1)."""
    hits, pnl, _ = exceedances(data.risk_equity, data.var_values)
    return hits, pnl


def daily_pnl(equity: Series, base: Decimal | None) -> tuple[tuple[date, Decimal], ...]:
    """PnL per UTC calendar day of the snapshots: the day's last equity less the last equity
    before the day (the first day: less ``base``, else the first snapshot's equity)."""
    closes: dict[date, Decimal] = {}
    for ts, value in zip(equity.ts_ns, equity.values, strict=True):
        # integer seconds: exact, no float on the way to the day
        day = datetime.fromtimestamp(ts // 1_000_000_000, tz=UTC).date()
        closes[day] = value
    if not closes:
        return ()
    previous = base if base is not None else equity.values[0]
    out = []
    for day in sorted(closes):
        out.append((day, closes[day] - previous))
        previous = closes[day]
    return tuple(out)


def report_stats(data: ReportData) -> ReportStats:
    eq = data.equity.values
    base = data.starting_cash if data.starting_cash else (eq[0] if eq else None)
    total = eq[-1] / base - 1 if eq and base else None
    fractions, amounts = drawdown_series(data.equity)
    var_hits, _, var_tested = exceedances(data.risk_equity, data.var_values)
    es_hits, _, es_tested = exceedances(data.risk_equity, data.es_values)
    return ReportStats(
        total_return=total,
        max_drawdown=max(fractions) if fractions else None,
        max_drawdown_amount=max(amounts) if amounts else None,
        final_equity=eq[-1] if eq else None,
        realized_pnl=data.realized_pnl.values[-1] if data.realized_pnl.values else None,
        unrealized_pnl=data.unrealized_pnl.values[-1] if data.unrealized_pnl.values else None,
        daily_pnl=daily_pnl(data.equity, base),
        orders=data.orders,
        fills=len(data.fills),
        rejections=dict(data.rejections),
        var_observations=var_tested,
        var_breaches=len(var_hits),
        es_observations=es_tested,
        es_breaches=len(es_hits),
    )
