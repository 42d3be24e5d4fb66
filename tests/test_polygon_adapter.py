"""Polygon/Massive adapter, against the vendor's own messages and real loopback sockets.

* Parsing: field by field against the frames of the SDK's mock WebSocket server and the
  example messages of the vendor's WebSocket spec; REST mocks of the SDK's tests.
* Feed: ``PolygonFeed`` (the SDK's ``WebSocketClient`` underneath) against a real
  ``websockets`` server on 127.0.0.1 speaking the Polygon protocol and replaying those frames.
* Backfill: ``backfill_aggs`` (the SDK's ``RESTClient``) against a real ``http.server`` on
  127.0.0.1 serving the SDK's REST mock files.

No mocks of the SDK; shared files that are missing skip the test naming the path.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import shared_file
from pydantic import SecretStr
from websockets.asyncio.server import ServerConnection, serve

from core.config import load_settings
from core.errors import MissingCredentialError
from producers._fields import loads_exact
from producers.base import FeedDisconnected, FeedError, Malformed
from producers.polygon import PolygonConfig, PolygonFeed, backfill_aggs
from producers.polygon.parsing import (
    EXCHANGE_MIC,
    Status,
    bar_from_rest_agg,
    interval_ms,
    parse_ws_frame,
    trade_from_rest,
    venue_for_exchange,
)
from schemas.fixedpoint import from_fixed
from schemas.models import AggressorSide, Bar, Quote, Trade

POLY = "polygon-client-python"
WS_MOCK = f"{POLY}/test_websocket/mock_server.payloads.json"
WS_SPEC = f"{POLY}/.massive/websocket.json"
REST_MOCKS = f"{POLY}/test_rest/mocks"
AGGS_PATH = "/v2/aggs/ticker/AAPL/range/1/day/2005-04-01/2005-04-04"
AGGS = f"{REST_MOCKS}{AGGS_PATH}.json"
TRADES = f"{REST_MOCKS}/v3/trades/AAPL&limit=2.json"
EXCHANGES = f"{REST_MOCKS}/v3/reference/exchanges.json"

KEY = "test-key-not-a-secret"
RECEIVED_NS = 1_700_000_000_123_456_789
MS = 1_000_000  # ns per ms


def fx(text: str) -> int:
    """Expected fixed-point units, computed from the decimal text (never a float)."""
    return int(Decimal(text).scaleb(9))


# ---- vendor data ---------------------------------------------------------------------------
@dataclass(frozen=True)
class MockServerFrames:
    """The SDK mock server's frames, by source line, as the JSON text a server sends."""

    connected: str  # line 11
    auth_success: str  # line 19
    aapl_trade: str  # line 36
    amzn_trades: str  # line 54
    subscribed_template: str  # line 25 (f-string source)

    def subscribed_frame(self, verb: str, params: str) -> str:
        """Line 25's frame (line 86 for ``unsubscribed``) with the mock's ``p`` filled in."""
        assert "f'subscribed to: {p}'" in self.subscribed_template
        return json.dumps(
            [{"ev": "status", "status": "success", "message": f"{verb} to: {params}"}]
        )


@pytest.fixture(scope="module")
def mock_frames(shared_data: Path) -> MockServerFrames:
    payloads = json.loads(shared_file(shared_data, WS_MOCK).read_text())["payloads"]
    by_line = {p["line"]: p for p in payloads}
    return MockServerFrames(
        connected=json.dumps(by_line[11]["frame"]),
        auth_success=json.dumps(by_line[19]["frame"]),
        aapl_trade=json.dumps(by_line[36]["frame"]),
        amzn_trades=json.dumps(by_line[54]["frame"]),
        subscribed_template=by_line[25]["frame_template"],
    )


