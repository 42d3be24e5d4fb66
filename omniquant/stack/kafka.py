"""A single-node Apache Kafka 4.x broker (KRaft, combined broker + controller) run on local Java.

No Docker needed: the broker's jars are resolved once from Maven Central with ``mvn`` (see
``kafka-pom.xml``) into a cache shared by every state directory, and the broker runs as a
detached JVM whose config, data and logs live under ``<state_dir>/kafka/``::

    kafka/server.properties   kafka/log4j2.properties   kafka/kafka.pid
    kafka/data/               (KRaft metadata + topic logs; formatted on first start)
    kafka/logs/server.log     (broker log, rolled at 10 MB x 5)   kafka/logs/stdout.log (JVM)
"""

from __future__ import annotations

import base64
import fcntl
import functools
import hashlib
import logging
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from core.errors import JavaNotFoundError, StackError
from omniquant.stack._process import (
    cmdline,
    file_size,
    pid_alive,
    poll_until,
    port_taken,
    read_pid,
    rotate,
    tail,
    terminate,
)

__all__ = ["JAVA_MIN_VERSION", "POM", "LocalKafka", "find_java", "kafka_answers", "kafka_libs"]

log = logging.getLogger(__name__)

JAVA_MIN_VERSION = 17
POM = Path(__file__).with_name("kafka-pom.xml")
_INSTALL_JAVA = "install one, e.g. `apt-get install openjdk-17-jre-headless`"
_STOP_GRACE_S = 20.0
_MVN_TIMEOUT_S = 900.0
_JAVA_VERSION_RE = re.compile(r'version "(\d+)(?:\.(\d+))?')


# ---- Java and jars -------------------------------------------------------------------
def find_java(environ: Mapping[str, str] | None = None) -> Path:
    """The java executable to run Kafka with: ``$JAVA_HOME/bin/java`` if JAVA_HOME is set,
    else ``java`` on PATH. Raises :class:`JavaNotFoundError` if missing or older than 17."""
    env = os.environ if environ is None else environ
    home = env.get("JAVA_HOME")
    if home:
        java = Path(home) / "bin" / "java"
        if not os.access(java, os.X_OK):
            raise JavaNotFoundError(
                f"JAVA_HOME is {home}, which has no bin/java. Point JAVA_HOME at a Java "
                f"{JAVA_MIN_VERSION}+ runtime, or unset it to use java from PATH; or "
                f"{_INSTALL_JAVA}."
            )
    else:
        found = shutil.which("java", path=env.get("PATH", ""))
        if found is None:
            raise JavaNotFoundError(
                f"no java on PATH (and JAVA_HOME is not set): the local Kafka broker needs "
                f"Java {JAVA_MIN_VERSION}+; {_INSTALL_JAVA}."
            )
        java = Path(found)
    major = java_major_version(java)
    if major < JAVA_MIN_VERSION:
        raise JavaNotFoundError(
            f"{java} is Java {major}; the local Kafka broker needs Java {JAVA_MIN_VERSION}+: "
            f"{_INSTALL_JAVA} (and put it first on PATH or set JAVA_HOME)."
        )
    return java


