"""Domain records: one pydantic model per Avro value schema in ``schemas/avro``.

Conventions (applied everywhere):
- Prices, quantities and money are ``int`` fixed-point at scale 1e-9 (see ``fixedpoint``).
- ``ts_event``: when it happened (venue/event time), ``ts_init``: when we created the record;
  both int64 UTC nanoseconds since the Unix epoch.
- Enums are string enums whose values are the Avro enum symbols.
Vendor SDK types never appear here; adapters convert at the edge.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import BaseModel, ConfigDict, Field


@dataclass(frozen=True, slots=True)
class FixedPointField:
    """Marks an int field as fixed-point money/quantity at scale 1e-9 (ClickHouse Decimal64(9))."""


@dataclass(frozen=True, slots=True)
class TimestampNsField:
    """Marks an int field as a UTC-nanosecond timestamp (ClickHouse DateTime64(9, 'UTC'))."""


_I64 = Field(ge=-(2**63), le=2**63 - 1)
FixedPoint = Annotated[int, _I64, FixedPointField()]
PositiveFixedPoint = Annotated[int, Field(gt=0, le=2**63 - 1), FixedPointField()]
TimestampNs = Annotated[int, _I64, TimestampNsField()]


class Side(StrEnum):
    BUY = "BUY"
    SELL = "SELL"


class AggressorSide(StrEnum):
    BUYER = "BUYER"
    SELLER = "SELLER"
    NONE = "NONE"


class OrderType(StrEnum):
    MARKET = "MARKET"
    LIMIT = "LIMIT"


class TimeInForce(StrEnum):
    DAY = "DAY"
    GTC = "GTC"
    IOC = "IOC"
    FOK = "FOK"


class SignalDirection(StrEnum):
    LONG = "LONG"
    SHORT = "SHORT"
    FLAT = "FLAT"


class Decision(StrEnum):
    APPROVED = "APPROVED"
    REJECTED = "REJECTED"


class ExecType(StrEnum):
    PENDING_NEW = "PENDING_NEW"
    NEW = "NEW"
    PARTIAL_FILL = "PARTIAL_FILL"
    FILL = "FILL"
    PENDING_CANCEL = "PENDING_CANCEL"
    CANCELED = "CANCELED"
    REPLACED = "REPLACED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"
    OTHER = "OTHER"


class OrderStatus(StrEnum):
    PENDING_NEW = "PENDING_NEW"
    NEW = "NEW"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    PENDING_CANCEL = "PENDING_CANCEL"
    CANCELED = "CANCELED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"
    UNKNOWN = "UNKNOWN"


class LiquiditySide(StrEnum):
    MAKER = "MAKER"
    TAKER = "TAKER"
    NONE = "NONE"


class AlertSeverity(StrEnum):
    INFO = "INFO"
    WARNING = "WARNING"
    CRITICAL = "CRITICAL"


class ControlType(StrEnum):
    KILL_SWITCH = "KILL_SWITCH"
    TRADING_STATE = "TRADING_STATE"
    LIMIT_CHANGE = "LIMIT_CHANGE"


class TradingState(StrEnum):
    ACTIVE = "ACTIVE"
    REDUCING = "REDUCING"
    HALTED = "HALTED"


class LagStatus(StrEnum):
    """A consumer group's health on one partition (Burrow's rules; see streams.logic.lag)."""

    OK = "OK"
    WARN = "WARN"
    STALL = "STALL"
    STOP = "STOP"
    ERROR = "ERROR"


class Record(BaseModel):
    """Base of every value record. ``AVRO_NAME`` is the full name of its Avro schema."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)
    AVRO_NAME: ClassVar[str]


class Trade(Record):
    AVRO_NAME: ClassVar[str] = "io.omniquant.market.Trade"
    symbol: str = Field(min_length=1, max_length=64)
    venue: str
    price: FixedPoint
    size: FixedPoint
    aggressor_side: AggressorSide = AggressorSide.NONE
    trade_id: str | None = None
    conditions: list[str] = Field(default_factory=list)
    flags: list[str] = Field(default_factory=list)
    source: str
    ts_event: TimestampNs
    ts_init: TimestampNs


