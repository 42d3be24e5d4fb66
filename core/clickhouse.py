"""One small ClickHouse interface for embedded chDB (the default) and a ClickHouse server.

:func:`connect_clickhouse` gives a :class:`ChdbClickHouse` on ``settings.chdb_path``, or a
:class:`ServerClickHouse` when ``settings.clickhouse.url`` (``CLICKHOUSE_URL``) is set. Both
are driven by clickhouse-connect (its in-process chDB backend, or HTTP), so the same SQL
gives the same Python values either way:

======================  ==================================================================
ClickHouse type          Python value (query result; also accepted by :meth:`insert`)
======================  ==================================================================
Int*/UInt*               ``int`` (exact, 64-bit included)
Decimal64(9) etc.        ``Decimal`` (exact; insert a Decimal, never a float. Digits past
                         the column's scale are cut off by the driver: quantize first)
String                   ``str``
Nullable(T)              ``None`` or T's value
Bool                     ``bool``
Array(String)            ``list[str]``
Map(String, String)      ``dict[str, str]``
DateTime64(9, 'UTC')     timezone-aware ``datetime``, which holds microseconds only; select
                         ``toUnixTimestamp64Nano(col)`` for the exact nanoseconds. Insert a
                         ``datetime`` or an ``int`` of ticks (ns for precision 9) - one kind
                         per column in a batch.
======================  ==================================================================

chDB owns its data directory (verified with chdb 4.4 and clickhouse-connect 1.12):

* **One process per directory.** While a process has a directory open, another process cannot
  open it; :class:`ChdbClickHouse` then raises :class:`ClickHouseError` naming the holder's
  pid — unless the holder serves the directory over HTTP (below), which readers then use.
* **One directory per process at a time.** Several clients on the *same* directory can be open
  at once in a process (closing one leaves the others working). Opening a *different*
  directory while any client is open fails; once every client is closed, the process can open
  another directory, and later reopen the first (close, open, close, open ... works, which is
  what the tests rely on: a fresh directory per test, each client closed at the test's end).
* :meth:`ClickHouse.close` releases the directory: another process can open it right after.

**Reading while another process writes.** The process that owns a chDB directory (the
ClickHouse sink of ``omniquant run``) serves it read-only over the ClickHouse HTTP interface
(:mod:`sinks.query_server`) and announces the address in ``<dir>/query-server.json``
(:func:`announce_query_server`). :func:`connect_clickhouse` falls back to that address when
the directory is held, so ``omniquant sql`` and ``omniquant report`` read live.
"""

from __future__ import annotations

import abc
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import clickhouse_connect
import pyarrow as pa
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError as DriverError

from core.config import Settings, mask_url
from core.errors import ClickHouseError

__all__ = [
    "QUERY_SERVER_FILE",
    "ChdbClickHouse",
    "ClickHouse",
    "QueryResult",
    "ServerClickHouse",
    "announce_query_server",
    "connect_clickhouse",
]

QUERY_SERVER_FILE = "query-server.json"
_MAX_ERROR_CHARS = 600
_SQL_IN_ERROR_CHARS = 200
# "schema": a column declared with a time zone (DateTime64(9, 'UTC')) gives aware datetimes.
_TZ_MODE = "schema"


@dataclass(frozen=True)
class QueryResult:
    """Column names and rows of a SELECT, values converted as the module docstring says."""

    columns: list[str]
    rows: list[tuple[Any, ...]]


