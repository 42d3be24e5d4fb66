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
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
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
from omniquant.stack.secure import ADMIN, MECHANISM, StackSecrets, broker_security_properties
from omniquant.stack.tls import write_private

__all__ = [
    "JAVA_MIN_VERSION",
    "POM",
    "LocalKafka",
    "LocalKafkaCluster",
    "admin_client_config",
    "find_java",
    "kafka_answers",
    "kafka_libs",
]

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
        *,
        node_id: int = 1,
        voters: Sequence[tuple[int, int]] = (),
        cluster_id: str | None = None,
        home: Path | None = None,
        secure: StackSecrets | None = None,
    ) -> None:
        """One node. Alone by default; a member of a cluster (:class:`LocalKafkaCluster`)
        with ``voters`` = every node's (node id, controller port) and a shared
        ``cluster_id`` the storage is formatted with. ``secure``: SASL_SSL + ACLs with
        these secrets (see :mod:`omniquant.stack.secure`)."""
        self.home = home.resolve() if home is not None else state_dir.resolve() / "kafka"
        self.port = port
        self.controller_port = controller_port
        self.heap = heap
        self.start_timeout_s = start_timeout_s
        self.node_id = node_id
        self.voters = tuple(voters) or ((node_id, controller_port),)
        self._cluster_id = cluster_id
        self.secure = secure
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

    @property
    def secure_marker(self) -> Path:
        """Written when the storage is formatted secure (with the SCRAM users)."""
        return self.home / "formatted-secure"

    def client_config(self) -> dict[str, str]:
        """librdkafka properties of the operator's client for this node."""
        return admin_client_config(self.bootstrap, self.secure)

    def answers(self, timeout: float = 2.0) -> bool:
        """True when the broker answers a metadata request within ``timeout`` seconds."""
        return kafka_answers(self.client_config(), timeout)

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
        pid = self._launch(java, libs)
        try:
            self._wait_answering(pid, resolved)
        except StackError:
            self.stop()  # no half-started broker left behind
            raise
        elapsed = time.monotonic() - started
        log.info("Kafka broker %s started in %.1f s", self.bootstrap, elapsed)
        return elapsed

    def _launch(self, java: Path, libs: Path) -> int:
        """Config written, storage formatted if new, JVM spawned; does not wait."""
        formatted = self.cluster_id() is not None
        if formatted and self.secure is not None and not self.secure_marker.exists():
            raise StackError(
                f"the Kafka storage in {self.data_dir} was formatted without --secure, so it "
                "has no SCRAM users: use another state dir (OMNIQUANT_STATE_DIR), or "
                f"`omniquant down` and delete {self.home} to start afresh"
            )
        self._write_config()
        if not formatted:
            self._format(java, libs)
        return self._spawn(java, libs)

    def kill(self) -> None:
        """SIGKILL the JVM (a crash, for tests); its pid file is removed."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            if self._proc is not None:
                self._proc.wait(30)
            else:
                poll_until(lambda: not pid_alive(pid), 30)
        self._proc = None
        self.pid_file.unlink(missing_ok=True)

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
        # 0600: a secure node's file holds the inter-broker password
        write_private(self.server_properties, self._server_properties().encode())
        self.log4j_config.write_text(self._log4j_properties())

    def _server_properties(self) -> str:
        replicas = min(len(self.voters), 3)
        isr = max(1, replicas - 1)
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": ",".join(
                f"{node}@127.0.0.1:{port}" for node, port in self.voters
            ),
            "listeners": (
                f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            **self._security_properties(),
            "num.partitions": "3",
            "auto.create.topics.enable": "false",
            "group.initial.rebalance.delay.ms": "0",
            # Internal topics: one replica on one broker; on three, three with two in sync
            # (one broker may die without stopping groups or transactions).
            "offsets.topic.replication.factor": str(replicas),
            "transaction.state.log.replication.factor": str(replicas),
            "transaction.state.log.min.isr": str(isr),
            "share.coordinator.state.topic.replication.factor": str(replicas),
            "share.coordinator.state.topic.min.isr": str(isr),
            "default.replication.factor": str(replicas),
            "min.insync.replicas": str(isr),
            # Fewer internal partitions: the first consumer group / transaction starts faster.
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.num.partitions": "10",
            # The default 128 MB compaction buffer would take a quarter of a small heap.
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
        }
        if self.secure is not None:
            props["listeners"] = (
                f"SASL_SSL://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
            )
        header = "# Written by omniquant.stack.kafka on every start; edits are overwritten.\n"
        return header + "".join(f"{key}={value}\n" for key, value in props.items())

    def _security_properties(self) -> dict[str, str]:
        if self.secure is None:
            return {}
        return broker_security_properties(self.secure, self.port)

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
            "-t", self._cluster_id or _cluster_id(), "-c", str(self.server_properties),
            *self._scram_users(),
        )  # fmt: skip
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        except subprocess.TimeoutExpired:
            raise StackError("formatting Kafka storage took over 120 s") from None
        if out.returncode != 0 or self.cluster_id() is None:
            detail = (out.stdout + out.stderr).strip()[-2000:]
            if self.secure is not None:  # the tool may echo its arguments
                for password in self.secure.passwords(list(_FORMAT_USERS)).values():
                    detail = detail.replace(password, "***")
            raise StackError(
                f"formatting Kafka storage in {self.data_dir} failed (exit {out.returncode}):\n"
                + detail
            )
        if self.secure is not None:
            self.secure_marker.write_text("SCRAM users: " + ", ".join(_FORMAT_USERS) + "\n")

    def _scram_users(self) -> list[str]:
        """``--add-scram`` arguments: the users that must exist before the first start (the
        broker's own and the operator's; the components' are added through the admin API)."""
        if self.secure is None:
            return []
        args = []
        for name, password in self.secure.passwords(list(_FORMAT_USERS)).items():
            args += ["--add-scram", f"{MECHANISM}=[name={name},password={password}]"]
        return args

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


class LocalKafkaCluster:
    """``size`` KRaft nodes on 127.0.0.1 (each broker and controller: a ``size``-voter
    quorum), homes ``<state_dir>/kafka/node-<id>``; internal topics replicated on up to 3
    nodes with ``replicas - 1`` in sync."""

    def __init__(
        self,
        state_dir: Path,
        ports: Sequence[tuple[int, int]],
        heap: str = "512m",
        start_timeout_s: float = 90.0,
        secure: StackSecrets | None = None,
    ) -> None:
        if len(ports) < 1:
            raise StackError("a cluster needs at least one node")
        root = state_dir.resolve() / "kafka"
        voters = [(i + 1, controller) for i, (_, controller) in enumerate(ports)]
        shared = _read_cluster_id(root) or _cluster_id()
        self.nodes = [
            LocalKafka(
                state_dir,
                client,
                controller,
                heap,
                start_timeout_s,
                node_id=i + 1,
                voters=voters,
                cluster_id=shared,
                home=root / f"node-{i + 1}",
                secure=secure,
            )
            for i, (client, controller) in enumerate(ports)
        ]
        self.start_timeout_s = start_timeout_s
        self.secure = secure
        root.mkdir(parents=True, exist_ok=True)
        (root / "cluster.id").write_text(shared + "\n")

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)

    def start(self) -> float:
        """Spawn every node that is not running, then wait until each answers (a node
        answers only once a quorum of controllers is up, so all start before any wait)."""
        started = time.monotonic()
        java, libs = find_java(), kafka_libs()
        pids = {}
        for node in self.nodes:
            if node.pid() is None:
                node.pid_file.unlink(missing_ok=True)
                node._check_ports()
                pids[node.node_id] = node._launch(java, libs)
        try:
            for node in self.nodes:
                node._wait_answering(node.pid() or pids.get(node.node_id, -1), started)
        except StackError:
            self.stop()
            raise
        return time.monotonic() - started

    def pid(self) -> int | None:
        """The pid of the first running node (None: no node runs)."""
        return next((pid for node in self.nodes if (pid := node.pid()) is not None), None)

    def client_config(self) -> dict[str, str]:
        return admin_client_config(self.bootstrap, self.secure)

    def answers(self, timeout: float = 2.0) -> bool:
        return kafka_answers(self.client_config(), timeout)

    def start_node(self, node_id: int) -> float:
        """(Re)start one node of a running cluster and wait until it answers."""
        return self.nodes[node_id - 1].start()

    def stop(self) -> None:
        """Stop every node at once: one by one, the last ones would wait for a quorum of
        controllers that is already gone before giving up their controlled shutdown."""
        threads = [threading.Thread(target=node.stop) for node in self.nodes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def active_controller(self) -> int | None:
        """The node id of the quorum leader as the running nodes last logged it (the
        transition with the highest epoch), None when no running node has logged one."""
        best: tuple[int, int] | None = None  # (epoch, leader id)
        for node in self.nodes:
            if not node.is_running():
                continue
            try:
                text = node.server_log.read_text(errors="replace")
            except OSError:
                continue
            lines = [ln for ln in text.splitlines() if _TRANSITION in ln]
            if not lines:
                continue
            state = lines[-1].split(_TRANSITION, 1)[1]
            epoch = re.search(r"epoch=(\d+)", state)
            if state.startswith("Leader"):
                leader: int | None = node.node_id
            else:
                found = re.search(r"leader=(\d+)", state)
                leader = int(found[1]) if found else None
            if epoch and leader is not None and (best is None or int(epoch[1]) > best[0]):
                best = (int(epoch[1]), leader)
        return None if best is None else best[1]


_TRANSITION = "Completed transition to "
_FORMAT_USERS = ("broker", ADMIN)


def admin_client_config(bootstrap: str, secure: StackSecrets | None) -> dict[str, str]:
    """The operator's librdkafka properties for a local node or cluster: PLAINTEXT, or
    SASL_SSL as ``admin`` trusting the local CA (secrets revealed: pass to the client)."""
    conf = {"bootstrap.servers": bootstrap}
    if secure is not None:
        conf.update(
            {
                "security.protocol": "SASL_SSL",
                "sasl.mechanism": MECHANISM,
                "sasl.username": ADMIN,
                "sasl.password": secure.password(ADMIN),
                "ssl.ca.location": str(secure.ca_path),
            }
        )
    return conf


def _read_cluster_id(root: Path) -> str | None:
    try:
        return (root / "cluster.id").read_text().strip() or None
    except OSError:
        return None
