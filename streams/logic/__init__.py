"""Pure state machines of the pipeline. No I/O and no clock: the stream apps wire them to
Kafka and to Quix state (each snapshots to a JSON-able dict and restores from it).

- :class:`SmaCrossover` — trades → event-time bar closes → fast/slow SMA crossovers
- :class:`BarBuilder` — trades → event-time OHLCV bars (VWAP, count), grace, late trades
- :func:`signal_to_order` — signal → target-position order request, deterministic id
- :class:`PreTradeRisk` — order request + :class:`SymbolRiskState` → risk decision
- :class:`PositionLedger` — fills and marks → positions with exact average-cost PnL
- :class:`SymbolBook`, :class:`AccountBook` — positions per symbol, books per account
- :class:`RiskMetricsEngine` — equity observations → VaR, ES, volatility, drawdown, daily PnL
- :class:`VarBacktester` — VaR forecasts vs outcomes → Kupiec, Christoffersen, Basel zone
- :class:`AccountRisk` — bar-close sampling of an account's equity + the two above
- :class:`TradingStates` — the kill switch: ACTIVE / REDUCING / HALTED per account
"""

from streams.logic.account_risk import AccountRisk, RiskObservation
from streams.logic.ohlcv import BarBuilder, BarRule, ClosedBar
from streams.logic.orders import client_order_id_for, signal_to_order, target_position
from streams.logic.portfolio import AccountBook, MarkSchedule, SymbolBook
from streams.logic.positions import PositionLedger
from streams.logic.restrictions import FoBanList, parse_fo_ban_list
from streams.logic.risk import (
    MarketPrice,
    OpenOrder,
    PreTradeRisk,
    RiskLimitsRaw,
    SymbolRiskState,
    apply_report,
)
from streams.logic.sma import Crossover, SmaCrossover, TradeResult
from streams.logic.trading_state import ScopeState, TradingStates
from streams.logic.var import RiskConfig, RiskMetricsEngine, RiskSnapshot
from streams.logic.var_backtest import BacktestReport, VarBacktester

__all__ = [
    "AccountBook",
    "AccountRisk",
    "BacktestReport",
    "BarBuilder",
    "BarRule",
    "ClosedBar",
    "Crossover",
    "FoBanList",
    "MarkSchedule",
    "MarketPrice",
    "OpenOrder",
    "PositionLedger",
    "PreTradeRisk",
    "RiskConfig",
    "RiskLimitsRaw",
    "RiskMetricsEngine",
    "RiskObservation",
    "RiskSnapshot",
    "ScopeState",
    "SmaCrossover",
    "SymbolBook",
    "SymbolRiskState",
    "TradeResult",
    "TradingStates",
    "VarBacktester",
    "apply_report",
    "client_order_id_for",
    "parse_fo_ban_list",
    "signal_to_order",
    "target_position",
]
