"""The ClickHouse sink app: every record topic of the catalog → its table."""

from __future__ import annotations

from core.clickhouse import connect_clickhouse
from core.config import Settings
from sinks.clickhouse import ClickHouseSink, create_tables, table_specs
from streams.runtime import StreamApp


def build(settings: Settings, name: str) -> StreamApp:
    """The app under the stage name the registry gives it (its group and dead letters)."""
    # Larger commit interval: fewer, bigger inserts (ClickHouse prefers batches).
    stream = StreamApp(settings, name, commit_interval=2.0)
    client = connect_clickhouse(settings)
    database = settings.clickhouse.database
    create_tables(client, database)
    for logical, table in table_specs().items():
        sdf = stream.dataframe(logical)
        sdf.sink(ClickHouseSink(client, database, table))
    return stream


def run(settings: Settings, *, name: str) -> None:
    build(settings, name).run()
