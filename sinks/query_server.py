"""The ClickHouse HTTP interface in front of a chDB data directory.

chDB lets one process open a data directory (see :mod:`core.clickhouse`), so a second process
(``omniquant sql``, Grafana, a notebook) cannot read the embedded store while the pipeline's
sink writes it. :class:`QueryServer` runs in the process that owns the directory and answers
queries over HTTP the way ``clickhouse-server`` does on port 8123, so the same clients work
against the embedded default and a real server: clickhouse-connect
(``get_client(host=..., port=...)``), curl, and clickhouse-go's HTTP transport (Grafana).

What it speaks (a subset of the real interface, answered the same way):

* ``GET|POST /?query=...``; the query may also be the POST body, or begin in ``query`` and go
  on in the body (joined by a newline, as the server does). ``/ping`` and ``/replicas_status``
  answer ``Ok.``; ``GET /`` with no query answers ``Ok.``.
* ``default_format`` or the ``X-ClickHouse-Format`` header (a ``FORMAT`` clause wins);
  ``database`` or ``X-ClickHouse-Database``; ``param_<name>`` query parameters; ``query_id``;
  every other URL parameter is a setting (``max_result_rows=...``), applied with ``SET``.
* Request bodies with ``Content-Encoding`` gzip, deflate, zstd or lz4 (chunked or not);
  responses compressed the same ways when ``enable_http_compression=1`` and ``Accept-Encoding``
  allow it. ClickHouse's own block compression (``compress=1``/``decompress=1``) is refused
  with NOT_IMPLEMENTED: it needs CityHash128 checksums, which nothing installed here computes.
* Headers ``X-ClickHouse-Format``, ``-Timezone``, ``-Query-Id``, ``-Summary``,
  ``-Server-Display-Name``; errors with the server's status code (404 for UNKNOWN_TABLE, 400
  for SYNTAX_ERROR, ... 500 otherwise), ``X-ClickHouse-Exception-Code`` and a
  ``Code: N. DB::Exception: ... (NAME) (version V)`` body.
* Sessions (``session_id``) are accepted and ignored: every request is its own session, so a
  ``SET`` or temporary table does not outlive its request.

Read-only by default: each request runs with ClickHouse's own ``readonly = 1``, set after the
URL's settings, so the engine refuses INSERT, ALTER, DROP, CREATE, OPTIMIZE, SYSTEM, ``SET``,
a ``SETTINGS`` clause, and table functions (``file()``, ``url()``, ``s3()``, ``remote()``,
``executable()``; ``numbers()`` is allowed) with READONLY (code 164). With ``writable=True``
there is no such limit (a stand-in server for tests: DDL and inserts as clickhouse-connect
sends them, ``INSERT ... FORMAT Native`` with the data in the body), except that a GET is
read-only (``readonly = 2``), as on the real server.

Threads: a chDB connection handle is not thread-safe, while several handles on one directory
in one process are (they share the engine; ``SET`` and ``USE`` are per handle). So each
request opens its own handle and closes it at the end (about 1.5 ms): requests run in
parallel, and no setting, database or read-only flag leaks from one request to the next or
into the sink's own client. One more handle stays open while the server runs, so the engine
(and the directory) stays held between requests.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gzip
import hmac
import importlib
import json
import logging
import re
import signal
import socket
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import chdb

from core.clickhouse import ChdbClickHouse, ClickHouse
from core.errors import ClickHouseError

__all__ = ["QueryServer", "main"]

log = logging.getLogger(__name__)

# URL parameters of the HTTP interface that are not settings (the server's own list).
_RESERVED_PARAMS = frozenset(
    {
        "query", "compress", "decompress", "user", "password", "quota_key", "query_id",
        "stacktrace", "role", "buffer_size", "wait_end_of_query", "session_id",
        "session_timeout", "session_check", "client_protocol_version", "close_session",
        "database", "default_format",
    }
)  # fmt: skip
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Statement kinds that produce a result set (for X-ClickHouse-Format on an empty body).
_RESULT_KINDS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "EXISTS"})
_LEADING_NOISE = re.compile(rb"^(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/|\()*", re.DOTALL)
_FIRST_WORD = re.compile(rb"[A-Za-z]+")
_INSERT_FORMAT = re.compile(rb"\bFORMAT\s+([A-Za-z0-9_]+)", re.IGNORECASE)
_TRAILING_FORMAT = re.compile(
    r"\bFORMAT\s+([A-Za-z0-9_]+)\s*(?:SETTINGS\b.*?)?;?\s*$", re.IGNORECASE | re.DOTALL
)
_CODE = re.compile(r"Code: (\d+)\. DB::Exception: ")
_NAME = re.compile(r"\(([A-Z][A-Z0-9_]+)\)\s*$")
_VERSION = re.compile(r" \(version [0-9.]+\)")

# exceptionCodeToHTTPStatus.cpp of clickhouse-server; anything else is 500.
_STATUS_BY_NAME: dict[str, int] = {
    "REQUIRED_PASSWORD": 401,
    **dict.fromkeys(
        ("UNKNOWN_USER", "WRONG_PASSWORD", "AUTHENTICATION_FAILED", "SET_NON_GRANTED_ROLE",
         "ACCESS_DENIED"), 403),
    **dict.fromkeys(
        ("BAD_ARGUMENTS", "CANNOT_COMPILE_REGEXP", "CANNOT_PARSE_TEXT",
         "CANNOT_PARSE_ESCAPE_SEQUENCE", "CANNOT_PARSE_QUOTED_STRING", "CANNOT_PARSE_DATE",
         "CANNOT_PARSE_DATETIME", "CANNOT_PARSE_NUMBER", "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING",
         "CANNOT_PARSE_IPV4", "CANNOT_PARSE_IPV6", "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
         "CANNOT_PARSE_UUID", "DUPLICATE_COLUMN", "ILLEGAL_COLUMN", "UNKNOWN_ELEMENT_IN_AST",
         "UNKNOWN_TYPE_OF_AST_NODE", "THERE_IS_NO_COLUMN", "TOO_DEEP_AST", "TOO_BIG_AST",
         "UNEXPECTED_AST_STRUCTURE", "SYNTAX_ERROR", "INCORRECT_DATA", "TYPE_MISMATCH",
         "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE"), 400),
    **dict.fromkeys(
        ("UNKNOWN_TABLE", "UNKNOWN_FUNCTION", "UNKNOWN_IDENTIFIER", "UNKNOWN_TYPE",
         "UNKNOWN_STORAGE", "UNKNOWN_DATABASE", "UNKNOWN_SETTING", "UNKNOWN_DIRECTION_OF_SORTING",
         "UNKNOWN_AGGREGATE_FUNCTION", "UNKNOWN_FORMAT", "UNKNOWN_DATABASE_ENGINE",
         "UNKNOWN_TYPE_OF_QUERY", "UNKNOWN_ROLE"), 404),
    "QUERY_IS_TOO_LARGE": 413,
    "NOT_IMPLEMENTED": 501,
    **dict.fromkeys(("SOCKET_TIMEOUT", "CANNOT_OPEN_FILE", "CANNOT_SCHEDULE_TASK"), 503),
    "HTTP_LENGTH_REQUIRED": 411,
    "TIMEOUT_EXCEEDED": 408,
    "UNSUPPORTED_MEDIA_TYPE": 415,
}  # fmt: skip

_JSON_TYPE = "application/json; charset=UTF-8"
_BINARY_TYPE = "application/octet-stream"
_CONTENT_TYPES: dict[str, str] = {
    "CSV": "text/csv; charset=UTF-8; header=absent",
    "CSVWithNames": "text/csv; charset=UTF-8; header=present",
    "CSVWithNamesAndTypes": "text/csv; charset=UTF-8; header=present",
    **dict.fromkeys(
        ("JSON", "JSONCompact", "JSONEachRow", "JSONCompactEachRow", "JSONStrings",
         "JSONObjectEachRow", "JSONColumns", "JSONLines", "NDJSON"), _JSON_TYPE),
    **dict.fromkeys(
        ("Native", "RowBinary", "RowBinaryWithNames", "RowBinaryWithNamesAndTypes", "Parquet",
         "Arrow", "ArrowStream", "ORC", "Avro", "MsgPack", "Protobuf", "CapnProto"),
        _BINARY_TYPE),
}  # fmt: skip
_TEXT_TYPE = "text/plain; charset=UTF-8"
_TSV_TYPE = "text/tab-separated-values; charset=UTF-8"


# ---- compression -------------------------------------------------------------------
def _optional_module(*names: str) -> Any:
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def _codecs() -> dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]]:
    """Content-Encoding name -> (compress, decompress), for the modules installed here."""
    codecs: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
        "gzip": (gzip.compress, gzip.decompress),
        "deflate": (zlib.compress, zlib.decompress),  # ClickHouse's "deflate" is zlib
    }
    zstd = _optional_module("compression.zstd", "backports.zstd")  # 3.14+, backport
    if zstd is not None:
        codecs["zstd"] = (zstd.compress, zstd.decompress)
    lz4 = _optional_module("lz4.frame")
    if lz4 is not None:
        codecs["lz4"] = (lz4.compress, lz4.decompress)
    return codecs


_CODECS = _codecs()
# The server's preference when a client accepts several (chooseHTTPCompressionMethod).
_RESPONSE_PREFERENCE = [name for name in ("zstd", "lz4", "gzip", "deflate") if name in _CODECS]


# ---- errors ------------------------------------------------------------------------
@dataclass(frozen=True)
class _Failure(Exception):
    """A ClickHouse exception as the HTTP interface reports it."""

    code: int
    name: str
    message: str  # "DB::Exception: ..." text after "Code: N. DB::Exception: "


def _failure_from_engine(raw: str) -> _Failure:
    """Parse chDB's exception text (it nests ``Code: N. DB::Exception:`` and the name)."""
    start = raw.find("Code: ")
    text = raw[start:].strip() if start >= 0 else raw.strip()
    match = _CODE.match(text)
    if match is None:
        return _Failure(1001, "STD_EXCEPTION", text or "unknown chDB error")
    code = int(match.group(1))
    prefix = match.group(0)
    while text.startswith(prefix + prefix):
        text = text[len(prefix) :]
    body = _VERSION.sub("", text[len(prefix) :])
    name_match = _NAME.search(body)
    name = name_match.group(1) if name_match else ""
    tail = f". ({name})"
    while name and body.endswith(tail + tail):
        body = body[: -len(tail)]
    return _Failure(code, name, body)


