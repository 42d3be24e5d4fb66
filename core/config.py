"""Typed configuration: one pydantic-settings object for the whole platform.

Every setting comes from the environment (prefix ``OMNIQUANT_``, nested with ``__``, e.g.
``OMNIQUANT_KAFKA__SECURITY_PROTOCOL``) or a ``.env`` file. A few well-known unprefixed
variables are honoured too because operators expect them: ``KAFKA_BOOTSTRAP_SERVERS``,
``SCHEMA_REGISTRY_URL``, ``REDIS_URL``, ``CLICKHOUSE_URL``, and the vendors' own credential
names (``MASSIVE_API_KEY``/``POLYGON_API_KEY``, ``APCA_API_KEY_ID``/``APCA_API_SECRET_KEY``,
``KITE_API_KEY``/``KITE_API_SECRET``/``KITE_ACCESS_TOKEN``).

Secrets are ``SecretStr``: they never show in ``repr``, logs or error messages; only
:meth:`KafkaSettings.librdkafka_config` and the clients that need them reveal them.
"""

from __future__ import annotations

import json
import os
import re
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from core.errors import ConfigError

ENV_PREFIX = "OMNIQUANT_"
_NESTED = "__"

# Unprefixed variables that people already use for these services; they fill a setting only
# when the prefixed form is not given.
_WELL_KNOWN_ENV: dict[str, tuple[str, ...]] = {
    "KAFKA_BOOTSTRAP_SERVERS": ("kafka", "bootstrap_servers"),
    "SCHEMA_REGISTRY_URL": ("kafka", "schema_registry_url"),
    "REDIS_URL": ("redis", "url"),
    "CLICKHOUSE_URL": ("clickhouse", "url"),
    "MASSIVE_API_KEY": ("feeds", "polygon_api_key"),
    "POLYGON_API_KEY": ("feeds", "polygon_api_key"),
    "APCA_API_KEY_ID": ("feeds", "alpaca_api_key_id"),
    "APCA_API_SECRET_KEY": ("feeds", "alpaca_api_secret_key"),
    "KITE_API_KEY": ("feeds", "kite_api_key"),
    "KITE_API_SECRET": ("feeds", "kite_api_secret"),
    "KITE_ACCESS_TOKEN": ("feeds", "kite_access_token"),
}

_TOPIC_PREFIX_RE = re.compile(r"^[A-Za-z0-9._-]{0,200}$")


def mask_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***`` (for logs and status output)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


_SECRET_FILE_NAME = "sasl_password_file (OMNIQUANT_KAFKA__SASL_PASSWORD_FILE)"  # noqa: S105 (a name)