@pytest.fixture(scope="module")
def spec_examples(shared_data: Path) -> dict[str, str]:
    """Example message of each stocks channel in the vendor's WebSocket spec, as a frame."""
    spec = json.loads(shared_file(shared_data, WS_SPEC).read_text())
    out = {}
    for channel in ("T", "Q", "A", "AM", "LULD"):
        get = spec["paths"][f"/stocks/{channel}"]["get"]
        example = get["responses"]["200"]["content"]["application/json"]["example"]
        out[channel] = json.dumps([example])
    return out


def only(items: list[Any]) -> Any:
    assert len(items) == 1, items
    return items[0]


# ---- tier 1: parsing ------------------------------------------------------------------------
def test_mock_server_aapl_trade_converts_field_by_field(mock_frames: MockServerFrames) -> None:
    trade = only(parse_ws_frame(mock_frames.aapl_trade, received_ns=RECEIVED_NS))
    assert isinstance(trade, Trade)
    assert trade.symbol == "AAPL"
    assert trade.venue == "XNYS"  # x=10, New York Stock Exchange
    assert trade.price == 161_870_000_000  # 161.87 exactly
    assert from_fixed(trade.price) == Decimal("161.87")
    assert trade.size == fx("300")
    assert trade.trade_id == "5096"
    assert trade.conditions == ["14", "41"]
    assert trade.flags == []
    assert trade.aggressor_side is AggressorSide.NONE
    assert trade.source == "polygon"
    assert trade.ts_event == 1_651_684_192_462 * MS  # t is ms
    assert trade.ts_init == RECEIVED_NS


def test_mock_server_amzn_frame_gives_two_trades_in_order(mock_frames: MockServerFrames) -> None:
    first, second = parse_ws_frame(mock_frames.amzn_trades, received_ns=RECEIVED_NS)
    assert isinstance(first, Trade) and isinstance(second, Trade)
    assert (first.symbol, first.venue, first.trade_id) == ("AMZN", "XNAS", "72815")  # x=12
    assert first.price == fx("161.87") and first.size == fx("1")
    assert first.conditions == ["14", "37", "41"]
    assert first.ts_event == 1_651_684_192_536 * MS
    assert (second.symbol, second.venue, second.trade_id) == ("AMZN", "FINR", "799")  # x=4
    assert second.price == fx("161.87") and second.size == fx("100")
    assert second.conditions == []  # no "c" in this message
    assert second.ts_event == 1_651_684_192_717 * MS


def test_status_frames_are_control_not_records(mock_frames: MockServerFrames) -> None:
    assert parse_ws_frame(mock_frames.connected, received_ns=1) == [
        Status("connected", "Connected Successfully")
    ]
    assert parse_ws_frame(mock_frames.auth_success, received_ns=1) == [
        Status("auth_success", "authenticated")
    ]
    subscribed = json.dumps(
        [{"ev": "status", "status": "success", "message": "subscribed to: T.X"}]
    )
    assert parse_ws_frame(subscribed, received_ns=1) == [Status("success", "subscribed to: T.X")]


def test_spec_trade_example_converts(spec_examples: dict[str, str]) -> None:
    trade = only(parse_ws_frame(spec_examples["T"], received_ns=RECEIVED_NS))
    assert isinstance(trade, Trade)
    assert (trade.symbol, trade.venue, trade.trade_id) == ("MSFT", "FINR", "12345")
    assert trade.price == 114_125_000_000
    assert trade.size == fx("100")
    assert trade.conditions == ["0", "12"]
    assert trade.ts_event == 1_536_036_818_784 * MS


def test_spec_quote_example_converts(spec_examples: dict[str, str]) -> None:
    quote = only(parse_ws_frame(spec_examples["Q"], received_ns=RECEIVED_NS))
    assert isinstance(quote, Quote)
    assert quote.symbol == "MSFT"
    assert quote.venue == "SIP"  # consolidated NBBO
    assert quote.bid_price == fx("114.125") and quote.bid_size == fx("100")
    assert quote.ask_price == fx("114.128") and quote.ask_size == fx("160")  # sizes in shares
    assert quote.conditions == ["0"]
    assert quote.flags == ["indicator:604", "bid_venue:FINR", "ask_venue:EDGA"]  # bx=4, ax=7
    assert quote.source == "polygon"
    assert quote.ts_event == 1_536_036_818_784 * MS
    assert quote.ts_init == RECEIVED_NS


