"""Pure state machines of the pipeline. No I/O and no clock: the stream apps wire them to
Kafka and to Quix state (each snapshots to a JSON-able dict and restores from it).

- :class:`SmaCrossover` — trades → event-time bar closes → fast/slow SMA crossovers
- :func:`signal_to_order` — signal → target-position order request, deterministic id
- :class:`PreTradeRisk` — order request + :class:`SymbolRiskState` → risk decision
- :class:`PositionLedger` — fills and marks → positions with exact average-cost PnL
"""

from streams.logic.orders import client_order_id_for, signal_to_order, target_position
from streams.logic.positions import PositionLedger
from streams.logic.risk import PreTradeRisk, RiskLimitsRaw, SymbolRiskState
from streams.logic.sma import Crossover, SmaCrossover, TradeResult

__all__ = [
    "Crossover",
    "PositionLedger",
    "PreTradeRisk",
    "RiskLimitsRaw",
    "SmaCrossover",
    "SymbolRiskState",
    "TradeResult",
    "client_order_id_for",
    "signal_to_order",
    "target_position",
]
