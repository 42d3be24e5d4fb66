"""A real Confluent-compatible schema registry for tests: Apicurio Registry from Maven Central.

Apicurio Registry publishes its Quarkus fast-jar distribution to Maven Central as the attached
artifact ``io.apicurio:apicurio-registry-app:<version>:tar.gz:all`` (about 160 MB). The plain
``apicurio-registry-app`` jar is a thin jar whose dependency tree cannot be resolved from Maven
Central alone (it reaches repo.eclipse.org), so the distribution is what this uses: Maven fetches
it into ~/.m2, it is unpacked once into ``~/.cache/omniquant/apicurio-<version>/dist`` and run
with ``java -jar quarkus-run.jar``. Storage is the 3.x default (SQL on in-memory H2), so every
start is an empty registry; its Confluent-compatible API is ``/apis/ccompat/v7``.

Registry 3.x is compiled for Java 21 (class file 65): a Java 21+ is looked for in JAVA_HOME,
``/usr/lib/jvm/*`` and on PATH; Java 17 refuses it with UnsupportedClassVersionError.

Use::

    server = start_registry()   # RegistryUnavailable (with the reason) when it cannot be had
    server.url                  # http://127.0.0.1:<port>/apis/ccompat/v7
    server.stop()
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import socket
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

VERSION = os.environ.get("OMNIQUANT_TEST_APICURIO_VERSION", "3.3.3")
ARTIFACT = f"io.apicurio:apicurio-registry-app:{VERSION}:tar.gz:all"
CACHE = Path.home() / ".cache" / "omniquant" / f"apicurio-{VERSION}"
CCOMPAT = "/apis/ccompat/v7"
RESOLVE_TIMEOUT_S = 900.0
START_TIMEOUT_S = float(os.environ.get("OMNIQUANT_TEST_APICURIO_START_TIMEOUT", "420"))


class RegistryUnavailable(RuntimeError):
    """The registry cannot be had here (no Maven, no Java 21, download refused, ...)."""


@dataclass
class RegistryServer:
    url: str  # the Confluent-compatible API, http://127.0.0.1:<port>/apis/ccompat/v7
    startup_s: float  # from starting the JVM to the first answer of GET <url>/subjects
    log: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def resolve() -> Path:
    """The unpacked distribution (fetched with Maven the first time); the quarkus-run.jar path."""
    runner = CACHE / "dist" / "quarkus-run.jar"
    if runner.exists():
        return runner
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RegistryUnavailable("no mvn on PATH to fetch " + ARTIFACT)
    CACHE.mkdir(parents=True, exist_ok=True)
    cmd = [mvn, "-B", "-q", "dependency:get", "-Dtransitive=false", f"-Dartifact={ARTIFACT}"]
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=RESOLVE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RegistryUnavailable(f"{' '.join(cmd)} timed out ({RESOLVE_TIMEOUT_S:.0f} s)") from exc
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).decode(errors="replace")[-1500:]
        raise RegistryUnavailable(f"{' '.join(cmd)} failed ({done.returncode}): {tail}")
    tarball = (
        _local_repository()
        / "io/apicurio/apicurio-registry-app"
        / VERSION
        / f"apicurio-registry-app-{VERSION}-all.tar.gz"
    )
    if not tarball.exists():
        raise RegistryUnavailable(f"Maven reported success but {tarball} is missing")
    staging = CACHE / "dist.partial"
    shutil.rmtree(staging, ignore_errors=True)
    with tarfile.open(tarball) as archive:
        archive.extractall(staging, filter="data")
    if not (staging / "quarkus-run.jar").exists():
        raise RegistryUnavailable(f"{tarball} has no quarkus-run.jar")
    staging.rename(CACHE / "dist")
    return runner


def find_java(minimum: int = 21) -> str:
    """A ``java`` of at least ``minimum`` (JAVA_HOME, /usr/lib/jvm/*, PATH)."""
    candidates: list[str] = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(os.path.join(os.environ["JAVA_HOME"], "bin", "java"))
    candidates += sorted(glob.glob("/usr/lib/jvm/*/bin/java"), reverse=True)
    on_path = shutil.which("java")
    if on_path:
        candidates.append(on_path)
    seen: list[str] = []
    for java in candidates:
        if not os.access(java, os.X_OK) or java in seen:
            continue
        seen.append(java)
        major = _java_major(java)
        if major is not None and major >= minimum:
            return java
    raise RegistryUnavailable(
        f"Apicurio Registry {VERSION} needs Java {minimum}+; none among {seen or 'no java'}"
    )


def start_registry() -> RegistryServer:
    runner = resolve()
    java = find_java()
    port = _free_port()
    log = CACHE / f"server-{port}.log"
    cmd = [
        java,
        "-Xmx512m",
        "-XX:TieredStopAtLevel=1",  # starts faster on a busy machine; plenty for a test
        f"-Dquarkus.http.port={port}",
        "-Dquarkus.http.host=127.0.0.1",
        "-Dquarkus.management.enabled=false",
        "-jar",
        str(runner),
    ]
    started = time.monotonic()
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, cwd=runner.parent, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}{CCOMPAT}"
    server = RegistryServer(url=url, startup_s=0.0, log=log, process=process)
    deadline = started + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RegistryUnavailable(
                f"registry exited with {process.returncode} before answering: {_tail(log)}"
            )
        try:
            if httpx.get(f"{url}/subjects", timeout=2.0).status_code == 200:
                server.startup_s = time.monotonic() - started
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.stop()
    raise RegistryUnavailable(
        f"registry did not answer GET {url}/subjects within {START_TIMEOUT_S:.0f} s: {_tail(log)}"
    )


def _local_repository() -> Path:
    override = os.environ.get("MAVEN_REPO_LOCAL")
    return Path(override) if override else Path.home() / ".m2" / "repository"


def _java_major(java: str) -> int | None:
    try:
        done = subprocess.run([java, "-version"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)', done.stderr.decode(errors="replace"))
    return int(match.group(1)) if match else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(log: Path, size: int = 1500) -> str:
    try:
        return log.read_bytes()[-size:].decode(errors="replace")
    except OSError:
        return "(no log)"
