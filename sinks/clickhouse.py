"""ClickHouse sink: every record topic and every dead-letter topic lands in a table.

**Tables.** Derived from the domain models: fixed-point fields become ``Decimal64(9)`` (the
same int64 at scale 1e-9, exact), nanosecond timestamps stay ``Int64`` with a
``DateTime64(9, 'UTC')`` alias column (``event_time``, ``init_time``) for humans and Grafana.
Every row also records where it came from: ``_topic, _partition, _offset,
_kafka_timestamp_ms`` and ``_ingested_at``. Engines are plain ``MergeTree`` (never
Replacing: rows of two namespaces replaying the same ticks are different rows, and nothing is
collapsed by a merge), ``PARTITION BY toYYYYMM(event time)``, ``ORDER BY (_topic, <how the
table is read>)`` — symbol then event time for market data, account then event time for the
order flow and the books (:data:`ORDER_BY`). Symbols, venues, accounts and enums are
``LowCardinality``; timestamps are ``DoubleDelta``/``Delta`` + ``ZSTD``, prices ``ZSTD``.
Raw ticks (trades, quotes) can expire ``tick_ttl_days`` after they were *ingested* (not after
their event time: a replay of 2013 ticks would be deleted on arrival).

**Exactly once without FINAL.** The sink is one Quix :class:`BatchingSink` for all topics.
Quix flushes it before committing offsets (``Checkpoint.commit``: sinks, then producer, then
offsets), so an offset is committed only after ClickHouse acknowledged its row. A flush writes
one INSERT per table, the tables in parallel from a thread pool (one client per thread). Each
INSERT carries an ``insert_deduplication_token`` derived from its topics, partitions and
offset ranges, and the tables keep the last ``non_replicated_deduplication_window`` tokens,
so the same batch inserted twice is stored once. Batch boundaries after a crash differ from
those before it, so before inserting, the sink asks the table which of the batch's offsets
it already holds (same topic, partition, offset and Kafka timestamp) and leaves those out:
records inserted but not committed before a SIGKILL are not stored twice. That question is
asked only where the answer is not already known: once this process has inserted a
partition's records through some offset since the partition was assigned to it, a batch
starting past that offset is new (nobody else writes the partition while it is ours), so a
steady flush is one INSERT per table and no SELECT. An assignment (:meth:`assigned`: another
owner may have inserted past the commit) and a failed or uncertain insert forget what was
known.

**Backpressure, not loss.** A failed INSERT (a server gone away, a timeout) raises
:class:`SinkBackpressureError`: Quix drops the batch, pauses the partitions, seeks back to the
last committed offsets and retries after ``retry_after`` (1 s doubling to 30 s), so the same
records come again and nothing is skipped.

**Schema evolution.** :mod:`sinks.migrations` holds the versioned layout migrations; a field
added to a record becomes a column (``ALTER TABLE ... ADD COLUMN IF NOT EXISTS``) at start-up
and also while the sink runs, when it finds a model column missing from its table.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import threading
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import BaseModel
from quixstreams.sinks import BatchingSink, SinkBackpressureError, SinkBatch

from core.clickhouse import ClickHouse
from core.errors import ClickHouseError
from core.metrics import SINK_ROWS
from schemas.fixedpoint import from_fixed
from schemas.models import MODEL_BY_AVRO_NAME, FixedPointField, Record, TimestampNsField

__all__ = [
    "DEAD_LETTERS_TABLE",
    "ORDER_BY",
    "TABLE_BY_TOPIC",
    "ClickHouseSink",
    "DeadLetterTable",
    "TableSpec",
    "table_specs",
]

log = logging.getLogger(__name__)

# topic (logical name) → table. Grafana dashboards query these names: keep them.
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
    "monitoring.consumer_lag": "consumer_lag",
}

# table → sorting key after `_topic` (how the table is read: one namespace, then ...).
ORDER_BY: dict[str, tuple[str, ...]] = {
    "trades": ("symbol", "ts_event"),
    "quotes": ("symbol", "ts_event"),
    "bars": ("symbol", "interval_ms", "ts_event"),
    "late_trades": ("symbol", "ts_event"),
    "signals": ("strategy_id", "symbol", "ts_event"),
    "order_requests": ("account", "ts_event"),
    "risk_decisions": ("account", "ts_event"),
    "approved_orders": ("account", "ts_event"),
    "execution_reports": ("account", "ts_event"),
    "fills": ("account", "ts_event"),
    "positions": ("account", "symbol", "ts_event"),
    "portfolio": ("account", "ts_event"),
    "risk_metrics": ("scope", "metric", "ts_event"),
    "alerts": ("source", "ts_event"),
    "control_events": ("scope", "ts_event"),
    "consumer_lag": ("group", "topic", "partition", "ts_event"),
}
# Tables of raw ticks, the ones ClickHouseSettings.tick_ttl_days applies to.
RAW_TICK_TABLES = frozenset({"trades", "quotes"})
DEAD_LETTERS_TABLE = "dead_letters"
# Recent insert tokens each table remembers (one insert per table per flush, ~1 s).
DEDUPLICATION_WINDOW = 1000

_LOW_CARDINALITY = {"symbol", "venue", "source", "account", "strategy_id", "metric", "scope"}
_META_COLUMNS = (
    ("_topic", "LowCardinality(String)"),
    ("_partition", "UInt32"),
    ("_offset", "UInt64 CODEC(Delta, ZSTD(1))"),
    ("_kafka_timestamp_ms", "Int64 CODEC(Delta, ZSTD(1))"),
    ("_ingested_at", "DateTime64(3, 'UTC') DEFAULT now64(3) CODEC(Delta, ZSTD(1))"),
)
_INSERTED_META = ("_topic", "_partition", "_offset", "_kafka_timestamp_ms")
# A skip index on the offset: the restart check reads only the granules of recent offsets.
_OFFSET_INDEX = "INDEX _offset_minmax _offset TYPE minmax GRANULARITY 1"
_DECIMAL = pa.decimal128(18, 9)
_MISSING_COLUMN = ("NO_SUCH_COLUMN_IN_TABLE", "THERE_IS_NO_COLUMN", "No such column")

# A record as the sink keeps it: (offset, Kafka timestamp ms, value, key, headers); a plain
# tuple, not Quix's SinkItem (half of the per-record cost at 100k rows/s).
Entry = tuple[int, int, Any, Any, Any]
Items = Sequence[tuple[str, int, Sequence[Entry]]]  # (topic, partition, entries)


@dataclass(frozen=True, slots=True)
class Column:
    """A table column: its ClickHouse type (with codec) and how values become Arrow."""

    name: str
    ch_type: str
    kind: str  # fixed | int | bool | str | strlist | map | json
    codec: str = ""

    @property
    def ddl(self) -> str:
        return f"`{self.name}` {self.ch_type}{f' CODEC({self.codec})' if self.codec else ''}"

    def arrow(self, values: list[Any]) -> pa.Array:
        kind = self.kind
        if kind == "fixed":
            return decimal_array(values)
        if kind == "int":
            return pa.array(values, pa.int64())
        if kind == "bool":
            return pa.array(values, pa.bool_())
        if kind == "str":
            try:  # plain str (what Quix's Avro dicts hold), or StrEnum members
                return pa.array(values, pa.string())
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                return pa.array([_text(v) for v in values], pa.string())
        if kind == "strlist":
            return pa.array(values, pa.list_(pa.string()))
        if kind == "map":
            return pa.array(values, pa.map_(pa.string(), pa.string()))
        return pa.array([_json(v) for v in values], pa.string())

    def python(self, value: Any) -> Any:
        """The value as clickhouse-connect's row insert takes it (exact Decimal for money)."""
        if self.kind == "fixed":
            return None if value is None else from_fixed(value)
        if self.kind == "str":
            return _text(value)
        if self.kind == "json":
            return _json(value)
        return value