# ---- requests ----------------------------------------------------------------------
@dataclass
class _Query:
    """One request to run: the SQL bytes and everything that shapes its execution."""

    sql: bytes
    default_format: str
    database: str | None
    settings: dict[str, str]
    params: dict[str, str]
    is_get: bool


@dataclass
class _Outcome:
    body: bytes
    fmt: str | None  # the result's format, or None for a statement without a result set
    stats: dict[str, int] = field(default_factory=dict)


def _statement_kind(sql: bytes) -> str:
    rest = sql[_LEADING_NOISE.match(sql).end() :]  # type: ignore[union-attr]
    word = _FIRST_WORD.match(rest)
    return word.group(0).decode().upper() if word else ""


def _split_insert(sql: bytes) -> tuple[str, str, bytes] | None:
    """``INSERT ... FORMAT f <data>`` -> (statement without FORMAT, f, data), else None.

    The data starts after the format name, the blanks after it and one line break, as the
    server's parser has it (a binary Native block can start with a tab or a newline byte).
    """
    if _statement_kind(sql) != "INSERT":
        return None
    match = _INSERT_FORMAT.search(sql)
    if match is None:
        return None
    pos = match.end()
    while pos < len(sql) and sql[pos : pos + 1] in (b" ", b"\t", b"\f"):
        pos += 1
    if sql[pos : pos + 1] == b"\r":
        pos += 1
    if sql[pos : pos + 1] == b"\n":
        pos += 1
    head = sql[: match.start()].decode("utf-8", errors="strict").strip()
    return head, match.group(1).decode(), sql[pos:]


