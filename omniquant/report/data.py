"""What a report shows, as plain series, and how to read it from the ClickHouse audit store.

Everything here is data: :class:`ReportData` holds tuples of nanosecond timestamps and exact
``Decimal`` values (what ClickHouse gives for ``Decimal64(9)``), so a backtest can build one
without ClickHouse and hand it to :func:`omniquant.report.render_report` the same way.
:func:`report_stats` computes the page's figures from it, with ``Decimal`` arithmetic only.

:func:`from_clickhouse` reads one namespace (topic prefix: every row's ``_topic`` starts with
it) and one account:

- ``portfolio``: equity, realized and unrealized PnL over time, the starting cash;
- ``risk_metrics`` (scope = the account): ``EQUITY`` and one ``VAR_*`` forecast per
  observation (99 % historical by preference), and ``DRAWDOWN`` as the stage saw it;
- ``fills``; ``order_requests`` (orders); ``risk_decisions`` and ``execution_reports``
  (rejections by reason);
- ``bars`` (closes of the finest interval that is not too dense), else ``trades``: prices.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from core.clickhouse import ClickHouse

__all__ = [
    "FillPoint",
    "ReportData",
    "ReportStats",
    "Series",
    "drawdown_series",
    "from_clickhouse",
    "report_stats",
    "var_breaches",
]

# The VaR forecast charted against the period PnL, in order of preference.
VAR_PREFERENCE = ("VAR_99_HISTORICAL", "VAR_975_HISTORICAL", "VAR_95_HISTORICAL")
# Bars per symbol above which a coarser interval is used for the price chart.
MAX_PRICE_POINTS = 5000


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
    starting_cash: Decimal | None = None
    equity: Series = field(default_factory=Series)
    realized_pnl: Series = field(default_factory=Series)
    unrealized_pnl: Series = field(default_factory=Series)
    # risk_metrics: the account's equity at each observation and the VaR forecast made then
    # (positive money loss over the next period); var_values[i] belongs to risk_equity.ts_ns[i].
    risk_equity: Series = field(default_factory=Series)
    var_metric: str | None = None
    var_values: tuple[Decimal | None, ...] = ()
    prices: dict[str, Series] = field(default_factory=dict)
    price_source: str = ""
    fills: tuple[FillPoint, ...] = ()
    orders: int = 0
    # "risk gate: <reason>" / "venue: <reason>" → count
    rejections: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.var_values and len(self.var_values) != len(self.risk_equity):
            raise ValueError("var_values must be aligned with risk_equity")


@dataclass(frozen=True)
class ReportStats:
    total_return: Decimal | None  # fraction of the starting equity
    max_drawdown: Decimal | None  # fraction of the running peak, >= 0
    max_drawdown_amount: Decimal | None
    final_equity: Decimal | None
    realized_pnl: Decimal | None
    unrealized_pnl: Decimal | None
    orders: int
    fills: int
    rejections: dict[str, int]
    var_observations: int  # periods with a forecast to test
    var_breaches: int


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


def var_breaches(data: ReportData) -> tuple[list[int], list[Decimal]]:
    """(indexes i of risk_equity where the loss from i-1 to i exceeded the VaR forecast at i-1,
    the period PnL at every i >= 1). Periods whose previous forecast is missing are not tested."""
    eq = data.risk_equity.values
    pnl = [eq[i] - eq[i - 1] for i in range(1, len(eq))]
    breaches = []
    for i in range(1, len(eq)):
        forecast = data.var_values[i - 1] if data.var_values else None
        if forecast is not None and -pnl[i - 1] > forecast:
            breaches.append(i)
    return breaches, pnl


def report_stats(data: ReportData) -> ReportStats:
    eq = data.equity.values
    base = data.starting_cash if data.starting_cash else (eq[0] if eq else None)
    total = eq[-1] / base - 1 if eq and base else None
    fractions, amounts = drawdown_series(data.equity)
    breaches, _ = var_breaches(data)
    tested = sum(1 for v in data.var_values[:-1] if v is not None) if data.var_values else 0
    return ReportStats(
        total_return=total,
        max_drawdown=max(fractions) if fractions else None,
        max_drawdown_amount=max(amounts) if amounts else None,
        final_equity=eq[-1] if eq else None,
        realized_pnl=data.realized_pnl.values[-1] if data.realized_pnl.values else None,
        unrealized_pnl=data.unrealized_pnl.values[-1] if data.unrealized_pnl.values else None,
        orders=data.orders,
        fills=len(data.fills),
        rejections=dict(data.rejections),
        var_observations=tested,
        var_breaches=len(breaches),
    )


# ---- ClickHouse -------------------------------------------------------------------------
def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _latest_namespace(client: ClickHouse, db: str) -> str | None:
    """The prefix of the namespace written last (by ingestion time) to portfolio or fills."""
    for table, logical in (
        ("portfolio", "portfolio"),
        ("fills", "fills"),
        ("trades", "market.trades"),
    ):
        rows = client.query(
            f"SELECT _topic FROM `{db}`.`{table}` ORDER BY _ingested_at DESC LIMIT 1"
        ).rows
        if rows and str(rows[0][0]).endswith(logical):
            return str(rows[0][0])[: -len(logical)]
    return None


def _busiest_account(client: ClickHouse, db: str, topic: str) -> str | None:
    for table in ("portfolio", "fills", "order_requests"):
        rows = client.query(
            f"SELECT account FROM `{db}`.`{table}` WHERE _topic = {_quote(topic + table)} "
            "GROUP BY account ORDER BY count() DESC, account LIMIT 1"
        ).rows
        if rows:
            return str(rows[0][0])
    return None


def from_clickhouse(
    client: ClickHouse, database: str, *, account: str | None = None, prefix: str | None = None
) -> ReportData:
    """Read one namespace's data for one account.

    ``prefix`` None: the namespace written last. ``account`` None: the account with the most
    portfolio snapshots (else fills, else orders) in that namespace.
    """
    db = database
    ns = prefix if prefix is not None else _latest_namespace(client, db)
    if ns is None:
        return ReportData(namespace=None, account=account)

    def topic(logical: str) -> str:
        return _quote(ns + logical)

    acct = account if account is not None else _busiest_account(client, db, ns)
    if acct is None:
        return ReportData(namespace=ns, account=None)
    a = _quote(acct)

    portfolio = client.query(
        f"SELECT ts_event, equity, realized_pnl, unrealized_pnl, starting_cash "
        f"FROM `{db}`.portfolio WHERE _topic = {topic('portfolio')} AND account = {a} "
        "ORDER BY ts_event, _partition, _offset"
    ).rows
    starting_cash = Decimal(portfolio[0][4]) if portfolio else None

    risk = client.query(
        f"SELECT metric, ts_event, value FROM `{db}`.risk_metrics "
        f"WHERE _topic = {topic('risk.metrics')} AND scope = {a} "
        "AND (metric = 'EQUITY' OR metric LIKE 'VAR\\_%') AND metric != 'VAR_BACKTEST_EXCEPTIONS' "
        "ORDER BY ts_event, _partition, _offset"
    ).rows
    by_metric: dict[str, dict[int, Decimal]] = {}
    for metric, ts, value in risk:
        by_metric.setdefault(str(metric), {})[int(ts)] = Decimal(value)
    var_names = [m for m in by_metric if m.startswith("VAR_")]
    var_metric = next((m for m in VAR_PREFERENCE if m in by_metric), None)
    if var_metric is None and var_names:
        var_metric = max(var_names, key=lambda m: len(by_metric[m]))
    equity_points = sorted(by_metric.get("EQUITY", {}).items())
    risk_equity = Series.of(equity_points)
    forecasts = by_metric.get(var_metric, {}) if var_metric else {}
    var_values = tuple(forecasts.get(ts) for ts, _ in equity_points) if var_metric else ()

    fills = client.query(
        f"SELECT ts_event, symbol, side, quantity, price FROM `{db}`.fills "
        f"WHERE _topic = {topic('fills')} AND account = {a} ORDER BY ts_event, _partition, _offset"
    ).rows
    fill_points = tuple(
        FillPoint(int(ts), str(sym), str(side), Decimal(q), Decimal(p))
        for ts, sym, side, q, p in fills
    )
    orders = int(
        client.query(
            f"SELECT count() FROM `{db}`.order_requests "
            f"WHERE _topic = {topic('orders.requests')} AND account = {a}"
        ).rows[0][0]
    )
    rejections: Counter[str] = Counter()
    for reason, n in client.query(
        f"SELECT reason, count() FROM `{db}`.risk_decisions WHERE _topic = "
        f"{topic('risk.decisions')} AND account = {a} AND decision = 'REJECTED' GROUP BY reason"
    ).rows:
        rejections[f"risk gate: {reason}"] += int(n)
    for reason, n in client.query(
        f"SELECT ifNull(reason, ''), count() FROM `{db}`.execution_reports WHERE _topic = "
        f"{topic('execution.reports')} AND account = {a} AND exec_type = 'REJECTED' "
        "GROUP BY ALL"
    ).rows:
        rejections[f"venue: {reason or 'no reason given'}"] += int(n)

    prices, source = _prices(client, db, ns, sorted({f.symbol for f in fill_points}))
    return ReportData(
        title=f"OmniQuant report — {acct}",
        namespace=ns,
        account=acct,
        starting_cash=starting_cash,
        equity=Series.of([(r[0], r[1]) for r in portfolio]),
        realized_pnl=Series.of([(r[0], r[2]) for r in portfolio]),
        unrealized_pnl=Series.of([(r[0], r[3]) for r in portfolio]),
        risk_equity=risk_equity,
        var_metric=var_metric,
        var_values=var_values,
        prices=prices,
        price_source=source,
        fills=fill_points,
        orders=orders,
        rejections=dict(sorted(rejections.items())),
    )


def _prices(
    client: ClickHouse, db: str, ns: str, symbols: list[str]
) -> tuple[dict[str, Series], str]:
    """Closes per symbol (the symbols traded; all when none was): bars of the finest interval
    with at most MAX_PRICE_POINTS per symbol (else the coarsest), else trades."""
    bars_topic = _quote(ns + "market.bars")
    where = f"_topic = {bars_topic}"
    if symbols:
        where += " AND symbol IN (" + ", ".join(_quote(s) for s in symbols) + ")"
    intervals = client.query(
        f"SELECT interval_ms, max(n) FROM (SELECT interval_ms, symbol, count() AS n "
        f"FROM `{db}`.bars WHERE {where} GROUP BY interval_ms, symbol) "
        "GROUP BY interval_ms ORDER BY interval_ms"
    ).rows
    if intervals:
        fine = [int(i) for i, n in intervals if int(n) <= MAX_PRICE_POINTS]
        interval = fine[0] if fine else int(intervals[-1][0])
        rows = client.query(
            f"SELECT symbol, ts_event + {interval} * 1000000, close FROM `{db}`.bars "
            f"WHERE {where} AND interval_ms = {interval} ORDER BY symbol, ts_event"
        ).rows
        source = f"bar closes ({interval} ms bars)"
    else:
        where = f"_topic = {_quote(ns + 'market.trades')}"
        if symbols:
            where += " AND symbol IN (" + ", ".join(_quote(s) for s in symbols) + ")"
        rows = client.query(
            f"SELECT symbol, ts_event, price FROM `{db}`.trades WHERE {where} "
            f"ORDER BY symbol, ts_event LIMIT {MAX_PRICE_POINTS * 4} BY symbol"
        ).rows
        source = "trade prices"
    grouped: dict[str, list[tuple[int, Decimal]]] = {}
    for sym, ts, price in rows:
        grouped.setdefault(str(sym), []).append((int(ts), Decimal(price)))
    return {s: Series.of(points) for s, points in grouped.items()}, source if rows else ""