def _text(value: Any) -> Any:
    return value.value if isinstance(value, StrEnum) else value


def _json(value: Any) -> str:
    if isinstance(value, list):
        value = [v.model_dump() if isinstance(v, BaseModel) else v for v in value]
    return json.dumps(value, default=str, separators=(",", ":"))


def decimal_array(values: list[int | None]) -> pa.Array:
    """int64 fixed-point values (scale 1e-9) → Arrow decimal128(18, 9), without Decimals.

    The 16-byte little-endian two's complement of each value is the int64 and its sign.
    """
    ints = pa.array(values, pa.int64())
    n = len(ints)
    plain = ints.fill_null(0).to_numpy(zero_copy_only=False) if ints.null_count else ints
    low = np.asarray(plain, dtype=np.int64)
    words = np.empty(2 * n, dtype=np.int64)
    words[0::2] = low
    words[1::2] = low >> 63
    validity = ints.buffers()[0] if ints.null_count else None
    return pa.Array.from_buffers(
        _DECIMAL, n, [validity, pa.py_buffer(words)], null_count=ints.null_count
    )


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
    codec = ""
    if any(isinstance(m, FixedPointField) for m in metadata):
        ch, kind, codec = "Decimal64(9)", "fixed", "ZSTD(1)"
    elif any(isinstance(m, TimestampNsField) for m in metadata):
        # ts_event is in every sorting key, so it rises within a key: DoubleDelta.
        ch, kind = "Int64", "int"
        codec = "DoubleDelta, ZSTD(1)" if name == "ts_event" else "Delta, ZSTD(1)"
    elif isinstance(annotation, type) and issubclass(annotation, StrEnum):
        ch, kind = "LowCardinality(String)", "str"
    elif annotation is bool:
        ch, kind = "Bool", "bool"
    elif annotation is int:
        ch, kind = "Int64", "int"
    elif annotation is str:
        ch, kind = ("LowCardinality(String)" if name in _LOW_CARDINALITY else "String"), "str"
    elif origin is list and typing.get_args(annotation) == (str,):
        return Column(name, "Array(String)", "strlist")
    elif origin is dict:
        return Column(name, "Map(String, String)", "map")
    elif origin is list:  # list of nested records (risk checks): kept whole as JSON
        return Column(name, "String", "json")
    else:
        raise TypeError(f"no ClickHouse type for field {name}: {annotation!r}")
    if nullable and ch.startswith("LowCardinality"):
        ch = "LowCardinality(Nullable(String))"
    elif nullable:
        ch = f"Nullable({ch})"
    return Column(name, ch, kind, codec)