def _quote_ident(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _quote_value(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("1", "true", "yes", "on")


# ---- the engine side ---------------------------------------------------------------
class _Engine:
    """Runs requests on a chDB directory, one connection handle per request."""

    def __init__(self, path: Path, writable: bool) -> None:
        self._anchor = ChdbClickHouse(path)  # holds the engine (and directory) between requests
        self._conn_str = str(self._anchor.path)
        self.writable = writable
        row = self._anchor.query("SELECT version(), timezone()").rows[0]
        self.version, self.timezone = str(row[0]), str(row[1])

    def close(self) -> None:
        self._anchor.close()

    def run(self, query: _Query) -> _Outcome:
        try:
            conn = chdb.connect(self._conn_str)  # type: ignore[no-untyped-call]
        except Exception as exc:
            raise _failure_from_engine(str(exc)) from None
        try:
            return self._run_on(conn, query)
        except _Failure:
            raise
        except Exception as exc:  # chDB raises RuntimeError subclasses with the server text
            raise _failure_from_engine(str(exc)) from None
        finally:
            conn.close()

    def _run_on(self, conn: Any, query: _Query) -> _Outcome:
        if query.database:
            conn.query(f"USE {_quote_ident(query.database)}", "TabSeparated")
        for name, value in query.settings.items():
            if not self.writable and name == "readonly":
                continue  # the read-only mode sets readonly itself, last
            if not _SETTING_NAME.match(name):
                raise _Failure(115, "UNKNOWN_SETTING", f"Unknown setting '{name[:100]}'")
            conn.query(f"SET {name} = {_quote_value(value)}", "TabSeparated")
        if not self.writable:
            conn.query("SET readonly = 1", "TabSeparated")
        elif query.is_get and "readonly" not in query.settings:
            conn.query("SET readonly = 2", "TabSeparated")  # GET is read-only on the server too

        insert = _split_insert(query.sql)
        if insert is not None:
            head, insert_format, data = insert
            inserter = conn.send_insert(head, insert_format)
            try:
                if data:
                    inserter.append(data)
                done = inserter.finish()
            except BaseException:
                inserter.cancel()
                raise
            return _Outcome(
                b"", None, {"written_rows": done.rows_written, "written_bytes": done.bytes_written,
                            "elapsed_ns": int(done.elapsed * 1e9)},
            )  # fmt: skip

        try:
            text = query.sql.decode("utf-8")
        except UnicodeDecodeError:
            raise _Failure(62, "SYNTAX_ERROR", "The query is not valid UTF-8") from None
        explicit = _TRAILING_FORMAT.search(text)
        result = conn.query(text, query.default_format, params=query.params)
        body = result.bytes() or b""
        fmt: str | None = explicit.group(1) if explicit else query.default_format
        if not body and _statement_kind(query.sql) not in _RESULT_KINDS:
            fmt = None
        stats = {
            "read_rows": result.rows_read(),
            "read_bytes": result.bytes_read(),
            "written_rows": result.rows_written(),
            "written_bytes": result.bytes_written(),
            "elapsed_ns": int(result.elapsed() * 1e9),
        }
        return _Outcome(body, fmt, stats)


def _summary(stats: dict[str, int]) -> str:
    read_rows = stats.get("read_rows", 0)
    doc = {
        "read_rows": read_rows,
        "read_bytes": stats.get("read_bytes", 0),
        "written_rows": stats.get("written_rows", 0),
        "written_bytes": stats.get("written_bytes", 0),
        "total_rows_to_read": read_rows,
        "elapsed_ns": stats.get("elapsed_ns", 0),
    }
    return json.dumps({k: str(v) for k, v in doc.items()}, separators=(",", ":"))


# ---- the HTTP side -----------------------------------------------------------------
class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    owner: QueryServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as clients expect of ClickHouse
    server_version = "omniquant-query-server"
    server: _HttpServer

    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("query server: " + format, *args)

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    # --------------------------------------------------------------------------------
    def _serve(self) -> None:
        owner = self.server.owner
        started = time.perf_counter()
        url = urlsplit(self.path)
        params = dict(parse_qsl(url.query, keep_blank_values=True))  # last one wins
        query_id = params.get("query_id") or self.headers.get("X-ClickHouse-Query-Id") or ""
        query_id = query_id or str(uuid.uuid4())
        status = 200
        try:
            body = self._read_body()
            if url.path in ("/ping", "/replicas_status") or (
                url.path in ("", "/") and self.command == "GET" and not body
                and "query" not in params
            ):  # fmt: skip
                self._send(200, b"Ok.\n", {"Content-Type": _TEXT_TYPE}, query_id)
                return
            if url.path not in ("", "/"):
                status = 404
                text = f"There is no handle {url.path}\n\nUse / or /ping for health checks.\n"
                self._send(404, text.encode(), {"Content-Type": _TEXT_TYPE}, query_id)
                return
            owner._authenticate(self.headers, params)
            query = self._query(params, body)
            with owner._in_flight():
                outcome = owner._engine_or_fail().run(query)
            self._send_outcome(outcome, params, query_id)
        except _Failure as failure:
            status = _STATUS_BY_NAME.get(failure.name, 500)
            self._send_failure(failure, status, query_id)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
            status = 499
        finally:
            log.debug(
                "%s %s -> %s in %.1f ms (query_id %s)",
                self.command, url.path, status, (time.perf_counter() - started) * 1e3, query_id,
            )  # fmt: skip

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)  # the CRLF after the chunk
            raw = b"".join(chunks)
        elif self.headers.get("Content-Length") is not None:
            raw = self.rfile.read(int(self.headers["Content-Length"]))
        elif self.command == "POST":
            self.close_connection = True
            raise _Failure(
                381, "HTTP_LENGTH_REQUIRED",
                "The Transfer-Encoding is not chunked and there is no Content-Length header "
                "for POST request",
            )  # fmt: skip
        else:
            raw = b""
        encoding = self.headers.get("Content-Encoding", "").strip().lower()
        if raw and encoding not in ("", "identity", "none"):
            codec = _CODECS.get(encoding)
            if codec is None:
                raise _Failure(36, "BAD_ARGUMENTS", f"Unknown compression method '{encoding}'")
            try:
                raw = codec[1](raw)
            except Exception as exc:
                raise _Failure(
                    271, "CANNOT_DECOMPRESS", f"Cannot decompress {encoding} request body: {exc}"
                ) from None
        return raw

    def _query(self, params: dict[str, str], body: bytes) -> _Query:
        if _truthy(params.get("compress")) or _truthy(params.get("decompress")):
            raise _Failure(
                48, "NOT_IMPLEMENTED",
                "ClickHouse's own block compression (compress=1/decompress=1) is not supported "
                "by this chDB query server; use HTTP compression (Content-Encoding, "
                "enable_http_compression=1) instead",
            )  # fmt: skip
        if self.headers.get("Content-Type", "").startswith("multipart/form-data"):
            raise _Failure(
                48, "NOT_IMPLEMENTED", "External data (multipart/form-data) is not supported"
            )
        text = params.get("query", "")
        sql = (text.encode() + b"\n" if text else b"") + body
        if not sql.strip():
            raise _Failure(62, "SYNTAX_ERROR", "Empty query")
        settings = {
            name: value
            for name, value in params.items()
            if name and name not in _RESERVED_PARAMS and not name.startswith("param_")
        }
        return _Query(
            sql=sql,
            default_format=self.headers.get("X-ClickHouse-Format")
            or params.get("default_format")
            or "TabSeparated",
            database=self.headers.get("X-ClickHouse-Database") or params.get("database") or None,
            settings=settings,
            params={k[len("param_") :]: v for k, v in params.items() if k.startswith("param_")},
            is_get=self.command == "GET",
        )

    def _send_outcome(self, outcome: _Outcome, params: dict[str, str], query_id: str) -> None:
        owner = self.server.owner
        engine = owner._engine_or_fail()
        headers = {"X-ClickHouse-Summary": _summary(outcome.stats)}
        if outcome.fmt is not None:
            headers["X-ClickHouse-Format"] = outcome.fmt
            headers["X-ClickHouse-Timezone"] = params.get("session_timezone") or engine.timezone
            headers["Content-Type"] = _content_type(outcome.fmt)
        else:
            headers["Content-Type"] = _TEXT_TYPE
        body = outcome.body
        if body and _truthy(params.get("enable_http_compression")):
            accepted = {
                part.split(";")[0].strip().lower()
                for part in self.headers.get("Accept-Encoding", "").split(",")
            }
            for name in _RESPONSE_PREFERENCE:
                if name in accepted:
                    body = _CODECS[name][0](body)
                    headers["Content-Encoding"] = name
                    break
        self._send(200, body, headers, query_id)

    def _send_failure(self, failure: _Failure, status: int, query_id: str) -> None:
        owner = self.server.owner
        version = owner.engine_version or "unknown"
        message = failure.message
        if failure.name and not message.endswith(f"({failure.name})"):
            message = f"{message.rstrip('.')}. ({failure.name})"
        text = f"Code: {failure.code}. DB::Exception: {message} (version {version})\n"
        headers = {
            "Content-Type": _TEXT_TYPE,
            "X-ClickHouse-Exception-Code": str(failure.code),
            "X-ClickHouse-Summary": _summary({}),
        }
        self._send(status, text.encode(), headers, query_id)

    def _send(self, status: int, body: bytes, headers: dict[str, str], query_id: str) -> None:
        self.send_response(status)
        self.send_header("X-ClickHouse-Server-Display-Name", self.server.owner.display_name)
        self.send_header("X-ClickHouse-Query-Id", query_id)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _content_type(fmt: str) -> str:
    if fmt in _CONTENT_TYPES:
        return _CONTENT_TYPES[fmt]
    if fmt.startswith(("TabSeparated", "TSV")):
        return _TSV_TYPE
    return _TEXT_TYPE


# ---- the public class --------------------------------------------------------------
class QueryServer:
    """The ClickHouse HTTP interface over a chDB directory, served from a daemon thread.

    ``path_or_client`` is the data directory, or the :class:`~core.clickhouse.ChdbClickHouse`
    that the process already has open on it (the server opens its own handles on the same
    directory; the client stays usable). ``port=0`` picks a free port (see :attr:`url`).
    ``user``/``password``: when ``password`` is set, requests must authenticate the way
    clickhouse-server accepts (Basic auth, ``X-ClickHouse-User``/``X-ClickHouse-Key``, or
    ``user``/``password`` URL parameters); otherwise any user name is accepted.
    """

    def __init__(
        self,
        path_or_client: Path | str | ClickHouse,
        host: str = "127.0.0.1",
        port: int = 8123,
        writable: bool = False,
        *,
        user: str = "default",
        password: str | None = None,
        display_name: str | None = None,
        max_concurrent_queries: int = 8,
    ) -> None:
        if isinstance(path_or_client, ChdbClickHouse):
            self.path = path_or_client.path
        elif isinstance(path_or_client, ClickHouse):
            raise ClickHouseError(
                "QueryServer serves a chDB directory; a ClickHouse server has its own HTTP "
                "interface (CLICKHOUSE_URL)"
            )
        else:
            self.path = Path(path_or_client).resolve()
        self.host = host
        self.writable = writable
        self.display_name = display_name or socket.gethostname()
        self._requested_port = port
        self._user = user
        self._password = password
        self._slots = threading.BoundedSemaphore(max_concurrent_queries)
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._busy = 0
        self._idle = threading.Condition(self._lock)
        self._engine: _Engine | None = None
        self._httpd: _HttpServer | None = None
        self._thread: threading.Thread | None = None
        self.engine_version: str | None = None

    def __repr__(self) -> str:
        state = "serving" if self._httpd is not None else "stopped"
        mode = "writable" if self.writable else "read-only"
        return f"QueryServer({self.path}, {self.host}:{self.port}, {mode}, {state})"

    @property
    def port(self) -> int:
        if self._httpd is None:
            return self._requested_port
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """``http://host:port`` (e.g. for ``clickhouse_connect.get_client(dsn=...)``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> QueryServer:
        """Open the directory and listen; returns at once (requests run on daemon threads).

        Raises :class:`~core.errors.ClickHouseError` if chDB cannot open the directory
        (another process holds it) and ``OSError`` if the address is taken.
        """
        if self._httpd is not None:
            return self
        engine = _Engine(self.path, self.writable)
        try:
            httpd = _HttpServer((self.host, self._requested_port), _Handler)
        except BaseException:
            engine.close()
            raise
        httpd.owner = self
        self._engine, self._httpd = engine, httpd
        self.engine_version = engine.version
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.2},
            name=f"query-server-{self.port}", daemon=True,
        )  # fmt: skip
        self._thread.start()
        log.info(
            "query server listening on %s (chDB %s at %s, %s)",
            self.url, engine.version, self.path, "writable" if self.writable else "read-only",
        )  # fmt: skip
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop listening, drop idle keep-alive connections, let running queries finish
        (up to ``timeout_s``), then release the directory. Calling it twice is fine."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        with self._lock:
            for conn in list(self._connections):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            self._idle.wait_for(lambda: self._busy == 0, timeout=timeout_s)
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.close()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
        log.info("query server on %s stopped", self.path)

    def __enter__(self) -> QueryServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- used by the request handler ---------------------------------------------
    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _engine_or_fail(self) -> _Engine:
        engine = self._engine
        if engine is None:
            raise _Failure(439, "CANNOT_SCHEDULE_TASK", "The query server is shutting down")
        return engine

    def _in_flight(self) -> _InFlight:
        return _InFlight(self)

    def _authenticate(self, headers: Any, params: dict[str, str]) -> None:
        if self._password is None:
            return
        user = headers.get("X-ClickHouse-User")
        password = headers.get("X-ClickHouse-Key")
        auth = headers.get("Authorization", "")
        if user is None and auth.lower().startswith("basic "):
            try:
                user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                user = password = None
        if user is None:
            user, password = params.get("user", "default"), params.get("password", "")
        ok_user = hmac.compare_digest(user.encode(), self._user.encode())
        ok_password = hmac.compare_digest((password or "").encode(), self._password.encode())
        if not (ok_user and ok_password):
            raise _Failure(
                516, "AUTHENTICATION_FAILED",
                f"{user[:64]}: Authentication failed: password is incorrect, or there is no "
                "user with such name",
            )  # fmt: skip


class _InFlight:
    """Counts a running query (``stop`` waits for them) and bounds how many run at once."""

    def __init__(self, owner: QueryServer) -> None:
        self._owner = owner

    def __enter__(self) -> None:
        self._owner._slots.acquire()
        with self._owner._lock:
            self._owner._busy += 1

    def __exit__(self, *exc: object) -> None:
        with self._owner._lock:
            self._owner._busy -= 1
            self._owner._idle.notify_all()
        self._owner._slots.release()


# ---- standalone ----------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sinks.query_server --path DIR [--host H] [--port P] [--writable]``.

    Prints ``listening on http://H:P`` on stdout once it accepts connections; stops on
    SIGTERM/SIGINT. The password (optional) comes from ``OMNIQUANT_QUERY_SERVER_PASSWORD``.
    """
    import os

    parser = argparse.ArgumentParser(prog="python -m sinks.query_server", description=__doc__)
    parser.add_argument("--path", required=True, type=Path, help="chDB data directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8123, help="0 picks a free port")
    parser.add_argument("--writable", action="store_true", help="accept DDL and inserts")
    parser.add_argument("--display-name", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    server = QueryServer(
        args.path, args.host, args.port, args.writable,
        user=os.environ.get("OMNIQUANT_QUERY_SERVER_USER", "default"),
        password=os.environ.get("OMNIQUANT_QUERY_SERVER_PASSWORD") or None,
        display_name=args.display_name,
    )  # fmt: skip
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    try:
        server.start()
    except (ClickHouseError, OSError) as exc:
        print(f"query server: {exc}", file=sys.stderr)
        return 1
    print(f"listening on {server.url}", flush=True)
    stopping.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
