"""A local redis-server on 127.0.0.1 with its config, pid file and log under ``<state_dir>/redis``.

Persistence is off (no RDB snapshots, no AOF): the platform keeps its state in Kafka, Redis
is a cache that may start empty.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from core.errors import StackError
from omniquant.stack._process import (
    cmdline,
    file_size,
    pid_alive,
    poll_until,
    port_taken,
    read_pid,
    tail,
    terminate,
)

__all__ = ["LocalRedis"]

log = logging.getLogger(__name__)

_STOP_GRACE_S = 10.0


def _quoted(value: Path | str) -> str:
    """A redis.conf string argument (double quotes; backslash and quote escaped)."""
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


class LocalRedis:
    """One redis-server bound to 127.0.0.1:``port``."""

    def __init__(self, state_dir: Path, port: int, start_timeout_s: float = 15.0) -> None:
        self.home = state_dir.resolve() / "redis"
        self.port = port
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_start = 0

    def __repr__(self) -> str:
        return f"LocalRedis({self.url}, home={self.home})"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid_file(self) -> Path:
        return self.home / "redis.pid"

    @property
    def log_file(self) -> Path:
        return self.home / "redis.log"

    @property
    def config_file(self) -> Path:
        return self.home / "redis.conf"

    def pid(self) -> int | None:
        """The pid of this redis-server if it runs (a stale pid file is ignored)."""
        pid = read_pid(self.pid_file)
        if pid is None:
            return None
        if self._proc is not None and self._proc.pid == pid:
            return pid if self._proc.poll() is None else None
        if not pid_alive(pid):
            return None
        args = cmdline(pid)
        # redis-server retitles itself "redis-server 127.0.0.1:<port>"; a recycled pid won't.
        if args and not ("redis-server" in args[0] and f":{self.port}" in " ".join(args)):
            return None
        return pid

    def is_running(self) -> bool:
        return self.pid() is not None

    def answers(self, timeout: float = 1.0) -> bool:
        """True when the server answers PING within ``timeout`` seconds."""
        client = self._client(timeout)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def start(self) -> float:
        """Start redis-server and wait until it answers PING; return the seconds taken.

        Does nothing if this server already runs and answers. Raises :class:`StackError` if
        redis-server is not installed, the port is taken, or it does not come up.
        """
        started = time.monotonic()
        pid = self.pid()
        if pid is None:
            binary = shutil.which("redis-server")
            if binary is None:
                raise StackError(
                    "redis-server is not on PATH; install it (`apt-get install redis-server`) "
                    "or set REDIS_URL to use an existing Redis."
                )
            if port_taken(self.port):
                raise StackError(
                    f"cannot start Redis: port {self.port} on 127.0.0.1 is already in use by "
                    "another process. Stop it or choose another port "
                    "(OMNIQUANT_STACK__REDIS_PORT)."
                )
            pid = self._spawn(binary)
            try:
                self._wait_answering(pid, started)
            except StackError:
                self.stop()  # no half-started server left behind
                raise
        else:
            self._wait_answering(pid, started)
        elapsed = time.monotonic() - started
        log.info("Redis %s ready in %.2f s", self.url, elapsed)
        return elapsed

    def stop(self) -> bool:
        """Stop the server (SHUTDOWN NOSAVE, else SIGTERM/SIGKILL). True if one was running."""
        pid = self.pid()
        if pid is not None:
            client = self._client(2.0)
            try:
                client.shutdown(nosave=True)
            except redis.RedisError:
                pass  # the connection closes as the server exits, or it does not answer
            finally:
                client.close()
            terminate(pid, _STOP_GRACE_S, self._proc)
        self._proc = None
        self.pid_file.unlink(missing_ok=True)
        return pid is not None

    def _client(self, timeout: float) -> redis.Redis:
        # No retries: redis-py's default backs off for seconds on a refused connection,
        # which is the answer we are polling for.
        return redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=timeout,
            socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0),
        )  # fmt: skip

    def _spawn(self, binary: str) -> int:
        self.home.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(
            "# Written by omniquant.stack.redis on every start; edits are overwritten.\n"
            "bind 127.0.0.1\n"
            f"port {self.port}\n"
            "protected-mode yes\n"
            "daemonize no\n"
            f"dir {_quoted(self.home)}\n"
            f"pidfile {_quoted(self.pid_file)}\n"
            f"logfile {_quoted(self.log_file)}\n"
            'save ""\n'
            "appendonly no\n"
        )
        self._log_start = file_size(self.log_file)
        self._proc = subprocess.Popen(
            [binary, str(self.config_file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.home,
            start_new_session=True,
        )
        # redis-server writes the same pid there too; ours is there before it answers.
        self.pid_file.write_text(f"{self._proc.pid}\n")
        return self._proc.pid

    def _wait_answering(self, pid: int, started: float) -> None:
        def ready() -> bool:
            if self.pid() != pid:
                raise StackError(
                    f"redis-server (pid {pid}) exited while starting; last lines of "
                    f"{self.log_file}:\n{tail(self.log_file, 20, self._log_start)}"
                )
            return self.answers(timeout=0.5)

        remaining = self.start_timeout_s - (time.monotonic() - started)
        if not poll_until(ready, max(remaining, 0.0)):
            raise StackError(
                f"redis-server (pid {pid}) did not answer PING on 127.0.0.1:{self.port} within "
                f"{self.start_timeout_s:.0f} s; see {self.log_file}"
            )
