"""The walking skeleton end to end: feed → signals → risk gate → execution → ClickHouse.

Runs `omniquant run` exactly as a user would (a subprocess supervising one process per
stage) against the session's real Kafka and Redis, with chDB in a fresh directory, then
checks the audit trail in ClickHouse through `omniquant sql`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

TICKS = 3000
SYMBOLS = "AAPL,MSFT,SPY"


def _env(kafka_bootstrap: str, redis_url: str, prefix: str, state_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIQUANT_")}
    env.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "REDIS_URL": redis_url,
            "OMNIQUANT_TOPIC_PREFIX": prefix,
            "OMNIQUANT_STATE_DIR": str(state_dir),
            # Short event-time bars so a few thousand ticks give many crossovers.
            "OMNIQUANT_STRATEGY__BAR_INTERVAL_MS": "20",
            "OMNIQUANT_STRATEGY__FAST_WINDOW": "3",
            "OMNIQUANT_STRATEGY__SLOW_WINDOW": "8",
            "OMNIQUANT_STRATEGY__ORDER_QUANTITY": "100",
            # Entries are 100 shares (AAPL ~$23k, MSFT ~$42k, SPY ~$56k), reversals 200: a limit
            # between first entries (100 shares) and reversals makes the gate reject some.
            "OMNIQUANT_RISK__MAX_ORDER_NOTIONAL": "60000",
            "OMNIQUANT_RISK__MAX_POSITION_PER_SYMBOL": "1000",
            # Bars, marks and risk observations on the same short clock: 3 s of ticks give
            # ~130 observations, enough returns for VaR. With marks at the default 1 s the
            # paper account's snapshots came from its 12-20 fills and 3 marks a symbol:
            # 13-17 observations, against the 11 VaR needs.
            "OMNIQUANT_PORTFOLIO__MARK_INTERVAL_MS": "20",
            "OMNIQUANT_BARS__INTERVALS_MS": "[20, 1000]",
            "OMNIQUANT_RISK_METRICS__CADENCE_MS": "20",
            "OMNIQUANT_RISK_METRICS__WINDOW": "100",
            "OMNIQUANT_RISK_METRICS__MIN_RETURNS": "10",
        }
    )
    return env


def _sql(env: dict[str, str], query: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, "-m", "omniquant.cli", "sql", query, "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    rows: list[dict[str, Any]] = json.loads(out.stdout)
    return rows


@pytest.fixture(scope="module")
def pipeline_run(kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory):
    state_dir = tmp_path_factory.mktemp("e2e-state")
    prefix = f"e2e{os.getpid()}."
    env = _env(kafka_bootstrap, redis_url, prefix, state_dir)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "omniquant.cli",
            "run",
            "--ticks",
            str(TICKS),
            "--rate",
            "1000",
            "--symbols",
            SYMBOLS,
            "--no-live",
            "--drain-timeout",
            "120",
            "--seed",
            "11",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return proc, env


def test_run_exits_cleanly_with_summary(pipeline_run) -> None:
    proc, _ = pipeline_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "run finished cleanly" in proc.stdout
    assert "omniquant sql" in proc.stdout


def test_clickhouse_holds_every_trade_produced(pipeline_run) -> None:
    proc, env = pipeline_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = _sql(
        env,
        "SELECT count() AS n, uniqExact(_partition, _offset) AS distinct_offsets, "
        "uniqExact(symbol) AS symbols FROM omniquant.trades",
    )
    assert int(rows[0]["n"]) == TICKS
    assert int(rows[0]["distinct_offsets"]) == TICKS
    assert int(rows[0]["symbols"]) == len(SYMBOLS.split(","))


def test_every_order_request_has_exactly_one_risk_decision(pipeline_run) -> None:
    _, env = pipeline_run
    requests = _sql(env, "SELECT count() AS n FROM omniquant.order_requests")
    assert int(requests[0]["n"]) > 10, "the strategy should have produced orders"
    orphans = _sql(
        env,
        "SELECT r.client_order_id AS id, countIf(d.client_order_id != '') AS decisions "
        "FROM omniquant.order_requests AS r "
        "LEFT JOIN (SELECT client_order_id FROM omniquant.risk_decisions) AS d "
        "ON r.client_order_id = d.client_order_id "
        "GROUP BY r.client_order_id HAVING decisions != 1",
    )
    assert orphans == []
    decisions = _sql(
        env,
        "SELECT decision, count() AS n FROM omniquant.risk_decisions GROUP BY decision",
    )
    by_decision = {row["decision"]: int(row["n"]) for row in decisions}
    assert sum(by_decision.values()) == int(requests[0]["n"])
    assert by_decision.get("APPROVED", 0) > 0
    assert by_decision.get("REJECTED", 0) > 0, "the notional limit should reject reversals"
    reasons = _sql(
        env,
        "SELECT reason FROM omniquant.risk_decisions WHERE decision = 'REJECTED' LIMIT 1",
    )
    assert "notional" in reasons[0]["reason"]


def test_fills_match_approved_orders(pipeline_run) -> None:
    _, env = pipeline_run
    mismatches = _sql(
        env,
        "SELECT a.client_order_id AS id, a.side AS side, a.quantity AS qty, "
        "f.side AS fill_side, f.quantity AS fill_qty "
        "FROM (SELECT * FROM omniquant.approved_orders) AS a "
        "FULL OUTER JOIN (SELECT * FROM omniquant.fills) AS f "
        "ON a.client_order_id = f.client_order_id "
        "WHERE a.client_order_id = '' OR f.client_order_id = '' "
        "OR a.side != f.side OR a.quantity != f.quantity",
    )
    assert mismatches == []
    approved = _sql(
        env,
        "SELECT count() AS n FROM omniquant.risk_decisions WHERE decision = 'APPROVED'",
    )
    fills = _sql(env, "SELECT count() AS n FROM omniquant.fills")
    assert int(fills[0]["n"]) == int(approved[0]["n"]) > 0


def test_fill_prices_are_trade_prices_at_or_before_the_order(pipeline_run) -> None:
    _, env = pipeline_run
    bad = _sql(
        env,
        "SELECT f.client_order_id AS id FROM omniquant.fills AS f "
        "LEFT JOIN (SELECT DISTINCT symbol, price FROM omniquant.trades) AS t "
        "ON f.symbol = t.symbol AND f.price = t.price "
        "WHERE t.symbol = ''",
    )
    assert bad == []


def test_bars_positions_portfolio_and_risk_metrics_fill_during_the_run(pipeline_run) -> None:
    _, env = pipeline_run
    counts = _sql(
        env,
        "SELECT (SELECT count() FROM omniquant.bars) AS bars, "
        "(SELECT count() FROM omniquant.positions) AS positions, "
        "(SELECT count() FROM omniquant.portfolio) AS portfolio, "
        "(SELECT count() FROM omniquant.risk_metrics) AS risk_metrics",
    )[0]
    assert all(int(v) > 0 for v in counts.values()), counts
    metrics = _sql(
        env,
        "SELECT metric, count() AS n FROM omniquant.risk_metrics "
        "WHERE scope = 'paper' GROUP BY metric",
    )
    by_metric = {row["metric"]: int(row["n"]) for row in metrics}
    for name in ("VAR_99_HISTORICAL", "ES_975_HISTORICAL", "VAR_95_EWMA", "DRAWDOWN",
                 "MAX_DRAWDOWN", "DAILY_PNL", "EQUITY"):  # fmt: skip
        assert by_metric.get(name, 0) > 0, f"no {name} rows for the paper account: {by_metric}"
    # bars at both intervals, each internally consistent
    bad_bars = _sql(
        env,
        "SELECT count() AS n FROM omniquant.bars "
        "WHERE NOT (low <= least(open, close) AND high >= greatest(open, close) "
        "AND volume > 0 AND trade_count > 0 AND vwap BETWEEN low AND high)",
    )
    assert int(bad_bars[0]["n"]) == 0
    intervals = _sql(env, "SELECT DISTINCT interval_ms FROM omniquant.bars ORDER BY interval_ms")
    assert [int(r["interval_ms"]) for r in intervals] == [20, 1000]


def test_portfolio_equity_is_cash_plus_marked_positions_exactly(pipeline_run) -> None:
    _, env = pipeline_run
    rows = _sql(
        env,
        "SELECT count() AS n, countIf(equity != cash + net_exposure) AS broken, "
        "countIf(equity != starting_cash + realized_pnl + unrealized_pnl) AS broken_pnl "
        "FROM omniquant.portfolio",
    )[0]
    assert int(rows["n"]) > 0 and int(rows["broken"]) == 0 and int(rows["broken_pnl"]) == 0
    # the latest portfolio of each account agrees with the sum of its latest positions
    # (latest = last written: one partition per account, and per account and symbol)
    mismatch = _sql(
        env,
        "SELECT p.account AS account, p.unrealized_pnl AS book, s.unrealized AS positions "
        "FROM (SELECT account, argMax(unrealized_pnl, _offset) AS unrealized_pnl "
        "      FROM omniquant.portfolio GROUP BY account) AS p "
        "JOIN (SELECT account, sum(u) AS unrealized FROM "
        "      (SELECT account, symbol, argMax(unrealized_pnl, _offset) AS u "
        "       FROM omniquant.positions GROUP BY account, symbol) GROUP BY account) AS s "
        "ON p.account = s.account WHERE p.unrealized_pnl != s.unrealized",
    )
    assert mismatch == []
