"""What a report shows, as plain series, and its figures.

Everything here is data: :class:`ReportData` holds tuples of nanosecond timestamps and exact
``Decimal`` values (what ClickHouse gives for ``Decimal64(9)``), so a backtest can build one
without ClickHouse and hand it to :func:`omniquant.report.render_report` the same way
(:func:`omniquant.report.from_clickhouse` builds one from the audit store).
:func:`report_stats` computes the page's figures from it, with ``Decimal`` arithmetic only;
floats appear only in :mod:`omniquant.report.charts`, for plotting.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, localcontext
from typing import Any, Final

__all__ = [
    "MINUTES_PER_YEAR",
    "FillPoint",
    "Performance",
    "ReportData",
    "ReportStats",
    "RoundTrips",
    "Series",
    "daily_pnl",
    "drawdown_series",
    "exceedances",
    "minute_returns",
    "performance",
    "report_stats",
    "round_trips",
    "var_breaches",
]

#: trading minutes in a year (252 sessions of 6.5 hours): annualises per-minute returns
MINUTES_PER_YEAR: Final = 252 * 390
_MINUTE_NS: Final = 60_000_000_000


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
    performance: Performance = field(default_factory=lambda: Performance())
    trips: RoundTrips = field(default_factory=lambda: RoundTrips())
    turnover: Decimal | None = None  # traded notional / starting equity
    exposure: Decimal | None = None  # fraction of the equity series' span with a position


@dataclass(frozen=True)
class Performance:
    """Return figures of per-minute equity returns (:func:`minute_returns`)."""

    periods: int = 0  # minute returns
    annualised_return: Decimal | None = None  # (1 + total) ** (MINUTES_PER_YEAR / periods) - 1
    sharpe: Decimal | None = None  # mean / sample std × √MINUTES_PER_YEAR (no risk-free rate)
    sortino: Decimal | None = None  # mean / downside deviation × √MINUTES_PER_YEAR


@dataclass(frozen=True)
class RoundTrips:
    """Flat → position → flat, per symbol (a reversal closes one trip and opens the next)."""

    count: int = 0
    winners: int = 0
    pnl: tuple[Decimal, ...] = ()  # realised PnL of each closed trip, in closing order

    @property
    def hit_rate(self) -> Decimal | None:
        return Decimal(self.winners) / Decimal(self.count) if self.count else None


def minute_returns(equity: Series) -> list[Decimal]:
    """Simple returns between consecutive event-time minutes of ``equity``: each minute's
    value is its last snapshot's, carried over minutes without one (so a quiet minute is a
    zero return, not a gap), from the first snapshot's minute to the last's."""
    by_minute: dict[int, Decimal] = {}
    for ts, value in zip(equity.ts_ns, equity.values, strict=True):
        by_minute[ts // _MINUTE_NS] = value
    if not by_minute:
        return []
    series: list[Decimal] = []
    current = by_minute[min(by_minute)]
    for minute in range(min(by_minute), max(by_minute) + 1):
        current = by_minute.get(minute, current)
        series.append(current)
    return [b / a - 1 for a, b in itertools.pairwise(series) if a]


def performance(equity: Series, base: Decimal | None = None) -> Performance:
    """Annualised return, Sharpe and Sortino ratios of ``equity``'s minute returns (Decimal
    arithmetic at 28 digits; None where undefined: fewer than 2 returns, no dispersion)."""
    returns = minute_returns(equity)
    n = len(returns)
    if n == 0:
        return Performance()
    with localcontext() as ctx:
        ctx.prec = 28
        start = base if base else equity.values[0]
        growth = equity.values[-1] / start if start else None
        annualised = (
            growth ** (Decimal(MINUTES_PER_YEAR) / n) - 1
            if growth is not None and growth > 0
            else None
        )
        if n < 2:
            return Performance(n, annualised)
        mean = sum(returns, Decimal(0)) / n
        var = sum(((r - mean) ** 2 for r in returns), Decimal(0)) / (n - 1)
        root = Decimal(MINUTES_PER_YEAR).sqrt()
        sharpe = mean / var.sqrt() * root if var > 0 else None
        downside = sum((min(r, Decimal(0)) ** 2 for r in returns), Decimal(0)) / n
        sortino = mean / downside.sqrt() * root if downside > 0 else None
    return Performance(n, annualised, sharpe, sortino)


def round_trips(fills: tuple[FillPoint, ...]) -> RoundTrips:
    """Closed round trips of ``fills`` (in time order) at average cost, per symbol."""
    position: dict[str, Decimal] = {}
    cost: dict[str, Decimal] = {}  # average entry price of the open position
    trip_pnl: dict[str, Decimal] = {}
    closed: list[Decimal] = []
    for fill in sorted(fills, key=lambda f: f.ts_ns):
        qty = fill.quantity if fill.side == "BUY" else -fill.quantity
        pos = position.get(fill.symbol, Decimal(0))
        while qty:
            if pos == 0 or (pos > 0) == (qty > 0):  # opening or adding
                new = pos + qty
                cost[fill.symbol] = (
                    cost.get(fill.symbol, Decimal(0)) * abs(pos) + fill.price * abs(qty)
                ) / abs(new)
                pos, qty = new, Decimal(0)
                continue
            closing = min(abs(qty), abs(pos))
            sign = 1 if pos > 0 else -1
            trip_pnl[fill.symbol] = trip_pnl.get(fill.symbol, Decimal(0)) + sign * closing * (
                fill.price - cost[fill.symbol]
            )
            pos += closing if pos < 0 else -closing
            qty += closing if qty < 0 else -closing
            if pos == 0:
                closed.append(trip_pnl.pop(fill.symbol))
                cost.pop(fill.symbol, None)
        position[fill.symbol] = pos
    return RoundTrips(len(closed), sum(1 for p in closed if p > 0), tuple(closed))


def _exposure(data: ReportData) -> Decimal | None:
    """Fraction of the equity series' span (first to last snapshot) with any position open."""
    eq = data.equity.ts_ns
    if len(eq) < 2 or eq[-1] <= eq[0]:
        return None
    start, end = eq[0], eq[-1]
    open_positions: dict[str, Decimal] = {}
    since: int | None = None
    held = 0
    for fill in sorted(data.fills, key=lambda f: f.ts_ns):
        qty = fill.quantity if fill.side == "BUY" else -fill.quantity
        was_open = any(open_positions.values())
        open_positions[fill.symbol] = open_positions.get(fill.symbol, Decimal(0)) + qty
        now_open = any(open_positions.values())
        at = min(max(fill.ts_ns, start), end)
        if now_open and not was_open:
            since = at
        elif was_open and not now_open and since is not None:
            held += at - since
            since = None
    if since is not None:
        held += end - since
    return Decimal(held) / Decimal(end - start)


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
    notional = sum((f.quantity * f.price for f in data.fills), Decimal(0))
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
        performance=performance(data.equity, base),
        trips=round_trips(data.fills),
        turnover=notional / base if base else None,
        exposure=_exposure(data),
    )