class Quote(Record):
    AVRO_NAME: ClassVar[str] = "io.omniquant.market.Quote"
    symbol: str = Field(min_length=1, max_length=64)
    venue: str
    bid_price: FixedPoint | None = None
    bid_size: FixedPoint | None = None
    ask_price: FixedPoint | None = None
    ask_size: FixedPoint | None = None
    conditions: list[str] = Field(default_factory=list)
    flags: list[str] = Field(default_factory=list)
    source: str
    ts_event: TimestampNs
    ts_init: TimestampNs


class Bar(Record):
    AVRO_NAME: ClassVar[str] = "io.omniquant.market.Bar"
    symbol: str = Field(min_length=1, max_length=64)
    venue: str
    interval_ms: int = Field(gt=0, le=2**63 - 1)  # Avro long
    open: FixedPoint
    high: FixedPoint
    low: FixedPoint
    close: FixedPoint
    volume: FixedPoint
    trade_count: int = Field(ge=0, le=2**63 - 1)  # Avro long
    vwap: FixedPoint | None = None
    source: str
    ts_event: TimestampNs  # bar start (inclusive)
    ts_init: TimestampNs


class Signal(Record):
    AVRO_NAME: ClassVar[str] = "io.omniquant.strategy.Signal"
    signal_id: str
    strategy_id: str
    symbol: str
    direction: SignalDirection
    price: FixedPoint  # the close that triggered the signal
    fast_value: FixedPoint
    slow_value: FixedPoint
    ts_event: TimestampNs
    ts_init: TimestampNs


class OrderRequest(Record):
    AVRO_NAME: ClassVar[str] = "io.omniquant.orders.OrderRequest"
    client_order_id: str = Field(min_length=1, max_length=64)
    strategy_id: str
    account: str = "paper"
    symbol: str = Field(min_length=1, max_length=64)
    side: Side
    order_type: OrderType = OrderType.MARKET
    quantity: PositiveFixedPoint
    limit_price: FixedPoint | None = None
    time_in_force: TimeInForce = TimeInForce.DAY
    reference_price: FixedPoint | None = None  # price the strategy saw; risk uses it for notional
    ts_event: TimestampNs
    ts_init: TimestampNs


class RiskCheck(Record):
    AVRO_NAME: ClassVar[str] = "io.omniquant.risk.RiskCheck"
    name: str
    passed: bool
    value: FixedPoint | None = None  # fixed-point
    limit: FixedPoint | None = None  # fixed-point
    message: str = ""


class RiskDecision(Record):
    AVRO_NAME: ClassVar[str] = "io.omniquant.risk.RiskDecision"
    decision_id: str
    client_order_id: str
    account: str
    symbol: str
    side: Side
    quantity: FixedPoint
    decision: Decision
    reason: str
    checks: list[RiskCheck] = Field(default_factory=list)
    ts_event: TimestampNs
    ts_init: TimestampNs


class ExecutionReport(Record):
    AVRO_NAME: ClassVar[str] = "io.omniquant.orders.ExecutionReport"
    report_id: str
    client_order_id: str
    venue_order_id: str | None = None
    account: str
    symbol: str
    side: Side
    exec_type: ExecType
    order_status: OrderStatus
    quantity: FixedPoint
    last_quantity: FixedPoint = 0
    last_price: FixedPoint | None = None
    cum_quantity: FixedPoint = 0
    leaves_quantity: FixedPoint = 0
    avg_price: FixedPoint | None = None
    reason: str | None = None
    venue: str
    raw_event: str | None = None  # the venue's own event name, kept when unknown to us
    ts_event: TimestampNs
    ts_init: TimestampNs