class AuditTable:
    """What every sink table has: columns, the layout, and Arrow batches of sink items."""

    table: str
    columns: tuple[Column, ...]
    order_by: tuple[str, ...]
    partition_by: str
    raw_ticks: bool = False

    def create_sql(
        self, database: str, *, name: str | None = None, tick_ttl_days: int | None = None
    ) -> str:
        cols = [c.ddl for c in self.columns]
        cols += [f"`{n}` {ch}" for n, ch in _META_COLUMNS]
        cols += self.alias_columns()
        cols.append(_OFFSET_INDEX)
        ttl = self.ttl(tick_ttl_days)
        return (
            f"CREATE TABLE IF NOT EXISTS `{database}`.`{name or self.table}` (\n  "
            + ",\n  ".join(cols)
            + "\n) ENGINE = MergeTree"
            + f"\nPARTITION BY {self.partition_by}"
            + f"\nORDER BY ({', '.join(self.sorting_key)})"
            + (f"\nTTL {ttl}" if ttl else "")
            + f"\nSETTINGS non_replicated_deduplication_window = {DEDUPLICATION_WINDOW}"
        )

    @property
    def sorting_key(self) -> tuple[str, ...]:
        return ("_topic", *self.order_by)

    def alias_columns(self) -> list[str]:
        return []

    def ttl(self, tick_ttl_days: int | None) -> str | None:
        if not self.raw_ticks or tick_ttl_days is None:
            return None
        return f"toDateTime(_ingested_at) + toIntervalDay({int(tick_ttl_days)})"

    def add_column_sql(self, database: str, column: Column) -> str:
        return f"ALTER TABLE `{database}`.`{self.table}` ADD COLUMN IF NOT EXISTS {column.ddl}"

    def arrow(self, items: Items) -> pa.Table:
        """One Arrow table of the batches' records: the columns, then the meta columns."""
        entries: list[Entry] = []
        topics: list[str] = []
        partitions: list[int] = []
        for topic, partition, batch in items:
            entries.extend(batch)
            topics.extend(itertools.repeat(topic, len(batch)))
            partitions.extend(itertools.repeat(partition, len(batch)))
        data = self.arrow_columns(entries)
        data["_topic"] = pa.array(topics, pa.string())
        data["_partition"] = pa.array(partitions, pa.uint32())
        data["_offset"] = pa.array([e[0] for e in entries], pa.uint64())
        data["_kafka_timestamp_ms"] = pa.array([e[1] for e in entries], pa.int64())
        return pa.table(data)

    def arrow_columns(self, items: list[Entry]) -> dict[str, pa.Array]:
        raise NotImplementedError


