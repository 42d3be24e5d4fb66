"""The running risk gate and paper execution (real broker): orders valued at the gate's own
market price, duplicates refused, open exposure released by the venue's reports."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis
from confluent_kafka import Consumer, TopicPartition
from kafka_read import read_topic
from stage_proc import spawn_stage, stage_namespace

from core.kafka import LagProbe, consumer_config
from core.topics import TopicNames
from producers.kafka_producer import RecordProducer
from schemas.fixedpoint import to_fixed
from schemas.models import Decision, OrderRequest, OrderType, RiskDecision, Side, Trade
from schemas.serde import AvroSerde

pytestmark = pytest.mark.integration

T0 = 1_700_000_000_000_000_000
SEC = 1_000_000_000


def _decisions(settings, topic: str, wanted: set[str], timeout: float = 120) -> dict:
    consumer = Consumer(consumer_config(settings, f"{topic}-reader"))
    consumer.subscribe([topic])
    serde = AvroSerde()
    seen: dict[str, list[RiskDecision]] = {}
    deadline = time.monotonic() + timeout
    try:
        while not wanted <= set(seen) and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                decision = serde.decode_as(msg.value(), RiskDecision)
                seen.setdefault(decision.client_order_id, []).append(decision)
    finally:
        consumer.close()
    return seen


def test_gate_prices_itself_refuses_duplicates_and_releases_filled_exposure(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    settings, env = stage_namespace(kafka_bootstrap, redis_url, tmp_path, "gate")
    env.update(
        OMNIQUANT_RISK__MAX_POSITION_PER_SYMBOL="5000",
        OMNIQUANT_RISK__MAX_ORDER_NOTIONAL="2000000",
        # This test is about the symbol limits: the account limits stay out of the way.
        OMNIQUANT_RISK__MAX_POSITION_VALUE="2000000",
        OMNIQUANT_RISK__MAX_CONCENTRATION="1",
        OMNIQUANT_PORTFOLIO__STARTING_CASH="5000000",
    )
    names = TopicNames(settings.topic_prefix)
    producer = RecordProducer(settings, "test")

    def trade(price: str, ts: int, symbol: str = "SPY") -> None:
        record = Trade(
            symbol=symbol, venue="T", price=to_fixed(price), size=to_fixed(100), source="test",
            ts_event=ts, ts_init=ts,
        )  # fmt: skip
        producer.send(names.trades, record, key=symbol)

    def order(
        coid: str, side: Side, qty: int, reference: str, ts: int, symbol: str = "SPY",
        order_type: OrderType = OrderType.MARKET,
    ) -> None:  # fmt: skip
        record = OrderRequest(
            client_order_id=coid, strategy_id="test", account="paper", symbol=symbol,
            side=side, quantity=to_fixed(qty), reference_price=to_fixed(reference),
            order_type=order_type, ts_event=ts, ts_init=ts,
        )  # fmt: skip
        producer.send(names.order_requests, record, key=symbol)

    def consumed(topic: str, stages: tuple[str, ...] = ("risk-gate", "execution")) -> None:
        """Wait until ``stages`` have committed past everything on ``topic`` (so an order
        produced next meets it in their state, whatever Quix's interleaving)."""
        probe = LagProbe(settings)
        deadline = time.monotonic() + 90
        try:
            while time.monotonic() < deadline:
                groups = [f"{settings.topic_prefix}{s}" for s in stages]
                if sum(_end(settings, topic)) and all(probe.lag(g, [topic]) == 0 for g in groups):
                    return
                time.sleep(0.2)
        finally:
            probe.close()
        raise AssertionError(f"stages did not consume {topic}")

    def gate_read_report(coid: str) -> None:
        """Wait until the gate has committed past the venue's report of ``coid``. (Not by
        lag: execution writes reports in transactions, and the commit marker after the
        last one holds a Quix consumer's lag at 1.)"""
        reader = Consumer(consumer_config(settings, f"{names.execution_reports}-reader"))
        reader.subscribe([names.execution_reports])
        gate = Consumer(consumer_config(settings, f"{settings.topic_prefix}risk-gate"))
        deadline = time.monotonic() + 90
        try:
            where = None
            while where is None and time.monotonic() < deadline:
                msg = reader.poll(0.2)
                if msg is None or msg.error() is not None:
                    continue
                if AvroSerde().decode(msg.value()).client_order_id == coid:
                    where = TopicPartition(msg.topic(), msg.partition())
                    offset = msg.offset()
            assert where is not None, f"no report of {coid}"
            while time.monotonic() < deadline:
                if gate.committed([where], timeout=10)[0].offset > offset:
                    return
                time.sleep(0.2)
        finally:
            reader.close()
            gate.close()
        raise AssertionError(f"the gate did not consume the report of {coid}")

    apps = [spawn_stage(stage, env) for stage in ("risk-gate", "execution")]
    try:
        trade("167.10", T0)
        producer.flush()
        consumed(names.trades)
        # claims a price of 0.01: outside the collar, and valued at the market (835k)
        order("cheat", Side.BUY, 4999, "0.01", T0 + 1 * SEC)
        order("a", Side.BUY, 40, "167.10", T0 + 2 * SEC)  # approved, then filled
        # the paper venue fills "a" as of its time once the market shows that time has come
        trade("167.10", T0 + 3 * SEC)
        producer.flush()
        first = _decisions(settings, names.risk_decisions, {"cheat", "a"})
        # later orders come once "a" has filled, so the fill has reached the gate (read,
        # not counted by offsets: execution's transaction markers take offsets too)
        fills = read_topic(kafka_bootstrap, names.fills, expected=1, timeout_s=60)
        assert [AvroSerde().decode(m.value()).client_order_id for m in fills] == ["a"]
        trade("167.20", T0 + 10 * SEC)
        producer.flush()
        consumed(names.trades)
        order("a", Side.BUY, 40, "167.20", T0 + 11 * SEC)  # the same id again
        order("b", Side.BUY, 4970, "167.20", T0 + 12 * SEC)  # 40 filled + 4970 > 5000
        order("c", Side.BUY, 4960, "167.20", T0 + 13 * SEC)  # 40 + 4960 = 5000: fits
        # (the 2M notional limit set above lets c's 829k through: position decides)
        producer.flush()
        later = _decisions(settings, names.risk_decisions, {"a", "b", "c"})

        # Release: the venue rejects "q1" (a LIMIT order without a limit price: the gate
        # does not check for one, the paper venue refuses it). The rejection must free the
        # 5,000 reserved, or "q2" cannot fit.
        trade("380", T0 + 100 * SEC, symbol="QQQ")
        producer.flush()
        consumed(names.trades, ("risk-gate",))
        order("q1", Side.BUY, 5000, "380", T0 + 99 * SEC, symbol="QQQ", order_type=OrderType.LIMIT)
        producer.flush()
        q1 = _decisions(settings, names.risk_decisions, {"q1"})["q1"][0]
        gate_read_report("q1")  # the venue's REJECTED is in
        order("q2", Side.BUY, 5000, "380", T0 + 101 * SEC, symbol="QQQ")
        producer.flush()
        q2 = _decisions(settings, names.risk_decisions, {"q2"})["q2"][0]
    finally:
        for app in apps:
            app.terminate()
        for app in apps:
            app.wait(30)
        assert [app.returncode for app in apps] == [0, 0]

    cheat = first["cheat"][0]
    assert cheat.decision == Decision.REJECTED
    checks = {c.name: c for c in cheat.checks}
    assert not checks["price_collar"].passed
    assert checks["notional"].value == to_fixed("835332.9")  # valued at the market, not 0.01
    assert first["a"][0].decision == Decision.APPROVED, first["a"][0].reason
    duplicate = later["a"][-1]
    assert duplicate.decision == Decision.REJECTED and "already decided" in duplicate.reason
    # the filled 40 moved from open to position: b does not fit, c exactly fits
    assert later["b"][0].decision == Decision.REJECTED and "position" in later["b"][0].reason
    assert later["c"][0].decision == Decision.APPROVED
    assert q1.decision == Decision.APPROVED, q1.reason
    assert q2.decision == Decision.APPROVED, q2.reason  # q1's 5,000 was released

    # The shared book: SPY was written at a's approval and fill and c's approval, QQQ at
    # q1's and q2's approvals and q1's rejection. The gate's last commit (at its stop)
    # trimmed each history to its last version, which is the value decisions read.
    book = redis.Redis.from_url(redis_url)
    try:
        prefix = f"{settings.topic_prefix}gate:"
        current = {
            k.decode(): json.loads(v) for k, v in book.hgetall(f"{prefix}exposure:paper").items()
        }
        history = {
            k.decode(): json.loads(v) for k, v in book.hgetall(f"{prefix}history:paper").items()
        }
    finally:
        book.close()
    assert set(current) == set(history) == {"SPY", "QQQ"}
    for symbol, versions in history.items():
        assert len(versions) == 1 and versions[0][3:] == current[symbol], (symbol, versions)
    # worst case: SPY 40 filled + 4,960 working (c); QQQ 5,000 working (q2)
    assert current["SPY"][0] == to_fixed(5000) and current["QQQ"][0] == to_fixed(5000)


def _end(settings, topic: str) -> list[int]:
    from core.kafka import end_offsets

    return list(end_offsets(settings, topic).values())
