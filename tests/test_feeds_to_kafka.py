"""A vendor feed end to end: the venue's SDK client against a loopback server replaying the
vendor's own frames → the feed runner → the real broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
from decimal import Decimal
from pathlib import Path

import pytest
from kafka_read import read_topic
from test_alpaca_adapter import TradingServer, docs_fill, loopback
from test_alpaca_adapter import config as alpaca_config
from test_kite_adapter import KiteServer, _feed, _frame, _mock, _packet, _serving, instruments
from test_polygon_adapter import MockServerFrames, feed_for, mock_frames, polygon_ws_server

from core.kafka import ensure_topics
from core.topics import TopicNames
from omniquant.stages import topic_catalog
from producers.alpaca import AlpacaTradeUpdates
from producers.base import FeedDisconnected
from producers.kite import InstrumentMap
from producers.runner import FeedRunner, RunnerConfig
from schemas.fixedpoint import to_fixed
from schemas.models import ExecutionReport, Fill, Quote, Trade
from schemas.serde import AvroSerde

pytestmark = pytest.mark.integration
__all__ = ["instruments", "mock_frames"]  # fixtures re-used from the adapters' tests


def test_polygon_frames_reach_kafka_as_trades_and_garbage_reaches_dead_letters(
    mock_frames: MockServerFrames, settings, kafka_bootstrap: str, shared_data: Path
) -> None:
    ensure_topics(settings, topic_catalog())
    names = TopicNames(settings.topic_prefix)
    frames: list[str | bytes] = [mock_frames.aapl_trade, mock_frames.amzn_trades, b"\x00garbage"]

    async def scenario() -> FeedRunner:
        async with polygon_ws_server(mock_frames, frames) as server:
            runner = FeedRunner(
                feed_for(server.port),
                settings,
                ["AAPL", "AMZN"],
                config=RunnerConfig(staleness_s=60),
            )
            stop = asyncio.Event()
            task = asyncio.create_task(runner.run(stop))
            async with asyncio.timeout(20):
                while runner.stats.produced.get("trade", 0) < 3 or runner.stats.malformed < 1:
                    await asyncio.sleep(0.05)
            stop.set()
            await asyncio.wait_for(task, 10)
            return runner

    runner = asyncio.run(scenario())
    assert runner.stats.produced == {"trade": 3} and runner.stats.malformed == 1

    serde = AvroSerde()
    messages = read_topic(kafka_bootstrap, names.trades, 3)
    trades = sorted((serde.decode_as(m.value(), Trade) for m in messages), key=lambda t: t.trade_id)
    assert [(t.symbol, t.trade_id, t.price) for t in trades] == [
        ("AAPL", "5096", 161_870_000_000),
        ("AMZN", "72815", trades[1].price),
        ("AMZN", "799", trades[2].price),
    ]
    for msg in messages:
        trade = serde.decode_as(msg.value(), Trade)
        assert msg.key().decode() == trade.symbol
        assert msg.timestamp()[1] == trade.ts_event // 1_000_000  # Kafka time = event time
        assert dict(msg.headers())["source"] == b"polygon"

    dead = read_topic(kafka_bootstrap, names.dead_letter("feeds"), 1)
    assert [m.value() for m in dead] == [b"\x00garbage"]
    assert dict(dead[0].headers())["dlq.reason"] == b"bad_json"


async def _run_until_disconnected(runner: FeedRunner) -> None:
    """Run until the loopback server hangs up (max_reconnects=0: no second session)."""
    with contextlib.suppress(FeedDisconnected):
        await asyncio.wait_for(runner.run(asyncio.Event()), 20)


def test_alpaca_trade_updates_reach_kafka_as_reports_and_fills_with_correlation_ids(
    settings, kafka_bootstrap: str, shared_data: Path
) -> None:
    ensure_topics(settings, topic_catalog())
    names = TopicNames(settings.topic_prefix)
    fill_frame = json.dumps(docs_fill(shared_data)).encode()  # Alpaca's docs example, verbatim

    async def scenario() -> FeedRunner:
        server = TradingServer([fill_frame])
        async with loopback(server) as url:
            feed = AlpacaTradeUpdates(alpaca_config(trading_stream_url=url))
            runner = FeedRunner(feed, settings, ["*"], config=RunnerConfig(max_reconnects=0))
            await _run_until_disconnected(runner)
            return runner

    runner = asyncio.run(scenario())
    assert runner.stats.produced == {"executionreport": 1, "fill": 1}
    serde = AvroSerde()
    reports = read_topic(kafka_bootstrap, names.execution_reports, 1)
    fills = read_topic(kafka_bootstrap, names.fills, 1)
    report = serde.decode_as(reports[0].value(), ExecutionReport)
    fill = serde.decode_as(fills[0].value(), Fill)
    data = docs_fill(shared_data)["data"]
    assert fill.client_order_id == report.client_order_id == data["order"]["client_order_id"]
    assert fill.price == to_fixed(Decimal(data["price"]))
    assert fill.quantity == to_fixed(Decimal(data["qty"]))
    assert (report.raw_event, report.exec_type.value) == ("fill", "FILL")
    for msg in (*reports, *fills):
        assert dict(msg.headers())["correlation_id"].decode() == fill.client_order_id
        assert msg.key().decode() == fill.symbol


def test_kite_ticks_reach_kafka_as_trades_and_quotes(
    settings, kafka_bootstrap: str, shared_data: Path, instruments: InstrumentMap
) -> None:
    ensure_topics(settings, topic_catalog())
    names = TopicNames(settings.topic_prefix)
    server = KiteServer([_frame(_packet(shared_data, "full"))], close_after=True)

    async def scenario() -> FeedRunner:
        gen = _serving(server)
        port = await anext(gen)
        runner = FeedRunner(
            _feed(port, instruments), settings, ["NSE:INFY"], config=RunnerConfig(max_reconnects=0)
        )
        await _run_until_disconnected(runner)
        await gen.aclose()
        return runner

    runner = asyncio.run(scenario())
    assert runner.stats.produced == {"trade": 1, "quote": 1}
    serde = AvroSerde()
    expected = json.loads(_mock(shared_data, "ticker_full.json").read_text())
    trade = serde.decode_as(read_topic(kafka_bootstrap, names.trades, 1)[0].value(), Trade)
    quote = serde.decode_as(read_topic(kafka_bootstrap, names.quotes, 1)[0].value(), Quote)
    assert trade.symbol == quote.symbol == "NSE:INFY"
    assert trade.price == to_fixed(Decimal(str(expected["last_price"])))
    assert quote.bid_price == to_fixed(Decimal(str(expected["depth"]["buy"][0]["price"])))
