"""Backpressure, not loss: the sink writes through the ClickHouse HTTP interface
(``sinks.query_server`` in writable mode over a chDB directory, standing in for a server:
no ClickHouse server package fit for this schema installs here). The server is SIGKILLed
mid-stream; the sink pauses with SinkBackpressureError, the same records come again (as
Quix seeks back to the last commit), and after the server is back every record is there
exactly once."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from quixstreams.sinks import SinkBackpressureError

from core.clickhouse import ChdbClickHouse, ServerClickHouse
from core.errors import ClickHouseError
from schemas.models import Trade
from sinks.clickhouse import ClickHouseSink, table_specs
from sinks.migrations import migrate

pytestmark = pytest.mark.integration

DB = "omniquant"
TOPIC = "bp.market.trades"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(path: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sinks.query_server", "--path", str(path), "--port", str(port),
         "--writable"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            ServerClickHouse(f"http://127.0.0.1:{port}", connect_timeout_s=1).close()
            return proc
        except ClickHouseError:
            assert proc.poll() is None, "the query server exited"
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("the query server did not answer")


def _trades(first: int, n: int) -> list[tuple[int, dict[str, Any]]]:
    out = []
    for offset in range(first, first + n):
        ts = 1_700_000_000_000_000_000 + offset * 1_000
        trade = Trade(symbol="SPY", venue="XNYS", price=10**11 + offset, size=10**9,
                      source="bp", ts_event=ts, ts_init=ts)  # fmt: skip
        out.append((offset, trade.model_dump()))
    return out


def _add(sink: ClickHouseSink, records: list[tuple[int, dict[str, Any]]]) -> None:
    for offset, value in records:
        sink.add(value, None, 1_700_000_000_000 + offset, [], TOPIC, offset % 2, offset)


def test_sink_pauses_while_the_server_is_gone_and_resumes_without_loss_or_duplicates(
    chdb_dir: Path,
) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = _serve(chdb_dir, port)
    sink = ClickHouseSink(
        lambda: ServerClickHouse(url, connect_timeout_s=2),
        DB,
        {TOPIC: table_specs()["market.trades"]},
        threads=2,
    )
    pauses: list[float] = []
    try:
        with ServerClickHouse(url) as admin:
            migrate(admin, DB)
        _add(sink, _trades(0, 500))
        sink.flush()  # committed

        server.send_signal(signal.SIGKILL)
        server.wait(30)
        pending = _trades(500, 500)
        for _ in range(3):  # Quix retries after each pause, from the last commit
            _add(sink, pending)
            with pytest.raises(SinkBackpressureError) as paused:
                sink.flush()
            pauses.append(paused.value.retry_after)

        server = _serve(chdb_dir, port)
        _add(sink, pending + _trades(1000, 250))  # the seek back, and newer records
        sink.flush()
        _add(sink, _trades(1000, 250))  # a replay of what was just stored
        sink.flush()
    finally:
        sink.close()
        server.send_signal(signal.SIGTERM)
        server.wait(30)

    with ChdbClickHouse(chdb_dir) as client:
        count, unique = client.query(
            f"SELECT count(), uniqExact(_topic, _partition, _offset) FROM {DB}.trades"
        ).rows[0]
    assert pauses == [1.0, 2.0, 4.0]  # backing off
    assert (count, unique) == (1250, 1250)
