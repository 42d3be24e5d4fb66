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
from dataclasses import replace
from pathlib import Path
from typing import Any

import redis
from quixstreams import State, message_context

from core.config import Settings
from core.errors import ConfigError
from core.logs import correlated
from core.metrics import RISK_DECISIONS
from core.topics import BACKTEST_PREFIX
from schemas.models import Decision, OrderRequest, OrderType
from streams.account_view import AccountView, ExposureBook
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
_HOLDERS = "holders"
_MARKED = "marked"
APPROVED_AT_HEADER = "approved_at_ns"
_correlation = correlation_headers("client_order_id")


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
    """Quix state per symbol: ``market`` (last trade), ``risk:<account>`` (the account's
    exposure in the symbol), ``open:<coid>`` (approved, unfinished orders), ``seen:<coid>``
    (decided ids) and ``holders`` (accounts with exposure, re-valued on trades)."""

    def __init__(
        self,
        settings: Settings,
        trading: TradingStateWatcher,
        accounts: AccountView,
        book: ExposureBook,
    ) -> None:
        self.limits = settings.risk
        self.fills_at_approval = settings.risk.backtest_fills_at_approval
        if self.fills_at_approval and not settings.topic_prefix.startswith(BACKTEST_PREFIX):
            raise ConfigError(
                "OMNIQUANT_RISK__BACKTEST_FILLS_AT_APPROVAL is for backtests only: the topic "
                f"prefix {settings.topic_prefix!r} is not a backtest namespace "
                f"({BACKTEST_PREFIX}<run id>.)"
            )
        self.trading = trading
        self.accounts = accounts
        self.book = book
        self.fo_ban = FoBanFile(settings.risk.fo_ban_file)
        self.mark_interval_ns = settings.portfolio.mark_interval_ms * 1_000_000
        self._checkers: dict[tuple[str, str, str], PreTradeRisk] = {}

    def checker(self, account: str, strategy: str, symbol: str) -> PreTradeRisk:
        """The checker with the limits in force for this account, strategy and symbol."""
        key = (account, strategy, symbol)
        found = self._checkers.get(key)
        if found is None:
            limits = self.limits.resolved(account, strategy, symbol)
            found = self._checkers[key] = PreTradeRisk(RiskLimitsRaw.from_config(limits))
        return found

    def on_record(self, value: dict[str, Any], state: State[str, Any]) -> dict[str, Any] | None:
        """A trade updates the symbol's market price and an execution report its open
        exposure (no output); an order gets a decision."""
        if "report_id" in value:
            self._on_report(value, state)
            return None
        if "client_order_id" not in value:
            self._on_trade(value, state)
            return None
        return self.on_order(value, state)

    def _on_trade(self, trade: dict[str, Any], state: State[str, Any]) -> None:
        market = state.get(_MARKET)
        ts = int(trade["ts_event"])
        if market is not None and ts < market[1]:
            return
        price = int(trade["price"])
        state.set(_MARKET, [price, ts])
        # Re-value this symbol in its holders' accounts now and then, so another
        # symbol's leverage check sees a recent price for it.
        holders = state.get(_HOLDERS)
        if holders and ts - int(state.get(_MARKED, 0)) >= self.mark_interval_ns:
            state.set(_MARKED, ts)
            symbol = str(trade["symbol"])
            entries = []
            for account in holders:
                exposure = self._exposure(state, account)
                rate = self.checker(account, "*", symbol).limits.account.margin_rate
                entries.append((account, symbol, exposure.worst, price, rate))
            try:
                self.book.mark(entries, at=_at())
            except redis.RedisError as exc:
                log.warning("exposure marks not written", extra={"error": repr(exc)})

    @staticmethod
    def _exposure(state: State[str, Any], account: str) -> SymbolRiskState:
        stored = state.get(f"risk:{account}")
        return SymbolRiskState.from_dict(stored) if stored is not None else SymbolRiskState()

    def _store_exposure(
        self,
        state: State[str, Any],
        account: str,
        symbol: str,
        exposure: SymbolRiskState,
        margin_rate: int,
    ) -> None:
        state.set(f"risk:{account}", exposure.to_dict())
        holders = list(state.get(_HOLDERS) or [])
        if not exposure.is_flat and account not in holders:
            state.set(_HOLDERS, [*holders, account])
        elif exposure.is_flat and account in holders:
            state.set(_HOLDERS, [a for a in holders if a != account])
        market = state.get(_MARKET)
        self.book.record(
            account,
            symbol,
            exposure.worst,
            int(market[0]) if market is not None else None,
            margin_rate,
            at=_at(),
        )

    def _on_report(self, report: dict[str, Any], state: State[str, Any]) -> None:
        key = f"open:{report['client_order_id']}"
        stored = state.get(key)
        if stored is None:  # not an order this gate approved, or already done
            return
        account, symbol = str(report["account"]), str(report["symbol"])
        exposure, still_open = apply_report(
            self._exposure(state, account),
            OpenOrder.from_list(stored),
            str(report["exec_type"]),
            int(report.get("last_quantity") or 0),
        )
        rate = self.checker(account, "*", symbol).limits.account.margin_rate
        try:
            self._store_exposure(state, account, symbol, exposure, rate)
        except redis.RedisError as exc:
            # Quix state holds the truth; the shared copy catches up at the next write.
            log.warning("exposure not shared", extra={"error": repr(exc)})
        if still_open is None:
            state.delete(key)
        else:
            state.set(key, still_open.to_list())

    def on_order(self, request: dict[str, Any], state: State[str, Any]) -> dict[str, Any]:
        order = OrderRequest.model_validate(request)
        checker = self.checker(order.account, order.strategy_id, order.symbol)
        market = state.get(_MARKET)
        seen = f"seen:{order.client_order_id}"
        duplicate = state.get(seen) is not None
        figures = self.accounts.of(order.account)
        context = self.book.context(
            account=order.account,
            symbol=order.symbol,
            client_order_id=order.client_order_id,
            ts_event=order.ts_event,
            figures=figures,
            starting_cash=self.accounts.starting_cash(order.account),
        )
        if not duplicate and context.error is None:
            # Across symbols (another partition) only the shared claim can tell.
            try:
                duplicate = not self.book.claim(order.client_order_id, _position())
            except redis.RedisError as exc:
                context = replace(context, error=repr(exc))
        current = self._exposure(state, order.account)
        decision, updated = checker.check(
            order,
            current,
            ts_init=now_ns(),
            trading=self.trading.of(order.account),
            market=MarketPrice.from_list(market) if market is not None else None,
            duplicate=duplicate,
            fo_ban=self.fo_ban.current(),
            account=context,
        )
        state.set(seen, 1)
        RISK_DECISIONS.labels(decision.decision.value).inc()
        with correlated(order.client_order_id):
            log.info(
                "risk decision",
                extra={"decision": decision.decision.value, "reason": decision.reason},
            )
        approved = decision.decision == Decision.APPROVED
        if approved and self.fills_at_approval and order.order_type == OrderType.MARKET:
            updated = updated.filled(order.side, order.quantity)  # no reports awaited
        elif approved:
            state.set(
                f"open:{order.client_order_id}", OpenOrder(order.side, order.quantity).to_list()
            )
        if approved:
            rate = checker.limits.account.margin_rate
            try:
                self._store_exposure(state, order.account, order.symbol, updated, rate)
                self.book.approved(order.account, order.client_order_id, order.ts_event, at=_at())
            except redis.RedisError as exc:
                log.warning("exposure not shared", extra={"error": repr(exc)})
        return {"decision": decision.model_dump(), "order": request if approved else None}