def test_spec_second_aggregate_is_a_one_second_bar(spec_examples: dict[str, str]) -> None:
    bar = only(parse_ws_frame(spec_examples["A"], received_ns=RECEIVED_NS))
    assert isinstance(bar, Bar)
    assert (bar.symbol, bar.venue, bar.interval_ms) == ("SPCE", "SIP", 1_000)
    assert (bar.open, bar.high, bar.low, bar.close) == (fx("25.39"),) * 4
    assert bar.volume == fx("200")
    assert bar.vwap == fx("25.3981")
    assert bar.trade_count == 0  # WebSocket aggregates carry no trade count
    assert bar.ts_event == 1_610_144_868_000 * MS  # window start s
    assert bar.ts_init == RECEIVED_NS


def test_spec_minute_aggregate_is_a_one_minute_bar(spec_examples: dict[str, str]) -> None:
    bar = only(parse_ws_frame(spec_examples["AM"], received_ns=RECEIVED_NS))
    assert isinstance(bar, Bar)
    assert (bar.symbol, bar.interval_ms) == ("GTE", 60_000)
    assert bar.open == fx("0.4488") and bar.high == fx("0.4489")
    assert bar.low == fx("0.4486") and bar.close == fx("0.4486")
    assert bar.volume == fx("4110") and bar.vwap == fx("0.4488")
    assert bar.ts_event == 1_610_144_640_000 * MS


@pytest.mark.parametrize(
    ("price_text", "expected"),
    [
        ("1.15", 1_150_000_000),  # float(1.15) * 1e9 == 1149999999.9999998
        ("0.1", 100_000_000),
        ("4321.123456789", 4_321_123_456_789),
        ("12", 12_000_000_000),
    ],
)
def test_prices_are_exact_decimals_never_floats(price_text: str, expected: int) -> None:
    frame = '[{"ev":"T","sym":"X","i":"1","x":12,"p":' + price_text + ',"s":1,"t":1651684192462}]'
    trade = only(parse_ws_frame(frame, received_ns=1))
    assert isinstance(trade, Trade)
    assert trade.price == expected


def test_fractional_share_size_string_is_preferred() -> None:
    frame = '[{"ev":"T","sym":"X","i":"1","x":12,"p":10.5,"s":0,"ds":"0.125","t":1}]'
    trade = only(parse_ws_frame(frame, received_ns=1))
    assert isinstance(trade, Trade) and trade.size == 125_000_000


