"""The topic catalog: every topic the platform reads or writes, in one place.

Names are logical (``market.trades``); the physical name is the configured prefix plus the
logical name, so a backtest or a test can run in its own namespace (``bt-42.market.trades``).
Topics are always created explicitly with these configs; the broker's auto-create is off.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

DAY_MS = 24 * 60 * 60 * 1000


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One topic: what its key is, which Avro record its values are, and how it is kept."""

    logical_name: str
    key: str
    value_schema: str | None  # Avro full name; None for raw bytes (dead letters)
    doc: str
    partitions: int | None = None  # None: the cluster-wide default from settings
    compacted: bool = False
    # None: kept by size only. Records carry their EVENT time as the Kafka timestamp
    # (CreateTime), and time-based retention would delete a replay of 2013 ticks at once.
    retention_ms: int | None = None
    extra_config: tuple[tuple[str, str], ...] = field(default=())

    def broker_config(self, retention_bytes: int = 1 << 30) -> dict[str, str]:
        """Topic-level configs passed to CreateTopics (``retention_bytes`` per partition)."""
        conf = {
            "cleanup.policy": "compact" if self.compacted else "delete",
            "message.timestamp.type": "CreateTime",  # producers stamp event time
        }
        if self.compacted:
            conf["min.cleanable.dirty.ratio"] = "0.1"
            conf["segment.ms"] = str(60 * 60 * 1000)
        else:
            conf["retention.ms"] = str(self.retention_ms if self.retention_ms is not None else -1)
            conf["retention.bytes"] = str(retention_bytes)
        conf.update(dict(self.extra_config))
        return conf


_NS = "io.omniquant"

# The dead-letter topic shared by the vendor feeds and the replay producer (their input is
# vendor frames and files). Each stage's own dead-letter topic is declared in the stage
# registry (omniquant.stages), which builds the full catalog with them.
FEEDS_DEAD_LETTERS = "feeds"
#: topic prefixes of backtest namespaces (bt-<run id>.): paper venue only, no live broker
BACKTEST_PREFIX = "bt-"


def backtest_namespace(run_id: str) -> str:
    """The topic prefix of backtest run ``run_id``."""
    return f"{BACKTEST_PREFIX}{run_id}."


RECORD_TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec("market.trades", "symbol", f"{_NS}.market.Trade", "Trade prints from every feed."),
    TopicSpec("market.quotes", "symbol", f"{_NS}.market.Quote", "Top-of-book quote updates."),
    TopicSpec("market.bars", "symbol", f"{_NS}.market.Bar", "OHLCV bars built on event time."),
    TopicSpec(
        "market.trades.late",
        "symbol",
        f"{_NS}.market.Trade",
        "Trades that arrived after their bar had closed (grace included): kept, not dropped.",
    ),
    TopicSpec("signals", "symbol", f"{_NS}.strategy.Signal", "Strategy signals."),
    TopicSpec(
        "orders.requests",
        "symbol",
        f"{_NS}.orders.OrderRequest",
        "Orders asking for pre-trade risk approval (from strategies or other systems).",
    ),
    TopicSpec(
        "risk.decisions",
        "symbol",
        f"{_NS}.risk.RiskDecision",
        "One decision per order request, with every check's inputs and result.",
    ),
    TopicSpec(
        "orders.approved",
        "symbol",
        f"{_NS}.orders.OrderRequest",
        "Order requests that passed pre-trade risk; the execution consumer's input.",
    ),
    TopicSpec(
        "execution.reports",
        "symbol",
        f"{_NS}.orders.ExecutionReport",
        "Order life-cycle events from the venue (new, fill, cancel, reject ...).",
    ),
    TopicSpec("fills", "symbol", f"{_NS}.orders.Fill", "Executions (trades of our orders)."),
    TopicSpec(
        "execution.orders",
        "client_order_id",
        None,  # internal: JSON, read back only by the execution consumer, not sunk
        "The execution consumer's working orders (JSON), written in its transactions; "
        "compacted, an order's key is tombstoned once the order is done.",
        compacted=True,
    ),
    TopicSpec(
        "positions",
        "account|symbol",
        f"{_NS}.portfolio.Position",
        "Latest position per account and symbol (compacted).",
        compacted=True,
    ),
    TopicSpec(
        "portfolio",
        "account",
        f"{_NS}.portfolio.PortfolioSnapshot",
        "Each account's portfolio marked to market: equity, cash, exposures, leverage.",
    ),
    TopicSpec("risk.metrics", "scope", f"{_NS}.risk.RiskMetric", "VaR, drawdown, exposure, PnL."),
    TopicSpec("alerts", "source", f"{_NS}.ops.Alert", "Operational and risk alerts."),
    TopicSpec(
        "control",
        "command key",
        f"{_NS}.ops.Control",
        "Kill switch, trading state, limit changes (compacted: latest per key wins).",
        compacted=True,
        partitions=1,
    ),
    TopicSpec(
        "monitoring.consumer_lag",
        "group",
        f"{_NS}.ops.ConsumerLag",
        "Every consumer group's lag per partition (records and seconds) and its Burrow-style "
        "status, from the lag-monitor stage every poll.",
        # stamped with the wall time of the observation, not an event time: time retention
        # is right here (ClickHouse keeps the history)
        retention_ms=7 * DAY_MS,
    ),
)


