"""The compose stack's secure mode (docker-compose.secure.yml) without a Docker engine.

What the containers would run, run here from this machine's Kafka jars and venv, configured
only from the two compose files:

- `omniquant secure init` writes the secrets directory the overlay's ``secrets:`` name;
  each file is "mounted" as compose would, under its secret's name in one directory;
- docker/kafka/secure-start.sh (the overlay's broker entrypoint) starts a real KRaft node
  with that environment (host names and ports moved to this machine's free ones);
- the ``topics`` and ``access`` services' commands run with their environments, as admin;
- a stage's environment from the files gets exactly what its ACLs allow: the feed writes
  trades and is refused orders, only the risk gate writes approved orders, only execution
  fills; the feed stage itself runs and produces; a wrong password is refused at start.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient
from kafka_read import produce_one
from test_deploy_files import interpolate_tree, service_command, service_env, unknown_env_names

from core.topics import TopicNames
from omniquant.stack.kafka import find_java, kafka_libs

pytestmark = [pytest.mark.integration, pytest.mark.secure, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "docker-compose.yml"
OVERLAY = REPO / "docker-compose.secure.yml"
PREFIX = "omniquant."  # the files' default OMNIQUANT_TOPIC_PREFIX
STAGES = (
    "feed", "bars", "signals", "risk-gate", "execution", "portfolio", "risk-metrics",
    "sink-clickhouse", "lag-monitor",
)  # fmt: skip


def _merge(base: Any, over: Any, key: str = "") -> Any:
    """Compose's merge of an overlay: mappings by key, ``secrets`` lists appended, the
    rest replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base[k], v, k) if k in base else v
        return out
    if key == "secrets" and isinstance(base, list) and isinstance(over, list):
        return [*base, *(v for v in over if v not in base)]
    return over


def merged_compose() -> dict[str, Any]:
    base = yaml.safe_load(BASE.read_text())
    overlay = yaml.safe_load(OVERLAY.read_text())
    return interpolate_tree(_merge(base, overlay), {})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_each_service_mounts_only_its_own_password_and_names_known_settings() -> None:
    doc = merged_compose()
    services = doc["services"]
    declared = set(doc["secrets"])
    for name in (*STAGES, "topics", "access"):
        service = services[name]
        env = service_env(service)
        assert not unknown_env_names(list(env), f"service {name}"), name
        user = env["OMNIQUANT_KAFKA__SASL_USERNAME"]
        assert user == ("admin" if name in ("topics", "access") else name)
        assert env["OMNIQUANT_KAFKA__SECURITY_PROTOCOL"] == "SASL_SSL"
        assert "OMNIQUANT_KAFKA__SASL_PASSWORD" not in env  # a file, not a variable
        assert env["OMNIQUANT_KAFKA__SASL_PASSWORD_FILE"] == f"/run/secrets/kafka-password-{user}"
        passwords = {s for s in service["secrets"] if s.startswith("kafka-password-")}
        assert set(service["secrets"]) <= declared
        if name == "access":  # it creates every component's user
            assert passwords == {s for s in declared if s.startswith("kafka-password-")} - {
                "kafka-password-broker"
            }
        else:
            assert passwords == {f"kafka-password-{user}"}, name
    assert not any("password" in str(v).lower() for v in service_env(services["kafka"]).values())


