"""Execution keeps one position per (account, symbol): two accounts on one symbol stay apart."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from kafka_read import read_topic

from core.config import load_settings
from core.kafka import end_offsets, ensure_topics
from core.topics import TopicNames
from omniquant.stages import topic_catalog
from producers.kafka_producer import RecordProducer
from schemas.fixedpoint import to_fixed
from schemas.models import OrderRequest, Position, Side, Trade
from schemas.serde import AvroSerde

pytestmark = pytest.mark.integration

T0 = 1_700_000_000_000_000_000  # ns
SEC = 1_000_000_000


def _trade(price: str, ts: int) -> Trade:
    return Trade(
        symbol="SPY",
        venue="SIM",
        price=to_fixed(price),
        size=to_fixed(100),
        source="test",
        ts_event=ts,
        ts_init=ts,
    )


def _order(coid: str, account: str, side: Side, qty: int, ts: int) -> OrderRequest:
    return OrderRequest(
        client_order_id=coid,
        strategy_id="test",
        account=account,
        symbol="SPY",
        side=side,
        quantity=to_fixed(qty),
        ts_event=ts,
        ts_init=ts,
    )


def test_two_accounts_trading_one_symbol_keep_separate_positions(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    prefix = f"acct{uuid.uuid4().hex[:8]}."
    settings = load_settings(
        kafka={"bootstrap_servers": kafka_bootstrap},
        redis={"url": redis_url},
        topic_prefix=prefix,
        state_dir=tmp_path,
    )
    ensure_topics(settings, topic_catalog())
    names = TopicNames(prefix)
    producer = RecordProducer(settings, "test")
    # Trades first (the as-of join prices each order at the last trade at or before it).
    producer.send(names.trades, _trade("100", T0), key="SPY")
    producer.send(names.trades, _trade("110", T0 + 10 * SEC), key="SPY")
    producer.flush()
    orders = [
        _order("a-1", "alice", Side.BUY, 100, T0 + 1 * SEC),  # alice +100 @ 100
        _order("b-1", "bob", Side.SELL, 50, T0 + 2 * SEC),  # bob -50 @ 100
        _order("a-2", "alice", Side.BUY, 100, T0 + 11 * SEC),  # alice +100 @ 110
        _order("b-2", "bob", Side.BUY, 20, T0 + 12 * SEC),  # bob buys back 20 @ 110
    ]
    for order in orders:
        producer.send(names.approved_orders, order, key=order.symbol)
    producer.flush()

    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIQUANT_")}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        REDIS_URL=redis_url,
        OMNIQUANT_TOPIC_PREFIX=prefix,
        OMNIQUANT_STATE_DIR=str(tmp_path),
    )
    app = subprocess.Popen(
        [sys.executable, "-m", "omniquant.cli", "stage", "execution"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        messages = read_topic(kafka_bootstrap, names.positions, expected=4, timeout_s=90)
        assert app.poll() is None, "execution must keep running"
    finally:
        app.terminate()
        out, _ = app.communicate(timeout=30)
    serde = AvroSerde()
    positions = [serde.decode_as(m.value(), Position, topic=names.positions) for m in messages]
    keys = [m.key().decode() for m in messages]
    assert len(positions) == 4, out.decode(errors="replace")[-3000:]
    latest = {k: p for k, p in zip(keys, positions, strict=True)}
    assert set(latest) == {"alice|SPY", "bob|SPY"}

    alice, bob = latest["alice|SPY"], latest["bob|SPY"]
    # alice: 100 @ 100 + 100 @ 110 → 200 @ 105, nothing realized, marked at 110
    assert (alice.account, alice.quantity, alice.avg_price) == (
        "alice",
        to_fixed(200),
        to_fixed(105),
    )
    assert alice.realized_pnl == 0
    assert alice.unrealized_pnl == to_fixed(200 * (110 - 105))
    # bob: short 50 @ 100, buys 20 back @ 110 → -30 @ 100, realized (100 - 110) * 20
    assert (bob.account, bob.quantity, bob.avg_price) == ("bob", to_fixed(-30), to_fixed(100))
    assert bob.realized_pnl == to_fixed(-200)
    assert bob.unrealized_pnl == to_fixed(-30 * (110 - 100))
    # nothing went to the dead-letter topic (the old symbol-keyed ledger refused bob's order)
    assert sum(end_offsets(settings, names.dead_letter("execution")).values()) == 0
