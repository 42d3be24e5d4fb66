"""The running risk gate (real broker, real Redis) against a table of hostile requests:
each is rejected, and rejected for the right reason — the check that should fail fails,
and where the request is built to break one rule only, no other check fails. Plus the
exactly-one-decision rule over everything produced."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from kafka_read import read_until
from stage_proc import spawn_stage, stage_namespace

from core.kafka import LagProbe, end_offsets
from core.topics import TopicNames
from producers.kafka_producer import RecordProducer
from schemas.fixedpoint import INT64_MAX, to_fixed
from schemas.models import (
    Decision,
    OrderRequest,
    OrderType,
    RiskDecision,
    RiskMetric,
    Side,
    Trade,
    TradingState,
)
from schemas.serde import AvroSerde
from streams.control import ControlPlane

pytestmark = pytest.mark.integration

# 2026-10-07 09:30 IST, the trade date of NSE's ban file in ../shared/data.
T0 = 1_791_345_600_000_000_000
SEC = 1_000_000_000
MS = 1_000_000


@dataclass(frozen=True)
class Case:
    coid: str
    account: str
    symbol: str
    side: Side
    quantity: int  # raw
    reference: str | None
    expect: frozenset[str]  # checks that must fail; empty: approved
    only: bool = True  # no other check may fail
    limit: str | None = None
    ts: int = T0 + SEC
    phase: int = 1  # 2: produced once every phase-1 decision is out (cross-symbol order)


def case(coid, account, symbol, side, qty, reference, expect=(), **kw) -> Case:
    raw = qty if isinstance(qty, int) and abs(qty) > 10**12 else to_fixed(qty)
    return Case(coid, account, symbol, side, raw, reference, frozenset(expect), **kw)


CASES = [
    case("ok", "plain", "SPY", Side.BUY, 100, "450"),  # the control: approved
    # the order, with a spoofed reference price: valued at the market (≈ $2.25M)
    case("spoof-ref", "plain", "SPY", Side.BUY, 4999, "0.01", {"price_collar", "notional"},
         only=False),
    case("spoof-limit", "plain", "SPY", Side.BUY, 10, None, {"price_collar"}, limit="900"),
    case("huge", "plain", "SPY", Side.BUY, INT64_MAX, "450", {"quantity", "notional"},
         only=False),
    case("over-max-qty", "plain", "SPY", Side.BUY, 100_001, "450", {"quantity"},
         only=False),
    case("unknown", "plain", "NOPE", Side.BUY, 1, None, {"price"}, only=False),
    case("stale", "plain", "OLD", Side.BUY, 1, None, {"price"}, only=False),
    case("restricted", "plain", "XYZ", Side.BUY, 1, "20", {"restricted_list"}),
    case("banned", "plain", "NSE:SAIL", Side.BUY, 10, "120", {"fo_ban"}),
    case("halted", "halted", "SPY", Side.BUY, 1, "450", {"trading_state"}),
    case("lossy", "lossy", "SPY", Side.BUY, 1, "450", {"daily_loss"}),
    case("deep", "deep", "SPY", Side.BUY, 1, "450", {"drawdown"}),
    case("pv", "pv", "SPY", Side.BUY, 1200, "450", {"position_value"}),  # $540k > $500k
    case("conc-1", "conc", "SPY", Side.BUY, 400, "450"),  # $180k of $1M
    case("conc-2", "conc", "SPY", Side.BUY, 200, "450", {"concentration"}, ts=T0 + 2 * SEC),
    # $100k equity: SPY $90k + QQQ $95k, then IWM's $20k takes gross to 2.05×
    case("lev-1", "lev", "SPY", Side.BUY, 200, "450"),
    case("lev-2", "lev", "QQQ", Side.BUY, 250, "380", ts=T0 + 2 * SEC),
    case("lev-3", "lev", "IWM", Side.BUY, 100, "200", {"gross_leverage"}, ts=T0 + 3 * SEC,
         phase=2),
    # a cash account (margin 1.0) of $100k: SPY $58.5k leaves $41.5k for QQQ's $45.6k
    case("bp-1", "bp", "SPY", Side.BUY, 130, "450"),
    case("bp-2", "bp", "QQQ", Side.BUY, 120, "380", {"buying_power"}, ts=T0 + 2 * SEC,
         phase=2),
    case("dup", "plain", "SPY", Side.BUY, 1, "450", ts=T0 + 3 * SEC),
    # the same id on another symbol (another key, maybe another partition): refused
    case("dup", "plain", "QQQ", Side.BUY, 1, "380", {"duplicate_client_order_id"},
         ts=T0 + 4 * SEC, phase=2),
]  # fmt: skip
# A burst: 12 orders of one account inside one second of event time; the 11th and 12th
# exceed 10/s.
BURST = [
    case(f"burst-{i}", "burst", "SPY", Side.BUY, 1, "450",
         {"order_rate"} if i >= 10 else (), ts=T0 + SEC + i * 50 * MS)
    for i in range(12)
]  # fmt: skip


def test_hostile_requests_are_rejected_each_for_its_reason(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path, shared_data: Path
) -> None:
    settings, env = stage_namespace(kafka_bootstrap, redis_url, tmp_path, "adv")
    ban_file = shared_data / "nse-oi-tracker" / "data" / "fo_secban.csv"
    env.update(
        OMNIQUANT_RISK__FO_BAN_FILE=str(ban_file),
        OMNIQUANT_RISK__RESTRICTED_SYMBOLS='["XYZ"]',
        OMNIQUANT_PORTFOLIO__ACCOUNT_CASH=json.dumps(
            {"lev": "100000", "bp": "100000", "pv": "10000000"}
        ),
        OMNIQUANT_RISK__OVERRIDES=json.dumps(
            [
                # each account isolates one rule: the others are out of its way
                {"account": "pv", "max_order_notional": "1000000"},
                {"account": "lev", "max_concentration": "1", "margin_rate": "0.25",
                 "max_position_value": "100000000"},
                {"account": "bp", "max_concentration": "1", "max_gross_leverage": "10",
                 "margin_rate": "1"},
                {"account": "burst", "max_concentration": "1"},
            ]
        ),
    )  # fmt: skip
    names = TopicNames(settings.topic_prefix)
    producer = RecordProducer(settings, "test")

    def trade(symbol: str, price: str, ts: int) -> None:
        record = Trade(
            symbol=symbol, venue="T", price=to_fixed(price), size=to_fixed(100), source="test",
            ts_event=ts, ts_init=ts,
        )  # fmt: skip
        producer.send(names.trades, record, key=symbol)

    def metric(name: str, account: str, value: int) -> None:
        record = RiskMetric(metric=name, scope=account, value=value, ts_event=T0, ts_init=T0)
        producer.send(names.name("risk.metrics"), record, key=account)

    markets = (("SPY", "450"), ("QQQ", "380"), ("IWM", "200"), ("XYZ", "20"), ("NSE:SAIL", "120"))
    for symbol, price in markets:
        trade(symbol, price, T0)
    trade("OLD", "10", T0 - 60 * SEC)  # a minute before the orders: stale
    metric("DAILY_LOSS", "lossy", to_fixed(10_000))  # at the limit
    metric("DRAWDOWN", "deep", to_fixed("0.2"))  # beyond 15 %
    producer.flush()
    ControlPlane(settings).set_state(
        TradingState.HALTED, account="halted", reason="adversarial test", issued_by="test"
    )

    gate = spawn_stage("risk-gate", env)
    try:
        _wait_consumed(settings, names.trades, f"{settings.topic_prefix}risk-gate")
        requests = CASES + BURST
        messages = []
        for phase in (1, 2):
            batch = [item for item in requests if item.phase == phase]
            for item in batch:
                producer.send(names.order_requests, _request(item), key=item.symbol)
            producer.flush()
            wanted = len(messages) + len(batch)
            messages = read_until(
                kafka_bootstrap, names.risk_decisions, lambda got, n=wanted: len(got) >= n, 120
            )
            assert len(messages) == wanted, f"phase {phase}: {len(messages)} of {wanted}"
        # Zero and negative quantities break the record's contract (quantity > 0): a
        # non-Python producer can still write them. They are not requests the gate can
        # decide on: each goes to the gate's dead letters with the error, and nothing else.
        serde = AvroSerde()
        for coid, qty in (("zero", 0), ("negative", -to_fixed(5))):
            bad = _request(case(coid, "plain", "SPY", Side.BUY, 1, "450")).model_dump()
            bad["quantity"] = qty
            raw = serde.encode_dict(OrderRequest, bad, topic=names.order_requests)
            producer.send_raw(names.order_requests, raw, key="SPY")
        producer.flush()
        dead = read_until(
            kafka_bootstrap, names.dead_letter("risk-gate"), lambda got: len(got) >= 2, 60
        )
        _wait_consumed(settings, names.order_requests, f"{settings.topic_prefix}risk-gate")
        assert gate.poll() is None, "the gate died on hostile input"
    finally:
        gate.terminate()
        gate.wait(30)

    assert len(dead) == 2
    for message in dead:
        headers = dict(message.headers())
        assert b"quantity" in headers["dlq.error.message"]
        assert headers["dlq.original.topic"] == names.order_requests.encode()
    decisions = [serde.decode_as(m.value(), RiskDecision) for m in messages]
    # exactly one decision per request, in total and per (coid, symbol)
    produced = sum(end_offsets(settings, names.risk_decisions).values())
    assert len(decisions) == len(requests)
    # nothing beyond one decision each (with transactions the end offset also counts one
    # commit marker per transaction, so compare what a read_committed reader sees)
    assert produced >= len(requests)
    assert len(read_until(kafka_bootstrap, names.risk_decisions, lambda _: False, 3)) == len(
        requests
    )
    by_request = {(d.client_order_id, d.symbol): d for d in decisions}
    assert len(by_request) == len(requests)

    for item in requests:
        decision = by_request[(item.coid, item.symbol)]
        failed = {c.name for c in decision.checks if not c.passed}
        if not item.expect:
            assert decision.decision == Decision.APPROVED, (item.coid, decision.reason)
            continue
        assert decision.decision == Decision.REJECTED, item.coid
        assert item.expect <= failed, (item.coid, failed, decision.reason)
        if item.only:
            assert failed == item.expect, (item.coid, failed, decision.reason)
        for check in decision.checks:
            if not check.passed:
                assert check.message in decision.reason

    spoof = {c.name: c for c in by_request[("spoof-ref", "SPY")].checks}
    assert spoof["notional"].value == to_fixed("2249550")  # 4,999 × $450, not × $0.01
    halted = by_request[("halted", "SPY")]
    assert "HALTED" in halted.reason and "adversarial test" in halted.reason
    lev = {c.name: c for c in by_request[("lev-3", "IWM")].checks}["gross_leverage"]
    # (SPY $90,000 + QQQ $95,000 on other keys, in Redis) + IWM $20,000, over $100,000
    assert lev.value == to_fixed("2.05") and lev.limit == to_fixed("2")
    bp = {c.name: c for c in by_request[("bp-2", "QQQ")].checks}["buying_power"]
    assert bp.value == to_fixed("45600") and bp.limit == to_fixed("41500")


def _request(item: Case) -> OrderRequest:
    return OrderRequest(
        client_order_id=item.coid,
        strategy_id="adversary",
        account=item.account,
        symbol=item.symbol,
        side=item.side,
        order_type=OrderType.LIMIT if item.limit else OrderType.MARKET,
        quantity=item.quantity,
        reference_price=to_fixed(item.reference) if item.reference else None,
        limit_price=to_fixed(item.limit) if item.limit else None,
        ts_event=item.ts,
        ts_init=item.ts,
    )


def _wait_consumed(settings, topic: str, group: str, timeout: float = 90) -> None:
    probe = LagProbe(settings)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if probe.lag(group, [topic]) == 0:
                return
            time.sleep(0.2)
    finally:
        probe.close()
    raise AssertionError(f"{group} did not consume {topic}")
