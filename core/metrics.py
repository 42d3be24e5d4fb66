"""Prometheus metrics shared by every long-running component.

Each process serves ``/metrics`` on ``OMNIQUANT_METRICS_PORT`` (0 = off). Money gauges are
floats only because Prometheus has no other type; ledgers stay exact ints.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from core.health import HEALTH, Health

MESSAGES_IN = Counter(
    "omniquant_messages_in_total", "Records consumed and processed", ["app", "topic"]
)
MESSAGES_OUT = Counter("omniquant_messages_out_total", "Records produced", ["app", "topic"])
DEAD_LETTERS = Counter(
    "omniquant_dead_letters_total",
    "Records sent to a dead-letter topic",
    ["app", "topic", "error"],
)
RISK_DECISIONS = Counter("omniquant_risk_decisions_total", "Pre-trade risk decisions", ["decision"])
FILLS = Counter("omniquant_fills_total", "Fills produced by the execution consumer", ["venue"])
REDIS_RETRIES = Counter(
    "omniquant_redis_retries_total", "Redis commands retried after a connection error", ["role"]
)
BOOK_WRITE_BACKS = Counter(
    "omniquant_risk_book_write_backs_total",
    "Times a risk-gate process wrote its exposure book back into a Redis that had lost it",
)
SINK_ROWS = Counter("omniquant_sink_rows_total", "Rows written to ClickHouse", ["table"])
LATE_TRADES = Counter(
    "omniquant_late_trades_total", "Trades older than the current bar, ignored by signals", []
)
BARS = Counter("omniquant_bars_total", "Bars published", ["interval_ms"])
BAR_LATE_TRADES = Counter(
    "omniquant_bar_late_trades_total",
    "Trades whose bar had closed (sent to the late-trades topic)",
    ["interval_ms"],
)
BAR_TRADES_LEFT_OUT = Counter(
    "omniquant_bar_trades_left_out_total",
    "Trades the bar rule kept out of prices (volume-only) or out of the bar (excluded)",
    ["use", "reason"],
)
APP_UP = Gauge("omniquant_app_up", "1 while the app runs", ["app"])
EVENT_PROCESSING = Histogram(
    "event_processing_seconds",
    "Wall time a stage spends handling one consumed record (or one batch, for batching stages)",
    ["app"],
    buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5),
)
ERRORS = Counter(
    "errors_total",
    "Errors a component handled and survived (dead letters, venue errors, write retries ...)",
    ["app", "kind"],
)

# ---- execution (streams/execution.py), labelled by venue --------------------------------
ORDERS_SUBMITTED = Counter(
    "trading_orders_submitted_total", "Orders sent to a venue (once per order)", ["venue"]
)
ORDERS_FILLED = Counter("trading_orders_filled_total", "Orders filled in full", ["venue"])
ORDERS_REJECTED = Counter(
    "trading_orders_rejected_total",
    "Orders rejected; reason is a code (VENUE_REJECTED, VENUE_UNAVAILABLE, HALTED)",
    ["venue", "reason"],
)
ORDER_LATENCY = Histogram(
    "trading_order_latency_seconds",
    "Wall time from the risk gate's approval to the venue's acknowledgement",
    ["venue"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
TRADES = Counter(
    "trading_trades_total",
    "Executions (fills and partial fills) reported by a venue",
    ["venue", "side"],
)
VENUE_UP = Gauge(
    "trading_venue_up",
    "1 while the execution consumer's venue answers, 0 while it does not",
    ["venue"],
)
ORDER_EVENTS_REFUSED = Counter(
    "trading_order_events_refused_total",
    "Venue events the order state machine refused to apply (e.g. a fill after FILLED)",
    ["venue", "reason"],
)


def serve_metrics(
    port: int,
    *,
    addr: str = "0.0.0.0",  # noqa: S104 - scraped from other containers
    health: Health | None = None,
) -> ThreadingHTTPServer | None:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on ``port`` from a daemon thread.

    ``/metrics``: the Prometheus exposition (text, or OpenMetrics when asked for).
    ``/healthz``: 200 while every liveness check of ``health`` (default: the process's
    :data:`core.health.HEALTH`) passes, 503 otherwise. ``/readyz``: the same over the
    readiness checks. Both answer JSON with each check's reason. Port 0: nothing is served
    (returns None); otherwise the running server (``shutdown()`` stops it).
    """
    if not port:
        return None
    checks = health or HEALTH

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._send(200, content_type, encoder(REGISTRY))
            elif path in ("/healthz", "/readyz"):
                report = checks.liveness() if path == "/healthz" else checks.readiness()
                body = json.dumps(report.as_json(), sort_keys=True).encode()
                self._send(200 if report.ok else 503, "application/json", body)
            else:
                self._send(
                    404, "text/plain; charset=utf-8", b"not found: /metrics /healthz /readyz\n"
                )

        def _send(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # scraped every few seconds (the supervisor: every 0.5 s); not worth a line

    server = ThreadingHTTPServer((addr, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server


# ---- market data feeds (producers/) ----------------------------------------------------
MARKET_DATA_MESSAGES = Counter(
    "market_data_messages_total", "Normalized records produced by feeds", ["source", "type"]
)
MARKET_DATA_LAG = Histogram(
    "market_data_lag_seconds",
    "Ingest time minus event time of feed records",
    ["source"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15, 60, 300),
)
MARKET_DATA_ERRORS = Counter(
    "market_data_errors_total",
    "Feed errors (malformed frames, disconnects ...)",
    ["source", "reason"],
)
MARKET_DATA_STALE = Gauge(
    "market_data_stale",
    "1 while a subscribed feed has sent nothing for the staleness limit",
    ["source"],
)
MARKET_DATA_RECONNECTS = Counter(
    "market_data_reconnects_total", "Reconnect attempts after a dropped feed", ["source"]
)


# ---- portfolio and risk (labelled by account) ------------------------------------------
PORTFOLIO_EQUITY = Gauge(
    "trading_portfolio_equity", "Account equity: cash + marked positions", ["account"]
)
POSITION_VALUE = Gauge(
    "trading_position_value", "Marked value of a position (signed)", ["account", "symbol"]
)
DAILY_PNL = Gauge(
    "trading_daily_pnl", "PnL since the start of the session day (exchange time zone)", ["account"]
)
PNL_CHANGES = Histogram(
    "trading_pnl",
    "Equity change per risk observation (bar close), in account currency",
    ["account"],
    buckets=(-10_000, -2_500, -1_000, -250, -100, -10, 0, 10, 100, 250, 1_000, 2_500, 10_000),
)
VALUE_AT_RISK = Gauge(
    "trading_var",
    "Value at risk over one observation, positive loss",
    ["account", "method", "level"],
)
EXPECTED_SHORTFALL = Gauge(
    "trading_expected_shortfall", "Expected shortfall (CVaR), positive loss", ["account", "level"]
)
DRAWDOWN = Gauge("trading_drawdown", "Current drawdown from the equity peak (0..1)", ["account"])
MAX_DRAWDOWN = Gauge("trading_max_drawdown", "Largest drawdown so far (0..1)", ["account"])
DAILY_LOSS_LIMIT = Gauge(
    "trading_daily_loss_limit",
    "The account's configured daily loss limit, positive, in account currency",
    ["account"],
)
ACCOUNT_STATE = Gauge(
    "trading_account_state", "Account trading state: 0 ACTIVE, 1 REDUCING, 2 HALTED", ["account"]
)


# ---- consumer-group lag (the lag-monitor stage), labelled group, topic, partition ------
CONSUMERGROUP_LAG = Gauge(
    "kafka_consumergroup_lag",
    "Records a consumer group is behind on a partition (end offset - committed offset)",
    ["group", "topic", "partition"],
)
CONSUMERGROUP_LAG_SECONDS = Gauge(
    "kafka_consumergroup_lag_seconds",
    "Age in seconds of the next record a consumer group has not consumed (0 when caught up)",
    ["group", "topic", "partition"],
)
KAFKA_BROKERS = Gauge(
    "kafka_brokers", "Brokers in the cluster's metadata, as the lag monitor last read it", []
)
KAFKA_CLUSTER_UP = Gauge(
    "kafka_cluster_up", "1 while the lag monitor can read cluster metadata, 0 while it cannot", []
)
CONSUMERGROUP_STATUS = Gauge(
    "kafka_consumergroup_status",
    "Burrow-style partition status: 0 OK, 1 WARN, 2 STALL, 3 STOP, 4 ERROR",
    ["group", "topic", "partition"],
)
