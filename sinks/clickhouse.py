"""ClickHouse sink: every record topic lands in a table of database ``omniquant``.

Tables are derived from the domain models, so a field added to a record appears as a column
(``ALTER TABLE ... ADD COLUMN IF NOT EXISTS`` on start-up). Fixed-point fields become
``Decimal64(9)`` (the same int64 at scale 1e-9 — exact), nanosecond timestamps stay ``Int64``
with a ``DateTime64(9, 'UTC')`` alias column for humans and Grafana. Every row also records
where it came from (topic, partition, offset): the tables are ``ReplacingMergeTree`` keyed
on that, so a record written twice after a restart (at-least-once) collapses to one row.
"""

from __future__ import annotations

import json
import logging
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel
from quixstreams.sinks import BatchingSink, SinkBackpressureError, SinkBatch

from core.clickhouse import ClickHouse
from core.errors import OmniquantError
from core.metrics import SINK_ROWS
from schemas.fixedpoint import from_fixed
from schemas.models import MODEL_BY_AVRO_NAME, FixedPointField, Record, TimestampNsField

log = logging.getLogger(__name__)

# topic (logical name) → table
TABLE_BY_TOPIC: dict[str, str] = {
    "market.trades": "trades",
    "market.quotes": "quotes",
    "market.bars": "bars",
    "market.trades.late": "late_trades",
    "signals": "signals",
    "orders.requests": "order_requests",
    "risk.decisions": "risk_decisions",
    "orders.approved": "approved_orders",
    "execution.reports": "execution_reports",
    "fills": "fills",
    "positions": "positions",
    "portfolio": "portfolio",
    "risk.metrics": "risk_metrics",
    "alerts": "alerts",
    "control": "control_events",
}

_LOW_CARDINALITY = {"symbol", "venue", "source", "account", "strategy_id", "metric", "scope"}
_META_COLUMNS = (
    ("_topic", "LowCardinality(String)"),
    ("_partition", "UInt32"),
    ("_offset", "UInt64"),
    ("_kafka_timestamp_ms", "Int64"),
    ("_ingested_at", "DateTime64(3, 'UTC') DEFAULT now64(3)"),
)


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    ch_type: str
    convert: typing.Callable[[Any], Any]


def _identity(value: Any) -> Any:
    return value


def _fixed(value: Any) -> Any:
    return None if value is None else from_fixed(value)


def _enum(value: Any) -> Any:
    return None if value is None else str(value.value if isinstance(value, StrEnum) else value)


def _json(value: Any) -> Any:
    return json.dumps(value, default=str, separators=(",", ":"))


def _column(name: str, annotation: Any, metadata: Sequence[Any]) -> Column:
    metadata = list(metadata)
    nullable = False
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        nullable = len(args) < len(typing.get_args(annotation))
        annotation = args[0]
        origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        annotated = typing.get_args(annotation)
        annotation, metadata = annotated[0], [*metadata, *annotated[1:]]
        origin = typing.get_origin(annotation)
    convert: typing.Callable[[Any], Any] = _identity
    if any(isinstance(m, FixedPointField) for m in metadata):
        ch, convert = "Decimal64(9)", _fixed
    elif any(isinstance(m, TimestampNsField) for m in metadata):
        ch = "Int64"
    elif isinstance(annotation, type) and issubclass(annotation, StrEnum):
        ch, convert = "LowCardinality(String)", _enum
    elif annotation is bool:
        ch = "Bool"
    elif annotation is int:
        ch = "Int64"
    elif annotation is str:
        ch = "LowCardinality(String)" if name in _LOW_CARDINALITY else "String"
    elif origin is list and typing.get_args(annotation) == (str,):
        return Column(name, "Array(String)", _identity)
    elif origin is dict:
        return Column(name, "Map(String, String)", _identity)
    elif origin is list:  # list of nested records (risk checks): kept whole as JSON
        return Column(name, "String", _json)
    else:
        raise TypeError(f"no ClickHouse type for field {name}: {annotation!r}")
    if nullable and not ch.startswith("LowCardinality"):
        ch = f"Nullable({ch})"
    elif nullable:
        ch = "LowCardinality(Nullable(String))"
    return Column(name, ch, convert)