@functools.cache
def java_major_version(java: Path) -> int:
    """The feature version of ``java`` (8 for 1.8.0_x, 17 for 17.0.x)."""
    try:
        out = subprocess.run(
            [str(java), "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise JavaNotFoundError(f"{java} -version failed ({exc}); {_INSTALL_JAVA}.") from None
    match = _JAVA_VERSION_RE.search(out.stderr + out.stdout)
    if match is None:
        raise JavaNotFoundError(
            f"cannot tell the version of {java} from `java -version`: "
            f"{(out.stderr or out.stdout).strip()[:200]!r}; {_INSTALL_JAVA}."
        )
    first, second = int(match[1]), int(match[2] or 0)
    return second if first == 1 else first


def _cache_home() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) if xdg else Path.home() / ".cache"


def kafka_libs(pom: Path = POM) -> Path:
    """The directory of the broker's jars, resolved with Maven on first use.

    Cached in ``${XDG_CACHE_HOME:-~/.cache}/omniquant/kafka-<pom sha256[:12]>/libs`` for every
    state dir; a ``complete`` marker is written last, so an interrupted copy is redone. A file
    lock keeps two processes from resolving at once.
    """
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()[:12]
    root = _cache_home() / "omniquant" / f"kafka-{digest}"
    libs, marker = root / "libs", root / "complete"
    if marker.exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError(
            "Maven (mvn) is not on PATH: it fetches the Kafka broker's jars once "
            f"(into {root}). Install it: `apt-get install maven`."
        )
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():  # resolved by another process while we waited
            return libs
        shutil.rmtree(libs, ignore_errors=True)
        log.info("resolving Kafka jars with Maven into %s (first start only)", libs)
        cmd = [
            mvn, "-B", "-q", "-f", str(pom), "dependency:copy-dependencies",
            "-DincludeScope=runtime", f"-DoutputDirectory={libs}",
        ]  # fmt: skip
        try:
            out = subprocess.run(
                cmd, capture_output=True, text=True, timeout=_MVN_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired:
            raise StackError(
                f"Maven did not fetch the Kafka jars within {_MVN_TIMEOUT_S:.0f} s"
            ) from None
        jars = sorted(p.name for p in libs.glob("*.jar"))
        if out.returncode != 0 or not any(j.startswith("kafka_2.13-") for j in jars):
            detail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-25:])
            raise StackError(
                f"Maven could not fetch the Kafka jars (exit {out.returncode}); it needs "
                f"Maven Central. Command: {' '.join(cmd)}\n{detail}"
            )
        marker.write_text("\n".join(jars) + "\n")
    return libs


# ---- the broker ----------------------------------------------------------------------
def kafka_answers(conf: Mapping[str, str], timeout: float = 2.0) -> bool:
    """True when the cluster in ``conf`` (librdkafka properties) answers a metadata request
    naming at least one broker within ``timeout`` seconds."""
    quiet: dict[str, object] = {
        **conf,
        # Retry fast inside the timeout, and keep "connection refused" off stderr.
        "reconnect.backoff.ms": 50,
        "reconnect.backoff.max.ms": 250,
        "log_level": 0,
        "error_cb": lambda _err: None,
    }
    try:
        metadata = AdminClient(quiet).list_topics(timeout=timeout)
    except KafkaException:
        return False
    return bool(metadata.brokers)


def _cluster_id() -> str:
    # What `kafka-storage random-uuid` prints (Uuid.randomUuid: base64url, never a leading
    # '-'), without paying for a JVM start.
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


