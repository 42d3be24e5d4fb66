"""`omniquant stage sink-clickhouse` that SIGKILLs itself right after its N-th insert was
acknowledged by ClickHouse, before Quix commits the offsets (``SINK_KILL_AFTER_INSERTS``;
unset or 0: runs normally). For the sink's kill-loop test: the real CLI, broker and chDB,
only the moment of death is chosen."""

from __future__ import annotations

import os
import signal
import sys
import threading

from sinks.clickhouse import ClickHouseSink


def _arm(after: int) -> None:
    original = ClickHouseSink._inserted
    lock = threading.Lock()
    seen = [0]

    def inserted(self: ClickHouseSink, table: str, rows: int) -> None:
        original(self, table, rows)
        with lock:
            seen[0] += 1
            if seen[0] >= after:
                os.kill(os.getpid(), signal.SIGKILL)

    ClickHouseSink._inserted = inserted  # type: ignore[method-assign]


if __name__ == "__main__":
    kill_after = int(os.environ.get("SINK_KILL_AFTER_INSERTS", "0"))
    if kill_after:
        _arm(kill_after)
    from omniquant.cli import app

    sys.argv = ["omniquant", "stage", "sink-clickhouse"]
    app()