@dataclass(frozen=True, slots=True)
class TableSpec:
    table: str
    model: type[Record]
    columns: tuple[Column, ...]

    @classmethod
    def for_model(cls, table: str, model: type[Record]) -> TableSpec:
        columns = tuple(
            _column(name, field.annotation, field.metadata)
            for name, field in model.model_fields.items()
        )
        return cls(table, model, columns)

    def order_by(self) -> str:
        # Nullable columns cannot be in a MergeTree sorting key.
        names = {c.name for c in self.columns if "Nullable" not in c.ch_type}
        key = [n for n in ("symbol", "account", "scope", "ts_event") if n in names]
        return ", ".join([*key, "_partition", "_offset"])

    def create_sql(self, database: str) -> str:
        cols = [f"`{c.name}` {c.ch_type}" for c in self.columns]
        cols += [f"`{name}` {ch}" for name, ch in _META_COLUMNS]
        if any(c.name == "ts_event" for c in self.columns):
            cols.append("`event_time` DateTime64(9, 'UTC') ALIAS fromUnixTimestamp64Nano(ts_event)")
        if any(c.name == "ts_init" for c in self.columns):
            cols.append("`init_time` DateTime64(9, 'UTC') ALIAS fromUnixTimestamp64Nano(ts_init)")
        return (
            f"CREATE TABLE IF NOT EXISTS `{database}`.`{self.table}` (\n  "
            + ",\n  ".join(cols)
            + f"\n) ENGINE = ReplacingMergeTree ORDER BY ({self.order_by()})"
        )

    def migrate_sql(self, database: str) -> list[str]:
        """Columns added to the model since the table was created."""
        return [
            f"ALTER TABLE `{database}`.`{self.table}` ADD COLUMN IF NOT EXISTS "
            f"`{c.name}` {c.ch_type}"
            for c in self.columns
        ]

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns] + [name for name, _ in _META_COLUMNS[:-1]]

    def row(
        self,
        value: dict[str, Any] | BaseModel,
        topic: str,
        partition: int,
        offset: int,
        timestamp_ms: int,
    ) -> list[Any]:
        data = value.model_dump() if isinstance(value, BaseModel) else value
        return [c.convert(data.get(c.name)) for c in self.columns] + [
            topic,
            partition,
            offset,
            timestamp_ms,
        ]


def table_specs() -> dict[str, TableSpec]:
    """Logical topic name → table spec, for every record topic in TABLE_BY_TOPIC."""
    from core.topics import spec

    result = {}
    for logical, table in TABLE_BY_TOPIC.items():
        schema = spec(logical).value_schema
        assert schema is not None
        result[logical] = TableSpec.for_model(table, MODEL_BY_AVRO_NAME[schema])
    return result


def create_tables(client: ClickHouse, database: str) -> list[str]:
    """Create the database and every table (idempotent); return the table names."""
    client.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
    tables = []
    for item in table_specs().values():
        client.command(item.create_sql(database))
        for sql in item.migrate_sql(database):
            client.command(sql)
        tables.append(item.table)
    return tables


class ClickHouseSink(BatchingSink):
    """Writes one topic's records to one table, a batch per checkpoint per partition."""

    def __init__(self, client: ClickHouse, database: str, table: TableSpec) -> None:
        super().__init__()
        self._client = client
        self._database = database
        self._table = table

    def write(self, batch: SinkBatch) -> None:
        rows = [
            self._table.row(item.value, batch.topic, batch.partition, item.offset, item.timestamp)
            for item in batch
        ]
        if not rows:
            return
        try:
            self._client.insert(
                f"{self._database}.{self._table.table}", self._table.column_names, rows
            )
        except OmniquantError as exc:
            # A server hiccup must not lose the batch: Quix pauses the partition and
            # retries the same batch after the back-off.
            log.warning("insert failed, retrying batch", extra={"error": str(exc)})
            raise SinkBackpressureError(retry_after=2.0) from exc
        SINK_ROWS.labels(self._table.table).inc(len(rows))
