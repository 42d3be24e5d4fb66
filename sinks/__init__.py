"""Sinks: topics → ClickHouse (embedded chDB or a server)."""

from sinks.clickhouse import TABLE_BY_TOPIC, ClickHouseSink, TableSpec, create_tables, table_specs

__all__ = ["TABLE_BY_TOPIC", "ClickHouseSink", "TableSpec", "create_tables", "table_specs"]
