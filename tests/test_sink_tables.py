"""ClickHouse tables are derived from the records: exact decimals, every field a column, a
layout for how each table is read."""

from __future__ import annotations

from decimal import Decimal

import pytest

from core.topics import RECORD_TOPICS
from schemas.models import Fill, LiquiditySide, RiskCheck, RiskDecision, Side
from sinks import create_tables
from sinks.clickhouse import ORDER_BY, TABLE_BY_TOPIC, table_specs


def test_every_record_topic_has_a_table() -> None:
    record_topics = {t.logical_name for t in RECORD_TOPICS if t.value_schema is not None}
    assert record_topics == set(TABLE_BY_TOPIC)


def test_fixed_point_fields_become_decimal64_9_and_timestamps_int64() -> None:
    fills = {c.name: c.ch_type for c in table_specs()["fills"].columns}
    assert fills["price"] == "Decimal64(9)"
    assert fills["quantity"] == "Decimal64(9)"
    assert fills["ts_event"] == "Int64"
    assert fills["venue_order_id"] == "Nullable(String)"
    assert fills["side"] == "LowCardinality(String)"
    decisions = {c.name: c.ch_type for c in table_specs()["risk.decisions"].columns}
    assert decisions["checks"] == "String"  # nested records kept whole as JSON


def test_every_table_is_plain_mergetree_keyed_by_namespace_then_how_it_is_read() -> None:
    specs = {s.table: s for s in table_specs().values()}
    assert set(ORDER_BY) == set(specs)
    for name, spec in specs.items():
        sql = spec.create_sql("db")
        assert "ENGINE = MergeTree\n" in sql, name
        assert "PARTITION BY toYYYYMM(fromUnixTimestamp64Nano(ts_event))" in sql
        assert "non_replicated_deduplication_window = 1000" in sql
        assert spec.sorting_key[0] == "_topic"
        assert "ts_event" in spec.sorting_key
    assert specs["trades"].sorting_key == ("_topic", "symbol", "ts_event")
    assert specs["fills"].sorting_key == ("_topic", "account", "ts_event")
    cols = {c.name: c for c in specs["trades"].columns}
    assert cols["ts_event"].codec == "DoubleDelta, ZSTD(1)"
    assert cols["price"].codec == "ZSTD(1)"
    assert cols["symbol"].ch_type == "LowCardinality(String)"
    assert "TTL" not in specs["trades"].create_sql("db")
    assert "toIntervalDay(3)" in specs["trades"].create_sql("db", tick_ttl_days=3)
    assert "TTL" not in specs["fills"].create_sql("db", tick_ttl_days=3)


def test_row_conversion_is_exact() -> None:
    spec = table_specs()["fills"]
    fill = Fill(
        fill_id="f",
        client_order_id="c",
        account="a",
        symbol="S",
        side=Side.BUY,
        quantity=1,
        price=123_456_789_012,
        liquidity_side=LiquiditySide.TAKER,
        venue="V",
        ts_event=1,
        ts_init=2,
    )
    row = dict(zip(spec.column_names, spec.row(fill.model_dump(), "t", 0, 5, 9), strict=True))
    assert row["price"] == Decimal("123.456789012")
    assert row["quantity"] == Decimal("0.000000001")
    assert row["side"] == "BUY"
    assert (row["_topic"], row["_partition"], row["_offset"]) == ("t", 0, 5)


@pytest.mark.integration
def test_tables_are_created_in_chdb_and_hold_exact_values(chdb_dir) -> None:
    from core.clickhouse import ChdbClickHouse

    client = ChdbClickHouse(chdb_dir)
    try:
        tables = create_tables(client, "omniquant")
        assert create_tables(client, "omniquant") == tables  # idempotent
        assert "dead_letters" in tables
        spec = table_specs()["risk.decisions"]
        decision = RiskDecision(
            decision_id="d",
            client_order_id="c",
            account="a",
            symbol="S",
            side=Side.SELL,
            quantity=5_000_000_000,
            decision="REJECTED",
            reason="too big",
            checks=[RiskCheck(name="notional", passed=False, value=7, limit=5, message="m")],
            ts_event=1_700_000_000_123_456_789,
            ts_init=1_700_000_000_123_456_790,
        )
        client.insert(
            "omniquant.risk_decisions",
            spec.column_names,
            [spec.row(decision.model_dump(), "t", 1, 2, 3)],
        )
        result = client.query(
            "SELECT quantity, toString(event_time), JSONExtractString(checks, 1, 'name') "
            "FROM omniquant.risk_decisions"
        )
        assert result.rows == [(Decimal("5"), "2023-11-14 22:13:20.123456789", "notional")]
    finally:
        client.close()