def test_empty_quote_side_is_null() -> None:
    frame = '[{"ev":"Q","sym":"X","bx":0,"bp":0,"bs":0,"ax":12,"ap":5.01,"as":300,"t":1}]'
    quote = only(parse_ws_frame(frame, received_ns=1))
    assert isinstance(quote, Quote)
    assert quote.bid_price is None and quote.bid_size is None
    assert quote.ask_price == fx("5.01") and quote.ask_size == fx("300")


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"not json", "bad_json"),
        (b'[{"ev":"T","sym":"X","x":1,"p":NaN,"s":1,"t":1}]', "bad_json"),
        (b"\xff\xfe[]", "bad_json"),
        (b'"a string"', "bad_frame"),
        (b"[42]", "bad_message"),
        (b'[{"ev":"XT","pair":"BTC-USD"}]', "unknown_message"),
        (b'[{"sym":"X"}]', "unknown_message"),
        (b'[{"ev":"T","x":12,"p":1.5,"s":1,"t":1}]', "missing_field"),
        (b'[{"ev":"T","sym":"X","x":12,"p":"abc","s":1,"t":1}]', "bad_decimal"),
        (b'[{"ev":"T","sym":"X","x":12,"p":true,"s":1,"t":1}]', "bad_decimal"),
        (b'[{"ev":"T","sym":"X","x":12,"p":1e999999,"s":1,"t":1}]', "bad_value"),
        (b'[{"ev":"T","sym":"X","x":12,"p":1.5,"s":1,"t":1.5}]', "bad_field"),
        (b'[{"ev":"T","sym":"X","x":"N","p":1.5,"s":1,"t":1}]', "bad_field"),
        (b'[{"ev":"T","sym":"X","x":12,"p":1.5,"s":1,"c":["@"],"t":1}]', "bad_field"),
        (b'[{"ev":"T","sym":"X","x":12,"p":0.0000000001,"s":1,"t":1}]', "bad_value"),
        (b'[{"ev":"T","sym":"X","x":12,"p":1e30,"s":1,"t":1}]', "bad_value"),
        (b'[{"ev":"AM","sym":"X","o":1,"h":1,"l":1,"c":1,"v":1,"s":60000,"e":60000}]', "bad_value"),
        (b'[{"ev":"status","message":"no status"}]', "bad_field"),
    ],
)
def test_unparseable_frames_become_malformed_with_raw_bytes(frame: bytes, reason: str) -> None:
    result = only(parse_ws_frame(frame, received_ns=RECEIVED_NS))
    assert isinstance(result, Malformed)
    assert (result.reason, result.raw, result.source) == (reason, frame, "polygon")
    assert result.received_ns == RECEIVED_NS
    assert result.error


def test_spec_luld_example_is_an_unknown_message(spec_examples: dict[str, str]) -> None:
    result = only(parse_ws_frame(spec_examples["LULD"], received_ns=1))
    assert isinstance(result, Malformed) and result.reason == "unknown_message"


def test_bad_message_does_not_spoil_the_rest_of_its_frame(mock_frames: MockServerFrames) -> None:
    good = json.loads(mock_frames.aapl_trade)[0]
    frame = json.dumps([good, {"ev": "T", "sym": "AAPL"}, good]).encode()
    first, bad, last = parse_ws_frame(frame, received_ns=1)
    assert isinstance(first, Trade) and isinstance(last, Trade)
    assert isinstance(bad, Malformed) and bad.reason == "missing_field"
    assert bad.raw == frame and "message 2 of 3" in bad.error


def test_exchange_map_matches_the_vendor_reference_data(shared_data: Path) -> None:
    rows = json.loads(shared_file(shared_data, EXCHANGES).read_text())["results"]
    mics: dict[int, set[str]] = {}
    for row in rows:
        mics.setdefault(row["id"], set()).update(
            row[k] for k in ("mic", "operating_mic") if k in row
        )
    for exchange_id, mic in EXCHANGE_MIC.items():
        assert mic in mics[exchange_id], (exchange_id, mic, mics[exchange_id])
    assert set(mics) - set(EXCHANGE_MIC) == {5, 13}  # the two SIPs: no venue MIC
    assert venue_for_exchange(13) == "POLYGON:13"
    assert venue_for_exchange(99) == "POLYGON:99"


def test_rest_aggregates_mock_converts_to_bars(shared_data: Path) -> None:
    results = loads_exact(shared_file(shared_data, AGGS).read_bytes())["results"]
    bars = [
        bar_from_rest_agg(r, symbol="AAPL", interval_ms=interval_ms(1, "day"), received_ns=5)
        for r in results
    ]
    assert_aapl_day_bars(bars, ts_init=5)


