"""Versioned, idempotent migrations of the ClickHouse audit database.

``schema_migrations (version, name, checksum, applied_at)`` records each migration applied;
:data:`MIGRATIONS` is the ordered list. :func:`migrate` applies those not recorded yet, in
order, and refuses to run when a recorded migration's checksum differs from the code's (an
applied migration was edited: add a new one instead). Each migration is itself idempotent
(it checks what exists before it changes anything), so a crash half-way is repaired by
running it again.

After the versioned steps, :func:`migrate` reconciles what follows the code and the settings
rather than a version: columns of fields added to a record (``ADD COLUMN IF NOT EXISTS``;
the checksum of the layout migration covers engines and keys, not the column list) and the
raw-tick TTL (``tick_ttl_days``). Running :func:`migrate` twice changes nothing.

1. ``audit_tables_mergetree``: every record table as plain ``MergeTree`` with ``_topic`` in
   the sorting key (see :mod:`sinks.clickhouse`). A table of the old layout
   (``ReplacingMergeTree`` keyed without the topic) is rebuilt: a new table is filled with
   ``INSERT ... SELECT`` (one row per ``_topic, _partition, _offset``: duplicates a merge
   had not collapsed yet go, rows of different namespaces stay), the copy is checked, the
   two tables are exchanged and the old one dropped. Rows an old merge had already collapsed
   cannot be recovered.
2. ``dead_letters``: the table of the ``dlq.*`` topics.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from core.clickhouse import ClickHouse
from core.errors import ClickHouseError
from sinks.clickhouse import DeadLetterTable, TableSpec, _quote, table_specs

__all__ = ["MIGRATIONS", "Migration", "create_tables", "migrate"]

log = logging.getLogger(__name__)

_OLD_SUFFIX = "__rebuild"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    apply: Callable[[ClickHouse, str], None]
    definition: str  # what the checksum covers

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.definition.encode()).hexdigest()


def _layout(table: TableSpec | DeadLetterTable) -> str:
    return (
        f"{table.table}: MergeTree PARTITION BY {table.partition_by} "
        f"ORDER BY ({', '.join(table.sorting_key)})"
    )


def _table_info(client: ClickHouse, database: str, table: str) -> tuple[str, str] | None:
    rows = client.query(
        "SELECT engine, sorting_key FROM system.tables "
        f"WHERE database = {_quote(database)} AND name = {_quote(table)}"
    ).rows
    return (rows[0][0], rows[0][1]) if rows else None


def _stored_columns(client: ClickHouse, database: str, table: str) -> dict[str, str]:
    """name → type of the table's stored columns (not ALIAS/MATERIALIZED)."""
    rows = client.query(
        "SELECT name, type FROM system.columns "
        f"WHERE database = {_quote(database)} AND table = {_quote(table)} "
        "AND default_kind NOT IN ('ALIAS', 'MATERIALIZED') ORDER BY position"
    ).rows
    return {name: ch_type for name, ch_type in rows}


def _is_current(info: tuple[str, str], table: TableSpec | DeadLetterTable) -> bool:
    engine, sorting_key = info
    key = [part.strip() for part in sorting_key.split(",")]
    return engine == "MergeTree" and key == list(table.sorting_key)


def ensure_layout(client: ClickHouse, database: str, table: TableSpec | DeadLetterTable) -> None:
    """Create ``table`` in the current layout, or rebuild an older layout into it."""
    target = f"`{database}`.`{table.table}`"
    spare = f"`{database}`.`{table.table}{_OLD_SUFFIX}`"
    info = _table_info(client, database, table.table)
    if info is None:
        client.command(f"DROP TABLE IF EXISTS {spare}")
        client.command(table.create_sql(database))
        return
    if _is_current(info, table):
        # A crash after the exchange leaves the old data under the spare name: copied
        # and checked before the exchange, so it can go.
        client.command(f"DROP TABLE IF EXISTS {spare}")
        return
    log.warning(
        "rebuilding a ClickHouse table of an older layout",
        extra={"table": table.table, "engine": info[0], "sorting_key": info[1]},
    )
    client.command(f"DROP TABLE IF EXISTS {spare}")  # a half-done copy of a crashed run
    client.command(table.create_sql(database, name=f"{table.table}{_OLD_SUFFIX}"))
    old = _stored_columns(client, database, table.table)
    new = _stored_columns(client, database, f"{table.table}{_OLD_SUFFIX}")
    for name, ch_type in old.items():
        if name not in new:  # a field the model no longer has: keep its data
            client.command(f"ALTER TABLE {spare} ADD COLUMN IF NOT EXISTS `{name}` {ch_type}")
    columns = ", ".join(f"`{name}`" for name in old)
    identity = "_topic, _partition, _offset"
    client.command(
        f"INSERT INTO {spare} ({columns}) SELECT {columns} FROM {target} LIMIT 1 BY {identity}"
    )
    expected = client.query(f"SELECT uniqExact({identity}) FROM {target}").rows[0][0]
    copied = client.query(f"SELECT count() FROM {spare}").rows[0][0]
    if copied != expected:
        raise ClickHouseError(
            f"rebuilding {target}: copied {copied} rows of {expected}; the old table is kept"
        )
    client.command(f"EXCHANGE TABLES {target} AND {spare}")
    client.command(f"DROP TABLE {spare}")
    log.warning("rebuilt", extra={"table": table.table, "rows": copied})


