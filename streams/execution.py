"""Paper execution app: approved orders → fills at the last trade price.

The price is found by an event-time as-of join with the trades topic (both keyed by symbol,
co-partitioned): the last trade at or before the order's timestamp. Replaying the topics
gives the same fills. An order with no trade before it is rejected with that reason.
Each order yields execution reports (NEW, then FILL or REJECTED) and a fill. Positions are
not kept here: the portfolio stage books every fill on ``fills`` (this venue's and any other
producer's) per account and symbol.
"""

from __future__ import annotations

from typing import Any

from core.config import Settings
from core.metrics import FILLS
from schemas.models import (
    ExecType,
    ExecutionReport,
    Fill,
    LiquiditySide,
    OrderRequest,
    OrderStatus,
)
from streams.runtime import StreamApp, correlation_headers, now_ns

VENUE = "PAPER"
JOIN_GRACE_MS = 5 * 60 * 1000


class PaperExecution:
    """Fills each order in full at the as-of trade price."""

    def on_order(self, joined: dict[str, Any]) -> dict[str, Any]:
        order = OrderRequest.model_validate(joined["order"])
        trade = joined["trade"]
        ts_init = now_ns()
        venue_order_id = f"{VENUE}-{order.client_order_id}"

        def report(
            suffix: str, exec_type: ExecType, status: OrderStatus, **fields: Any
        ) -> ExecutionReport:
            return ExecutionReport.model_validate(
                {
                    "report_id": f"{venue_order_id}-{suffix}",
                    "client_order_id": order.client_order_id,
                    "venue_order_id": venue_order_id,
                    "account": order.account,
                    "symbol": order.symbol,
                    "side": order.side,
                    "quantity": order.quantity,
                    "venue": VENUE,
                    "exec_type": exec_type,
                    "order_status": status,
                    "ts_event": order.ts_event,
                    "ts_init": ts_init,
                    **fields,
                }
            )

        if trade is None:
            rejected = report(
                "R",
                ExecType.REJECTED,
                OrderStatus.REJECTED,
                reason=f"no trade price for {order.symbol} at or before the order time",
            )
            return {"reports": [rejected.model_dump()], "fill": None}
        price = int(trade["price"])
        fill_ts = max(order.ts_event, int(trade["ts_event"]))
        accepted = report("N", ExecType.NEW, OrderStatus.NEW, leaves_quantity=order.quantity)
        filled = report(
            "F1",
            ExecType.FILL,
            OrderStatus.FILLED,
            last_quantity=order.quantity,
            last_price=price,
            cum_quantity=order.quantity,
            leaves_quantity=0,
            avg_price=price,
            ts_event=fill_ts,
        )
        fill = Fill(
            fill_id=f"{venue_order_id}-F1",
            client_order_id=order.client_order_id,
            venue_order_id=venue_order_id,
            account=order.account,
            symbol=order.symbol,
            side=order.side,
            quantity=order.quantity,
            price=price,
            liquidity_side=LiquiditySide.TAKER,
            venue=VENUE,
            ts_event=fill_ts,
            ts_init=ts_init,
        )
        FILLS.labels(VENUE).inc()
        return {
            "reports": [accepted.model_dump(), filled.model_dump()],
            "fill": fill.model_dump(),
        }


def _join(order: dict[str, Any], trade: dict[str, Any] | None) -> dict[str, Any]:
    return {"order": order, "trade": trade}


def build(settings: Settings, name: str) -> StreamApp:
    """The app under the stage name the registry gives it (its group and dead letters)."""
    stream = StreamApp(settings, name)
    execution = PaperExecution()
    orders = stream.dataframe("orders.approved")
    # The join keeps right-side records in state: keep only what pricing needs, and only
    # for a few minutes of event time (orders carry the time of the trade that caused them).
    trades = stream.dataframe("market.trades").apply(
        lambda t: {"price": t["price"], "ts_event": t["ts_event"]}
    )
    joined = orders.join_asof(trades, how="left", on_merge=_join, grace_ms=JOIN_GRACE_MS)
    outputs = joined.apply(execution.on_order)

    reports = outputs.apply(lambda out: out["reports"], expand=True)
    reports = reports.set_headers(correlation_headers("client_order_id"))
    reports.to_topic(stream.topic("execution.reports"))

    fills = outputs.filter(lambda out: out["fill"] is not None).apply(lambda out: out["fill"])
    fills = fills.set_headers(correlation_headers("client_order_id"))
    fills.to_topic(stream.topic("fills"))

    return stream


def run(settings: Settings, *, name: str) -> None:
    build(settings, name).run()