def test_rest_trades_v3_mock_converts_with_nanosecond_sip_time(shared_data: Path) -> None:
    results = loads_exact(shared_file(shared_data, TRADES).read_bytes())["results"]
    first, second = (trade_from_rest(r, symbol="AAPL", received_ns=9) for r in results)
    assert first.venue == "ARCX" and second.venue == "XNAS"  # exchange 11, 12
    assert first.price == fx("156.43") and second.price == fx("157.43")
    assert first.size == fx("10")
    assert first.trade_id == "183276"
    assert first.conditions == ["12", "37"]
    assert first.flags == ["correction:1"]
    assert first.ts_event == 1_651_181_822_461_979_400  # sip_timestamp, already ns
    assert first.ts_init == 9 and first.source == "polygon"


def test_interval_of_calendar_timespans_is_refused() -> None:
    assert interval_ms(5, "minute") == 300_000
    assert interval_ms(1, "day") == 86_400_000
    with pytest.raises(ValueError, match="month"):
        interval_ms(1, "month")


def assert_aapl_day_bars(bars: list[Bar], *, ts_init: int) -> None:
    """The two bars of the SDK's mock ``/v2/aggs/ticker/AAPL/range/1/day/2005-04-01/...``."""
    first, second = bars
    assert first.symbol == "AAPL" and first.venue == "SIP" and first.source == "polygon"
    assert first.interval_ms == 86_400_000
    assert first.open == fx("1.5032") and first.high == fx("1.5064")
    assert first.low == fx("1.4489") and first.close == fx("1.4604")
    assert first.volume == fx("642646396.0")
    assert first.vwap == fx("1.469")
    assert first.trade_count == 82_132
    assert first.ts_event == 1_112_331_600_000 * MS  # 2005-04-01 00:00 America/New_York
    assert first.ts_init == ts_init
    assert second.open == fx("1.4639") and second.high == fx("1.4754")
    assert second.low == fx("1.4343") and second.close == fx("1.4675")
    assert second.volume == fx("578172308.0") and second.vwap == fx("1.4589")
    assert second.trade_count == 65_543
    assert second.ts_event == 1_112_587_200_000 * MS


