"""The portfolio stage keeps one position per (account, symbol) and one book per account:
two accounts trading one symbol stay apart, from approved orders through execution's fills."""

from __future__ import annotations

from pathlib import Path

import pytest
from kafka_read import read_until
from stage_proc import spawn_stage, stage_namespace

from core.kafka import end_offsets
from core.topics import TopicNames
from producers.kafka_producer import RecordProducer
from schemas.fixedpoint import to_fixed
from schemas.models import OrderRequest, PortfolioSnapshot, Position, Side, Trade
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


_SERDE = AvroSerde()


def _final(messages: list, field: str, done: dict[str, int]) -> bool:
    """The latest record per key has ``field`` as in ``done``: every fill has been booked."""
    latest = {m.key().decode(): getattr(_SERDE.decode(m.value()), field) for m in messages}
    return all(latest.get(k) == v for k, v in done.items())


START = to_fixed(1_000_000)  # the default starting cash
_POSITIONS_DONE = {"alice|SPY": to_fixed(200), "bob|SPY": to_fixed(-30)}
# (equity alone is no sign: 100 @ 100 marked at 110 has alice's final equity too)
_GROSS_DONE = {"alice": to_fixed(22_000), "bob": to_fixed(3_300)}


def test_two_accounts_trading_one_symbol_keep_separate_positions(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    settings, env = stage_namespace(kafka_bootstrap, redis_url, tmp_path, "acct")
    names = TopicNames(settings.topic_prefix)
    producer = RecordProducer(settings, "test")
    # The paper venue prices each order as of its time (the last trade at or before it),
    # once a later tick shows that time has come: the 110 trade for the orders at 1 s and
    # 2 s, one more 110 trade for those at 11 s and 12 s.
    producer.send(names.trades, _trade("100", T0), key="SPY")
    producer.send(names.trades, _trade("110", T0 + 10 * SEC), key="SPY")
    producer.send(names.trades, _trade("110", T0 + 20 * SEC), key="SPY")
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

    apps = [spawn_stage(stage, env, output=True) for stage in ("execution", "portfolio")]
    try:
        messages = read_until(
            kafka_bootstrap,
            names.positions,
            lambda ms: _final(ms, "quantity", _POSITIONS_DONE),
            120,
        )
        books = read_until(
            kafka_bootstrap,
            names.name("portfolio"),
            lambda ms: _final(ms, "gross_exposure", _GROSS_DONE),
            60,
        )
        assert all(app.poll() is None for app in apps), "stages must keep running"
    finally:
        outs = []
        for app in apps:
            app.terminate()
            outs.append(app.communicate(timeout=30)[0].decode(errors="replace"))
    serde = AvroSerde()
    positions = [serde.decode_as(m.value(), Position, topic=names.positions) for m in messages]
    keys = [m.key().decode() for m in messages]
    # one record per fill, plus marks when the 110 trade is seen after a fill
    assert len(positions) >= 4, outs[1][-3000:]
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
    # nothing went to a dead-letter topic (a symbol-keyed ledger refused bob's order)
    for stage in ("execution", "portfolio"):
        assert sum(end_offsets(settings, names.dead_letter(stage)).values()) == 0

    snapshots = [
        serde.decode_as(m.value(), PortfolioSnapshot, topic=names.name("portfolio")) for m in books
    ]
    book = {s.account: s for s in snapshots}  # the latest per account
    start = START
    alice_book, bob_book = book["alice"], book["bob"]
    # alice paid 100×100 + 100×110, holds 200 worth 22,000 at 110
    assert alice_book.cash == start - to_fixed(100 * 100 + 100 * 110)
    assert alice_book.net_exposure == alice_book.gross_exposure == to_fixed(22_000)
    assert alice_book.equity == start + to_fixed(1_000)
    # bob sold 50×100 short, bought 20×110 back, is short 30 worth -3,300
    assert bob_book.cash == start + to_fixed(50 * 100 - 20 * 110)
    assert bob_book.net_exposure == to_fixed(-3_300) and bob_book.gross_exposure == to_fixed(3_300)
    assert bob_book.equity == start + to_fixed(-200 - 300)
    for snap in (alice_book, bob_book):
        assert snap.equity == snap.cash + snap.net_exposure
        assert snap.open_positions == 1 and snap.largest_symbol == "SPY"
