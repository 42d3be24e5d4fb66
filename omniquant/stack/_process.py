"""Process plumbing shared by the local services: pid files, liveness, ports, shutdown."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

POLL_INTERVAL_S = 0.1


def read_pid(pid_file: Path) -> int | None:
    """The pid stored in ``pid_file``, or None when there is no readable pid."""
    try:
        text = pid_file.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: trust kill(0)
    state = stat.rpartition(")")[2].split()[:1]
    return state not in (["Z"], ["X"])


def cmdline(pid: int) -> list[str]:
    """The command line of ``pid`` ([] when it cannot be read)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    """True when something listens on (or holds) ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Same as the JVM and redis-server: TIME_WAIT leftovers do not block a bind.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def poll_until(check: Callable[[], bool], timeout: float) -> bool:
    """Call ``check`` every POLL_INTERVAL_S until it is true (True) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL_S)


def terminate(pid: int, grace_s: float, child: subprocess.Popen[bytes] | None = None) -> bool:
    """SIGTERM ``pid``, wait up to ``grace_s``, then SIGKILL. True if it exited on SIGTERM.

    ``child`` is the Popen of ``pid`` when this process started it: waiting on it reaps the
    zombie, which a pid check alone would miss.
    """

    def gone() -> bool:
        if child is not None and child.pid == pid:
            return child.poll() is not None
        return not pid_alive(pid)

    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if poll_until(gone, grace_s):
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    poll_until(gone, 10.0)
    return False


def file_size(path: Path) -> int:
    """Size of ``path`` in bytes (0 if missing): where this run's part of a log starts."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def tail(path: Path, lines: int = 30, since: int = 0) -> str:
    """The last ``lines`` lines of a text file written after byte ``since`` ('' if none)."""
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            start = since if since <= size else 0  # rolled over since: take it all
            fh.seek(max(start, size - 64 * 1024))
            data = fh.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def rotate(path: Path) -> None:
    """Keep one previous generation of a per-start log file (``<name>.1``)."""
    if path.exists():
        path.replace(path.with_name(path.name + ".1"))