class Fill(Record):
    AVRO_NAME: ClassVar[str] = "io.omniquant.orders.Fill"
    fill_id: str
    client_order_id: str
    venue_order_id: str | None = None
    account: str
    symbol: str
    side: Side
    quantity: PositiveFixedPoint
    price: FixedPoint
    commission: FixedPoint = 0
    liquidity_side: LiquiditySide = LiquiditySide.NONE
    venue: str
    ts_event: TimestampNs
    ts_init: TimestampNs


class Position(Record):
    AVRO_NAME: ClassVar[str] = "io.omniquant.portfolio.Position"
    account: str
    symbol: str
    quantity: FixedPoint  # signed: long > 0, short < 0
    avg_price: FixedPoint = 0
    realized_pnl: FixedPoint = 0
    last_price: FixedPoint | None = None
    unrealized_pnl: FixedPoint = 0
    ts_event: TimestampNs
    ts_init: TimestampNs


class PortfolioSnapshot(Record):
    AVRO_NAME: ClassVar[str] = "io.omniquant.portfolio.PortfolioSnapshot"
    account: str
    starting_cash: FixedPoint
    cash: FixedPoint
    equity: FixedPoint
    realized_pnl: FixedPoint
    unrealized_pnl: FixedPoint
    gross_exposure: FixedPoint
    net_exposure: FixedPoint
    leverage: FixedPoint  # ratio at scale 1e-9
    largest_concentration: FixedPoint  # ratio at scale 1e-9
    largest_symbol: str | None = None
    open_positions: int = Field(ge=0, le=2**63 - 1)  # Avro long
    ts_event: TimestampNs
    ts_init: TimestampNs


class RiskMetric(Record):
    AVRO_NAME: ClassVar[str] = "io.omniquant.risk.RiskMetric"
    metric: str  # e.g. VAR_95_1D, DRAWDOWN, GROSS_EXPOSURE, PNL
    scope: str  # account, account|symbol, strategy ...
    value: FixedPoint  # fixed-point
    window: str | None = None
    ts_event: TimestampNs
    ts_init: TimestampNs


class Alert(Record):
    AVRO_NAME: ClassVar[str] = "io.omniquant.ops.Alert"
    alert_id: str
    severity: AlertSeverity
    source: str
    kind: str
    message: str
    symbol: str | None = None
    attributes: dict[str, str] = Field(default_factory=dict)
    ts_event: TimestampNs
    ts_init: TimestampNs


class Control(Record):
    AVRO_NAME: ClassVar[str] = "io.omniquant.ops.Control"
    command_id: str
    control_type: ControlType
    trading_state: TradingState | None = None
    scope: str = "*"  # account, symbol or '*'
    limit_name: str | None = None
    limit_value: FixedPoint | None = None  # fixed-point
    issued_by: str
    reason: str
    ts_event: TimestampNs
    ts_init: TimestampNs


_OFFSET = Field(ge=0, le=2**63 - 1)  # Avro long, never negative


class ConsumerLag(Record):
    AVRO_NAME: ClassVar[str] = "io.omniquant.ops.ConsumerLag"
    group: str
    topic: str
    partition: int = Field(ge=0, le=2**31 - 1)  # Avro long; Kafka partitions are int32
    committed_offset: int = _OFFSET
    end_offset: int = _OFFSET
    lag: int = _OFFSET
    lag_seconds: Annotated[int, Field(ge=0, le=2**63 - 1), FixedPointField()]  # seconds, 1e-9
    status: LagStatus
    ts_event: TimestampNs
    ts_init: TimestampNs


VALUE_MODELS: tuple[type[Record], ...] = (
    Trade,
    Quote,
    Bar,
    Signal,
    OrderRequest,
    RiskDecision,
    ExecutionReport,
    Fill,
    Position,
    PortfolioSnapshot,
    RiskMetric,
    Alert,
    Control,
    ConsumerLag,
)

MODEL_BY_AVRO_NAME: dict[str, type[Record]] = {m.AVRO_NAME: m for m in VALUE_MODELS}