# ---- config ---------------------------------------------------------------------------------
@pytest.fixture
def no_polygon_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name in {"MASSIVE_API_KEY", "POLYGON_API_KEY"} or name.startswith("OMNIQUANT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env


@pytest.mark.usefixtures("no_polygon_env")
def test_missing_api_key_fails_at_start_naming_massive_api_key() -> None:
    with pytest.raises(MissingCredentialError, match="MASSIVE_API_KEY"):
        PolygonConfig.from_settings(load_settings())


@pytest.mark.usefixtures("no_polygon_env")
def test_api_key_from_environment_is_kept_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASSIVE_API_KEY", "sekrit-123")
    config = PolygonConfig.from_settings(load_settings())
    assert config.api_key.get_secret_value() == "sekrit-123"
    assert "sekrit-123" not in repr(config)
    assert config.ws_endpoint == "wss://socket.massive.com/stocks"


def test_ws_url_override_is_a_bare_origin() -> None:
    config = PolygonConfig(api_key=SecretStr(KEY), ws_url="ws://127.0.0.1:8765")
    assert (config.ws_host, config.ws_secure) == ("127.0.0.1:8765", False)
    with pytest.raises(ValueError, match="no path"):
        PolygonConfig(api_key=SecretStr(KEY), ws_url="ws://127.0.0.1:8765/stocks")


# ---- tier 2: the feed against a real loopback WebSocket server --------------------------------
@dataclass
class PolygonWsServer:
    """A Polygon-protocol server on 127.0.0.1, replaying ``frames`` after each subscribe."""

    mock: MockServerFrames
    frames: list[str | bytes]
    end: str = "stay"  # after the frames: "stay" open, "close" (1000), "error" (1011), "abort"
    received: list[Any] = field(default_factory=list)  # every client message, decoded
    got_message: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0

    async def handler(self, ws: ServerConnection) -> None:
        await ws.send(self.mock.connected)
        auth = json.loads(await ws.recv())
        self.received.append(auth)
        if auth != {"action": "auth", "params": KEY}:
            failed = [{"ev": "status", "status": "auth_failed", "message": "authentication failed"}]
            await ws.send(json.dumps(failed))
            await ws.close()
            return
        await ws.send(self.mock.auth_success)
        async for text in ws:
            msg = json.loads(text)
            self.received.append(msg)
            self.got_message.set()
            verb = "subscribed" if msg["action"] == "subscribe" else "unsubscribed"
            await ws.send(self.mock.subscribed_frame(verb, msg["params"]))
            if msg["action"] != "subscribe":
                continue
            for frame in self.frames:
                await ws.send(frame)
            if self.end == "stay":
                continue
            if self.end == "close":
                await ws.close(1000)
            elif self.end == "error":
                await ws.close(1011, "internal error")
            else:
                ws.transport.abort()
            return

    def actions(self, action: str) -> list[set[str]]:
        return [set(m["params"].split(",")) for m in self.received if m["action"] == action]


@asynccontextmanager
async def polygon_ws_server(
    mock: MockServerFrames, frames: list[str | bytes], end: str = "stay"
) -> AsyncIterator[PolygonWsServer]:
    server = PolygonWsServer(mock, frames, end)
    async with serve(server.handler, "127.0.0.1", 0) as ws_server:
        server.port = next(iter(ws_server.sockets)).getsockname()[1]
        yield server


def feed_for(port: int, *, key: str = KEY, connect_timeout_s: float = 3) -> PolygonFeed:
    config = PolygonConfig(
        api_key=SecretStr(key),
        ws_url=f"ws://127.0.0.1:{port}",
        connect_timeout_s=connect_timeout_s,
        close_timeout_s=1,
    )
    return PolygonFeed(config, clock=lambda: RECEIVED_NS)


async def take(stream: AsyncIterator[Any], count: int) -> list[Any]:
    """Up to ``count`` events from ``stream``, fewer if it ends; fails after 5 s."""
    events: list[Any] = []
    async with asyncio.timeout(5):
        while len(events) < count:
            try:
                events.append(await anext(stream))
            except StopAsyncIteration:
                break
    return events


def test_feed_replays_sdk_mock_server_frames_as_records(
    mock_frames: MockServerFrames, spec_examples: dict[str, str]
) -> None:
    frames: list[str | bytes] = [
        mock_frames.aapl_trade,
        mock_frames.amzn_trades,
        spec_examples["Q"],
        spec_examples["A"],
        spec_examples["AM"],
        b"\x00garbage",
    ]

    async def scenario() -> None:
        async with polygon_ws_server(mock_frames, frames) as server:
            feed = feed_for(server.port)
            await feed.connect()
            assert server.received == [{"action": "auth", "params": KEY}]
            await feed.subscribe(["AAPL", "AMZN"])
            stream = feed.events()
            events = await take(stream, 7)
            assert feed.subscribed == {"AAPL", "AMZN"}
            await feed.unsubscribe(["AMZN"])
            async with asyncio.timeout(3):
                while True:
                    server.got_message.clear()
                    if server.actions("unsubscribe"):
                        break
                    await server.got_message.wait()
            rest = asyncio.create_task(take(stream, 1))
            await feed.close()
            assert await rest == []  # close() ends a running events()

        channels = {f"{c}.{s}" for s in ("AAPL", "AMZN") for c in ("T", "Q", "A", "AM")}
        assert server.actions("subscribe") == [channels]
        assert server.actions("unsubscribe") == [{"T.AMZN", "Q.AMZN", "A.AMZN", "AM.AMZN"}]
        assert feed.subscribed == {"AAPL"}

        aapl, amzn1, amzn2, quote, sec_bar, min_bar, bad = events
        assert isinstance(aapl, Trade)
        assert (aapl.symbol, aapl.venue, aapl.trade_id) == ("AAPL", "XNYS", "5096")
        assert aapl.price == 161_870_000_000 and aapl.size == fx("300")
        assert aapl.conditions == ["14", "41"]
        assert aapl.ts_event == 1_651_684_192_462 * MS and aapl.ts_init == RECEIVED_NS
        assert isinstance(amzn1, Trade) and isinstance(amzn2, Trade)
        assert (amzn1.venue, amzn1.size, amzn1.trade_id) == ("XNAS", fx("1"), "72815")
        assert (amzn2.venue, amzn2.size, amzn2.trade_id) == ("FINR", fx("100"), "799")
        assert amzn2.ts_event == 1_651_684_192_717 * MS
        assert isinstance(quote, Quote)
        assert (quote.symbol, quote.bid_price, quote.ask_price) == (
            "MSFT",
            fx("114.125"),
            fx("114.128"),
        )
        assert isinstance(sec_bar, Bar) and sec_bar.interval_ms == 1_000
        assert sec_bar.vwap == fx("25.3981") and sec_bar.ts_event == 1_610_144_868_000 * MS
        assert isinstance(min_bar, Bar) and min_bar.interval_ms == 60_000
        assert min_bar.close == fx("0.4486")
        assert isinstance(bad, Malformed)
        assert (bad.reason, bad.raw, bad.received_ns) == ("bad_json", b"\x00garbage", RECEIVED_NS)

    asyncio.run(scenario())


@pytest.mark.parametrize("end", ["close", "error", "abort"])
def test_dropped_connection_ends_events_with_feed_disconnected(
    mock_frames: MockServerFrames, end: str
) -> None:
    async def scenario() -> None:
        async with polygon_ws_server(mock_frames, [mock_frames.aapl_trade], end) as server:
            feed = feed_for(server.port)
            await feed.subscribe(["AAPL"])  # before connect: goes out right after auth
            await feed.connect()
            events = []
            with pytest.raises(FeedDisconnected):
                async with asyncio.timeout(5):
                    async for event in feed.events():
                        events.append(event)
            await feed.close()
        (trade,) = events
        assert isinstance(trade, Trade) and trade.price == 161_870_000_000
        assert feed.subscribed == {"AAPL"}  # kept for the runner's re-subscribe

    asyncio.run(scenario())


def test_reconnect_after_drop_subscribes_again(mock_frames: MockServerFrames) -> None:
    async def scenario() -> None:
        async with polygon_ws_server(mock_frames, [mock_frames.aapl_trade], "error") as server:
            feed = feed_for(server.port)
            await feed.subscribe(["AAPL"])
            for _ in range(2):
                await feed.connect()
                with pytest.raises(FeedDisconnected):
                    async with asyncio.timeout(5):
                        async for _event in feed.events():
                            pass
                await feed.close()
        assert server.actions("subscribe") == [{"T.AAPL", "Q.AAPL", "A.AAPL", "AM.AAPL"}] * 2

    asyncio.run(scenario())


def test_bad_api_key_is_a_feed_error(mock_frames: MockServerFrames) -> None:
    async def scenario() -> None:
        async with polygon_ws_server(mock_frames, []) as server:
            feed = feed_for(server.port, key="wrong-key")
            with pytest.raises(FeedError, match="authentication failed"):
                await feed.connect()
            assert server.received == [{"action": "auth", "params": "wrong-key"}]
            await feed.close()

    asyncio.run(scenario())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_nothing_listening_is_a_disconnect_not_a_crash() -> None:
    async def scenario() -> None:
        # The SDK keeps retrying to open the socket; connect() gives up after its timeout.
        feed = feed_for(free_port(), connect_timeout_s=0.3)
        with pytest.raises(FeedDisconnected, match=r"within 0\.3 s"):
            await feed.connect()
        await feed.close()

    asyncio.run(scenario())


def test_symbols_that_would_break_the_channel_list_are_refused() -> None:
    async def scenario() -> None:
        feed = feed_for(1)
        with pytest.raises(FeedError):
            await feed.subscribe(["AAPL,MSFT"])
        with pytest.raises(FeedError):
            await feed.subscribe("AAPL")
        assert feed.subscribed == frozenset()

    asyncio.run(scenario())


# ---- tier 3: backfill against a real loopback HTTP server -----------------------------------
@dataclass
class RestMockServer:
    """Serves ``<mocks>/<path>.json`` like the SDK's own REST tests; records every request."""

    mocks: Path
    paginate: bool = False  # split results over two pages joined by next_url
    requests: list[tuple[str, dict[str, list[str]], str | None]] = field(default_factory=list)
    base_url: str = ""

    def answer(self, path: str, query: dict[str, list[str]]) -> tuple[int, bytes]:
        file = self.mocks / (path.lstrip("/") + ".json")
        if not file.is_file():
            return 404, b'{"status":"NOT_FOUND"}'
        if not self.paginate:
            return 200, file.read_bytes()
        body = json.loads(file.read_text())
        if "cursor" in query:
            body["results"] = body["results"][1:]
        else:
            body["results"] = body["results"][:1]
            body["next_url"] = f"https://api.massive.com{path}?cursor=page2"
        return 200, json.dumps(body).encode()


@pytest.fixture
def rest_server(shared_data: Path) -> Iterator[RestMockServer]:
    shared_file(shared_data, AGGS)
    state = RestMockServer(mocks=shared_data / REST_MOCKS)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = parse_qs(parts.query)
            state.requests.append((parts.path, query, self.headers.get("Authorization")))
            if self.headers.get("Authorization") != f"Bearer {KEY}":
                status, body = 401, b'{"status":"ERROR","error":"Unknown API Key"}'
            else:
                status, body = state.answer(parts.path, query)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def rest_config(base_url: str, key: str = KEY) -> PolygonConfig:
    return PolygonConfig(
        api_key=SecretStr(key), rest_base_url=base_url, rest_retries=0, rest_timeout_s=3
    )


def test_backfill_turns_sdk_rest_mock_into_exact_bars(rest_server: RestMockServer) -> None:
    bars = backfill_aggs(
        rest_config(rest_server.base_url),
        "AAPL",
        "2005-04-01",
        "2005-04-04",
        timespan="day",
        clock=lambda: 77,
    )
    assert_aapl_day_bars(bars, ts_init=77)
    ((path, query, auth),) = rest_server.requests
    assert path == AGGS_PATH
    assert query == {"adjusted": ["true"], "sort": ["asc"], "limit": ["50000"]}
    assert auth == f"Bearer {KEY}"


def test_backfill_follows_next_url_pages(rest_server: RestMockServer) -> None:
    rest_server.paginate = True
    bars = backfill_aggs(
        rest_config(rest_server.base_url),
        "AAPL",
        "2005-04-01",
        "2005-04-04",
        timespan="day",
        clock=lambda: 77,
    )
    assert_aapl_day_bars(bars, ts_init=77)
    assert [(p, q.get("cursor")) for p, q, _ in rest_server.requests] == [
        (AGGS_PATH, None),
        (AGGS_PATH, ["page2"]),
    ]


def test_backfill_with_a_bad_key_is_a_feed_error(rest_server: RestMockServer) -> None:
    with pytest.raises(FeedError, match="Unknown API Key"):
        backfill_aggs(
            rest_config(rest_server.base_url, key="nope"),
            "AAPL",
            "2005-04-01",
            "2005-04-04",
            timespan="day",
        )


def test_backfill_from_an_unreachable_server_is_a_disconnect() -> None:
    with pytest.raises(FeedDisconnected):
        backfill_aggs(
            rest_config(f"http://127.0.0.1:{free_port()}"),
            "AAPL",
            "2005-04-01",
            "2005-04-04",
            timespan="day",
        )
