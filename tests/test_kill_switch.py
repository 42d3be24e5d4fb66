"""`omniquant halt` / `resume` against the running risk gate (real broker and Redis)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import redis
from confluent_kafka import Consumer
from prometheus_client.parser import text_string_to_metric_families
from stage_proc import spawn_stage, stage_namespace

from core.kafka import LagProbe, consumer_config
from core.topics import TopicNames
from producers.kafka_producer import RecordProducer
from schemas.fixedpoint import to_fixed
from schemas.models import Decision, OrderRequest, RiskDecision, Side, Trade
from schemas.serde import AvroSerde
from streams.control import redis_hash

pytestmark = pytest.mark.integration


def _order(coid: str, account: str) -> OrderRequest:
    now = time.time_ns()
    return OrderRequest(
        client_order_id=coid,
        strategy_id="test",
        account=account,
        symbol="SPY",
        side=Side.BUY,
        quantity=to_fixed(1),
        reference_price=to_fixed(100),
        ts_event=now,
        ts_init=now,
    )


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "omniquant.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class _Decisions:
    """Reads the gate's decisions as they come: client order id → decision."""

    def __init__(self, settings, topic: str) -> None:
        self.consumer = Consumer(consumer_config(settings, f"{topic}-reader"))
        self.consumer.subscribe([topic])
        self.serde = AvroSerde()
        self.seen: dict[str, RiskDecision] = {}

    def wait_for(self, coid: str, timeout: float = 60) -> RiskDecision:
        deadline = time.monotonic() + timeout
        while coid not in self.seen and time.monotonic() < deadline:
            msg = self.consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                decision = self.serde.decode_as(msg.value(), RiskDecision)
                self.seen[decision.client_order_id] = decision
        assert coid in self.seen, f"no decision for {coid}"
        return self.seen[coid]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _account_state(port: int, account: str) -> float | None:
    """trading_account_state{account} as the stage's /metrics shows it (None: no sample)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "trading_account_state" and sample.labels.get("account") == account:
                return sample.value
    return None


def test_halt_rejects_an_accounts_orders_within_a_second_and_resume_lifts_it(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    settings, env = stage_namespace(kafka_bootstrap, redis_url, tmp_path, "kill")
    metrics_port = _free_port()
    env["OMNIQUANT_METRICS_PORT"] = str(metrics_port)
    # This test is about trading states: a market price an hour old still prices orders,
    # so how Quix interleaves a trade and the order right behind it cannot matter.
    env.update(OMNIQUANT_RISK__MAX_PRICE_AGE_MS=str(3_600_000))
    names = TopicNames(settings.topic_prefix)
    producer = RecordProducer(settings, "test")
    decisions = _Decisions(settings, names.risk_decisions)
    gate = spawn_stage("risk-gate", env)
    n = 0

    def send(account: str) -> str:
        """An order of ``account`` (priced by the trade :func:`priced` gave the gate)."""
        nonlocal n
        n += 1
        order = _order(f"o-{n}", account)
        producer.send(names.order_requests, order, key="SPY")
        producer.flush()
        return order.client_order_id

    def priced() -> None:
        """One SPY trade, then wait until the gate has committed past it (it is in state)."""
        now = time.time_ns()
        trade = Trade(
            symbol="SPY", venue="T", price=to_fixed(100), size=to_fixed(1), source="test",
            ts_event=now, ts_init=now,
        )  # fmt: skip
        producer.send(names.trades, trade, key="SPY")
        producer.flush()
        probe = LagProbe(settings)
        try:
            deadline = time.monotonic() + 90
            while probe.lag(f"{settings.topic_prefix}risk-gate", [names.trades]) != 0:
                assert time.monotonic() < deadline, "the gate never consumed the trade"
                time.sleep(0.2)
        finally:
            probe.close()

    try:
        priced()
        assert decisions.wait_for(send("alice"), 90).decision == Decision.APPROVED

        halted = _cli(env, "halt", "--account", "alice", "--reason", "desk review")
        assert halted.returncode == 0, halted.stderr
        halted_at = time.monotonic()
        # orders sent from now on: every one sent 1 s or more after the halt is rejected
        sent: list[tuple[float, str]] = []
        while time.monotonic() - halted_at < 1.5:
            sent.append((time.monotonic() - halted_at, send("alice")))
            time.sleep(0.1)
        assert _account_state(metrics_port, "alice") == 2  # HALTED, as the alert rule reads it
        for age, coid in sent:
            decision = decisions.wait_for(coid)
            if age >= 1.0:
                assert decision.decision == Decision.REJECTED, (age, decision.reason)
                assert "HALTED" in decision.reason
                assert "desk review" in decision.reason
        assert decisions.wait_for(send("bob")).decision == Decision.APPROVED  # others trade

        # The control topic is the record of truth: a gate started after the halt, with the
        # Redis mirror gone, still sees it.
        gate.terminate()
        gate.wait(30)
        redis.Redis.from_url(redis_url).delete(redis_hash(settings))
        gate = spawn_stage("risk-gate", env)
        assert decisions.wait_for(send("alice"), 90).decision == Decision.REJECTED

        resumed = _cli(env, "resume", "--account", "alice")
        assert resumed.returncode == 0, resumed.stderr
        time.sleep(1.0)  # the documented bound: within a second
        assert decisions.wait_for(send("alice")).decision == Decision.APPROVED
        assert _account_state(metrics_port, "alice") == 0  # ACTIVE again
    finally:
        gate.terminate()
        gate.wait(30)
        decisions.consumer.close()
