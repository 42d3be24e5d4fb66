"""Read a :class:`~omniquant.report.data.ReportData` from the ClickHouse audit store.

:func:`from_clickhouse` reads one namespace (topic prefix: every row's ``_topic`` starts with
it) and one account, optionally one symbol:

- ``portfolio``: equity, realized and unrealized PnL over time, the starting cash;
- ``risk_metrics`` (scope = the account): ``EQUITY`` and one ``VAR_*`` forecast per
  observation (99 % historical by preference) with its ``ES_*`` twin;
- ``fills``; ``order_requests`` (orders); ``risk_decisions`` and ``execution_reports``
  (rejections by reason) — restricted to ``symbol`` when one is given;
- ``bars`` (closes of the finest interval that is not too dense), else ``trades``: prices.

Money comes back as ``Decimal`` (``Decimal64(9)``) and stays so; nothing here renders.
"""

from __future__ import annotations

from collections import Counter
from decimal import Decimal

from core.clickhouse import ClickHouse
from omniquant.report.data import FillPoint, ReportData, Series

__all__ = ["MAX_PRICE_POINTS", "VAR_PREFERENCE", "from_clickhouse"]

# The VaR forecast charted against the period PnL, in order of preference.
VAR_PREFERENCE = ("VAR_99_HISTORICAL", "VAR_975_HISTORICAL", "VAR_95_HISTORICAL")
# Bars per symbol above which a coarser interval is used for the price chart.
MAX_PRICE_POINTS = 5000


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
    for table, logical in (
        ("portfolio", "portfolio"),
        ("fills", "fills"),
        ("order_requests", "orders.requests"),
    ):
        rows = client.query(
            f"SELECT account FROM `{db}`.`{table}` WHERE _topic = {_quote(topic + logical)} "
            "GROUP BY account ORDER BY count() DESC, account LIMIT 1"
        ).rows
        if rows:
            return str(rows[0][0])
    return None


def from_clickhouse(
    client: ClickHouse,
    database: str,
    *,
    account: str | None = None,
    symbol: str | None = None,
    prefix: str | None = None,
) -> ReportData:
    """Read one namespace's data for one account (and one ``symbol``'s order flow, if given).

    ``prefix`` None: the namespace written last. ``account`` None: the account with the most
    portfolio snapshots (else fills, else orders) in that namespace.
    """
    db = database
    ns = prefix if prefix is not None else _latest_namespace(client, db)
    if ns is None:
        return ReportData(namespace=None, account=account, symbol=symbol)

    def topic(logical: str) -> str:
        return _quote(ns + logical)

    acct = account if account is not None else _busiest_account(client, db, ns)
    if acct is None:
        return ReportData(namespace=ns, account=None, symbol=symbol)
    a = _quote(acct)
    only = f" AND symbol = {_quote(symbol)}" if symbol is not None else ""

    portfolio = client.query(
        f"SELECT ts_event, equity, realized_pnl, unrealized_pnl, starting_cash "
        f"FROM `{db}`.portfolio WHERE _topic = {topic('portfolio')} AND account = {a} "
        "ORDER BY ts_event, _partition, _offset"
    ).rows
    starting_cash = Decimal(portfolio[0][4]) if portfolio else None

    risk = client.query(
        f"SELECT metric, ts_event, value FROM `{db}`.risk_metrics "
        f"WHERE _topic = {topic('risk.metrics')} AND scope = {a} "
        "AND (metric = 'EQUITY' OR metric LIKE 'VAR\\_%' OR metric LIKE 'ES\\_%') "
        "AND metric != 'VAR_BACKTEST_EXCEPTIONS' "
        "ORDER BY ts_event, _partition, _offset"
    ).rows
    by_metric: dict[str, dict[int, Decimal]] = {}
    for metric, ts, value in risk:
        by_metric.setdefault(str(metric), {})[int(ts)] = Decimal(value)
    var_names = [m for m in by_metric if m.startswith("VAR_")]
    var_metric = next((m for m in VAR_PREFERENCE if m in by_metric), None)
    if var_metric is None and var_names:
        var_metric = max(var_names, key=lambda m: len(by_metric[m]))
    es_metric = "ES_" + var_metric.removeprefix("VAR_") if var_metric else None
    if es_metric not in by_metric:
        es_metric = None
    equity_points = sorted(by_metric.get("EQUITY", {}).items())
    risk_equity = Series.of(equity_points)

    def aligned(metric: str | None) -> tuple[Decimal | None, ...]:
        if metric is None:
            return ()
        forecasts = by_metric[metric]
        return tuple(forecasts.get(ts) for ts, _ in equity_points)

    fills = client.query(
        f"SELECT ts_event, symbol, side, quantity, price FROM `{db}`.fills "
        f"WHERE _topic = {topic('fills')} AND account = {a}{only} "
        "ORDER BY ts_event, _partition, _offset"
    ).rows
    fill_points = tuple(
        FillPoint(int(ts), str(sym), str(side), Decimal(q), Decimal(p))
        for ts, sym, side, q, p in fills
    )
    orders = int(
        client.query(
            f"SELECT count() FROM `{db}`.order_requests "
            f"WHERE _topic = {topic('orders.requests')} AND account = {a}{only}"
        ).rows[0][0]
    )
    rejections: Counter[str] = Counter()
    for reason, n in client.query(
        f"SELECT reason, count() FROM `{db}`.risk_decisions WHERE _topic = "
        f"{topic('risk.decisions')} AND account = {a}{only} AND decision = 'REJECTED' "
        "GROUP BY reason"
    ).rows:
        rejections[f"risk gate: {reason}"] += int(n)
    for reason, n in client.query(
        f"SELECT ifNull(reason, ''), count() FROM `{db}`.execution_reports WHERE _topic = "
        f"{topic('execution.reports')} AND account = {a}{only} AND exec_type = 'REJECTED' "
        "GROUP BY ALL"
    ).rows:
        rejections[f"venue: {reason or 'no reason given'}"] += int(n)

    symbols = [symbol] if symbol is not None else sorted({f.symbol for f in fill_points})
    prices, source = _prices(client, db, ns, symbols)
    return ReportData(
        title=f"OmniQuant report — {acct}" + (f" — {symbol}" if symbol else ""),
        namespace=ns,
        account=acct,
        symbol=symbol,
        starting_cash=starting_cash,
        equity=Series.of([(r[0], r[1]) for r in portfolio]),
        realized_pnl=Series.of([(r[0], r[2]) for r in portfolio]),
        unrealized_pnl=Series.of([(r[0], r[3]) for r in portfolio]),
        risk_equity=risk_equity,
        var_metric=var_metric,
        var_values=aligned(var_metric),
        es_metric=es_metric,
        es_values=aligned(es_metric),
        prices=prices,
        price_source=source,
        fills=fill_points,
        orders=orders,
        rejections=dict(sorted(rejections.items())),
    )


def _prices(
    client: ClickHouse, db: str, ns: str, symbols: list[str]
) -> tuple[dict[str, Series], str]:
    """Closes per symbol (the symbols given; all when none is): bars of the finest interval
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
        # a bar's close is the price at its end
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