class TableSpec(AuditTable):
    """The table of one record topic, its columns derived from the record's model."""

    def __init__(self, table: str, model: type[Record], columns: tuple[Column, ...]) -> None:
        self.table = table
        self.model = model
        self.columns = columns
        self.order_by = ORDER_BY.get(table, ("ts_event",))
        self.partition_by = "toYYYYMM(fromUnixTimestamp64Nano(ts_event))"
        self.raw_ticks = table in RAW_TICK_TABLES

    def __repr__(self) -> str:
        return f"TableSpec({self.table}, {self.model.__name__})"

    @classmethod
    def for_model(cls, table: str, model: type[Record]) -> TableSpec:
        columns = tuple(
            _column(name, field.annotation, field.metadata)
            for name, field in model.model_fields.items()
        )
        return cls(table, model, columns)

    def alias_columns(self) -> list[str]:
        names = {c.name for c in self.columns}
        out = []
        if "ts_event" in names:
            out.append("`event_time` DateTime64(9, 'UTC') ALIAS fromUnixTimestamp64Nano(ts_event)")
        if "ts_init" in names:
            out.append("`init_time` DateTime64(9, 'UTC') ALIAS fromUnixTimestamp64Nano(ts_init)")
        return out

    def arrow_columns(self, items: list[Entry]) -> dict[str, pa.Array]:
        values = [e[2].model_dump() if isinstance(e[2], BaseModel) else e[2] for e in items]
        return {c.name: c.arrow([v.get(c.name) for v in values]) for c in self.columns}

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns] + list(_INSERTED_META)

    def row(
        self,
        value: dict[str, Any] | BaseModel,
        topic: str,
        partition: int,
        offset: int,
        timestamp_ms: int,
    ) -> list[Any]:
        """One row in :attr:`column_names` order (for clickhouse-connect's row insert)."""
        data = value.model_dump() if isinstance(value, BaseModel) else value
        return [c.python(data.get(c.name)) for c in self.columns] + [
            topic,
            partition,
            offset,
            timestamp_ms,
        ]


class DeadLetterTable(AuditTable):
    """``dead_letters``: every ``dlq.*`` topic, the original bytes and the error headers
    (``streams.runtime.DeadLetters`` writes them). Count by ``app`` (the stage), ``stage``
    (deserialize or process) and ``error_class``."""

    _HEADERS = {
        "app": "dlq.app",
        "stage": "dlq.stage",
        "error_class": "dlq.error.class",
        "error_message": "dlq.error.message",
        "original_topic": "dlq.original.topic",
        "original_partition": "dlq.original.partition",
        "original_offset": "dlq.original.offset",
        "original_timestamp_ms": "dlq.original.timestamp",
    }

    def __init__(self) -> None:
        self.table = DEAD_LETTERS_TABLE
        self.columns = (
            Column("app", "LowCardinality(String)", "str"),
            Column("stage", "LowCardinality(String)", "str"),
            Column("error_class", "LowCardinality(String)", "str"),
            Column("error_message", "String", "str", "ZSTD(1)"),
            Column("original_topic", "LowCardinality(String)", "str"),
            Column("original_partition", "Nullable(Int32)", "int"),
            Column("original_offset", "Nullable(Int64)", "int"),
            Column("original_timestamp_ms", "Nullable(Int64)", "int"),
            Column("key", "Nullable(String)", "str", "ZSTD(1)"),
            Column("value", "String", "str", "ZSTD(1)"),
            Column("headers", "Map(String, String)", "map"),
        )
        self.order_by = ("app", "error_class", "_kafka_timestamp_ms")
        self.partition_by = "toYYYYMM(fromUnixTimestamp64Milli(_kafka_timestamp_ms))"

    def alias_columns(self) -> list[str]:
        return [
            "`written_at` DateTime64(3, 'UTC') ALIAS fromUnixTimestamp64Milli(_kafka_timestamp_ms)"
        ]

    def arrow_columns(self, items: list[Entry]) -> dict[str, pa.Array]:
        rows = [self._fields(e[4]) for e in items]
        out: dict[str, pa.Array] = {}
        for name, header in self._HEADERS.items():
            values = [r[0].get(header) for r in rows]
            if name.startswith("original_") and name != "original_topic":
                out[name] = pa.array([_int_or_none(v) for v in values], pa.int64())
            else:
                out[name] = pa.array([v or "" for v in values], pa.string())
        out["key"] = pa.array([_binary(e[3]) for e in items], pa.binary())
        out["value"] = pa.array([_binary(e[2]) or b"" for e in items], pa.binary())
        out["headers"] = pa.array([r[1] for r in rows], pa.map_(pa.string(), pa.string()))
        return out

    @staticmethod
    def _fields(headers: Any) -> tuple[dict[str, str], dict[str, str]]:
        dlq: dict[str, str] = {}
        other: dict[str, str] = {}
        for key, value in headers or []:
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            (dlq if key.startswith("dlq.") else other)[key] = text
        return dlq, other


