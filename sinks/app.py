"""The ClickHouse sink app: every record topic of the catalog → its table."""

from __future__ import annotations

from omniquant.clickhouse import connect_clickhouse
from omniquant.config import Settings
from omniquant.streaming import StreamApp
from sinks.clickhouse import ClickHouseSink, create_tables, table_specs

APP_NAME = "sink-clickhouse"


def build(settings: Settings) -> StreamApp:
    # Larger commit interval: fewer, bigger inserts (ClickHouse prefers batches).
    stream = StreamApp(settings, APP_NAME, commit_interval=2.0)
    client = connect_clickhouse(settings)
    database = settings.clickhouse.database
    create_tables(client, database)
    for logical, table in table_specs().items():
        sdf = stream.dataframe(logical)
        sdf.sink(ClickHouseSink(client, database, table))
    return stream


def run(settings: Settings) -> None:
    build(settings).run()