class KafkaSettings(_Section):
    """Kafka client settings; passed through to librdkafka."""

    bootstrap_servers: str | None = Field(
        default=None,
        description="host:port[,host:port]. Unset: the local stack's broker is used.",
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = Field(
        default=None,
        description="a file holding the SASL password (a mounted Docker or Kubernetes "
        "secret), read at start; instead of sasl_password",
    )
    ssl_ca_location: Path | None = None
    ssl_certificate_location: Path | None = None
    ssl_key_location: Path | None = None
    ssl_key_password: SecretStr | None = None
    schema_registry_url: str | None = Field(
        default=None,
        description="Confluent Schema Registry URL. Unset: Avro single-object encoding.",
    )
    schema_registry_basic_auth: SecretStr | None = Field(
        default=None, description="user:password for the Schema Registry."
    )
    partitions: int = Field(default=3, ge=1, le=1000, description="partitions per topic")
    replication_factor: int = Field(
        default=1,
        ge=1,
        le=7,
        description="replicas of a topic we create; unset: 3 on a local cluster of 3 nodes, "
        "1 on one, the cluster's default.replication.factor on KAFKA_BOOTSTRAP_SERVERS",
    )
    retention_bytes: int = Field(
        default=1 << 30,
        ge=-1,
        description="per-partition size bound of record topics (-1: unbounded); they are "
        "not kept by time because their timestamps are event times",
    )
    client_id: str = "omniquant"
    transaction_stall_s: float = Field(
        default=30.0,
        ge=1.0,
        le=3600.0,
        description="a transactional stage whose Kafka transaction call (send offsets, "
        "commit, abort) has not returned after this long exits with code 75 and is started "
        "again (librdkafka can block there for good after a coordinator's broker dies)",
    )

    @model_validator(mode="before")
    @classmethod
    def _read_password_file(cls, data: Any) -> Any:
        """``sasl_password`` from ``sasl_password_file`` (a trailing newline is not part of
        it); the error names the file, never its content."""
        if not isinstance(data, dict) or data.get("sasl_password_file") in (None, ""):
            return data
        if data.get("sasl_password") not in (None, ""):
            raise ValueError(f"set sasl_password or {_SECRET_FILE_NAME}, not both")
        path = Path(data["sasl_password_file"])
        try:
            password = path.read_text().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not text"
            raise ValueError(f"{_SECRET_FILE_NAME}: cannot read {path}: {reason}") from None
        if not password:
            raise ValueError(f"{_SECRET_FILE_NAME}: {path} is empty")
        return {**data, "sasl_password": password}

    @model_validator(mode="after")
    def _check_security(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL_"):
            if self.sasl_mechanism is None:
                raise ValueError(
                    f"sasl_mechanism must be set when security_protocol is {self.security_protocol}"
                )
            if self.sasl_mechanism != "OAUTHBEARER" and (
                not self.sasl_username or self.sasl_password is None
            ):
                raise ValueError("sasl_username and sasl_password are required for SASL")
        for name in ("ssl_ca_location", "ssl_certificate_location", "ssl_key_location"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: file {path} does not exist")
        if self.bootstrap_servers is not None:
            for server in self.bootstrap_servers.split(","):
                host, _, port = server.strip().rpartition(":")
                if not host or not port.isdigit():
                    raise ValueError(f"bootstrap_servers: {server!r} is not host:port")
        return self

    def librdkafka_config(self, bootstrap_servers: str) -> dict[str, str]:
        """Common librdkafka properties (secrets revealed: pass straight to the client)."""
        conf: dict[str, str] = {
            "bootstrap.servers": bootstrap_servers,
            "security.protocol": self.security_protocol,
            "client.id": self.client_id,
        }
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password is not None:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        if self.ssl_ca_location:
            conf["ssl.ca.location"] = str(self.ssl_ca_location)
        if self.ssl_certificate_location:
            conf["ssl.certificate.location"] = str(self.ssl_certificate_location)
        if self.ssl_key_location:
            conf["ssl.key.location"] = str(self.ssl_key_location)
        if self.ssl_key_password is not None:
            conf["ssl.key.password"] = self.ssl_key_password.get_secret_value()
        return conf


class RedisSettings(_Section):
    url: SecretStr | None = Field(
        default=None, description="redis://[:password@]host:port/db. Unset: local server."
    )
    outage_wait_s: float = Field(
        default=20.0,
        ge=0,
        le=50,
        description="how long the risk gate and execution retry a Redis that does not answer "
        "before the error counts (gate: the order is refused; execution: it stops). At most "
        "50 s: the open Kafka transaction must not time out meanwhile",
    )


class ClickHouseSettings(_Section):
    url: SecretStr | None = Field(
        default=None,
        description="http(s)://user:password@host:8123 of a ClickHouse server. Unset: chDB.",
    )
    database: str = Field(default="omniquant", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    chdb_path: Path | None = Field(
        default=None, description="chDB data directory. Unset: <state_dir>/clickhouse."
    )
    batch_size: int = Field(
        default=50_000,
        ge=1,
        le=1_000_000,
        description="the sink inserts after this many records or flush_interval_s",
    )
    flush_interval_s: float = Field(
        default=1.0, gt=0, le=60, description="the sink inserts at least this often"
    )
    insert_threads: int = Field(
        default=4, ge=1, le=32, description="tables the sink inserts into in parallel"
    )
    tick_ttl_days: int | None = Field(
        default=None,
        ge=1,
        description="drop raw ticks (trades, quotes) this many days after ingestion; unset: keep",
    )
    query_host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="the embedded store's read-only ClickHouse HTTP interface listens here "
        "(served by the sink, which owns the chDB directory)",
    )
    query_port: int | None = Field(
        default=8123,
        ge=0,
        le=65535,
        description="port of that interface (0: any free port; unset: none). `omniquant sql` "
        "and `report` find it while the pipeline runs",
    )
    sink_instance_id: str | None = Field(
        default=None,
        min_length=1,
        description="Kafka group.instance.id of the sink (static membership): a restarted "
        "sink gets its partitions back at once, not after the session timeout. One per replica",
    )


class LimitOverride(_Section):
    """Limits for the orders matching ``account``, ``strategy`` and ``symbol`` (``*``: any).
    Unset limits keep the value of a less specific match, or the default."""

    account: str = Field(default="*", min_length=1)
    strategy: str = Field(default="*", min_length=1)
    symbol: str = Field(default="*", min_length=1)
    max_order_notional: Decimal | None = Field(default=None, gt=0)
    max_position_per_symbol: Decimal | None = Field(default=None, gt=0)
    max_order_quantity: Decimal | None = Field(default=None, gt=0)
    max_position_value: Decimal | None = Field(default=None, gt=0)
    max_gross_leverage: Decimal | None = Field(default=None, gt=0)
    max_concentration: Decimal | None = Field(default=None, gt=0, le=1)
    margin_rate: Decimal | None = Field(default=None, gt=0, le=1)
    max_orders_per_second: int | None = Field(default=None, ge=1)
    daily_loss_limit: Decimal | None = Field(default=None, gt=0)
    max_drawdown: Decimal | None = Field(default=None, gt=0, le=1)

    @property
    def specificity(self) -> int:
        """symbol 4, strategy 2, account 1: a symbol rule beats an account rule."""
        return (
            (4 if self.symbol != "*" else 0)
            + (2 if self.strategy != "*" else 0)
            + (1 if self.account != "*" else 0)
        )

    def matches(self, account: str, strategy: str, symbol: str) -> bool:
        return (
            self.account in ("*", account)
            and self.strategy in ("*", strategy)
            and self.symbol in ("*", symbol)
        )

    def limits(self) -> dict[str, Any]:
        """The limits this rule sets."""
        return {
            name: value
            for name, value in self.model_dump().items()
            if name not in ("account", "strategy", "symbol") and value is not None
        }


class RiskLimits(_Section):
    """Pre-trade limits. Money is Decimal, never float."""

    max_order_notional: Decimal = Field(default=Decimal("250000"), gt=0)
    max_position_per_symbol: Decimal = Field(
        default=Decimal("5000"), gt=0, description="absolute shares/units per symbol"
    )
    max_order_quantity: Decimal = Field(default=Decimal("100000"), gt=0)
    price_collar: Decimal = Field(
        default=Decimal("0.05"),
        gt=0,
        le=1,
        description="an order's reference/limit price must be within this fraction of the "
        "gate's market price",
    )
    max_price_age_ms: int = Field(
        default=5000, ge=1, description="oldest last trade (event time) the gate prices with"
    )
    restricted_symbols: list[str] = Field(
        default_factory=list, description='symbols no order may trade, JSON: ["XYZ", "NSE:ABC"]'
    )
    fo_ban_file: Path | None = Field(
        default=None,
        description="NSE's F&O ban bulletin (fo_secban.csv): banned symbols take only "
        "position-reducing orders on its trade date",
    )

    max_position_value: Decimal = Field(
        default=Decimal("500000"),
        gt=0,
        description="largest |position × market price| per account and symbol, open orders "
        "included",
    )
    max_gross_leverage: Decimal = Field(
        default=Decimal("2.0"), gt=0, description="gross exposure / equity after the order"
    )
    max_concentration: Decimal = Field(
        default=Decimal("0.25"),
        gt=0,
        le=1,
        description="one symbol's exposure as a fraction of the account's equity",
    )
    margin_rate: Decimal = Field(
        default=Decimal("0.5"),
        gt=0,
        le=1,
        description="initial margin per unit of exposure (Reg T 0.5); buying power is "
        "equity minus the margin of what is held and working",
    )
    max_orders_per_second: int = Field(
        default=10, ge=1, description="approved orders per account per second of event time"
    )
    daily_loss_limit: Decimal = Field(
        default=Decimal("10000"),
        gt=0,
        description="the day's loss that halts the account (risk-metrics issues HALTED)",
    )
    max_drawdown: Decimal = Field(
        default=Decimal("0.15"),
        gt=0,
        le=1,
        description="drawdown from peak equity beyond which only exposure-reducing orders pass",
    )
    exactly_once: bool = Field(
        default=True,
        description="the risk gate commits decisions, approved orders and offsets in one "
        "Kafka transaction",
    )
    event_time_order: bool = Field(
        default=True,
        description="the risk gate goes through all its partitions in one event-time order, "
        "so account-level checks see the other symbols as of the order, the same after a "
        "restart (false: each partition at its own pace, as Quix does)",
    )
    # A backtest runs the gate and execution together over complete order and market topics:
    # the gate reads orders far ahead of the execution reports that would move its working
    # orders into the position, and its worst case grows with every order. The paper venue
    # of a backtest fills every approved market order in full, so there the gate counts them
    # filled at approval, as a live gate would once the reports came back before the next
    # order. Refused outside a backtest namespace (checked when the gate starts).
    backtest_fills_at_approval: bool = Field(
        default=False,
        description="backtests only: an approved market order counts as filled at once",
    )
    overrides: list[LimitOverride] = Field(
        default_factory=list,
        description="limits per account, strategy and symbol, JSON: "
        '[{"account": "desk-1", "symbol": "TSLA", "max_position_value": "100000"}]; '
        "the most specific match wins per limit (symbol > strategy > account)",
    )

    @model_validator(mode="after")
    def _overrides_are_unambiguous(self) -> RiskLimits:
        # Two rules of the same scope would be applied in list order: a silent choice.
        seen: set[tuple[str, str, str]] = set()
        for rule in self.overrides:
            scope = (rule.account, rule.strategy, rule.symbol)
            if scope in seen:
                raise ValueError(
                    f"overrides: two rules for account={rule.account} strategy={rule.strategy} "
                    f"symbol={rule.symbol}; merge them into one"
                )
            seen.add(scope)
            # Margin is what the venue holds against a position, and a position belongs to
            # the account, not to the strategy that traded it.
            if rule.strategy != "*" and rule.margin_rate is not None:
                raise ValueError(
                    f"overrides: margin_rate is set per account and symbol, not per strategy "
                    f"(rule for strategy={rule.strategy})"
                )
        return self

    def resolved(self, account: str, strategy: str, symbol: str) -> RiskLimits:
        """The limits in force for one order: defaults, then every matching override from
        the least to the most specific."""
        matching = sorted(
            (o for o in self.overrides if o.matches(account, strategy, symbol)),
            key=lambda o: o.specificity,
        )
        if not matching:
            return self
        values: dict[str, Any] = {}
        for rule in matching:
            values.update(rule.limits())
        return self.model_copy(update=values)

    @field_validator("fo_ban_file")
    @classmethod
    def _ban_file_exists(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"file {path} does not exist")
        return path


class ExecutionSettings(_Section):
    """The execution consumer: which venue works approved orders, and how."""

    broker: Literal["paper", "alpaca", "kite"] = Field(
        default="paper", description="venue for approved orders (a backtest namespace: paper only)"
    )
    exactly_once: bool = Field(
        default=True, description="Kafka transactions: reports and offsets commit together"
    )
    commit_interval_ms: int = Field(
        default=100, ge=1, le=60_000, description="longest a transaction stays open"
    )
    paper_latency_ms: int = Field(
        default=0,
        ge=0,
        description="paper venue: event time from submission until the order can fill",
    )
    paper_fill_on_trades: bool = Field(
        default=True,
        description="paper venue: with no quote for the symbol, fill at trade prices "
        "(a print shows no depth, so the size is not limited)",
    )
    submit_retries: int = Field(default=5, ge=0, le=100, description="retries of a failed call")
    retry_backoff_ms: int = Field(default=200, ge=1, description="first retry delay, doubled")
    broker_timeout_ms: int = Field(
        default=10_000,
        ge=100,
        description="longest a venue call (HTTP request, event-stream handshake) may take",
    )
    alpaca_trading_url: str | None = Field(
        default=None, description="Alpaca Trading API base URL (unset: paper-api.alpaca.markets)"
    )
    alpaca_stream_url: str | None = Field(
        default=None, description="Alpaca trade_updates websocket URL (unset: from the API URL)"
    )
    kite_root_url: str | None = Field(
        default=None, description="Kite Connect API root (unset: https://api.kite.trade)"
    )
    kite_postback_host: str = Field(default="127.0.0.1", description="postback listener address")
    kite_postback_port: int = Field(default=0, ge=0, le=65535, description="0: no listener")
    kite_poll_interval_ms: int = Field(
        default=1000, ge=50, description="Kite order-book poll (postbacks may be missed)"
    )
    kite_product: Literal["MIS", "CNC", "NRML", "MTF"] = Field(
        default="MIS", description="Kite product of our orders (MIS: intraday, squared off)"
    )
    kite_exchange: str = Field(
        default="NSE",
        pattern=r"^[A-Z]{2,8}$",
        description='exchange of a symbol given without one ("INFY" → NSE:INFY)',
    )


class FeedCredentials(_Section):
    polygon_api_key: SecretStr | None = None
    alpaca_api_key_id: SecretStr | None = None
    alpaca_api_secret_key: SecretStr | None = None
    alpaca_paper: bool = True
    kite_api_key: SecretStr | None = None
    kite_api_secret: SecretStr | None = None
    kite_access_token: SecretStr | None = None


class StackSettings(_Section):
    """The local stack (`omniquant up`). Ports are off the defaults to avoid clashes."""

    kafka_port: int = Field(default=19092, ge=1, le=65535)
    kafka_controller_port: int = Field(default=19093, ge=1, le=65535)
    kafka_brokers: int = Field(
        default=1,
        ge=1,
        le=5,
        description="local KRaft nodes (`omniquant up --brokers 3`); node i listens on "
        "kafka_port + 2i and kafka_controller_port + 2i",
    )
    kafka_secure: bool = Field(
        default=False,
        description="`omniquant up --secure`: SASL_SSL (SCRAM-SHA-512) for clients, mutual "
        "TLS between controllers, ACLs from the stage registry; CA, certificates and "
        "per-component passwords under <state_dir>/kafka/secure",
    )
    kafka_heap: str = Field(default="512m", pattern=r"^[0-9]+[kmgKMG]$")
    redis_port: int = Field(default=16379, ge=1, le=65535)
    start_timeout_s: float = Field(default=60.0, gt=0)


class StrategySettings(_Section):
    """The strategy the signals stage (and a backtest) runs: a plugin chosen by name.

    ``name`` is an entry point of the group ``omniquant.strategies`` or a dotted path
    ``package.module:Class``; ``params`` its parameters as text (a JSON object in the env:
    ``OMNIQUANT_STRATEGY__PARAMS='{"fast":"10","slow":"30","long_only":"true"}'``), validated
    by the strategy when the stage starts. ``order_quantity`` is every strategy's default
    ``quantity``; ``fast_window`` / ``slow_window`` are ``sma-crossover``'s default ``fast`` /
    ``slow`` (what they always meant); ``bar_interval_ms`` is the bars every strategy sees.
    """

    name: str = Field(
        default="sma-crossover",
        min_length=1,
        description="strategy: an omniquant.strategies entry point or package.module:Class",
    )
    params: dict[str, str] = Field(
        default_factory=dict,
        description='the strategy\'s parameters, JSON object of text: {"fast": "10"}',
    )
    bar_interval_ms: int = Field(default=1000, ge=1, description="event-time bucket for closes")
    fast_window: int = Field(default=5, ge=1, description="sma-crossover's default fast")
    slow_window: int = Field(default=20, ge=2, description="sma-crossover's default slow")
    order_quantity: Decimal = Field(
        default=Decimal("100"), gt=0, description="every strategy's default quantity"
    )
    strategy_id: str = Field(default="sma-x", pattern=r"^[A-Za-z0-9_-]{1,32}$")
    account: str = Field(
        default="paper",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="the account the signals stage's orders are for",
    )

    @field_validator("params", mode="before")
    @classmethod
    def _params_as_text(cls, value: Any) -> Any:
        # JSON scalars are accepted as their text: {"fast": 10, "long_only": true}
        if isinstance(value, dict):
            return {k: cls._param_text(v) for k, v in value.items()}
        return value

    @staticmethod
    def _param_text(value: Any) -> Any:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float | Decimal):
            return str(value)
        return value  # text stays; anything else is refused by the field's type

    @model_validator(mode="after")
    def _fast_below_slow(self) -> StrategySettings:
        if self.fast_window >= self.slow_window:
            raise ValueError("fast_window must be smaller than slow_window")
        return self

    def default_params(self) -> dict[str, str]:
        """Defaults under :attr:`params` from the fields above (a strategy takes the ones it
        has): ``quantity`` for every strategy, ``fast``/``slow`` for ``sma-crossover``."""
        defaults = {"quantity": str(self.order_quantity)}
        if self.name == "sma-crossover":
            defaults |= {"fast": str(self.fast_window), "slow": str(self.slow_window)}
        return defaults


class StreamSettings(_Section):
    """What every stateful stream stage (bars, signals, portfolio, risk metrics) shares; the
    risk gate, execution and the sink have their own."""

    exactly_once: bool = Field(
        default=True,
        description="outputs, state changelogs and input offsets commit in one Kafka "
        "transaction: a stage killed mid-way repeats nothing downstream, at the cost of up "
        "to commit_interval_ms of latency per stage (off: at least once, outputs seen at "
        "once, repeated after a crash)",
    )
    commit_interval_ms: int = Field(
        default=250,
        ge=1,
        le=60_000,
        description="how often a stage commits; exactly once, its outputs become visible "
        "downstream then (the latency each stage adds)",
    )


class BarSettings(_Section):
    """The bars stage: event-time OHLCV bars per symbol on the bars topic."""

    intervals_ms: list[int] = Field(
        default_factory=lambda: [1000, 60_000, 300_000],
        description="bar lengths in ms, JSON list: [1000, 60000, 300000]",
    )
    grace_ms: int = Field(
        default=0, ge=0, description="a bar closes once event time passes its end + grace"
    )
    rule: Literal["all", "lean"] = Field(
        default="all",
        description="which trades set prices: all, or lean (AlgoSeek/Lean sale-condition "
        "codes: official open/close prints out, sweeps, odd lots, average-price and "
        "derivatively-priced trades count for volume only in regular hours)",
    )

    @model_validator(mode="after")
    def _intervals(self) -> BarSettings:
        if not self.intervals_ms or any(i < 1 for i in self.intervals_ms):
            raise ValueError("intervals_ms: give at least one interval, each >= 1 ms")
        if len(set(self.intervals_ms)) != len(self.intervals_ms):
            raise ValueError("intervals_ms: an interval is listed twice")
        return self


class PortfolioSettings(_Section):
    """The portfolio stage: positions per account from fills, marked on trades."""

    starting_cash: Decimal = Field(
        default=Decimal("1000000"), ge=0, description="cash of an account not listed below"
    )
    account_cash: dict[str, Decimal] = Field(
        default_factory=dict,
        description='starting cash per account, JSON: {"paper": "250000", "desk-2": "1e6"}',
    )
    mark_interval_ms: int = Field(
        default=1000, ge=0, description="publish marks at most once per this much event time"
    )

    @model_validator(mode="after")
    def _cash_not_negative(self) -> PortfolioSettings:
        for account, cash in self.account_cash.items():
            if cash < 0 or not account:
                raise ValueError(f"account_cash: {account!r} needs a name and cash >= 0")
        return self

    def cash_of(self, account: str) -> Decimal:
        return self.account_cash.get(account, self.starting_cash)


class RiskMetricsSettings(_Section):
    """The risk-metrics stage: VaR, ES, volatility, drawdown and daily loss per account."""

    cadence_ms: int = Field(
        default=1000,
        ge=1,
        description="observe equity at each close of bars this long (event time); the VaR "
        "horizon is one bar. 1000 matches the strategy's bars; use 60000 for minute bars",
    )
    window: int = Field(default=250, ge=2, description="returns in the historical window")
    min_returns: int = Field(default=30, ge=2, description="returns before statistics start")
    ewma_lambda: Decimal = Field(default=Decimal("0.94"), gt=0, lt=1, description="RiskMetrics")
    # The limits themselves (daily_loss_limit, max_drawdown) are risk limits, per account:
    # OMNIQUANT_RISK__DAILY_LOSS_LIMIT, OMNIQUANT_RISK__MAX_DRAWDOWN and RISK__OVERRIDES.
    daily_loss_warning: Decimal = Field(
        default=Decimal("0.8"), gt=0, le=1, description="warning at this share of the limit"
    )
    timezone: str = Field(default="America/New_York", description="exchange time zone")
    day_cut: str = Field(default="00:00", pattern=r"^[0-2][0-9]:[0-5][0-9]$")
    backtest_window: int = Field(default=250, ge=1, description="VaR backtest periods")

    @model_validator(mode="after")
    def _consistent(self) -> RiskMetricsSettings:
        if self.min_returns > self.window:
            raise ValueError("min_returns must not exceed window")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone: {self.timezone!r} is not an IANA time zone") from None
        return self


class LagSettings(_Section):
    """The lag-monitor stage and `omniquant lag`: Burrow's sliding-window rules over every
    consumer group's committed and end offsets, plus time lag (streams/logic/lag.py)."""

    window: int = Field(
        default=12, ge=2, le=1000, description="observations per partition in the window"
    )
    poll_interval_s: float = Field(
        default=5.0, gt=0, le=3600, description="how often offsets are read and a record sent"
    )
    stop_after_s: float = Field(
        default=120.0,
        gt=0,
        description="STOP: the committed offset has not moved for this long (and longer than "
        "the window's commit span, Burrow's rule) while the group is behind",
    )
    max_lag_seconds: float | None = Field(
        default=None,
        gt=0,
        description="time lag limit: a partition whose next record is older than this is at "
        "least WARN; unset: Burrow's rules alone",
    )
    allowed_lag: int = Field(
        default=0, ge=0, description="Burrow's allowed-lag: this many records behind count as 0"
    )
    minimum_complete: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Burrow's minimum-complete: a window less full than this is OK",
    )
    max_peeks: int = Field(
        default=200,
        ge=0,
        description="partitions per poll whose next record is read for its timestamp (time "
        "lag); the rest are interpolated from the end-offset history",
    )
    peek_timeout_s: float = Field(
        default=2.0, gt=0, le=60, description="time budget of those reads per poll"
    )


class Settings(BaseSettings):
    """All settings. Build with :func:`load_settings` to get a ConfigError on bad input."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=_NESTED,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    clickhouse: ClickHouseSettings = ClickHouseSettings()
    risk: RiskLimits = RiskLimits()
    feeds: FeedCredentials = FeedCredentials()
    stack: StackSettings = StackSettings()
    strategy: StrategySettings = StrategySettings()
    streams: StreamSettings = StreamSettings()
    bars: BarSettings = BarSettings()
    portfolio: PortfolioSettings = PortfolioSettings()
    risk_metrics: RiskMetricsSettings = RiskMetricsSettings()
    execution: ExecutionSettings = ExecutionSettings()
    lag: LagSettings = LagSettings()
    topic_prefix: str = Field(
        default="omniquant.",
        description="prepended to every topic name (a backtest runs in its own namespace)",
    )
    state_dir: Path = Field(default=Path(".omniquant"), description="local stack data and logs")
    metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Prometheus port of this process; 0 = none"
    )
    readiness_max_lag_seconds: float = Field(
        default=300.0,
        ge=0,
        description="/readyz fails while a stream app handles records whose Kafka timestamp "
        "is more than this behind the wall clock and it has not caught up; 0 = no lag check",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @model_validator(mode="before")
    @classmethod
    def _well_known_env(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for var, (section, field) in _WELL_KNOWN_ENV.items():
            value = os.environ.get(var)
            if not value:
                continue
            current = data.get(section)
            if current is None:
                current = {}
            elif isinstance(current, BaseModel):
                current = current.model_dump()
            else:
                current = dict(current)
            current.setdefault(field, value)
            data[section] = current
        return data

    @model_validator(mode="after")
    def _check_prefix(self) -> Settings:
        if not _TOPIC_PREFIX_RE.match(self.topic_prefix):
            raise ValueError("topic_prefix may hold only letters, digits, '.', '_' and '-'")
        return self

    @property
    def chdb_path(self) -> Path:
        return self.clickhouse.chdb_path or (self.state_dir / "clickhouse")

    @property
    def uses_local_kafka(self) -> bool:
        return self.kafka.bootstrap_servers is None

    @property
    def uses_local_redis(self) -> bool:
        return self.redis.url is None

    def kafka_bootstrap(self) -> str:
        """The cluster to use: KAFKA_BOOTSTRAP_SERVERS if set, else the local stack's nodes."""
        return self.kafka.bootstrap_servers or ",".join(
            f"127.0.0.1:{client}" for client, _ in self.local_kafka_ports()
        )

    def local_kafka_ports(self) -> list[tuple[int, int]]:
        """(client, controller) port of each local KRaft node."""
        stack = self.stack
        return [
            (stack.kafka_port + 2 * i, stack.kafka_controller_port + 2 * i)
            for i in range(stack.kafka_brokers)
        ]

    def topic_replication_factor(self) -> int | None:
        """Replicas of a new topic: ``KAFKA__REPLICATION_FACTOR`` when set; else 3 on a
        local cluster of 3 or more nodes (its brokers require 2 in sync), 1 on one node;
        else (``KAFKA_BOOTSTRAP_SERVERS``) None: the cluster's own
        ``default.replication.factor``, which its operators chose for its size."""
        if "replication_factor" in self.kafka.model_fields_set:
            return self.kafka.replication_factor
        if not self.uses_local_kafka:
            return None
        return min(self.stack.kafka_brokers, 3)

    def redis_url(self) -> str:
        """REDIS_URL if set (secret: do not log; see mask_url), else the local server."""
        if self.redis.url is not None:
            return self.redis.url.get_secret_value()
        return f"redis://127.0.0.1:{self.stack.redis_port}/0"

    def kafka_client_config(self) -> dict[str, str]:
        """librdkafka properties common to producers, consumers and admin clients."""
        return self.kafka.librdkafka_config(self.kafka_bootstrap())


def env_name(loc: tuple[int | str, ...]) -> str:
    """The environment variable that sets the field at ``loc`` (as pydantic reports it)."""
    parts = [str(p) for p in loc if not str(p).startswith("function-")]
    # Errors raised by an "after" validator of a section are reported at the section itself.
    return ENV_PREFIX + _NESTED.join(p.upper() for p in parts) if parts else ENV_PREFIX + "*"


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment; raise :class:`ConfigError` naming each bad setting."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_input=False, include_url=False):
            lines.append(f"  {env_name(err['loc'])}: {err['msg']}")
        raise ConfigError("invalid configuration:\n" + "\n".join(lines)) from None
    except SettingsError as exc:
        # pydantic-settings names only the section of a variable that is not JSON; find
        # the variable (its value is never shown: it may be a secret).
        bad = [name for name, value in sorted(os.environ.items()) if _bad_json(name, value)]
        where = ", ".join(bad) if bad else str(exc)
        raise ConfigError(f"invalid configuration:\n  {where}: not valid JSON") from None


def _bad_json(name: str, value: str) -> bool:
    if not name.startswith(ENV_PREFIX) or not value.lstrip().startswith(("[", "{")):
        return False
    try:
        json.loads(value)
    except ValueError:
        return True
    return False
