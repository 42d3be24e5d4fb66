"""Risk gate app: order requests → one risk decision each → approved orders.

Every request gets exactly one decision on the risk-decisions topic, with every check's
inputs and result (decisions are data, not exceptions). Approved requests are forwarded
unchanged to the approved-orders topic. The per-symbol exposure the checks need lives in
Quix state keyed by symbol (order requests are keyed by symbol). Orders are valued at the
gate's own market price: the gate reads the trades topic too (co-partitioned by symbol,
aligned by event time) and keeps each symbol's last trade in the same state scope; the
price a requester claims is only checked against it (the collar). Each account's trading
state (ACTIVE / REDUCING / HALTED, the kill switch) comes from the control topic and Redis
through a :class:`~streams.control.TradingStateWatcher`: a halt rejects every new order of
the account within a second.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from quixstreams import State

from core.config import Settings
from core.errors import ConfigError
from core.metrics import RISK_DECISIONS
from schemas.models import Decision, OrderRequest
from streams.control import TradingStateWatcher
from streams.logic.restrictions import FoBanList, parse_fo_ban_list
from streams.logic.risk import (
    MarketPrice,
    OpenOrder,
    PreTradeRisk,
    RiskLimitsRaw,
    SymbolRiskState,
    apply_report,
)
from streams.runtime import StreamApp, correlation_headers, now_ns

log = logging.getLogger(__name__)

_MARKET = "market"


class FoBanFile:
    """NSE's F&O ban bulletin on disk, read again when the file changes (NSE publishes a new
    one each trading day). A file that cannot be parsed stops the gate at start, and later
    keeps the last good list (logged): refusing orders on a bad download is the operator's
    call, not an accident."""

    def __init__(self, path: Path | None, check_every_s: float = 10.0) -> None:
        self.path = path
        self.check_every_s = check_every_s
        self._mtime: float | None = None
        self._next_check = 0.0
        self._list: FoBanList | None = None
        if path is not None:
            self._load(initial=True)

    def current(self) -> FoBanList | None:
        if self.path is not None and time.monotonic() >= self._next_check:
            self._load(initial=False)
        return self._list

    def _load(self, *, initial: bool) -> None:
        assert self.path is not None
        self._next_check = time.monotonic() + self.check_every_s
        try:
            mtime = self.path.stat().st_mtime
            if mtime == self._mtime:
                return
            self._list = parse_fo_ban_list(self.path.read_text())
            self._mtime = mtime
            log.info(
                "F&O ban list loaded",
                extra={"trade_date": str(self._list.trade_date), "banned": len(self._list.symbols)},
            )
        except (OSError, ValueError) as exc:
            if initial:
                raise ConfigError(f"OMNIQUANT_RISK__FO_BAN_FILE: {exc}") from None
            log.error("F&O ban list not reloaded; keeping the last one", extra={"error": str(exc)})


class RiskGateProcessor:
    def __init__(self, settings: Settings, trading: TradingStateWatcher) -> None:
        self.risk = PreTradeRisk(RiskLimitsRaw.from_config(settings.risk))
        self.trading = trading
        self.fo_ban = FoBanFile(settings.risk.fo_ban_file)

    def on_record(self, value: dict[str, Any], state: State[str, Any]) -> dict[str, Any] | None:
        """A trade updates the symbol's market price and an execution report its open
        exposure (no output); an order gets a decision."""
        if "report_id" in value:
            self._on_report(value, state)
            return None
        if "client_order_id" not in value:
            market = state.get(_MARKET)
            ts = int(value["ts_event"])
            if market is None or ts >= market[1]:
                state.set(_MARKET, [int(value["price"]), ts])
            return None
        return self.on_order(value, state)

    def _on_report(self, report: dict[str, Any], state: State[str, Any]) -> None:
        key = f"open:{report['client_order_id']}"
        stored = state.get(key)
        if stored is None:  # not an order this gate approved, or already done
            return
        current = state.get("risk")
        exposure = SymbolRiskState.from_dict(current) if current is not None else SymbolRiskState()
        exposure, still_open = apply_report(
            exposure,
            OpenOrder.from_list(stored),
            str(report["exec_type"]),
            int(report.get("last_quantity") or 0),
        )
        state.set("risk", exposure.to_dict())
        if still_open is None:
            state.delete(key)
        else:
            state.set(key, still_open.to_list())

    def on_order(self, request: dict[str, Any], state: State[str, Any]) -> dict[str, Any]:
        order = OrderRequest.model_validate(request)
        market = state.get(_MARKET)
        seen = f"seen:{order.client_order_id}"
        duplicate = state.get(seen) is not None
        stored = state.get("risk")
        current = SymbolRiskState.from_dict(stored) if stored is not None else SymbolRiskState()
        decision, updated = self.risk.check(
            order,
            current,
            ts_init=now_ns(),
            trading=self.trading.of(order.account),
            market=MarketPrice.from_list(market) if market is not None else None,
            duplicate=duplicate,
            fo_ban=self.fo_ban.current(),
        )
        state.set(seen, 1)
        state.set("risk", updated.to_dict())
        RISK_DECISIONS.labels(decision.decision.value).inc()
        approved = decision.decision == Decision.APPROVED
        if approved:
            state.set(
                f"open:{order.client_order_id}", OpenOrder(order.side, order.quantity).to_list()
            )
        return {"decision": decision.model_dump(), "order": request if approved else None}


def build(settings: Settings, name: str) -> StreamApp:
    """The app under the stage name the registry gives it (its group and dead letters)."""
    stream = StreamApp(settings, name)
    processor = RiskGateProcessor(settings, TradingStateWatcher(settings).start())
    records = (
        stream.dataframe("orders.requests")
        .concat(stream.dataframe("market.trades"))
        .concat(stream.dataframe("execution.reports"))
    )
    outputs = records.apply(processor.on_record, stateful=True).filter(lambda o: o is not None)

    decisions = outputs.apply(lambda out: out["decision"])
    decisions = decisions.set_headers(correlation_headers("client_order_id"))
    decisions.to_topic(stream.topic("risk.decisions"))

    approved = outputs.filter(lambda out: out["order"] is not None).apply(lambda out: out["order"])
    approved = approved.set_headers(correlation_headers("client_order_id"))
    approved.to_topic(stream.topic("orders.approved"))
    return stream


def run(settings: Settings, *, name: str) -> None:
    build(settings, name).run()
