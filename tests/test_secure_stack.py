"""The secure mode on real brokers: `omniquant up --brokers 3 --secure` (three KRaft nodes,
SASL_SSL with SCRAM-SHA-512 for clients, mutual TLS between controllers, the standard
authorizer with the stage registry's ACLs), then what a user does with it:

* a replay of real IBM ticks (the ``replay`` principal, into a namespace of its own) lands
  every row it reports; `omniquant run` — every stage, the lag monitor and the ClickHouse
  sink, each as its own principal — end to end: the store holds exactly the ticks the feed
  produced, and orders, fills, risk metrics and lag records as on their topics;
* the ACLs: the feed may write market data but not orders, only the risk gate approved
  orders, only execution fills; a refused write is an authorisation error and the topic
  stays empty; a PLAINTEXT client gets nothing;
* a wrong password and an untrusted CA stop a stage at start with a message naming the
  settings;
* no password appears in any log, error message, `config show` or `status` output.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from conftest import shared_file
from kafka_read import produce_one

from omniquant.stack.tls import CertificateAuthority

pytestmark = [pytest.mark.integration, pytest.mark.secure, pytest.mark.timeout(900)]

PREFIX = "sec."
REPLAY_PREFIX = "secreplay."
FEED_TICKS = 3000
IBM_TRADES = "Lean/Data/equity/usa/tick/ibm/20131007_trade.zip"
# the first 20 minutes of the session, 09:30-09:50 New York
REPLAY_FROM, REPLAY_TO = "2013-10-07T13:30:00Z", "2013-10-07T13:50:00Z"


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_base(span: int) -> int:
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            base = int(sock.getsockname()[1])
        if base + span < 65_000 and all(_bindable(base + i) for i in range(span)):
            return base
    raise RuntimeError(f"no {span} consecutive free ports")


@dataclass(frozen=True)
class SecureStack:
    state_dir: Path
    env: dict[str, str] = field(repr=False)  # the user's shell: state dir, ports, namespace
    bootstrap: str
    ca: Path
    passwords: dict[str, str] = field(repr=False)  # never in a failure's output

    def client(self, principal: str, **extra: str) -> dict[str, str]:
        return {
            "bootstrap.servers": self.bootstrap,
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": principal,
            "sasl.password": self.passwords[principal],
            "ssl.ca.location": str(self.ca),
            **extra,
        }


def omniquant(
    env: dict[str, str], *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "omniquant.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def secure_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureStack]:
    state_dir = tmp_path_factory.mktemp("secure")
    base = _free_base(7)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIQUANT_")}
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "CLICKHOUSE_URL"):
        env.pop(name, None)
    env.update(
        OMNIQUANT_STATE_DIR=str(state_dir),
        OMNIQUANT_TOPIC_PREFIX=PREFIX,
        OMNIQUANT_STACK__KAFKA_PORT=str(base),
        OMNIQUANT_STACK__KAFKA_CONTROLLER_PORT=str(base + 1),
        OMNIQUANT_STACK__REDIS_PORT=str(base + 6),
        OMNIQUANT_STACK__KAFKA_HEAP="384m",
        OMNIQUANT_STACK__START_TIMEOUT_S="180",
    )
    started = time.monotonic()
    up = omniquant(env, "up", "--brokers", "3", "--secure", timeout=400)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        print(f"\n[secure] `omniquant up --brokers 3 --secure`: {time.monotonic() - started:.1f} s")
        secure = state_dir / "kafka" / "secure"
        passwords = json.loads((secure / "credentials.json").read_text())
        yield SecureStack(
            state_dir,
            env,
            ",".join(f"127.0.0.1:{base + 2 * i}" for i in range(3)),
            secure / "ca.pem",
            passwords,
        )
    finally:
        omniquant(env, "down", timeout=120)


def _count(stack: SecureStack, topic: str) -> int:
    """Records in ``topic`` (read to the end as admin, read_committed)."""
    consumer = Consumer(
        stack.client(
            "admin",
            **{
                "group.id": f"count-{time.monotonic_ns()}",
                "enable.partition.eof": "true",
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
            },
        )
    )
    try:
        meta = consumer.list_topics(topic, timeout=30).topics[topic]
        parts = [TopicPartition(topic, p, 0) for p in meta.partitions]
        consumer.assign(parts)
        open_parts, count = len(parts), 0
        deadline = time.monotonic() + 60
        while open_parts and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    open_parts -= 1
                    continue
                raise KafkaException(msg.error())
            count += 1
        assert open_parts == 0, f"{topic}: not read to the end"
        return count
    finally:
        consumer.close()


def _sql_count(stack: SecureStack, table: str) -> int:
    out = omniquant(stack.env, "sql", f"SELECT count() AS n FROM omniquant.{table}", "-f", "json")
    assert out.returncode == 0, out.stdout + out.stderr
    return int(json.loads(out.stdout)[0]["n"])


@pytest.fixture(scope="module")
def secured_run(
    secure_stack: SecureStack, shared_data: Path
) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    """A replay of real ticks, then the whole pipeline, on the secure cluster."""
    ticks = shared_file(shared_data, IBM_TRADES)
    # its own namespace: 2013 event times mixed into the run's would be other tests' data
    replay = omniquant(
        secure_stack.env, "replay", str(ticks), "--from", REPLAY_FROM, "--to", REPLAY_TO,
        "--topic-prefix", REPLAY_PREFIX,
    )  # fmt: skip
    assert replay.returncode == 0, replay.stdout + replay.stderr
    # tests/pipeline_store.py's tuning: 20 ms bars and risk observations, so a few
    # thousand ticks give many orders, fills and VaR however late the stages start
    tuned = {
        **secure_stack.env,
        "OMNIQUANT_STRATEGY__BAR_INTERVAL_MS": "20",
        "OMNIQUANT_STRATEGY__FAST_WINDOW": "3",
        "OMNIQUANT_STRATEGY__SLOW_WINDOW": "8",
        "OMNIQUANT_BARS__INTERVALS_MS": "[20, 1000]",
        "OMNIQUANT_RISK_METRICS__CADENCE_MS": "20",
        "OMNIQUANT_RISK_METRICS__WINDOW": "100",
        "OMNIQUANT_RISK_METRICS__MIN_RETURNS": "10",
        "OMNIQUANT_LAG__POLL_INTERVAL_S": "1",
    }
    run = omniquant(
        tuned,
        "run", "--no-live", "--ticks", str(FEED_TICKS), "--rate", "200", "--duration", "150",
        timeout=400,
    )  # fmt: skip
    return replay, run


def test_replay_and_every_stage_run_end_to_end_on_the_secure_cluster(
    secure_stack: SecureStack, secured_run: tuple[subprocess.CompletedProcess[str], ...]
) -> None:
    replay, run = secured_run
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    replayed = _count(secure_stack, f"{REPLAY_PREFIX}market.trades")
    assert replayed > 1000, replay.stdout  # IBM trades in those 20 minutes
    assert f"{replayed:,}" in replay.stdout  # what the replay reported it produced
    # the sink stored exactly what is on the topics
    counts = {t: _sql_count(secure_stack, t) for t in ("trades", "approved_orders", "fills")}
    print(f"\n[secure] replayed {replayed} IBM trades; the run's feed {FEED_TICKS}; {counts}")
    assert counts["trades"] == _count(secure_stack, f"{PREFIX}market.trades") == FEED_TICKS
    assert counts["approved_orders"] == _count(secure_stack, f"{PREFIX}orders.approved") > 0
    assert counts["fills"] == _count(secure_stack, f"{PREFIX}fills") > 0
    for table in ("risk_decisions", "positions", "risk_metrics", "consumer_lag"):
        assert _sql_count(secure_stack, table) > 0, table
    # every stage connected as itself: the broker's authorizer saw the principals
    for stage_log in (secure_stack.state_dir / "logs").glob("run-*/*.log"):
        text = stage_log.read_text(errors="replace")
        assert "AUTHORIZATION_FAILED" not in text, stage_log.name


def test_lag_cli_reads_the_groups_as_the_lag_monitor(
    secure_stack: SecureStack, secured_run: tuple[subprocess.CompletedProcess[str], ...]
) -> None:
    out = omniquant(secure_stack.env, "lag", "--group", f"{PREFIX}signals", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    doc = json.loads(out.stdout)
    assert f"{PREFIX}signals" in json.dumps(doc), doc  # its partitions, read as lag-monitor


@pytest.mark.parametrize(
    ("principal", "topic", "allowed"),
    [
        ("feed", "market.trades", True),
        ("feed", "orders.requests", False),
        ("feed", "orders.approved", False),
        ("signals", "orders.requests", True),
        ("signals", "orders.approved", False),
        ("risk-gate", "orders.approved", True),
        ("portfolio", "fills", False),
        ("replay", "fills", False),
        ("execution", "fills", True),
    ],
)
def test_acls_let_each_principal_write_only_its_own_topics(
    secure_stack: SecureStack, principal: str, topic: str, allowed: bool
) -> None:
    target = f"acl{principal.replace('-', '')}.{topic}"  # a namespace of its own
    admin = AdminClient(secure_stack.client("admin"))
    from confluent_kafka.admin import NewTopic

    for future in admin.create_topics([NewTopic(target, 1, 3)]).values():
        future.result(30)
    # the ACLs of that namespace, as `omniquant up` makes them for OMNIQUANT_TOPIC_PREFIX
    from omniquant.access import acl_bindings

    prefix = target.removesuffix(topic)
    for future in admin.create_acls(acl_bindings(prefix)).values():
        future.result(30)
    deadline = time.monotonic() + 30  # the authorizer applies new ACLs from the metadata log
    error = produce_one(secure_stack.client(principal), target)
    while allowed and error is not None and time.monotonic() < deadline:
        error = produce_one(secure_stack.client(principal), target)
    if allowed:
        assert error is None, error
        assert _count(secure_stack, target) >= 1
    else:
        assert error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, error
        assert _count(secure_stack, target) == 0  # nothing was written


def test_a_plaintext_client_gets_nothing(secure_stack: SecureStack) -> None:
    admin = AdminClient(
        {"bootstrap.servers": secure_stack.bootstrap, "log_level": "0", "error_cb": print}
    )
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=5)


def _stage_env(stack: SecureStack, password: str, ca: Path) -> dict[str, str]:
    return {
        **stack.env,
        "KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap,
        "OMNIQUANT_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "OMNIQUANT_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
        "OMNIQUANT_KAFKA__SASL_USERNAME": "signals",
        "OMNIQUANT_KAFKA__SASL_PASSWORD": password,
        "OMNIQUANT_KAFKA__SSL_CA_LOCATION": str(ca),
        "OMNIQUANT_METRICS_PORT": "0",
    }


REFUSALS: dict[str, str] = {}  # what each refusal printed, for the secret scan


def test_a_wrong_password_stops_a_stage_at_start_with_a_clear_message(
    secure_stack: SecureStack,
) -> None:
    wrong = "not-the-password-" + secure_stack.passwords["signals"][:4]
    started = time.monotonic()
    out = omniquant(_stage_env(secure_stack, wrong, secure_stack.ca), "stage", "signals")
    took = time.monotonic() - started
    REFUSALS["password"] = out.stdout + out.stderr
    assert out.returncode == 2, out.stdout + out.stderr
    message = " ".join(out.stderr.split())
    assert "refused user 'signals' (SCRAM-SHA-512)" in message
    assert "OMNIQUANT_KAFKA__SASL_PASSWORD" in message
    assert wrong not in out.stdout + out.stderr
    assert took < 60, f"took {took:.0f} s: should stop at the first refusal"


def test_an_untrusted_certificate_stops_a_stage_at_start_with_a_clear_message(
    secure_stack: SecureStack, tmp_path: Path
) -> None:
    other = CertificateAuthority(tmp_path / "other-ca").ensure()
    out = omniquant(
        _stage_env(secure_stack, secure_stack.passwords["signals"], other.cert_path),
        "stage",
        "signals",
    )
    REFUSALS["certificate"] = out.stdout + out.stderr
    assert out.returncode == 2, out.stdout + out.stderr
    message = " ".join(out.stderr.split())
    assert "is not trusted" in message and "OMNIQUANT_KAFKA__SSL_CA_LOCATION" in message


def test_no_password_in_any_log_error_or_config_output(
    secure_stack: SecureStack, secured_run: tuple[subprocess.CompletedProcess[str], ...]
) -> None:
    secrets = list(secure_stack.passwords.values())
    assert len(secrets) >= 10  # every component's, the broker's and the admin's
    env = {
        **secure_stack.env,
        "OMNIQUANT_KAFKA__SASL_USERNAME": "signals",
        "OMNIQUANT_KAFKA__SASL_PASSWORD": secure_stack.passwords["signals"],
        "OMNIQUANT_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "OMNIQUANT_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
    }
    outputs = {
        "config show": omniquant(env, "config", "show"),
        "status": omniquant(secure_stack.env, "status"),
    }
    texts = {name: out.stdout + out.stderr for name, out in outputs.items()}
    assert outputs["status"].returncode == 0, texts["status"]
    assert "SASL_SSL" in texts["status"]
    texts.update(
        {f"run {k}": v for k, v in zip(("replay", "run"), _texts(secured_run), strict=True)}
    )
    texts.update({f"refusal: {k}": v for k, v in REFUSALS.items()})
    logs = [
        p
        for p in secure_stack.state_dir.rglob("*")
        if p.is_file() and (p.suffix == ".log" or ".log." in p.name or p.parent.name == "logs")
    ]
    assert any(p.name == "server.log" for p in logs) and any(
        p.name == "risk-gate.log" for p in logs
    )
    for path in logs:
        texts[str(path.relative_to(secure_stack.state_dir))] = path.read_text(errors="replace")
    leaks = [name for name, text in texts.items() for secret in secrets if secret in text]
    print(f"\n[secure] scanned {len(texts)} logs and outputs for {len(secrets)} passwords")
    assert not leaks, f"a password appears in: {sorted(set(leaks))}"
    # the files that must hold them are the owner's alone
    secure = secure_stack.state_dir / "kafka" / "secure"
    for path in [
        secure / "credentials.json",
        *secure_stack.state_dir.glob("kafka/node-*/server.properties"),
    ]:
        assert path.stat().st_mode & 0o077 == 0, path


def _texts(run: tuple[subprocess.CompletedProcess[str], ...]) -> list[str]:
    return [out.stdout + out.stderr for out in run]
