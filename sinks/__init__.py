"""Sinks: topics → ClickHouse (embedded chDB or a server)."""

from sinks.clickhouse import TABLE_BY_TOPIC, ClickHouseSink, TableSpec, table_specs
from sinks.migrations import create_tables
from sinks.query_server import QueryServer

__all__ = [
    "TABLE_BY_TOPIC",
    "ClickHouseSink",
    "QueryServer",
    "TableSpec",
    "create_tables",
    "table_specs",
]