def _record_tables(client: ClickHouse, database: str) -> None:
    for table in table_specs().values():
        ensure_layout(client, database, table)


def _dead_letters(client: ClickHouse, database: str) -> None:
    ensure_layout(client, database, DeadLetterTable())


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "audit_tables_mergetree",
        _record_tables,
        "\n".join(_layout(t) for t in table_specs().values())
        + "\nrebuild ReplacingMergeTree: INSERT SELECT LIMIT 1 BY _topic, _partition, _offset",
    ),
    Migration(2, "dead_letters", _dead_letters, _layout(DeadLetterTable())),
)

_SCHEMA_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS `{db}`.`schema_migrations` (
  `version` UInt32,
  `name` String,
  `checksum` String,
  `applied_at` DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = MergeTree ORDER BY version
"""


def applied(client: ClickHouse, database: str) -> dict[int, tuple[str, str]]:
    """version → (name, checksum) of the migrations recorded in ``schema_migrations``."""
    rows = client.query(
        f"SELECT version, name, checksum FROM `{database}`.`schema_migrations` ORDER BY version"
    ).rows
    return {version: (name, checksum) for version, name, checksum in rows}


def migrate(
    client: ClickHouse,
    database: str,
    *,
    tick_ttl_days: int | None = None,
    migrations: tuple[Migration, ...] = MIGRATIONS,
) -> list[Migration]:
    """Bring ``database`` up to date; return the migrations applied now (none the 2nd time)."""
    client.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
    client.command(_SCHEMA_MIGRATIONS.format(db=database))
    done = applied(client, database)
    for version, (name, checksum) in done.items():
        known = next((m for m in migrations if m.version == version), None)
        if known is not None and known.checksum != checksum:
            raise ClickHouseError(
                f"migration {version} ({name}) was applied with checksum {checksum[:12]}… "
                f"but the code's is {known.checksum[:12]}…: an applied migration was "
                "changed; add a new migration instead"
            )
    now = []
    for migration in sorted(migrations, key=lambda m: m.version):
        if migration.version in done:
            continue
        log.info("applying migration", extra={"version": migration.version})
        migration.apply(client, database)
        client.insert(
            f"`{database}`.`schema_migrations`",
            ["version", "name", "checksum"],
            [[migration.version, migration.name, migration.checksum]],
        )
        now.append(migration)
    tables: list[TableSpec | DeadLetterTable] = [*table_specs().values(), DeadLetterTable()]
    for table in tables:
        _reconcile(client, database, table, tick_ttl_days)
    return now


def _reconcile(
    client: ClickHouse,
    database: str,
    table: TableSpec | DeadLetterTable,
    tick_ttl_days: int | None,
) -> None:
    """Columns of fields added to the record; the raw-tick TTL as the settings say."""
    present = _stored_columns(client, database, table.table)
    for column in table.columns:
        if column.name not in present:
            client.command(table.add_column_sql(database, column))
    if not table.raw_ticks:
        return
    query = client.query(
        "SELECT create_table_query FROM system.tables "
        f"WHERE database = {_quote(database)} AND name = {_quote(table.table)}"
    ).rows[0][0]
    has_ttl = " TTL " in query
    wanted = table.ttl(tick_ttl_days)
    target = f"`{database}`.`{table.table}`"
    if wanted is None and has_ttl:
        client.command(f"ALTER TABLE {target} REMOVE TTL")
    elif wanted is not None and f"toIntervalDay({int(tick_ttl_days or 0)})" not in query:
        client.command(f"ALTER TABLE {target} MODIFY TTL {wanted}")


def create_tables(
    client: ClickHouse, database: str, *, tick_ttl_days: int | None = None
) -> list[str]:
    """Migrate ``database`` (idempotent) and return the sink's table names."""
    migrate(client, database, tick_ttl_days=tick_ttl_days)
    return [t.table for t in table_specs().values()] + [DeadLetterTable().table]
