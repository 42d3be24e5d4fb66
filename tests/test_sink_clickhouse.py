"""The ClickHouse sink against real chDB: nothing collapses, nothing is stored twice,
migrations are versioned and idempotent, and records may gain fields while it runs."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import shared_file
from quixstreams.sinks import SinkBackpressureError

from core.clickhouse import ChdbClickHouse, ClickHouse
from core.errors import ClickHouseError
from producers.replay import read_files
from schemas.models import Fill, Side, Trade
from sinks.clickhouse import ClickHouseSink, DeadLetterTable, TableSpec, table_specs
from sinks.migrations import MIGRATIONS, Migration, migrate

pytestmark = pytest.mark.integration

DB = "omniquant"
IBM_TRADES = "Lean/Data/equity/usa/tick/ibm/20131007_trade.zip"
TICKS = 20_000


@pytest.fixture
def chdb(chdb_dir: Path) -> Iterator[ClickHouse]:
    client = ChdbClickHouse(chdb_dir)
    migrate(client, DB)
    yield client
    client.close()


def _sink(chdb_dir: Path, tables: dict[str, Any], threads: int = 4) -> ClickHouseSink:
    return ClickHouseSink(lambda: ChdbClickHouse(chdb_dir), DB, tables, threads=threads)


def _trade(i: int, symbol: str = "SPY") -> dict[str, Any]:
    ts = 1_700_000_000_000_000_000 + i * 1_000
    return Trade(
        symbol=symbol, venue="XNYS", price=187_250_000_000 + i, size=10**9, source="t",
        ts_event=ts, ts_init=ts + 5,
    ).model_dump()  # fmt: skip


def _add(sink: ClickHouseSink, topic: str, values: list[Any], first: int, partition: int = 0):
    for offset, value in enumerate(values, start=first):
        sink.add(value, None, 1_700_000_000_000 + offset, [], topic, partition, offset)


def _one(client: ClickHouse, sql: str) -> Any:
    return client.query(sql).rows[0][0]


def test_same_ticks_in_two_prefixes_both_survive_optimize_final(
    chdb: ClickHouse, chdb_dir: Path, shared_data: Path
) -> None:
    path = shared_file(shared_data, IBM_TRADES)
    ticks = [
        r.model_dump() for r in itertools.islice(read_files([path]), TICKS) if isinstance(r, Trade)
    ]
    spec = table_specs()["market.trades"]
    sink = _sink(chdb_dir, {"bt-1.market.trades": spec, "bt-2.market.trades": spec})
    try:
        for prefix in ("bt-1.", "bt-2."):  # the same partitions and offsets in both
            for start in range(0, len(ticks), 5_000):
                _add(sink, f"{prefix}market.trades", ticks[start : start + 5_000], start)
                sink.flush()
    finally:
        sink.close()

    chdb.command(f"OPTIMIZE TABLE {DB}.trades FINAL")

    per_topic = chdb.query(f"SELECT _topic, count() FROM {DB}.trades GROUP BY _topic ORDER BY 1")
    assert per_topic.rows == [
        ("bt-1.market.trades", len(ticks)),
        ("bt-2.market.trades", len(ticks)),
    ]
    assert _one(chdb, f"SELECT count() FROM {DB}.trades") == 2 * len(ticks)
    assert _one(chdb, f"SELECT uniqExact(_topic, _partition, _offset) FROM {DB}.trades") == 2 * len(
        ticks
    )
    assert len(ticks) > 10_000  # real ticks, not an empty file


def test_same_insert_twice_with_the_same_token_is_stored_once(chdb: ClickHouse) -> None:
    spec = table_specs()["market.trades"]
    rows = [spec.row(_trade(i), "t.market.trades", 0, i, i) for i in range(100)]
    chdb.command(f"CREATE TABLE {DB}.no_window AS {DB}.trades")
    chdb.command(
        f"ALTER TABLE {DB}.no_window MODIFY SETTING non_replicated_deduplication_window = 0"
    )

    for table in ("trades", "no_window"):
        for _ in range(2):
            chdb.insert(
                f"{DB}.{table}", spec.column_names, rows, {"insert_deduplication_token": "x"}
            )
    chdb.insert(f"{DB}.trades", spec.column_names, rows, {"insert_deduplication_token": "y"})

    assert _one(chdb, f"SELECT count() FROM {DB}.no_window") == 200  # the window does it
    assert _one(chdb, f"SELECT count() FROM {DB}.trades") == 200  # x once, y once


def test_a_replay_with_other_batch_boundaries_is_stored_once(
    chdb: ClickHouse, chdb_dir: Path
) -> None:
    spec = table_specs()["market.trades"]
    trades = [_trade(i) for i in range(300)]
    before = _sink(chdb_dir, {"t.market.trades": spec})
    _add(before, "t.market.trades", trades[:120], 0)
    before.flush()  # inserted, then "killed" before the commit
    before.close()

    after = _sink(chdb_dir, {"t.market.trades": spec})  # restarts from the last commit (0)
    try:
        _add(after, "t.market.trades", trades[:70], 0)
        after.flush()
        _add(after, "t.market.trades", trades[70:300], 70)
        after.flush()
    finally:
        after.close()

    assert _one(chdb, f"SELECT count() FROM {DB}.trades") == 300
    assert _one(chdb, f"SELECT uniqExact(_topic, _partition, _offset) FROM {DB}.trades") == 300


def test_a_stored_offset_with_another_timestamp_is_kept_not_skipped(
    chdb: ClickHouse, chdb_dir: Path
) -> None:
    spec = table_specs()["market.trades"]
    sink = _sink(chdb_dir, {"t.market.trades": spec})
    try:
        _add(sink, "t.market.trades", [_trade(i) for i in range(10)], 0)
        sink.flush()
        for offset in range(10):  # a recreated topic: offsets again from 0, other records
            sink.add(_trade(100 + offset), None, 5, [], "t.market.trades", 0, offset)
        sink.flush()
    finally:
        sink.close()

    assert _one(chdb, f"SELECT count() FROM {DB}.trades") == 20


def test_money_round_trips_exactly_through_arrow_up_to_int64(
    chdb: ClickHouse, chdb_dir: Path
) -> None:
    spec = table_specs()["fills"]
    extremes = [2**63 - 1, -(2**63) + 1, 1, -1, 123_456_789_012]
    fills = [
        Fill(fill_id=f"f{i}", client_order_id="c", account="a", symbol="S", side=Side.BUY,
             quantity=1, price=p, commission=-p, venue="V", ts_event=i, ts_init=i).model_dump()
        for i, p in enumerate(extremes)
    ]  # fmt: skip
    sink = _sink(chdb_dir, {"t.fills": spec})
    try:
        _add(sink, "t.fills", fills, 0)
        sink.flush()
    finally:
        sink.close()

    rows = chdb.query(f"SELECT price, commission FROM {DB}.fills ORDER BY ts_event").rows
    assert rows == [(Decimal(p).scaleb(-9), Decimal(-p).scaleb(-9)) for p in extremes]


def test_tables_of_one_flush_are_written_in_one_pass_each(chdb: ClickHouse, chdb_dir: Path) -> None:
    specs = table_specs()
    topics = {f"t.{name}": specs[name] for name in ("market.trades", "fills")}
    fill = Fill(fill_id="f", client_order_id="c", account="a", symbol="S", side=Side.SELL,
                quantity=5, price=7, venue="V", ts_event=1, ts_init=2).model_dump()  # fmt: skip
    sink = _sink(chdb_dir, topics)
    try:
        for partition in range(3):
            _add(sink, "t.market.trades", [_trade(i) for i in range(50)], 0, partition)
        _add(sink, "t.fills", [fill], 7)
        sink.flush()
    finally:
        sink.close()

    parts = chdb.query(
        f"SELECT table, count() FROM system.parts WHERE database = '{DB}' AND active "
        "AND table IN ('trades', 'fills') GROUP BY table ORDER BY table"
    ).rows
    assert parts == [("fills", 1), ("trades", 1)]  # one INSERT per table, partitions together
    assert _one(chdb, f"SELECT count() FROM {DB}.trades") == 150


def test_a_failed_insert_pauses_and_the_same_records_come_again(
    chdb: ClickHouse, chdb_dir: Path
) -> None:
    spec = table_specs()["market.trades"]
    sink = _sink(chdb_dir, {"t.market.trades": spec})
    try:
        chdb.command(f"DETACH TABLE {DB}.trades")  # the table is gone for a while
        _add(sink, "t.market.trades", [_trade(i) for i in range(40)], 0)
        with pytest.raises(SinkBackpressureError) as paused:
            sink.flush()
        assert paused.value.retry_after == 1.0
        chdb.command(f"ATTACH TABLE {DB}.trades")
        _add(sink, "t.market.trades", [_trade(i) for i in range(40)], 0)  # Quix seeks back
        sink.flush()
    finally:
        sink.close()

    assert _one(chdb, f"SELECT count() FROM {DB}.trades") == 40


def test_dead_letters_land_with_their_error_headers(chdb: ClickHouse, chdb_dir: Path) -> None:
    sink = _sink(chdb_dir, {"t.dlq.bars": DeadLetterTable()})
    headers = [("correlation_id", b"c-1"), ("dlq.error.class", b"SerdeError"),
               ("dlq.error.message", b"bad magic"), ("dlq.app", b"bars"),
               ("dlq.stage", b"deserialize"), ("dlq.original.topic", b"t.market.trades"),
               ("dlq.original.partition", b"2"), ("dlq.original.offset", b"41"),
               ("dlq.original.timestamp", b"None")]  # fmt: skip
    try:
        sink.add(b"\xff\x00raw", b"SPY", 1_700_000_000_000, headers, "t.dlq.bars", 0, 0)
        sink.flush()
    finally:
        sink.close()

    rows = chdb.query(
        "SELECT app, stage, error_class, error_message, original_topic, original_partition, "
        f"original_offset, original_timestamp_ms, key, headers FROM {DB}.dead_letters"
    ).rows
    assert rows == [("bars", "deserialize", "SerdeError", "bad magic", "t.market.trades", 2, 41,
                     None, "SPY", {"correlation_id": "c-1"})]  # fmt: skip
    raw = _one(chdb, f"SELECT hex(value) FROM {DB}.dead_letters")
    assert raw == "FF00726177"


# ---- migrations ---------------------------------------------------------------------------
_OLD_LAYOUT = (
    "CREATE TABLE {db}.trades (symbol LowCardinality(String), venue LowCardinality(String), "
    "price Decimal64(9), size Decimal64(9), source LowCardinality(String), ts_event Int64, "
    "ts_init Int64, retired String DEFAULT 'kept', _topic LowCardinality(String), "
    "_partition UInt32, _offset UInt64, _kafka_timestamp_ms Int64, "
    "_ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
    "ENGINE = ReplacingMergeTree ORDER BY (symbol, ts_event, _partition, _offset)"
)


def test_running_the_migrations_twice_changes_nothing(chdb: ClickHouse) -> None:
    versions = f"SELECT version, name, checksum, applied_at FROM {DB}.schema_migrations ORDER BY 1"
    tables = (
        f"SELECT name, create_table_query FROM system.tables WHERE database = '{DB}' ORDER BY 1"
    )
    first, ddl = chdb.query(versions), chdb.query(tables)

    assert migrate(chdb, DB) == []

    assert [r[:2] for r in first.rows] == [(1, "audit_tables_mergetree"), (2, "dead_letters")]
    assert chdb.query(versions) == first
    assert chdb.query(tables) == ddl
    engines = chdb.query(f"SELECT DISTINCT engine FROM system.tables WHERE database = '{DB}'")
    assert engines.rows == [("MergeTree",)]


def test_an_old_replacing_layout_is_rebuilt_without_losing_rows(chdb_dir: Path) -> None:
    with ChdbClickHouse(chdb_dir) as client:
        client.command(f"CREATE DATABASE {DB}")
        client.command(_OLD_LAYOUT.format(db=DB))
        cols = ["symbol", "venue", "price", "size", "source", "ts_event", "ts_init", "_topic",
                "_partition", "_offset", "_kafka_timestamp_ms"]  # fmt: skip
        for topic in ("bt-1.market.trades", "bt-2.market.trades"):  # same keys: would collapse
            rows = [["SPY", "X", Decimal("1.5"), Decimal(1), "s", i, i, topic, 0, i, i]
                    for i in range(500)]  # fmt: skip
            client.insert(f"{DB}.trades", cols, rows)
        client.insert(f"{DB}.trades", cols, [rows[0]])  # an at-least-once duplicate

        done = migrate(client, DB)

        assert [m.version for m in done] == [1, 2]
        engine, key = client.query(
            f"SELECT engine, sorting_key FROM system.tables WHERE database = '{DB}' "
            "AND name = 'trades'"
        ).rows[0]
        assert (engine, key) == ("MergeTree", "_topic, symbol, ts_event")
        client.command(f"OPTIMIZE TABLE {DB}.trades FINAL")
        per_topic = client.query(f"SELECT _topic, count() FROM {DB}.trades GROUP BY 1 ORDER BY 1")
        assert per_topic.rows == [("bt-1.market.trades", 500), ("bt-2.market.trades", 500)]
        assert _one(client, f"SELECT count() FROM {DB}.trades WHERE retired = 'kept'") == 1000
        assert _one(client, f"SELECT count() FROM {DB}.trades WHERE aggressor_side = ''") == 1000
        tables = {r[0] for r in client.query(f"SHOW TABLES FROM {DB}").rows}
        assert "trades__rebuild" not in tables
        assert migrate(client, DB) == []


def test_an_applied_migration_that_was_changed_is_refused(chdb: ClickHouse) -> None:
    changed = (Migration(1, MIGRATIONS[0].name, MIGRATIONS[0].apply, "another layout"),)

    with pytest.raises(ClickHouseError, match="an applied migration was changed"):
        migrate(chdb, DB, migrations=changed)


def test_tick_ttl_follows_the_setting(chdb: ClickHouse) -> None:
    def ddl(table: str) -> str:
        return str(_one(chdb, f"SHOW CREATE TABLE {DB}.{table}"))

    assert "TTL" not in ddl("trades")
    migrate(chdb, DB, tick_ttl_days=30)
    assert "TTL toDateTime(_ingested_at) + toIntervalDay(30)" in ddl("trades")
    assert "TTL toDateTime(_ingested_at) + toIntervalDay(30)" in ddl("quotes")
    assert "TTL" not in ddl("fills")
    migrate(chdb, DB, tick_ttl_days=30)
    assert ddl("trades").count("TTL") == 1
    migrate(chdb, DB, tick_ttl_days=None)
    assert "TTL" not in ddl("trades")


class TradeV2(Trade):
    """The trade record of a later release: one optional field more."""

    exchange_seq: int | None = None


def test_a_record_that_gains_an_optional_field_gets_its_column_while_the_sink_runs(
    chdb: ClickHouse, chdb_dir: Path
) -> None:
    old = _sink(chdb_dir, {"t.market.trades": table_specs()["market.trades"]})
    _add(old, "t.market.trades", [_trade(i) for i in range(5)], 0)
    old.flush()
    old.close()
    spec = TableSpec.for_model("trades", TradeV2)
    sink = _sink(chdb_dir, {"t.market.trades": spec})
    try:
        newer = [{**_trade(i), "exchange_seq": i * 10} for i in range(5, 10)]
        _add(sink, "t.market.trades", newer, 5)
        sink.flush()
        grown = chdb.query(f"SELECT _offset, exchange_seq FROM {DB}.trades ORDER BY _offset")
        chdb.command(f"ALTER TABLE {DB}.trades DROP COLUMN exchange_seq")  # changed under it
        _add(sink, "t.market.trades", [{**_trade(10), "exchange_seq": 100}], 10)
        sink.flush()
    finally:
        sink.close()

    assert grown.rows == [(i, None) for i in range(5)] + [(i, i * 10) for i in range(5, 10)]
    rows = chdb.query(f"SELECT _offset, exchange_seq FROM {DB}.trades ORDER BY _offset").rows
    assert rows == [(i, None) for i in range(10)] + [(10, 100)]  # re-added, then inserted


class _CountingChdb(ChdbClickHouse):
    """chDB that counts the sink's "which offsets do you hold" questions."""

    asked: list[str] = []

    def query(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        if "_kafka_timestamp_ms" in sql or "DISTINCT _topic" in sql:
            _CountingChdb.asked.append(sql)
        return super().query(sql, *args, **kwargs)


def test_a_partition_owned_throughout_is_not_asked_again_and_a_reassigned_one_is(
    chdb: ClickHouse, chdb_dir: Path
) -> None:
    spec = table_specs()["market.trades"]
    topic = "t.market.trades"
    trades = [_trade(i) for i in range(400)]
    _CountingChdb.asked = []
    ours = ClickHouseSink(lambda: _CountingChdb(chdb_dir), DB, {topic: spec}, threads=1)
    try:
        _add(ours, topic, trades[:100], 0)
        _add(ours, "t.market.trades", trades[:30], 0, partition=1)
        ours.flush()
        assert len(_CountingChdb.asked) == 2  # a fresh sink cannot know: it asks (twice)
        _add(ours, topic, trades[100:200], 100)
        _add(ours, topic, trades[30:60], 30, partition=1)
        ours.flush()
        assert len(_CountingChdb.asked) == 2  # both partitions ours since: nothing asked

        _add(ours, topic, trades[150:250], 150)  # sought back (backpressure elsewhere)
        ours.flush()
        assert len(_CountingChdb.asked) == 4  # offsets it already wrote: asked again

        # Partition 0 goes to another process, which inserts 250..299, commits 270 and dies;
        # it comes back to us at the commit.
        theirs = _sink(chdb_dir, {topic: spec})
        _add(theirs, topic, trades[250:300], 250)
        theirs.flush()
        theirs.close()
        ours.assigned({(topic, 0): 270})
        _add(ours, topic, trades[270:400], 270)
        _add(ours, topic, trades[60:90], 60, partition=1)  # partition 1 stayed ours
        ours.flush()
        assert len(_CountingChdb.asked) == 6
        assert not any("_partition = 1" in sql for sql in _CountingChdb.asked[-2:])
    finally:
        ours.close()

    assert _one(chdb, f"SELECT count() FROM {DB}.trades WHERE _partition = 0") == 400
    assert _one(chdb, f"SELECT uniqExact(_offset) FROM {DB}.trades WHERE _partition = 0") == 400
    assert _one(chdb, f"SELECT count() FROM {DB}.trades WHERE _partition = 1") == 90


def test_an_insert_that_failed_makes_the_sink_ask_again(chdb: ClickHouse, chdb_dir: Path) -> None:
    spec = table_specs()["market.trades"]
    topic = "t.market.trades"
    _CountingChdb.asked = []
    sink = ClickHouseSink(lambda: _CountingChdb(chdb_dir), DB, {topic: spec}, threads=1)
    try:
        _add(sink, topic, [_trade(i) for i in range(40)], 0)
        sink.flush()
        chdb.command(f"DETACH TABLE {DB}.trades")
        _add(sink, topic, [_trade(i) for i in range(40, 80)], 40)
        with pytest.raises(SinkBackpressureError):
            sink.flush()
        chdb.command(f"ATTACH TABLE {DB}.trades")
        asked = len(_CountingChdb.asked)
        _add(sink, topic, [_trade(i) for i in range(40, 80)], 40)  # Quix seeks back
        sink.flush()
        assert len(_CountingChdb.asked) == asked + 2
    finally:
        sink.close()

    assert _one(chdb, f"SELECT count() FROM {DB}.trades") == 80