def dead_letter_spec(app: str) -> TopicSpec:
    """The dead-letter topic of one app: original bytes, the error in headers."""
    return TopicSpec(
        f"dlq.{app}",
        "original key",
        None,
        f"Records the {app} app could not process: original bytes, error in headers.",
        # dead letters are stamped when they are written: time retention is right here
        retention_ms=30 * DAY_MS,
    )


@dataclass(frozen=True, slots=True)
class TopicCatalog:
    """Every topic of one deployment: the record topics plus the apps' dead letters."""

    specs: tuple[TopicSpec, ...]

    @classmethod
    def with_dead_letters(cls, apps: Iterable[str]) -> TopicCatalog:
        return cls(RECORD_TOPICS + tuple(dead_letter_spec(app) for app in apps))

    def record_topics(self) -> tuple[TopicSpec, ...]:
        return tuple(s for s in self.specs if s.value_schema is not None)

    def physical(self, prefix: str) -> Iterator[tuple[str, TopicSpec]]:
        """(physical name, spec) of every topic in the namespace ``prefix``."""
        for item in self.specs:
            yield f"{prefix}{item.logical_name}", item


def spec(logical_name: str) -> TopicSpec:
    for item in RECORD_TOPICS:
        if item.logical_name == logical_name:
            return item
    raise KeyError(f"no record topic {logical_name!r} in the catalog")


@dataclass(frozen=True, slots=True)
class TopicNames:
    """Physical topic names for one namespace (prefix)."""

    prefix: str

    def name(self, logical_name: str) -> str:
        spec(logical_name)  # fail fast on a typo
        return f"{self.prefix}{logical_name}"

    def dead_letter(self, app: str) -> str:
        return f"{self.prefix}{dead_letter_spec(app).logical_name}"

    @property
    def trades(self) -> str:
        return self.name("market.trades")

    @property
    def quotes(self) -> str:
        return self.name("market.quotes")

    @property
    def bars(self) -> str:
        return self.name("market.bars")

    @property
    def signals(self) -> str:
        return self.name("signals")

    @property
    def order_requests(self) -> str:
        return self.name("orders.requests")

    @property
    def risk_decisions(self) -> str:
        return self.name("risk.decisions")

    @property
    def approved_orders(self) -> str:
        return self.name("orders.approved")

    @property
    def execution_reports(self) -> str:
        return self.name("execution.reports")

    @property
    def fills(self) -> str:
        return self.name("fills")

    @property
    def positions(self) -> str:
        return self.name("positions")

    @property
    def risk_metrics(self) -> str:
        return self.name("risk.metrics")

    @property
    def alerts(self) -> str:
        return self.name("alerts")

    @property
    def control(self) -> str:
        return self.name("control")