class ClickHouse(abc.ABC):
    """A connection to ClickHouse; not thread-safe (one client per thread)."""

    @abc.abstractmethod
    def command(self, sql: str) -> None:
        """Run a statement that returns no rows (DDL, ALTER, OPTIMIZE ...)."""

    @abc.abstractmethod
    def query(self, sql: str) -> QueryResult:
        """Run a SELECT (or SHOW/DESCRIBE) and return all rows."""

    @abc.abstractmethod
    def insert(
        self,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        """Insert ``rows`` (values in ``columns`` order) into ``table`` (``db.table`` allowed),
        with per-insert ``settings`` (e.g. ``insert_deduplication_token``)."""

    @abc.abstractmethod
    def insert_arrow(
        self, table: str, data: pa.Table, settings: Mapping[str, Any] | None = None
    ) -> None:
        """Insert a pyarrow table (its column names are the table's) as one INSERT."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection (for chDB: the data directory). Calling it twice is fine."""

    def __enter__(self) -> ClickHouse:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _ConnectClickHouse(ClickHouse):
    """The shared implementation over a clickhouse-connect client (chDB or HTTP)."""

    def __init__(self, client: Client, where: str, secret: str | None = None) -> None:
        self._client: Client | None = client
        self._where = where
        self._secret = secret

    def __repr__(self) -> str:
        state = "closed" if self._client is None else "open"
        return f"{type(self).__name__}({self._where}, {state})"

    def command(self, sql: str) -> None:
        with self._errors(sql):
            self._open().command(sql)

    def query(self, sql: str) -> QueryResult:
        with self._errors(sql):
            result = self._open().query(sql)
            return QueryResult(
                columns=list(result.column_names),
                rows=[tuple(row) for row in result.result_rows],
            )

    def insert(
        self,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        if not rows:
            return
        with self._errors(f"INSERT INTO {table} ({', '.join(columns)})"):
            self._open().insert(
                table, data=rows, column_names=list(columns), settings=dict(settings or {})
            )

    def insert_arrow(
        self, table: str, data: pa.Table, settings: Mapping[str, Any] | None = None
    ) -> None:
        if data.num_rows == 0:
            return
        with self._errors(f"INSERT INTO {table} ({', '.join(data.column_names)}) FORMAT Arrow"):
            self._open().insert_arrow(table, data, settings=dict(settings or {}))

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _open(self) -> Client:
        if self._client is None:
            raise ClickHouseError(f"{self._where}: the client is closed")
        return self._client

    @contextmanager
    def _errors(self, sql: str) -> Iterator[None]:
        try:
            yield
        except DriverError as exc:
            statement = " ".join(sql.split())[:_SQL_IN_ERROR_CHARS]
            raise ClickHouseError(
                f"{self._where}: {self._scrub(str(exc))}\n  statement: {statement}"
            ) from None

    def _scrub(self, message: str) -> str:
        # Driver messages can echo the connection URL; the password never leaves this class.
        if self._secret:
            message = message.replace(self._secret, "***")
        return message.strip()[:_MAX_ERROR_CHARS]


class ChdbClickHouse(_ConnectClickHouse):
    """Embedded chDB on a data directory (created if missing); see the module docstring."""

    def __init__(self, path: Path) -> None:
        path = path.resolve()
        path.mkdir(parents=True, exist_ok=True)
        try:
            client = clickhouse_connect.get_client(
                interface="chdb", path=str(path), tz_mode=_TZ_MODE
            )
        except DriverError as exc:
            raise ClickHouseError(_chdb_open_error(path, str(exc))) from None
        super().__init__(client, where=f"chDB at {path}")
        self.path = path


def _chdb_open_error(path: Path, message: str) -> str:
    """Explain why chDB could not open ``path`` (the engine's own message is terse)."""
    holder = _chdb_holder(path)
    if holder is not None:
        return (
            f"chDB data directory {path} is in use by process {holder}: only one process at a "
            "time can open a chDB directory, and that one does not serve it over HTTP "
            "(OMNIQUANT_CLICKHOUSE__QUERY_PORT). Stop that process, or use a ClickHouse "
            "server (CLICKHOUSE_URL)."
        )
    if "already initialized" in message:
        return (
            f"cannot open chDB at {path}: this process already has another chDB directory "
            "open; close every client on it first (one chDB directory per process at a time). "
            f"chDB said: {message.strip()[:_MAX_ERROR_CHARS]}"
        )
    return f"cannot open chDB at {path}: {message.strip()[:_MAX_ERROR_CHARS]}"


def _chdb_holder(path: Path) -> int | None:
    """The pid of another live process holding ``path`` (from the engine's status file)."""
    try:
        first = (path / "status").read_text(errors="replace").splitlines()[0]
    except (OSError, IndexError):
        return None
    label, _, value = first.partition(":")
    if label.strip() != "PID" or not value.strip().isdigit():
        return None
    pid = int(value)
    if pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # a stale status file left by a process that has exited
    except PermissionError:
        pass  # alive, owned by another user
    return pid


class ServerClickHouse(_ConnectClickHouse):
    """A ClickHouse server over HTTP(S), e.g. ``https://user:password@host:8443``."""

    def __init__(self, url: str, connect_timeout_s: float = 10.0) -> None:
        secret = urlsplit(url).password
        where = f"ClickHouse at {mask_url(url)}"
        try:
            client = clickhouse_connect.get_client(
                dsn=url, tz_mode=_TZ_MODE, connect_timeout=connect_timeout_s
            )
        except DriverError as exc:
            message = str(exc).replace(secret, "***") if secret else str(exc)
            raise ClickHouseError(
                f"{where} does not answer: {message.strip()[:_MAX_ERROR_CHARS]}"
            ) from None
        super().__init__(client, where=where, secret=secret)


def announce_query_server(path: Path, url: str | None) -> None:
    """Say where this process serves its chDB directory over HTTP (None: no longer)."""
    target = path.resolve() / QUERY_SERVER_FILE
    if url is None:
        target.unlink(missing_ok=True)
        return
    scratch = target.with_suffix(".tmp")
    scratch.write_text(json.dumps({"url": url, "pid": os.getpid()}))
    scratch.replace(target)  # atomic: a reader sees the old file or the new one


def _announced_server(path: Path) -> str | None:
    """The HTTP address the live holder of ``path`` serves it at, if it does."""
    try:
        data = json.loads((path.resolve() / QUERY_SERVER_FILE).read_text())
        url, pid = str(data["url"]), int(data["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if pid != _chdb_holder(path.resolve()):
        return None  # left behind by a process that has exited
    return url


def connect_clickhouse(settings: Settings, *, writer: bool = False) -> ClickHouse:
    """The platform's ClickHouse: the server at CLICKHOUSE_URL if set, else chDB on disk —
    or, while another process holds the directory, its read-only HTTP interface (not for a
    ``writer``, which must own the directory)."""
    if settings.clickhouse.url is not None:
        return ServerClickHouse(settings.clickhouse.url.get_secret_value())
    try:
        return ChdbClickHouse(settings.chdb_path)
    except ClickHouseError:
        url = None if writer else _announced_server(settings.chdb_path)
        if url is None:
            raise
        return ServerClickHouse(url)