def _position() -> str:
    """The request's topic position: a replay of the same request carries the same."""
    return ":".join(map(str, _at()))


def _at() -> tuple[str, int, int]:
    """The input record being processed: (topic, partition, offset)."""
    context = message_context()
    return context.topic, context.partition, context.offset


def _approved_headers(value: Any, key: Any, ts: int, headers: Any) -> list[tuple[str, bytes]]:
    """Correlation id, plus when the gate approved (execution measures its latency)."""
    kept = [(k, v) for k, v in _correlation(value, key, ts, headers) if k != APPROVED_AT_HEADER]
    kept.append((APPROVED_AT_HEADER, str(now_ns()).encode()))
    return kept


def build(settings: Settings, name: str) -> StreamApp:
    """The app under the stage name the registry gives it (its group and dead letters)."""
    stream = StreamApp(
        settings,
        name,
        processing_guarantee="exactly-once" if settings.risk.exactly_once else "at-least-once",
        # Latency, not throughput. A gate reading several topics goes through Quix's
        # buffered poll: its consume() waits up to the poll timeout for a full buffer
        # (orders arrived in 1-2 s batches), and once a sparse partition (orders, reports)
        # is drained it waits for the broker's next fetch answer to learn the partition's
        # watermark — up to fetch.wait.max.ms (500 ms by default) per order. With
        # transactions, approved orders are visible downstream only once the checkpoint
        # commits.
        consumer_poll_timeout=0.02,
        consumer_extra={"fetch.wait.max.ms": 5},
        commit_interval=0.5,
        # Account-level checks read what the other symbols' partitions wrote to the shared
        # book: one event-time order over all partitions makes that a function of the
        # inputs, the same after a restart as in a run without one.
        event_time_order=settings.risk.event_time_order,
    )
    names = stream.names
    book = ExposureBook(
        settings, topics=(names.order_requests, names.trades, names.execution_reports)
    )
    # A restarted or rebalanced gate resumes at its committed offsets: the shared book goes
    # back to that point too, so a decision made again sees what it saw the first time.
    stream.on_assign(book.roll_back)
    # ...and keeps the history it needs for that only back to the last commit
    stream.on_commit(book.committed)
    processor = RiskGateProcessor(
        settings,
        TradingStateWatcher(settings).start(),
        AccountView(settings).start(),
        book,
    )
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
    approved = approved.set_headers(_approved_headers)
    approved.to_topic(stream.topic("orders.approved"))
    return stream


def run(settings: Settings, *, name: str) -> None:
    build(settings, name).run()