class LocalKafka:
    """One KRaft broker+controller on 127.0.0.1, its files under ``<state_dir>/kafka``."""

    def __init__(
        self,
        state_dir: Path,
        port: int,
        controller_port: int,
        heap: str = "512m",
        start_timeout_s: float = 60.0,
    ) -> None:
        self.home = state_dir.resolve() / "kafka"
        self.port = port
        self.controller_port = controller_port
        self.heap = heap
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._server_log_start = 0

    def __repr__(self) -> str:
        return f"LocalKafka({self.bootstrap}, home={self.home})"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.home / "kafka.pid"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def server_log(self) -> Path:
        return self.log_dir / "server.log"

    @property
    def stdout_log(self) -> Path:
        return self.log_dir / "stdout.log"

    @property
    def server_properties(self) -> Path:
        return self.home / "server.properties"

    @property
    def log4j_config(self) -> Path:
        return self.home / "log4j2.properties"

    def cluster_id(self) -> str | None:
        """The cluster id the storage was formatted with (None before the first start)."""
        try:
            text = (self.data_dir / "meta.properties").read_text()
        except OSError:
            return None
        match = re.search(r"^cluster\.id=(\S+)", text, re.MULTILINE)
        return match[1] if match else None

    def pid(self) -> int | None:
        """The pid of this broker's JVM if it runs (a stale pid file is ignored)."""
        pid = read_pid(self.pid_file)
        if pid is None:
            return None
        if self._proc is not None and self._proc.pid == pid:
            return pid if self._proc.poll() is None else None
        if not pid_alive(pid):
            return None
        args = cmdline(pid)
        # A recycled pid belongs to some other program: only our JVM has our config path.
        if args and not ("kafka.Kafka" in args and str(self.server_properties) in args):
            return None
        return pid

    def is_running(self) -> bool:
        return self.pid() is not None

    def answers(self, timeout: float = 2.0) -> bool:
        """True when the broker answers a metadata request within ``timeout`` seconds."""
        return kafka_answers({"bootstrap.servers": self.bootstrap}, timeout)

    def start(self) -> float:
        """Start the broker (formatting storage on first start) and wait until it answers.

        Returns the seconds taken. Does nothing if this broker already runs and answers.
        Raises :class:`StackError` if a port is taken, the JVM exits, or it does not answer
        within ``start_timeout_s`` (counted after the jars are resolved);
        :class:`JavaNotFoundError` without Java 17+.
        """
        started = time.monotonic()
        pid = self.pid()
        if pid is not None:
            self._wait_answering(pid, started)
            return time.monotonic() - started
        self.pid_file.unlink(missing_ok=True)
        self._check_ports()
        java = find_java()
        libs = kafka_libs()  # has its own time limit: a cold cache downloads ~43 MB
        resolved = time.monotonic()
        self._write_config()
        if self.cluster_id() is None:
            self._format(java, libs)
        pid = self._spawn(java, libs)
        try:
            self._wait_answering(pid, resolved)
        except StackError:
            self.stop()  # no half-started broker left behind
            raise
        elapsed = time.monotonic() - started
        log.info("Kafka broker %s started in %.1f s", self.bootstrap, elapsed)
        return elapsed

    def stop(self) -> bool:
        """Stop the broker: SIGTERM, up to 20 s for a clean shutdown, then SIGKILL.

        Returns True if a broker was running. The pid file is removed either way.
        """
        pid = self.pid()
        if pid is not None and not terminate(pid, _STOP_GRACE_S, self._proc):
            log.warning("Kafka broker pid %d did not stop on SIGTERM; killed it", pid)
        self._proc = None
        self.pid_file.unlink(missing_ok=True)
        return pid is not None

    # ---- start-up steps ---------------------------------------------------------------
    def _check_ports(self) -> None:
        for port, what in ((self.port, "client"), (self.controller_port, "controller")):
            if port_taken(port):
                raise StackError(
                    f"cannot start Kafka: port {port} (its {what} listener) on 127.0.0.1 is "
                    "already in use by another process. Stop that process or choose other "
                    "ports (OMNIQUANT_STACK__KAFKA_PORT, OMNIQUANT_STACK__KAFKA_CONTROLLER_PORT)."
                )
        if self.port == self.controller_port:
            raise StackError("Kafka's client and controller ports must differ")

    def _write_config(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.server_properties.write_text(self._server_properties())
        self.log4j_config.write_text(self._log4j_properties())

    def _server_properties(self) -> str:
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": (
                f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": "3",
            "auto.create.topics.enable": "false",
            "group.initial.rebalance.delay.ms": "0",
            # One broker: every internal topic has one replica.
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # Fewer internal partitions: the first consumer group / transaction starts faster.
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.num.partitions": "10",
            # The default 128 MB compaction buffer would take a quarter of a small heap.
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
        }
        header = "# Written by omniquant.stack.kafka on every start; edits are overwritten.\n"
        return header + "".join(f"{key}={value}\n" for key, value in props.items())

    def _log4j_properties(self) -> str:
        return "\n".join(
            [
                "status = warn",
                # Kafka logs its own shutdown from a JVM hook; log4j must not stop first.
                "shutdownHook = disable",
                "appender.file.type = RollingFile",
                "appender.file.name = FILE",
                # The file is a JVM property so the storage tool can log elsewhere.
                "appender.file.fileName = ${sys:omniquant.log.file}",
                "appender.file.filePattern = ${sys:omniquant.log.file}.%i",
                "appender.file.layout.type = PatternLayout",
                "appender.file.layout.pattern = [%d] %p %m (%c)%n",
                "appender.file.policies.type = Policies",
                "appender.file.policies.size.type = SizeBasedTriggeringPolicy",
                "appender.file.policies.size.size = 10MB",
                "appender.file.strategy.type = DefaultRolloverStrategy",
                "appender.file.strategy.max = 5",
                "rootLogger.level = INFO",
                "rootLogger.appenderRef.file.ref = FILE",
                # Per-partition state changes: thousands of lines for nothing locally.
                "logger.statechange.name = state.change.logger",
                "logger.statechange.level = WARN",
                "",
            ]
        )

    def _java_cmd(self, java: Path, libs: Path, heap: str, log_file: Path, *args: str) -> list[str]:
        return [
            str(java),
            f"-Xmx{heap}",
            f"-Xms{heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.log4j_config}",
            f"-Dkafka.logs.dir={self.log_dir}",
            f"-Domniquant.log.file={log_file}",
            "-cp",
            f"{libs}/*",
            *args,
        ]

    def _format(self, java: Path, libs: Path) -> None:
        cmd = self._java_cmd(
            java, libs, "256m", self.log_dir / "storage-format.log",
            "kafka.tools.StorageTool", "format",
            "-t", _cluster_id(), "-c", str(self.server_properties),
        )  # fmt: skip
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        except subprocess.TimeoutExpired:
            raise StackError("formatting Kafka storage took over 120 s") from None
        if out.returncode != 0 or self.cluster_id() is None:
            raise StackError(
                f"formatting Kafka storage in {self.data_dir} failed (exit {out.returncode}):\n"
                + (out.stdout + out.stderr).strip()[-2000:]
            )

    def _spawn(self, java: Path, libs: Path) -> int:
        stdout_log = self.stdout_log
        rotate(stdout_log)
        cmd = self._java_cmd(
            java, libs, self.heap, self.server_log, "kafka.Kafka", str(self.server_properties)
        )
        self._server_log_start = file_size(self.server_log)
        with stdout_log.open("wb") as out:
            # Own session: Ctrl-C in the terminal that ran `omniquant up` leaves it running.
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.home,
                start_new_session=True,
            )
        self.pid_file.write_text(f"{self._proc.pid}\n")
        return self._proc.pid

    def _wait_answering(self, pid: int, since: float) -> None:
        """Wait until ``start_timeout_s`` after ``since`` for broker ``pid`` to answer."""

        def ready() -> bool:
            if self.pid() != pid:
                raise StackError(
                    f"the Kafka broker (pid {pid}) exited while starting. "
                    f"Last lines of its logs:\n{self._log_tail()}"
                )
            return self.answers(timeout=1.0)

        remaining = self.start_timeout_s - (time.monotonic() - since)
        if not poll_until(ready, max(remaining, 0.0)):
            raise StackError(
                f"the Kafka broker (pid {pid}) did not answer on {self.bootstrap} within "
                f"{self.start_timeout_s:.0f} s. Last lines of its logs:\n{self._log_tail()}"
            )

    def _log_tail(self) -> str:
        parts = []
        for path, since in ((self.stdout_log, 0), (self.server_log, self._server_log_start)):
            text = tail(path, 20, since)
            if text:
                parts.append(f"--- {path}\n{text}")
        return "\n".join(parts) or f"(no logs in {self.log_dir})"
