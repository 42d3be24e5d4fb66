"""The ClickHouse interface against real embedded chDB: types, errors, directory ownership."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from core.clickhouse import ChdbClickHouse, ClickHouse, connect_clickhouse
from core.config import load_settings
from core.errors import ClickHouseError, OmniquantError

pytestmark = pytest.mark.integration

_TABLE = """
CREATE TABLE audit.fills (
    id        Int64,
    price     Decimal64(9),
    note      Nullable(String),
    tags      Array(String),
    attrs     Map(String, String),
    ts        DateTime64(9, 'UTC'),
    flag      Bool,
    big       UInt64
) ENGINE = MergeTree ORDER BY id
"""
_COLUMNS = ["id", "price", "note", "tags", "attrs", "ts", "flag", "big"]
_TS_NS = 1_704_164_645_123_456_789  # 2024-01-02T03:04:05.123456789Z


@pytest.fixture
def chdb(chdb_dir: Path) -> Iterator[ClickHouse]:
    client = ChdbClickHouse(chdb_dir)
    yield client
    client.close()


def _make_table(client: ClickHouse) -> None:
    client.command("CREATE DATABASE IF NOT EXISTS audit")
    client.command(_TABLE)


def _open_in_child(path: Path, sql: str) -> subprocess.CompletedProcess[str]:
    code = (
        "import sys; from pathlib import Path; from core.clickhouse import ChdbClickHouse\n"
        "c = ChdbClickHouse(Path(sys.argv[1])); print(c.query(sys.argv[2]).rows); c.close()"
    )
    return subprocess.run(
        [sys.executable, "-c", code, str(path), sql],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_chdb_round_trips_decimal_nullable_array_map_and_datetime64_exactly(
    chdb: ClickHouse,
) -> None:
    _make_table(chdb)
    rows: list[list[object]] = [
        [1, Decimal("999999999.999999999"), None, ["a", "b"], {"k": "v", "é": "ü"}, _TS_NS,
         True, 2**64 - 1],
        [2, Decimal("-0.000000001"), 'quote " and\nnewline', [], {}, 0, False, 0],
        [3, Decimal("187.25"), "", ["x"], {"side": "buy"}, _TS_NS + 1, True, 2**53 + 1],
    ]  # fmt: skip

    chdb.insert("audit.fills", _COLUMNS, rows)
    result = chdb.query(
        "SELECT id, price, note, tags, attrs, toUnixTimestamp64Nano(ts) AS ts_ns, flag, big, ts "
        "FROM audit.fills ORDER BY id"
    )

    assert result.columns == ["id", "price", "note", "tags", "attrs", "ts_ns", "flag", "big", "ts"]
    assert [list(row[:8]) for row in result.rows] == rows
    assert all(type(row[1]) is Decimal for row in result.rows)
    # Python's datetime holds microseconds: the nanoseconds are in ts_ns above.
    assert result.rows[0][8] == datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def test_chdb_sums_decimals_without_float_error(chdb: ClickHouse) -> None:
    _make_table(chdb)
    rows: list[list[object]] = [[i, Decimal("0.1"), None, [], {}, 0, False, 0] for i in range(10)]
    chdb.insert("audit.fills", _COLUMNS, rows)

    total = chdb.query("SELECT sum(price) FROM audit.fills").rows[0][0]

    assert total == Decimal("1")


def test_inserting_no_rows_is_a_no_op(chdb: ClickHouse) -> None:
    _make_table(chdb)

    chdb.insert("audit.fills", _COLUMNS, [])

    assert chdb.query("SELECT count() FROM audit.fills").rows == [(0,)]


def test_bad_query_raises_clickhouse_error_with_the_engine_message_and_statement(
    chdb: ClickHouse,
) -> None:
    _make_table(chdb)

    with pytest.raises(ClickHouseError) as err:
        chdb.query("SELECT no_such_column FROM audit.fills")

    message = str(err.value)
    assert isinstance(err.value, OmniquantError)
    assert "UNKNOWN_IDENTIFIER" in message
    assert "statement: SELECT no_such_column FROM audit.fills" in message
    assert f"chDB at {chdb.path}" in message  # type: ignore[attr-defined]


def test_syntax_error_and_missing_table_raise_clickhouse_error(chdb: ClickHouse) -> None:
    with pytest.raises(ClickHouseError, match="SYNTAX_ERROR"):
        chdb.command("CREAT TABLE x (a Int8) ENGINE = Memory")
    with pytest.raises(ClickHouseError, match=r"UNKNOWN_DATABASE|UNKNOWN_TABLE"):
        chdb.insert("nowhere.nothing", ["a"], [[1]])


def test_closed_client_raises_clickhouse_error(chdb_dir: Path) -> None:
    client = ChdbClickHouse(chdb_dir)
    client.close()
    client.close()  # twice is fine

    with pytest.raises(ClickHouseError, match="closed"):
        client.query("SELECT 1")


def test_reopened_chdb_keeps_data_written_before_close(chdb_dir: Path) -> None:
    with ChdbClickHouse(chdb_dir) as first:
        _make_table(first)
        first.insert("audit.fills", _COLUMNS, [[7, Decimal("1.5"), "x", [], {}, 0, True, 1]])

    with ChdbClickHouse(chdb_dir) as again:
        rows = again.query("SELECT id, price, note FROM audit.fills").rows

    assert rows == [(7, Decimal("1.5"), "x")]


def test_one_process_opens_two_chdb_dirs_one_after_the_other(tmp_path: Path) -> None:
    with ChdbClickHouse(tmp_path / "a") as a:
        a.command("CREATE DATABASE only_in_a")
    with ChdbClickHouse(tmp_path / "b") as b:
        b_databases = {row[0] for row in b.query("SHOW DATABASES").rows}
    with ChdbClickHouse(tmp_path / "a") as a_again:
        a_databases = {row[0] for row in a_again.query("SHOW DATABASES").rows}

    assert "only_in_a" not in b_databases
    assert "only_in_a" in a_databases


def test_opening_a_second_dir_while_one_is_open_raises_a_clear_error(tmp_path: Path) -> None:
    with (
        ChdbClickHouse(tmp_path / "a"),
        pytest.raises(ClickHouseError, match="already has another chDB directory open"),
    ):
        ChdbClickHouse(tmp_path / "b")


def test_two_clients_on_one_dir_share_data_and_closing_one_keeps_the_other(
    chdb_dir: Path,
) -> None:
    with ChdbClickHouse(chdb_dir) as first:
        second = ChdbClickHouse(chdb_dir)
        second.command("CREATE DATABASE shared")
        second.close()

        assert ("shared",) in first.query("SHOW DATABASES").rows


def test_another_process_cannot_open_a_dir_in_use_and_can_after_close(
    chdb_dir: Path,
) -> None:
    client = ChdbClickHouse(chdb_dir)
    client.command("CREATE DATABASE held")

    busy = _open_in_child(chdb_dir, "SELECT 1")
    client.close()
    free = _open_in_child(chdb_dir, "SELECT name FROM system.databases WHERE name = 'held'")

    assert busy.returncode != 0
    assert f"in use by process {os.getpid()}" in busy.stderr
    assert free.returncode == 0, free.stderr
    assert free.stdout.strip() == "[('held',)]"


def test_connect_clickhouse_without_url_opens_chdb_at_the_settings_path(chdb_dir: Path) -> None:
    settings = load_settings(clickhouse={"chdb_path": chdb_dir, "url": None})

    with connect_clickhouse(settings) as client:
        assert isinstance(client, ChdbClickHouse)
        assert client.query("SELECT 1 + 1").rows == [(2,)]
    assert chdb_dir.is_dir()


def test_server_that_does_not_answer_raises_clickhouse_error_without_the_password() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    settings = load_settings(clickhouse={"url": f"http://default:s3cr3t@127.0.0.1:{port}"})

    with pytest.raises(ClickHouseError) as err:
        connect_clickhouse(settings)

    assert "s3cr3t" not in str(err.value)
    assert f"http://default:***@127.0.0.1:{port}" in str(err.value)
    assert err.value.__cause__ is None  # the driver's message is not chained in
