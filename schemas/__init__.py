"""Domain records, their Avro schemas and the one serde that turns them into Kafka bytes.

Records are pydantic models (``schemas.models``), one per Avro schema in ``schemas/avro``;
money is int64 fixed-point at scale 1e-9 (``to_fixed`` / ``from_fixed``). ``AvroSerde``
frames records as Avro single-object encoding, or in the Confluent wire format when a schema
registry is configured. ``schemas.registry`` (fingerprints) and ``schemas.compat`` (the
BACKWARD compatibility check) are tooling, importable from their modules.
"""

from schemas.fixedpoint import FixedPointError, from_fixed, to_fixed
from schemas.models import (
    MODEL_BY_AVRO_NAME,
    VALUE_MODELS,
    AggressorSide,
    Alert,
    AlertSeverity,
    Bar,
    ConsumerLag,
    Control,
    ControlType,
    Decision,
    ExecType,
    ExecutionReport,
    Fill,
    LagStatus,
    LiquiditySide,
    OrderRequest,
    OrderStatus,
    OrderType,
    PortfolioSnapshot,
    Position,
    Quote,
    Record,
    RiskCheck,
    RiskDecision,
    RiskMetric,
    Side,
    Signal,
    SignalDirection,
    TimeInForce,
    Trade,
    TradingState,
)
from schemas.serde import AvroSerde

__all__ = [
    "MODEL_BY_AVRO_NAME",
    "VALUE_MODELS",
    "AggressorSide",
    "Alert",
    "AlertSeverity",
    "AvroSerde",
    "Bar",
    "ConsumerLag",
    "Control",
    "ControlType",
    "Decision",
    "ExecType",
    "ExecutionReport",
    "Fill",
    "FixedPointError",
    "LagStatus",
    "LiquiditySide",
    "OrderRequest",
    "OrderStatus",
    "OrderType",
    "PortfolioSnapshot",
    "Position",
    "Quote",
    "Record",
    "RiskCheck",
    "RiskDecision",
    "RiskMetric",
    "Side",
    "Signal",
    "SignalDirection",
    "TimeInForce",
    "Trade",
    "TradingState",
    "from_fixed",
    "to_fixed",
]