@dataclass
class SecureCompose:
    bootstrap: str
    mounts: Path  # what the containers see as /run/secrets
    doc: dict[str, Any]
    state_dir: Path

    def env(self, service: str) -> dict[str, str]:
        """The service's environment, pointed at this machine."""
        env = {}
        for name, value in service_env(self.doc["services"][service]).items():
            value = value.replace("kafka:9092", self.bootstrap)
            env[name] = value.replace("/run/secrets", str(self.mounts))
        env.update(OMNIQUANT_STATE_DIR=str(self.state_dir), OMNIQUANT_METRICS_PORT="0")
        return env

    def process_env(self, service: str, **extra: str) -> dict[str, str]:
        """This process's environment without its own settings, plus the service's."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIQUANT_")}
        env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
        env.update(self.env(service), **extra)
        return env

    def command(self, service: str) -> list[str]:
        command = service_command(self.doc["services"][service])
        return [arg.replace("/run/secrets", str(self.mounts)) for arg in command]

    def omniquant(
        self, service: str, *args: str, timeout: float = 120, **extra: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "omniquant.cli", *args],
            env=self.process_env(service, **extra),
            capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO,
        )  # fmt: skip

    def client(self, service: str) -> dict[str, str]:
        env = self.env(service)
        return {
            "bootstrap.servers": self.bootstrap,
            "security.protocol": env["OMNIQUANT_KAFKA__SECURITY_PROTOCOL"],
            "sasl.mechanism": env["OMNIQUANT_KAFKA__SASL_MECHANISM"],
            "sasl.username": env["OMNIQUANT_KAFKA__SASL_USERNAME"],
            "sasl.password": Path(env["OMNIQUANT_KAFKA__SASL_PASSWORD_FILE"]).read_text(),
            "ssl.ca.location": env["OMNIQUANT_KAFKA__SSL_CA_LOCATION"],
            "log_level": "0",
        }


def _wrappers(root: Path) -> Path:
    """A KAFKA_HOME whose bin/ has the two scripts secure-start.sh calls, on our jars."""
    java, libs = find_java(), kafka_libs()
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True)
    for script, main, heap in (
        ("kafka-storage.sh", "kafka.tools.StorageTool", "256m"),
        ("kafka-server-start.sh", "kafka.Kafka", "512m"),
    ):
        path = bin_dir / script
        path.write_text(f'#!/bin/sh\nexec "{java}" -Xmx{heap} -cp "{libs}/*" {main} "$@"\n')
        path.chmod(0o755)
    return root


@pytest.fixture(scope="module")
def secure_compose(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureCompose]:
    base = tmp_path_factory.mktemp("secure-compose")
    secrets_dir = base / "secrets"
    init = subprocess.run(
        [sys.executable, "-m", "omniquant.cli", "secure", "init", str(secrets_dir),
         "--host", "kafka", "--host", "localhost"],
        capture_output=True, text=True, timeout=60, check=False, cwd=REPO,
    )  # fmt: skip
    assert init.returncode == 0, init.stdout + init.stderr
    assert (secrets_dir.stat().st_mode & 0o777) == 0o700
    doc = merged_compose()
    mounts = base / "run-secrets"
    mounts.mkdir()
    for name, spec in doc["secrets"].items():
        source = secrets_dir / Path(spec["file"]).relative_to("secrets")
        assert source.is_file(), f"secret {name}: `secure init` wrote no {source}"
        (mounts / name).symlink_to(source)
    kafka = doc["services"]["kafka"]
    assert kafka["entrypoint"][-1] == "/opt/omniquant/secure-start.sh"
    internal, controller, external = _free_port(), _free_port(), _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KAFKA")},
        **service_env(kafka),
        "KAFKA_HOME": str(_wrappers(base / "kafka-home")),
        "SECRETS": str(mounts),
        "DATA_DIR": str(base / "data"),
        "CONFIG_DIR": str(base / "config"),
        "INTERNAL_HOST": "localhost",
        "INTERNAL_PORT": str(internal),
        "CONTROLLER_PORT": str(controller),
        "EXTERNAL_PORT": str(external),
        "EXTERNAL_ADVERTISED": f"localhost:{external}",
    }
    log = (base / "kafka.log").open("wb")
    broker = subprocess.Popen(
        ["bash", str(REPO / "docker" / "kafka" / "secure-start.sh")],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    stack = SecureCompose(f"localhost:{internal}", mounts, doc, base / "state")
    try:
        admin = AdminClient(stack.client("topics"))
        deadline = time.monotonic() + 120
        while True:
            assert broker.poll() is None, (base / "kafka.log").read_text()[-3000:]
            try:
                admin.list_topics(timeout=2)
                break
            except Exception:
                assert time.monotonic() < deadline, (base / "kafka.log").read_text()[-3000:]
                time.sleep(0.5)
        for service in ("topics", "access"):
            out = stack.omniquant(service, *stack.command(service))
            assert out.returncode == 0, f"{service}: {out.stdout}{out.stderr}"
        yield stack
    finally:
        os.killpg(broker.pid, signal.SIGTERM)
        try:
            broker.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(broker.pid, signal.SIGKILL)
            broker.wait(10)
        log.close()
        logged = (base / "kafka.log").read_text(errors="replace")
        for password in (p.read_text() for p in (secrets_dir / "passwords").iterdir()):
            assert password not in logged, "a password in the broker's log"


def _count(stack: SecureCompose, topic: str) -> int:
    consumer = Consumer({**stack.client("topics"), "group.id": f"count-{time.time_ns()}"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        total = 0
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += high - low
        return total
    finally:
        consumer.close()


@pytest.mark.parametrize(
    ("service", "topic", "allowed"),
    [
        ("feed", "market.trades", True),
        ("feed", "orders.requests", False),
        ("feed", "orders.approved", False),
        ("signals", "orders.approved", False),
        ("risk-gate", "orders.approved", True),
        ("portfolio", "fills", False),
        ("execution", "fills", True),
    ],
)
def test_a_stage_with_its_compose_identity_writes_only_its_own_topics(
    secure_compose: SecureCompose, service: str, topic: str, allowed: bool
) -> None:
    physical = TopicNames(PREFIX).name(topic)
    before = _count(secure_compose, physical)
    error = produce_one(secure_compose.client(service), physical)
    if allowed:
        assert error is None, error
        assert _count(secure_compose, physical) == before + 1
    else:
        assert error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, error
        assert _count(secure_compose, physical) == before  # nothing was written


def test_the_feed_stage_runs_with_its_compose_environment(secure_compose: SecureCompose) -> None:
    trades = TopicNames(PREFIX).name("market.trades")
    before = _count(secure_compose, trades)
    env = secure_compose.process_env("feed")
    command = secure_compose.command("feed")
    proc = subprocess.Popen(
        [sys.executable, "-m", "omniquant.cli", *command],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while _count(secure_compose, trades) < before + 20:
            assert proc.poll() is None, proc.communicate()[0].decode()[-3000:]
            assert time.monotonic() < deadline, "the feed wrote no trades in 90 s"
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=60)[0].decode()
    password = Path(secure_compose.env("feed")["OMNIQUANT_KAFKA__SASL_PASSWORD_FILE"]).read_text()
    assert password not in out


def test_a_wrong_mounted_password_stops_a_component_at_start(
    secure_compose: SecureCompose, tmp_path: Path
) -> None:
    wrong = tmp_path / "kafka-password-signals"
    wrong.write_text("not-the-password\n")
    out = secure_compose.omniquant(
        "signals", "stage", "signals", OMNIQUANT_KAFKA__SASL_PASSWORD_FILE=str(wrong), timeout=90
    )
    message = " ".join((out.stdout + out.stderr).split())
    assert out.returncode == 2, message[-2000:]
    assert "refused user 'signals' (SCRAM-SHA-512)" in message
    assert "not-the-password" not in message


def test_secure_apply_names_a_missing_mounted_password(
    secure_compose: SecureCompose, tmp_path: Path
) -> None:
    (tmp_path / "kafka-ca").symlink_to(secure_compose.mounts / "kafka-ca")
    out = secure_compose.omniquant("access", "secure", "apply", "--secrets", str(tmp_path))
    message = " ".join((out.stdout + out.stderr).split())
    assert out.returncode == 2, message
    assert "kafka-password-" in message
