"""The ClickHouse HTTP interface over chDB (sinks.query_server) against real chDB and real
clients: clickhouse-connect over HTTP, plain HTTP requests as curl sends them, and a second
process reading while this one holds the directory."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlencode

import chdb
import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from core.clickhouse import ChdbClickHouse
from sinks.query_server import QueryServer

pytestmark = pytest.mark.integration

_TABLE = """
CREATE TABLE audit.fills (
    id      Int64,
    big     UInt64,
    price   Decimal64(9),
    ts      DateTime64(9, 'UTC'),
    note    Nullable(String),
    venue   LowCardinality(String),
    tags    Array(String),
    attrs   Map(String, String)
) ENGINE = MergeTree ORDER BY id
SETTINGS non_replicated_deduplication_window = 100
"""
_COLUMNS = ["id", "big", "price", "ts", "note", "venue", "tags", "attrs"]
_TS_NS = 1_704_164_645_123_456_789
_ROWS = [
    [
        2**63 - 1,
        2**64 - 1,
        Decimal("123456789.123456789"),
        datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
        None,
        "XNAS",
        ["a", "b"],
        {"k": "v"},
    ],
    [
        -(2**63),
        0,
        Decimal("-0.000000001"),
        datetime(1970, 1, 1, tzinfo=UTC),
        "hello, 'world'\t\n",
        "XNYS",
        [],
        {},
    ],
]
_SELECT = "SELECT * FROM audit.fills ORDER BY id"


@pytest.fixture
def writable(chdb_dir: Path) -> Iterator[QueryServer]:
    with QueryServer(chdb_dir, port=0, writable=True) as server:
        yield server


@pytest.fixture
def seeded(chdb_dir: Path) -> Iterator[QueryServer]:
    """A read-only server over a directory holding audit.fills with _ROWS."""
    direct = ChdbClickHouse(chdb_dir)
    direct.command("CREATE DATABASE audit")
    direct.command(_TABLE)
    direct.insert("audit.fills", _COLUMNS, _ROWS)
    try:
        with QueryServer(direct, port=0) as server:
            yield server
    finally:
        direct.close()


def _client(server: QueryServer, **kwargs: object) -> Client:
    return clickhouse_connect.get_client(
        host=server.host, port=server.port, tz_mode="schema", **kwargs
    )


def _http(
    server: QueryServer,
    method: str = "GET",
    params: dict[str, str] | None = None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    path: str = "/",
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        url = path + ("?" + urlencode(params) if params else "")
        conn.request(method, url, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def _direct(path: Path, sql: str, fmt: str) -> bytes:
    conn = chdb.connect(str(path.resolve()))
    try:
        return bytes(conn.query(sql, fmt).bytes())
    finally:
        conn.close()


# ---- clickhouse-connect ------------------------------------------------------------
@pytest.mark.parametrize("compress", [True, "lz4", "zstd", "gzip", False])
def test_clickhouse_connect_insert_and_query_round_trip_exactly(
    writable: QueryServer, chdb_dir: Path, compress: object
) -> None:
    client = _client(writable, compress=compress)
    try:
        client.command("CREATE DATABASE audit")
        client.command(_TABLE)
        client.insert("audit.fills", _ROWS, column_names=_COLUMNS)
        over_http = client.query(_SELECT).result_rows
        nanos = client.query("SELECT toUnixTimestamp64Nano(ts) FROM audit.fills ORDER BY id")
        assert client.query("SELECT version()").result_rows[0][0] == writable.engine_version
    finally:
        client.close()
    direct = ChdbClickHouse(chdb_dir)
    try:
        in_process = direct.query(_SELECT).rows
    finally:
        direct.close()
    assert [tuple(r) for r in over_http] == in_process
    by_id = {row[0]: row for row in _ROWS}
    assert [tuple(r) for r in over_http] == [tuple(by_id[i]) for i in sorted(by_id)]
    assert over_http[1][0] == 2**63 - 1 and over_http[1][1] == 2**64 - 1
    assert over_http[1][2] == Decimal("123456789.123456789")
    assert nanos.result_rows == [(0,), (1_704_164_645_123_456_000,)]


def test_clickhouse_connect_reads_a_read_only_server_and_is_refused_an_insert(
    seeded: QueryServer,
) -> None:
    client = _client(seeded)
    try:
        assert len(client.query(_SELECT).result_rows) == 2
        assert client.command("SELECT count() FROM audit.fills") == 2
        with pytest.raises(DatabaseError) as refused:
            client.insert("audit.fills", _ROWS[:1], column_names=_COLUMNS)
        assert refused.value.code == 164
        assert client.command("SELECT count() FROM audit.fills") == 2
    finally:
        client.close()


def test_insert_deduplication_token_in_the_url_is_honoured(writable: QueryServer) -> None:
    client = _client(writable)
    try:
        client.command("CREATE DATABASE audit")
        client.command(_TABLE)
        for _ in range(2):
            client.insert(
                "audit.fills", _ROWS, column_names=_COLUMNS,
                settings={"insert_deduplication_token": "batch-1"},
            )  # fmt: skip
        assert client.command("SELECT count() FROM audit.fills") == 2
        client.insert(
            "audit.fills", _ROWS, column_names=_COLUMNS,
            settings={"insert_deduplication_token": "batch-2"},
        )  # fmt: skip
        assert client.command("SELECT count() FROM audit.fills") == 4
    finally:
        client.close()


# ---- plain HTTP ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fmt", "content_type"),
    [
        ("TabSeparated", "text/tab-separated-values; charset=UTF-8"),
        ("JSONEachRow", "application/json; charset=UTF-8"),
        ("CSVWithNames", "text/csv; charset=UTF-8; header=present"),
        ("Native", "application/octet-stream"),
    ],
)
def test_get_and_post_answer_each_format_as_chdb_does(
    seeded: QueryServer, chdb_dir: Path, fmt: str, content_type: str
) -> None:
    expected = _direct(chdb_dir, _SELECT, fmt)
    answers = [
        _http(seeded, "GET", {"query": _SELECT, "default_format": fmt}),
        _http(seeded, "POST", body=_SELECT.encode(), headers={"X-ClickHouse-Format": fmt}),
        _http(seeded, "POST", body=f"{_SELECT} FORMAT {fmt}".encode()),
        _http(
            seeded,
            "POST",
            {"query": "SELECT * FROM audit.fills"},
            b"ORDER BY id FORMAT " + fmt.encode(),
        ),
    ]
    for status, headers, body in answers:
        assert status == 200, body
        assert body == expected
        assert headers["X-ClickHouse-Format"] == fmt
        assert headers["Content-Type"] == content_type
        assert headers["X-ClickHouse-Timezone"]
        assert json.loads(headers["X-ClickHouse-Summary"])["read_rows"] == "2"
        assert re.fullmatch(r"[0-9a-f-]{36}", headers["X-ClickHouse-Query-Id"])
        assert headers["X-ClickHouse-Server-Display-Name"] == seeded.display_name


def test_json_format_has_meta_and_data(seeded: QueryServer) -> None:
    status, headers, body = _http(seeded, "GET", {"query": f"{_SELECT} FORMAT JSON"})
    assert status == 200 and headers["Content-Type"] == "application/json; charset=UTF-8"
    doc = json.loads(body)
    assert [m["name"] for m in doc["meta"]] == _COLUMNS
    assert doc["meta"][2]["type"] == "Decimal(18, 9)"
    # chDB's default output_format_json_quote_64bit_integers is 0: exact JSON numbers
    assert doc["rows"] == 2 and doc["data"][1]["id"] == 2**63 - 1


def test_database_query_parameters_query_id_and_url_settings(seeded: QueryServer) -> None:
    ok = _http(seeded, "GET", {"query": "SELECT count() FROM fills", "database": "audit"})
    assert ok[0] == 200 and ok[2] == b"2\n"
    ok = _http(seeded, "POST", body=b"SELECT count() FROM fills",
               headers={"X-ClickHouse-Database": "audit"})  # fmt: skip
    assert ok[0] == 200 and ok[2] == b"2\n"
    bound = _http(seeded, "GET", {"query": "SELECT {x:Int64} * 2", "param_x": "21"})
    assert bound[2] == b"42\n"
    named = _http(seeded, "GET", {"query": "SELECT 1", "query_id": "my-query-1"})
    assert named[1]["X-ClickHouse-Query-Id"] == "my-query-1"
    limited = _http(seeded, "GET", {"query": _SELECT, "max_result_rows": "1"})
    assert limited[0] == 500 and limited[1]["X-ClickHouse-Exception-Code"] == "396"
    tz = _http(seeded, "GET", {"query": "SELECT timezone()", "session_timezone": "Asia/Tokyo"})
    assert tz[2] == b"Asia/Tokyo\n" and tz[1]["X-ClickHouse-Timezone"] == "Asia/Tokyo"


def test_compressed_request_and_response_bodies(seeded: QueryServer, chdb_dir: Path) -> None:
    expected = _direct(chdb_dir, _SELECT, "TabSeparated")
    status, _, body = _http(
        seeded, "POST", body=gzip.compress(_SELECT.encode()),
        headers={"Content-Encoding": "gzip"},
    )  # fmt: skip
    assert status == 200 and body == expected
    status, headers, body = _http(
        seeded, "GET", {"query": _SELECT, "enable_http_compression": "1"},
        headers={"Accept-Encoding": "gzip"},
    )  # fmt: skip
    assert headers["Content-Encoding"] == "gzip" and gzip.decompress(body) == expected
    status, headers, body = _http(seeded, "GET", {"query": _SELECT, "compress": "1"})
    assert status == 501 and headers["X-ClickHouse-Exception-Code"] == "48"


@pytest.mark.parametrize(
    ("encoding", "module"), [("zstd", "backports.zstd"), ("lz4", "lz4.frame"), ("deflate", "zlib")]
)
def test_other_http_compressions_both_ways(
    seeded: QueryServer, chdb_dir: Path, encoding: str, module: str
) -> None:
    codec = pytest.importorskip(module)
    expected = _direct(chdb_dir, _SELECT, "TabSeparated")
    status, headers, body = _http(
        seeded, "POST", {"enable_http_compression": "1"}, codec.compress(_SELECT.encode()),
        headers={"Content-Encoding": encoding, "Accept-Encoding": encoding},
    )  # fmt: skip
    assert status == 200 and headers["Content-Encoding"] == encoding
    assert codec.decompress(body) == expected


@pytest.mark.parametrize("fmt", ["Native", "RowBinaryWithNamesAndTypes"])
def test_clickhouse_go_style_request_query_in_body_format_in_url(
    seeded: QueryServer, chdb_dir: Path, fmt: str
) -> None:
    # clickhouse-go's HTTP transport (Grafana): POST, SQL as the body, default_format and
    # settings in the URL, session_id ignored
    status, headers, body = _http(
        seeded, "POST",
        {"default_format": fmt, "max_execution_time": "60", "session_id": "s1"},
        _SELECT.encode(), headers={"Content-Type": "text/plain"},
    )  # fmt: skip
    assert status == 200 and headers["X-ClickHouse-Format"] == fmt
    assert body == _direct(chdb_dir, _SELECT, fmt)


def test_health_endpoints_say_ok(seeded: QueryServer) -> None:
    for path in ("/ping", "/replicas_status", "/"):
        status, _, body = _http(seeded, "GET", path=path)
        assert (status, body) == (200, b"Ok.\n")
    assert _http(seeded, "GET", path="/play")[0] == 404


# ---- errors --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sql", "status", "code", "name"),
    [
        ("SELECT * FROM audit.nope", 404, 60, "UNKNOWN_TABLE"),
        ("SELEC 1", 400, 62, "SYNTAX_ERROR"),
        ("SELECT nofunc(1)", 404, 46, "UNKNOWN_FUNCTION"),
        ("SELECT 1 FORMAT Nope", 404, 73, "UNKNOWN_FORMAT"),
        ("SELECT throwIf(1)", 500, 395, "FUNCTION_THROW_IF_VALUE_IS_NON_ZERO"),
    ],
)
def test_errors_carry_the_servers_status_code_header_and_body(
    seeded: QueryServer, sql: str, status: int, code: int, name: str
) -> None:
    got, headers, body = _http(seeded, "POST", body=sql.encode())
    assert got == status
    assert headers["X-ClickHouse-Exception-Code"] == str(code)
    text = body.decode()
    assert re.fullmatch(
        rf"Code: {code}\. DB::Exception: .*\({name}\) \(version [0-9.]+\)\n", text, re.DOTALL
    ), text
    assert text.count(f"Code: {code}.") == 1 and text.count(f"({name})") == 1


def test_clickhouse_connect_sees_the_error_code(seeded: QueryServer) -> None:
    client = _client(seeded)
    try:
        with pytest.raises(DatabaseError) as err:
            client.query("SELECT * FROM audit.nope")
        assert err.value.code == 60
    finally:
        client.close()


def test_empty_post_is_a_syntax_error(seeded: QueryServer) -> None:
    status, headers, body = _http(seeded, "POST", body=b"")
    assert status == 400 and headers["X-ClickHouse-Exception-Code"] == "62"
    assert body.startswith(b"Code: 62. DB::Exception: Empty query. (SYNTAX_ERROR)")


# ---- read-only -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO audit.fills (id) VALUES (7)",
        "INSERT INTO audit.fills (id, big) FORMAT CSV\n7,7\n",
        "ALTER TABLE audit.fills DELETE WHERE 1",
        "ALTER TABLE audit.fills ADD COLUMN x Int8",
        "DROP TABLE audit.fills",
        "TRUNCATE TABLE audit.fills",
        "CREATE TABLE audit.other (a Int8) ENGINE = Memory",
        "CREATE DATABASE other",
        "OPTIMIZE TABLE audit.fills FINAL",
        "SYSTEM FLUSH LOGS",
        "SET max_threads = 1",
        "SET readonly = 0",
        "SELECT 1 SETTINGS readonly = 0",
        "INSERT INTO FUNCTION file('leak.csv', 'CSV') SELECT * FROM audit.fills",
        "SELECT * FROM file('/etc/hostname', 'LineAsString')",
        "SELECT * FROM url('http://127.0.0.1:9/', 'LineAsString')",
        "SELECT * FROM executable('id', 'TSV', 'x String')",
        "SELECT * FROM remote('127.0.0.1:9000', system.one)",
    ],
)
def test_read_only_server_refuses_writes_settings_and_file_access(
    seeded: QueryServer, chdb_dir: Path, sql: str
) -> None:
    for method, kwargs in (("POST", {"body": sql.encode()}), ("GET", {"params": {"query": sql}})):
        status, headers, body = _http(seeded, method, **kwargs)  # type: ignore[arg-type]
        assert status == 500, body
        assert headers["X-ClickHouse-Exception-Code"] == "164", body
        assert b"(READONLY)" in body
    # URL settings cannot lift it either
    status, headers, _ = _http(seeded, "POST", {"readonly": "0"}, sql.encode())
    assert headers["X-ClickHouse-Exception-Code"] == "164"
    assert _direct(chdb_dir, "SELECT count() FROM audit.fills", "TabSeparated") == b"2\n"
    assert not (chdb_dir / "user_files" / "leak.csv").exists()


@pytest.mark.parametrize(
    "sql",
    [
        "SHOW TABLES FROM audit",
        "DESCRIBE TABLE audit.fills",
        "EXISTS TABLE audit.fills",
        "EXPLAIN SELECT 1",
        "WITH 2 AS x SELECT x",
        "SELECT count() FROM numbers(10)",
    ],
)
def test_read_only_server_answers_reads(seeded: QueryServer, sql: str) -> None:
    status, _, body = _http(seeded, "POST", body=sql.encode())
    assert status == 200, body and body


def test_writable_server_treats_get_as_read_only_like_the_server(writable: QueryServer) -> None:
    assert _http(writable, "POST", body=b"CREATE TABLE t (a Int8) ENGINE = Memory")[0] == 200
    _, headers, _ = _http(writable, "GET", {"query": "INSERT INTO t VALUES (1)"})
    assert headers["X-ClickHouse-Exception-Code"] == "164"
    assert _http(writable, "POST", body=b"INSERT INTO t VALUES (1)")[0] == 200
    assert _http(writable, "GET", {"query": "SELECT a FROM t"})[2] == b"1\n"


# ---- live reads, concurrency, the standalone process ----------------------------------
def test_another_process_reads_over_http_while_this_one_owns_the_directory(
    chdb_dir: Path,
) -> None:
    direct = ChdbClickHouse(chdb_dir)
    try:
        direct.command("CREATE DATABASE audit")
        direct.command(_TABLE)
        with QueryServer(direct, port=0) as server:
            code = (
                "import sys, clickhouse_connect\n"
                "from pathlib import Path\n"
                "from core.clickhouse import ChdbClickHouse\n"
                "from core.errors import ClickHouseError\n"
                "try:\n"
                "    ChdbClickHouse(Path(sys.argv[2]))\n"
                "    print('opened')\n"
                "except ClickHouseError:\n"
                "    print('held')\n"
                "c = clickhouse_connect.get_client(dsn=sys.argv[1])\n"
                "print(c.command('SELECT count() FROM audit.fills'))\n"
            )
            for expected in (0, 2):
                if expected:
                    direct.insert("audit.fills", _COLUMNS, _ROWS)  # the "sink" writes on
                child = subprocess.run(
                    [sys.executable, "-c", code, server.url, str(chdb_dir)],
                    capture_output=True, text=True, timeout=120, check=False,
                )  # fmt: skip
                assert child.stdout.split() == ["held", str(expected)], child.stderr
    finally:
        direct.close()


def test_concurrent_readers_while_a_writer_inserts(writable: QueryServer) -> None:
    setup = _client(writable)
    setup.command("CREATE TABLE n (a Int64) ENGINE = MergeTree ORDER BY a")
    setup.close()
    errors: list[BaseException] = []

    def read() -> None:
        try:
            client = _client(writable)
            for _ in range(20):
                assert client.command("SELECT count() >= 0 FROM n") == 1
            client.close()
        except BaseException as exc:
            errors.append(exc)

    def write() -> None:
        try:
            client = _client(writable)
            for i in range(20):
                client.insert("n", [[i]], column_names=["a"])
            client.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(6)] + [threading.Thread(target=write)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert _http(writable, "GET", {"query": "SELECT count() FROM n"})[2] == b"20\n"


def test_standalone_server_prints_its_address_serves_and_stops_on_sigterm(
    chdb_dir: Path,
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sinks.query_server", "--path", str(chdb_dir), "--port", "0",
         "--writable"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.fullmatch(r"listening on (http://127\.0\.0\.1:\d+)\n", line)
        assert match, line + (proc.stderr.read() if proc.stderr else "")
        client = clickhouse_connect.get_client(dsn=match.group(1))
        client.command("CREATE TABLE t (a Int64) ENGINE = MergeTree ORDER BY a")
        client.insert("t", [[1], [2]], column_names=["a"])
        assert client.command("SELECT sum(a) FROM t") == 3
        client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    reopened = ChdbClickHouse(chdb_dir)  # released: this process can open it now
    try:
        assert reopened.query("SELECT sum(a) FROM t").rows == [(3,)]
    finally:
        reopened.close()