def _int_or_none(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None  # "None": the record had no origin (e.g. a feed frame)


def _binary(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return str(value).encode("utf-8")


def table_specs() -> dict[str, TableSpec]:
    """Logical topic name → table spec, for every record topic in TABLE_BY_TOPIC."""
    from core.topics import spec

    result = {}
    for logical, table in TABLE_BY_TOPIC.items():
        schema = spec(logical).value_schema
        assert schema is not None
        result[logical] = TableSpec.for_model(table, MODEL_BY_AVRO_NAME[schema])
    return result


def _token(table: str, items: Items) -> str:
    """insert_deduplication_token: the table, each partition's offset range and a digest of
    its (offset, timestamp) pairs, so equal offsets of a recreated topic do not collide."""
    digest = hashlib.blake2b(digest_size=12)
    ranges = []
    for topic, partition, batch in items:
        offsets = np.fromiter((e[0] for e in batch), dtype=np.int64, count=len(batch))
        stamps = np.fromiter((e[1] for e in batch), dtype=np.int64, count=len(batch))
        digest.update(offsets.tobytes())
        digest.update(stamps.tobytes())
        ranges.append(f"{topic}:{partition}:{offsets[0]}-{offsets[-1]}:{len(batch)}")
    text = f"{table}|{'|'.join(sorted(ranges))}"
    if len(text) > 200:
        text = text[:160] + "…"
    return f"{text}#{digest.hexdigest()}"


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


class ClickHouseSink(BatchingSink):
    """Writes every topic's records to its table; one INSERT per table per flush, the
    tables in parallel (see the module docstring for the guarantees).

    ``connect`` opens a client; each worker thread opens its own. ``tables`` maps the
    physical topic names this sink is given to their tables.
    """

    def __init__(
        self,
        connect: Callable[[], ClickHouse],
        database: str,
        tables: dict[str, AuditTable],
        *,
        threads: int = 4,
        max_retry_after: float = 30.0,
    ) -> None:
        super().__init__()
        self._connect = connect
        self._database = database
        self._tables = dict(tables)
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, min(threads, len({t.table for t in tables.values()}))),
            thread_name_prefix="ch-insert",
        )
        self._local = threading.local()
        self._clients: list[ClickHouse] = []
        self._lock = threading.Lock()
        self._known_columns: dict[str, set[str]] = {}
        self._pending: dict[tuple[str, int], list[Entry]] = {}
        # per topic partition: the offset through which its table holds exactly what this
        # process consumed since the partition's assignment (the dedup SELECT is skipped
        # past it). Each worker thread touches only its table's partitions.
        self._stored_through: dict[tuple[str, int], int] = {}
        self._failures = 0
        self._max_retry_after = max_retry_after

    # ---- Quix entry points ------------------------------------------------------------
    def add(
        self,
        value: Any,
        key: Any,
        timestamp: int,
        headers: Any,
        topic: str,
        partition: int,
        offset: int,
    ) -> None:
        """Keep the record until the next flush (per topic partition, in offset order)."""
        tp = (topic, partition)
        pending = self._pending.get(tp)
        if pending is None:
            pending = self._pending[tp] = []
        pending.append((offset, timestamp, value, key, headers))

    def flush(self) -> None:
        """Insert every table's records (tables in parallel); pause on a ClickHouse failure."""
        pending, self._pending = self._pending, {}
        by_table: dict[str, tuple[AuditTable, list[tuple[str, int, list[Entry]]]]] = {}
        for (topic, partition), entries in pending.items():
            if entries:
                table = self._tables[topic]
                by_table.setdefault(table.table, (table, []))[1].append((topic, partition, entries))
        if not by_table:
            return
        self._settle(
            [self._pool.submit(self._write_table, t, items) for t, items in by_table.values()]
        )

    def write(self, batch: SinkBatch) -> None:
        """One Quix batch (BatchingSink's hook; :meth:`flush` does not go through it)."""
        entries = [(i.offset, i.timestamp, i.value, i.key, i.headers) for i in batch]
        items = [(batch.topic, batch.partition, entries)]
        self._settle([self._pool.submit(self._write_table, self._tables[batch.topic], items)])

    def on_paused(self) -> None:
        """Backpressure elsewhere: drop what is pending (Quix seeks back and resends it)."""
        self._pending = {}

    def assigned(self, committed: dict[tuple[str, int], int]) -> None:
        """Partitions (re)assigned (``StreamApp.on_assign``): a previous owner may have
        inserted records past the committed offset, so their next batch is checked."""
        for tp in committed:
            self._stored_through.pop(tp, None)

    def close(self) -> None:
        """Stop the worker threads and close their clients."""
        self._pool.shutdown(wait=True)
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()

    # ---- internals --------------------------------------------------------------------
    def _settle(self, futures: Iterable[Future[None]]) -> None:
        failures: list[ClickHouseError] = []
        crash: BaseException | None = None
        for future in futures:
            try:
                future.result()
            except ClickHouseError as exc:
                failures.append(exc)
            except BaseException as exc:  # a bug: stop without committing
                crash = crash or exc
        if crash is not None:
            raise crash
        if failures:
            self._stored_through.clear()  # an insert that raised may have landed: ask again
            self._failures += 1
            retry_after = min(self._max_retry_after, 2.0 ** (self._failures - 1))
            log.warning(
                "ClickHouse insert failed: pausing, the batch comes again",
                extra={"error": str(failures[0])[:300], "retry_after_s": retry_after},
            )
            raise SinkBackpressureError(retry_after=retry_after) from failures[0]
        self._failures = 0

    def _client(self) -> ClickHouse:
        client: ClickHouse | None = getattr(self._local, "client", None)
        if client is None:
            client = self._connect()
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _drop_client(self) -> None:
        client: ClickHouse | None = getattr(self._local, "client", None)
        self._local.client = None
        if client is not None:
            with self._lock:
                if client in self._clients:
                    self._clients.remove(client)
            client.close()

    def _write_table(self, table: AuditTable, batches: list[tuple[str, int, list[Entry]]]) -> None:
        try:
            client = self._client()
            self._ensure_columns(client, table)
            items, beyond = self._not_yet_stored(client, table, batches)
            # uncertain until acknowledged: a failure below leaves these partitions unknown
            for topic, partition, _entries in batches:
                self._stored_through.pop((topic, partition), None)
            known = [b for b in batches if (b[0], b[1]) not in beyond]
            if not items:
                self._stored(known)
                return
            data = table.arrow(items)
            settings = {"insert_deduplication_token": _token(table.table, items)}
            name = f"`{self._database}`.`{table.table}`"
            try:
                client.insert_arrow(name, data, settings)
            except ClickHouseError as exc:
                if not any(m in str(exc) for m in _MISSING_COLUMN):
                    raise
                # The table lost a column or never had it (changed under us): add, retry.
                self._known_columns.pop(table.table, None)
                self._ensure_columns(client, table)
                client.insert_arrow(name, data, settings)
        except ClickHouseError:
            self._drop_client()  # a fresh connection next time
            raise
        self._inserted(table.table, data.num_rows)
        self._stored(known)

    def _stored(self, batches: list[tuple[str, int, list[Entry]]]) -> None:
        for topic, partition, entries in batches:
            self._stored_through[(topic, partition)] = entries[-1][0]

    def _inserted(self, table: str, rows: int) -> None:
        """ClickHouse acknowledged ``rows`` (offsets are not committed yet)."""
        SINK_ROWS.labels(table).inc(rows)

    def _ensure_columns(self, client: ClickHouse, table: AuditTable) -> None:
        """Add model columns missing from the table (a record that gained a field)."""
        if table.table in self._known_columns:
            return
        result = client.query(
            "SELECT name FROM system.columns "
            f"WHERE database = {_quote(self._database)} AND table = {_quote(table.table)}"
        )
        present = {row[0] for row in result.rows}
        for column in table.columns:
            if column.name not in present:
                log.info(
                    "adding a column the table lacks",
                    extra={"table": table.table, "column": column.name},
                )
                client.command(table.add_column_sql(self._database, column))
                present.add(column.name)
        self._known_columns[table.table] = present

    def _not_yet_stored(
        self, client: ClickHouse, table: AuditTable, ranges: list[tuple[str, int, list[Entry]]]
    ) -> tuple[list[tuple[str, int, list[Entry]]], set[tuple[str, int]]]:
        """The records less those the table already holds (a replay after a crash between
        insert and commit), and the partitions of which the table holds offsets past the
        batch (a previous owner got further: they stay unknown). Bounded: only the batches'
        offset ranges are read, and only of the batches not known to be new
        (:attr:`_stored_through`)."""
        unknown = []
        for topic, partition, entries in ranges:
            through = self._stored_through.get((topic, partition))
            if through is None or entries[0][0] <= through:
                unknown.append((topic, partition, entries))
        if not unknown:
            return ranges, set()
        checked = {(t, p): entries for t, p, entries in self._not_in_table(client, table, unknown)}
        asked = {(t, p) for t, p, _entries in unknown}
        beyond = self._stored_past(client, table, unknown)
        kept = [
            (t, p, checked[(t, p)] if (t, p) in asked else entries)
            for t, p, entries in ranges
            if (t, p) not in asked or (t, p) in checked
        ]
        return kept, beyond

    def _stored_past(
        self, client: ClickHouse, table: AuditTable, ranges: list[tuple[str, int, list[Entry]]]
    ) -> set[tuple[str, int]]:
        """The partitions of which the table holds an offset past the batch's last."""
        where = " OR ".join(
            f"(_topic = {_quote(t)} AND _partition = {p} AND _offset > {entries[-1][0]})"
            for t, p, entries in ranges
        )
        rows = client.query(
            f"SELECT DISTINCT _topic, _partition FROM `{self._database}`.`{table.table}` "
            f"WHERE {where}"
        ).rows
        return {(str(t), int(p)) for t, p in rows}

    def _not_in_table(
        self, client: ClickHouse, table: AuditTable, ranges: list[tuple[str, int, list[Entry]]]
    ) -> list[tuple[str, int, list[Entry]]]:
        where = " OR ".join(
            f"(_topic = {_quote(t)} AND _partition = {p} "
            f"AND _offset BETWEEN {entries[0][0]} AND {entries[-1][0]})"
            for t, p, entries in ranges
        )
        stored = client.query(
            "SELECT _topic, _partition, _offset, _kafka_timestamp_ms "
            f"FROM `{self._database}`.`{table.table}` WHERE {where}"
        ).rows
        if not stored:
            return ranges
        have = {(t, p, o): ts for t, p, o, ts in stored}
        out = []
        skipped = clashes = 0
        for topic, partition, entries in ranges:
            kept = []
            for entry in entries:
                ts = have.get((topic, partition, entry[0]))
                if ts is None:
                    kept.append(entry)
                elif ts == entry[1]:
                    skipped += 1
                else:  # same offset, another record: a recreated topic. Keep it.
                    clashes += 1
                    kept.append(entry)
            if kept:
                out.append((topic, partition, kept))
        log.info(
            "records already in ClickHouse left out (replay after a restart)",
            extra={"table": table.table, "skipped": skipped, "offset_clashes": clashes},
        )
        return out
