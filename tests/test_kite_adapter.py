"""Kite adapter: binary ticks, instruments, order updates, postbacks, and the feed end to end.

Vendor payloads are the recorded kiteconnect-mocks files (skipped, naming the path, when
the shared data folder is absent). The oracles are the mocks' expected decodes and the
SDK's own parser ``KiteTicker._parse_binary`` run on a real KiteTicker object (no
network: the constructor only stores settings). The feed and the postback receiver run
against real loopback servers (websockets, http.server); nothing of the SDK is mocked.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import hashlib
import json
import struct
import threading
from collections.abc import AsyncGenerator, Iterator
from datetime import datetime
from decimal import Decimal
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from conftest import shared_file
from kiteconnect import KiteTicker
from prometheus_client import REGISTRY
from pydantic import SecretStr
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from core.config import load_settings
from core.errors import FeedParseError, MissingCredentialError
from producers._fields import loads_exact
from producers.base import FeedDisconnected, FeedError, Malformed
from producers.kite import (
    InstrumentMap,
    KiteConfig,
    KiteFeed,
    KitePostbackServer,
    OrderTracker,
    PostbackRejected,
    UnknownInstrumentError,
    fetch_instruments,
    parse_postback,
    verify_postback_checksum,
)
from producers.kite import orders as ko
from producers.kite import ticks as kt
from schemas.fixedpoint import to_fixed
from schemas.models import (
    ExecType,
    ExecutionReport,
    Fill,
    LiquiditySide,
    OrderStatus,
    Quote,
    Side,
    Trade,
)

MOCKS = "kiteconnect-mocks"
INFY = 408065  # NSE exchange token 1594 << 8 | segment 1
INFY_ROW = "408065,1594,INFY,INFOSYS,0.0,,0.0,0.05,1,EQ,NSE,NSE\n"
TS_INIT = 1_700_000_000_123_456_789
SECRET = "test-api-secret"


# ---- helpers ---------------------------------------------------------------------------
def _mock(shared_data: Path, name: str) -> Path:
    return shared_file(shared_data, f"{MOCKS}/{name}")


def _packet(shared_data: Path, mode: str) -> bytes:
    return base64.b64decode(_mock(shared_data, f"ticker_{mode}.packet").read_text())


def _expected(shared_data: Path, mode: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(_mock(shared_data, f"ticker_{mode}.json").read_text())
    return data


def _frame(*packets: bytes) -> bytes:
    """The websocket message: uint16 count, then uint16 length + packet for each."""
    out = struct.pack(">H", len(packets))
    for p in packets:
        out += struct.pack(">H", len(p)) + p
    return out


def _sdk_ticks(message: bytes) -> list[dict[str, Any]]:
    ticks: list[dict[str, Any]] = KiteTicker("api-key", "access-token")._parse_binary(message)
    return ticks


def _full_packet(
    token: int,
    *,
    last: int,
    ltq: int = 10,
    volume: int = 1000,
    ltt: int = 1625461887,
    ts: int = 1625461888,
    bid: tuple[int, int] = (0, 0),
    ask: tuple[int, int] = (0, 0),
) -> bytes:
    """A 184-byte full packet built from the documented layout (raw int prices)."""
    head = struct.pack(">IiIiIIIiiii", token, last, ltq, last, volume, 5, 6, last, last, last, last)
    extra = struct.pack(">IIIII", ltt, 7, 8, 9, ts)
    depth = b"".join(
        struct.pack(">IiH2x", qty, price, 1)
        for qty, price in [(bid[1], bid[0])] * 5 + [(ask[1], ask[0])] * 5
    )
    packet = head + extra + depth
    assert len(packet) == 184
    return packet


def _iso_to_epoch_s(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp())


@pytest.fixture
def instruments(shared_data: Path) -> InstrumentMap:
    """instruments_all.csv plus INFY (the recorded packets' token is not in that sample)."""
    text = _mock(shared_data, "instruments_all.csv").read_text()
    return InstrumentMap.from_csv_text(text.rstrip("\n") + "\n" + INFY_ROW)


def _counter(reason: str) -> float:
    value = REGISTRY.get_sample_value("kite_postback_rejected_total", {"reason": reason})
    return value or 0.0


# ---- binary ticks vs the mocks' expected decodes ---------------------------------------
def test_full_packet_decodes_to_ticker_full_json_field_by_field(shared_data: Path) -> None:
    tick = kt.parse_packet(_packet(shared_data, "full"))
    exp = _expected(shared_data, "full")
    assert (tick.mode, tick.tradable, tick.instrument_token) == (
        exp["mode"],
        exp["tradable"],
        exp["instrument_token"],
    )
    assert tick.last_price == Decimal("1573.70") == Decimal(str(exp["last_price"]))
    assert tick.last_traded_quantity == exp["last_quantity"]
    assert tick.average_traded_price == Decimal(str(exp["average_price"]))
    assert tick.volume_traded == exp["volume"]
    assert tick.total_buy_quantity == exp["buy_quantity"]
    assert tick.total_sell_quantity == exp["sell_quantity"]
    for name in ("open", "high", "low", "close"):
        assert getattr(tick, name) == Decimal(str(exp["ohlc"][name])), name
    assert (tick.oi, tick.oi_day_high, tick.oi_day_low) == (
        exp["oi"],
        exp["oi_day_high"],
        exp["oi_day_low"],
    )
    # Unix seconds in the packet; the mock renders them in IST ("+05:30").
    assert tick.last_trade_time == _iso_to_epoch_s(exp["last_trade_time"]) == 1625461887
    assert tick.exchange_timestamp == _iso_to_epoch_s(exp["timestamp"])
    # the mock's "change" is last - close (the Python SDK's is a percentage)
    assert tick.close is not None
    assert float(tick.last_price - tick.close) == pytest.approx(exp["change"])
    for side, levels in (("buy", tick.bids), ("sell", tick.asks)):
        assert len(levels) == len(exp["depth"][side]) == 5
        for got, want in zip(levels, exp["depth"][side], strict=True):
            assert got.price == Decimal(str(want["price"]))
            assert (got.quantity, got.orders) == (want["quantity"], want["orders"])


def test_quote_packet_decodes_to_ticker_quote_json_field_by_field(shared_data: Path) -> None:
    tick = kt.parse_packet(_packet(shared_data, "quote"))
    exp = _expected(shared_data, "quote")
    assert (tick.mode, tick.tradable, tick.instrument_token) == ("quote", True, INFY)
    assert exp["mode"] == "quote"
    assert tick.last_price == Decimal("1573.15") == Decimal(str(exp["last_price"]))
    assert tick.last_traded_quantity == exp["last_quantity"]
    assert tick.average_traded_price == Decimal(str(exp["average_price"]))
    assert tick.volume_traded == exp["volume"]
    assert tick.total_buy_quantity == exp["buy_quantity"]
    assert tick.total_sell_quantity == exp["sell_quantity"]
    for name in ("open", "high", "low", "close"):
        assert getattr(tick, name) == Decimal(str(exp["ohlc"][name])), name
    assert tick.last_trade_time is None and tick.exchange_timestamp is None
    assert tick.bids == () and tick.asks == ()


def test_ltp_packet_decodes_to_ticker_ltp_json(shared_data: Path) -> None:
    exp = _expected(shared_data, "ltp")
    # no recorded ltp packet in the mocks: build the 8 bytes from the expected decode
    packet = struct.pack(">Ii", exp["instrument_token"], 157315)
    tick = kt.parse_packet(packet)
    assert (tick.mode, tick.tradable, tick.instrument_token) == (
        exp["mode"],
        exp["tradable"],
        exp["instrument_token"],
    )
    assert tick.last_price == Decimal(str(exp["last_price"]))
    assert _sdk_ticks(_frame(packet)) == [exp]


def test_our_decode_agrees_with_the_sdks_parse_binary(shared_data: Path) -> None:
    nifty = 256265  # NSE index token, segment 9
    index_full = struct.pack(
        ">Iiiiiiii", nifty, 1_582_500, 1_590_000, 1_575_000, 1_580_000, 0, 0, 0
    )
    index_full = index_full[:24] + struct.pack(">iI", -3600, 1625461887)
    packets = [
        _packet(shared_data, "full"),
        _packet(shared_data, "quote"),
        struct.pack(">Ii", INFY, 157315),
        index_full,
        index_full[:28],
    ]
    message = _frame(*packets)
    ours = kt.decode_frame(message, received_ns=TS_INIT)
    sdk = _sdk_ticks(message)
    assert len(ours) == len(sdk) == 5
    for tick, ref in zip(ours, sdk, strict=True):
        assert isinstance(tick, kt.KiteTick)
        assert tick.instrument_token == ref["instrument_token"]
        assert (tick.mode, tick.tradable) == (ref["mode"], ref["tradable"])
        assert float(tick.last_price) == ref["last_price"]
        if "ohlc" in ref:
            for name in ("open", "high", "low", "close"):
                assert float(getattr(tick, name)) == ref["ohlc"][name]
        if "volume_traded" in ref:
            assert tick.last_traded_quantity == ref["last_traded_quantity"]
            assert float(tick.average_traded_price or 0) == ref["average_traded_price"]
            assert tick.volume_traded == ref["volume_traded"]
            assert tick.total_buy_quantity == ref["total_buy_quantity"]
            assert tick.total_sell_quantity == ref["total_sell_quantity"]
        if "exchange_timestamp" in ref:  # SDK: naive local datetime of the same epoch
            assert tick.exchange_timestamp == int(ref["exchange_timestamp"].timestamp())
        if "depth" in ref:
            assert tick.last_trade_time == int(ref["last_trade_time"].timestamp())
            assert (tick.oi, tick.oi_day_high, tick.oi_day_low) == (
                ref["oi"],
                ref["oi_day_high"],
                ref["oi_day_low"],
            )
            for levels, ref_levels in (
                (tick.bids, ref["depth"]["buy"]),
                (tick.asks, ref["depth"]["sell"]),
            ):
                got = [(float(d.price), d.quantity, d.orders) for d in levels]
                assert got == [(d["price"], d["quantity"], d["orders"]) for d in ref_levels]
    assert ours[3].is_index and not ours[3].tradable  # type: ignore[union-attr]


def test_segment_constants_are_the_sdks_exchange_map() -> None:
    sdk = KiteTicker.EXCHANGE_MAP
    ours = {
        "nse": kt.SEGMENT_NSE,
        "cds": kt.SEGMENT_CDS,
        "bcd": kt.SEGMENT_BCD,
        "indices": kt.SEGMENT_INDICES,
        "nco": kt.SEGMENT_NCO,
    }
    assert ours == {name: sdk[name] for name in ours}


@pytest.mark.parametrize(
    ("segment", "raw", "price"),
    [
        (kt.SEGMENT_CDS, 745_312_500, Decimal("74.53125")),  # ÷10 000 000
        (kt.SEGMENT_BCD, 745_325, Decimal("74.5325")),  # ÷10 000
        (kt.SEGMENT_NCO, 745_325, Decimal("74.5325")),  # ÷10 000 (SDK groups NCO with BCD)
        (kt.SEGMENT_NSE, 157_370, Decimal("1573.70")),  # ÷100
        (kt.SEGMENT_MCX, 485_200, Decimal("4852")),  # ÷100
    ],
)
def test_price_divisor_follows_the_token_segment(segment: int, raw: int, price: Decimal) -> None:
    token = (4242 << 8) | segment
    packet = _full_packet(token, last=raw, bid=(raw - 1, 3), ask=(raw + 1, 4))
    tick = kt.parse_packet(packet)
    assert tick.segment == segment
    assert tick.last_price == price and tick.average_traded_price == price
    assert tick.bids[0].price == price - Decimal(1).scaleb(-kt.price_exponent(token))
    ref = _sdk_ticks(_frame(packet))[0]
    assert float(tick.last_price) == ref["last_price"]
    assert float(tick.asks[0].price) == ref["depth"]["sell"][0]["price"]
    assert to_fixed(tick.last_price) == int(price * 10**9)


def test_negative_price_is_read_signed() -> None:
    # The docs type prices as int32; the SDK unpacks ">I" and would read 2**32 - 3763.
    token = (9000 << 8) | kt.SEGMENT_MCX
    tick = kt.parse_packet(struct.pack(">Ii", token, -3_763))
    assert tick.last_price == Decimal("-37.63")  # MCX crude, 20 April 2020


def test_heartbeat_is_ignored_and_bad_frames_are_malformed_with_raw_bytes() -> None:
    assert kt.decode_frame(b"\x00", received_ns=TS_INIT) == []
    truncated = _frame(struct.pack(">Ii", INFY, 1))[:-2]
    [bad] = kt.decode_frame(truncated, received_ns=TS_INIT)
    assert isinstance(bad, Malformed)
    assert (bad.source, bad.raw, bad.reason, bad.received_ns) == (
        "kite",
        truncated,
        "truncated_packet",
        TS_INIT,
    )
    trailing = _frame(struct.pack(">Ii", INFY, 1)) + b"\x00"
    assert [m.reason for m in kt.decode_frame(trailing, received_ns=TS_INIT)] == ["bad_frame"]  # type: ignore[union-attr]
    odd = struct.pack(">Iii", INFY, 1, 2)  # 12 bytes: no such mode
    out = kt.decode_frame(_frame(odd, struct.pack(">Ii", INFY, 157315)), received_ns=TS_INIT)
    assert isinstance(out[0], Malformed) and out[0].reason == "bad_packet" and out[0].raw == odd
    assert isinstance(out[1], kt.KiteTick) and out[1].last_price == Decimal("1573.15")


# ---- ticks → Trade / Quote ---------------------------------------------------------------
def test_full_tick_becomes_trade_and_quote_field_by_field(
    shared_data: Path, instruments: InstrumentMap
) -> None:
    norm = kt.TickNormalizer(instruments)
    trade, quote = norm.normalize(kt.parse_packet(_packet(shared_data, "full")), TS_INIT)
    assert trade == Trade(
        symbol="NSE:INFY",
        venue="NSE",
        price=1_573_700_000_000,
        size=7_000_000_000,
        trade_id="408065-1625461887-1192471",
        flags=["LTP_SNAPSHOT"],
        source="kite",
        ts_event=1_625_461_887_000_000_000,  # 2021-07-05T05:11:27Z = 10:41:27 IST
        ts_init=TS_INIT,
    )
    assert quote == Quote(
        symbol="NSE:INFY",
        venue="NSE",
        bid_price=1_573_400_000_000,
        bid_size=5_000_000_000,
        ask_price=1_573_700_000_000,
        ask_size=172_000_000_000,
        source="kite",
        ts_event=1_625_461_887_000_000_000,
        ts_init=TS_INIT,
    )


def test_unchanged_tick_emits_nothing_and_same_second_trade_is_kept(
    instruments: InstrumentMap,
) -> None:
    norm = kt.TickNormalizer(instruments)
    first = _full_packet(INFY, last=157_370, volume=100, bid=(157_365, 5), ask=(157_370, 9))
    assert [type(r) for r in norm.normalize(kt.parse_packet(first), TS_INIT)] == [Trade, Quote]
    assert norm.normalize(kt.parse_packet(first), TS_INIT + 1) == []
    # same last trade time, volume grew: a second trade within the second; book unchanged
    same_second = _full_packet(INFY, last=157_375, volume=110, bid=(157_365, 5), ask=(157_370, 9))
    [trade] = norm.normalize(kt.parse_packet(same_second), TS_INIT + 2)
    assert isinstance(trade, Trade) and trade.price == to_fixed("1573.75")
    # only the book moved
    book = _full_packet(INFY, last=157_375, volume=110, bid=(157_370, 1), ask=(157_375, 2))
    [quote] = norm.normalize(kt.parse_packet(book), TS_INIT + 3)
    assert isinstance(quote, Quote) and quote.bid_price == to_fixed("1573.70")
    # state survives a snapshot round trip
    restored = kt.TickNormalizer(instruments)
    restored.restore(json.loads(json.dumps(norm.snapshot())))
    assert restored.normalize(kt.parse_packet(book), TS_INIT + 4) == []


def test_tick_without_trade_time_or_depth_emits_nothing(
    shared_data: Path, instruments: InstrumentMap
) -> None:
    norm = kt.TickNormalizer(instruments)
    assert norm.normalize(kt.parse_packet(_packet(shared_data, "quote")), TS_INIT) == []
    assert norm.normalize(kt.parse_packet(struct.pack(">Ii", INFY, 1)), TS_INIT) == []
    no_trade_yet = _full_packet(INFY, last=0, ltq=0, volume=0, ltt=0, bid=(100, 1))
    [quote] = norm.normalize(kt.parse_packet(no_trade_yet), TS_INIT)
    assert isinstance(quote, Quote) and quote.ask_price is None and quote.ask_size is None


def test_crossed_book_is_flagged(instruments: InstrumentMap) -> None:
    packet = _full_packet(INFY, last=100, bid=(101, 1), ask=(100, 1))
    quote = kt.TickNormalizer(instruments).normalize(kt.parse_packet(packet), TS_INIT)[-1]
    assert isinstance(quote, Quote) and quote.flags == ["CROSSED"]


def test_tick_for_unknown_token_is_malformed(instruments: InstrumentMap) -> None:
    packet = _full_packet((77 << 8) | 1, last=100)
    [bad] = kt.TickNormalizer(instruments).normalize(kt.parse_packet(packet), TS_INIT)
    assert isinstance(bad, Malformed) and bad.reason == "unknown_instrument" and bad.raw == packet


# ---- instruments -----------------------------------------------------------------------
def test_instrument_map_from_instruments_all_csv_maps_both_ways(shared_data: Path) -> None:
    path = _mock(shared_data, "instruments_all.csv")
    imap = InstrumentMap.from_csv(path)
    rows = list(csv.DictReader(path.open()))
    assert len(imap) == len(rows) == 99
    for row in rows:
        symbol = f"{row['exchange']}:{row['tradingsymbol']}"
        assert imap.symbol(int(row["instrument_token"])) == symbol
        assert imap.token(symbol) == int(row["instrument_token"])
    assert imap.token("NSE:CENTRALBK-BE") == 3813889
    assert imap.symbol(12073986) == "NFO:BANKNIFTY18JAN23500CE"
    assert imap.by_token(12073986).lot_size == 40
    assert imap.by_token(12073986).tick_size == Decimal("0.05")
    assert imap.token("  nfo:banknifty18jan23500ce ") == 12073986
    assert imap.tokens(["NSE:CENTRALBK-BE", "NFO:BANKNIFTY18JAN23500CE"]) == [3813889, 12073986]
    with pytest.raises(UnknownInstrumentError, match=r"'NSE:NOPE'.*'BSE:INFY'"):
        imap.tokens(["NSE:NOPE", "NSE:CENTRALBK-BE", "BSE:INFY"])
    with pytest.raises(UnknownInstrumentError, match="408065"):
        imap.symbol(INFY)


def test_instrument_dump_without_token_column_is_refused() -> None:
    with pytest.raises(ValueError, match="instrument_token"):
        InstrumentMap.from_csv_text("tradingsymbol,exchange\nINFY,NSE\n")


# ---- order updates → ExecutionReport / Fill ---------------------------------------------
def test_order_history_maps_each_kite_status(shared_data: Path) -> None:
    history = json.loads(_mock(shared_data, "order_info.json").read_text(), parse_float=Decimal)
    tracker = OrderTracker()
    got = []
    for order in history["data"]:
        report, fill = tracker.apply(order, TS_INIT)
        assert fill is None
        got.append((report.raw_event, report.exec_type, report.order_status))
        assert report.symbol == "NSE:SBIN" and report.side is Side.BUY
        assert report.client_order_id == report.venue_order_id == "171229000724687"
        assert report.account == "DA0017" and report.venue == "NSE"
    assert got == [
        ("PUT ORDER REQ RECEIVED", ExecType.PENDING_NEW, OrderStatus.PENDING_NEW),
        ("VALIDATION PENDING", ExecType.PENDING_NEW, OrderStatus.PENDING_NEW),
        ("OPEN PENDING", ExecType.PENDING_NEW, OrderStatus.PENDING_NEW),
        ("OPEN", ExecType.NEW, OrderStatus.NEW),
        ("MODIFY VALIDATION PENDING", ExecType.OTHER, OrderStatus.NEW),
        ("MODIFY PENDING", ExecType.OTHER, OrderStatus.NEW),
        ("MODIFIED", ExecType.REPLACED, OrderStatus.NEW),
        ("OPEN", ExecType.NEW, OrderStatus.NEW),
    ]


def test_order_book_orders_map_with_exact_prices(shared_data: Path) -> None:
    # decoded as the feed and the postback receiver decode: exact decimals, never floats
    orders = loads_exact(_mock(shared_data, "orders.json").read_bytes())["data"]
    by_id = {}
    for order in orders:
        report, fill = ko.order_to_records(order, previous=None, ts_init=TS_INIT)
        by_id[order["order_id"]] = (report, fill)
    cds, cds_fill = by_id["100000000000000"]
    assert (cds.exec_type, cds.order_status, cds.leaves_quantity) == (
        ExecType.CANCELED,
        OrderStatus.CANCELED,
        0,
    )
    assert cds.symbol == "CDS:USDINR21JUNFUT" and cds_fill is None
    assert cds.ts_event == 1_622_432_938_000_000_000  # 2021-05-31 09:18:58 IST
    ioc, ioc_fill = by_id["300000000000000"]
    assert (ioc.exec_type, ioc.order_status, ioc.avg_price) == (
        ExecType.FILL,
        OrderStatus.FILLED,
        109_400_000_000,
    )
    assert ioc_fill is not None and ioc_fill.price == 109_400_000_000
    rejected, _ = by_id["220524001859672"]
    assert rejected.order_status is OrderStatus.REJECTED
    assert rejected.reason is not None and rejected.reason.startswith("Insufficient funds")
    assert rejected.client_order_id == "icebergord"  # the order's tag
    _, option_fill = by_id["1953367517686685697"]
    assert option_fill is not None
    assert (option_fill.quantity, option_fill.price, option_fill.fill_id) == (
        150_000_000_000,
        12_300_000_000,
        "1953367517686685697-150",
    )


def test_partial_fills_become_one_fill_per_increase_at_the_implied_price(
    shared_data: Path,
) -> None:
    base = json.loads(_mock(shared_data, "postback.json").read_text(), parse_float=Decimal)
    base = {**base, "quantity": 100, "tag": "cid-1"}
    tracker = OrderTracker()
    steps = [
        ("OPEN", 0, 0, "09:24:25"),
        ("UPDATE", 40, 470, "09:24:26"),
        ("UPDATE", 40, 470, "09:24:26"),  # duplicate delivery (websocket + postback)
        ("COMPLETE", 100, Decimal("471.2"), "09:24:27"),
    ]
    reports: list[ExecutionReport] = []
    fills: list[Fill] = []
    for status, filled, avg, hms in steps:
        order = {
            **base,
            "status": status,
            "filled_quantity": filled,
            "pending_quantity": 100 - filled,
            "average_price": avg,
            "exchange_update_timestamp": f"2022-03-03 {hms}",
        }
        report, fill = tracker.apply(order, TS_INIT)
        reports.append(report)
        if fill is not None:
            fills.append(fill)
    assert [(r.exec_type, r.order_status) for r in reports] == [
        (ExecType.NEW, OrderStatus.NEW),
        (ExecType.PARTIAL_FILL, OrderStatus.PARTIALLY_FILLED),
        (ExecType.REPLACED, OrderStatus.PARTIALLY_FILLED),
        (ExecType.FILL, OrderStatus.FILLED),
    ]
    assert [r.raw_event for r in reports] == ["OPEN", "UPDATE", "UPDATE", "COMPLETE"]
    assert reports[1].report_id == reports[2].report_id  # same content, same id
    assert (reports[1].last_quantity, reports[1].leaves_quantity) == (40 * 10**9, 60 * 10**9)
    assert [(f.fill_id, f.quantity, f.price) for f in fills] == [
        ("220303000308932-40", 40 * 10**9, 470 * 10**9),
        ("220303000308932-100", 60 * 10**9, 472 * 10**9),  # (471.2·100 − 470·40) / 60
    ]
    assert fills[1].ts_event == 1_646_279_667_000_000_000  # 2022-03-03 09:24:27 IST
    assert all(f.client_order_id == "cid-1" and f.side is Side.BUY for f in fills)
    assert fills[0].liquidity_side is LiquiditySide.NONE


def test_unknown_status_is_kept_in_raw_event(shared_data: Path) -> None:
    order = json.loads(_mock(shared_data, "postback.json").read_text())
    order = {**order, "status": "SOMETHING NEW", "filled_quantity": 0}
    report, fill = ko.order_to_records(order, previous=None, ts_init=TS_INIT)
    assert (report.exec_type, report.order_status, report.raw_event) == (
        ExecType.OTHER,
        OrderStatus.UNKNOWN,
        "SOMETHING NEW",
    )
    assert fill is None


def test_order_update_without_side_is_a_parse_error(shared_data: Path) -> None:
    order = json.loads(_mock(shared_data, "postback.json").read_text())
    with pytest.raises(FeedParseError, match="transaction_type") as err:
        ko.order_to_records({**order, "transaction_type": None}, previous=None, ts_init=TS_INIT)
    assert err.value.reason == "missing_field" and "order 220303000308932" in str(err.value)


# ---- postback ---------------------------------------------------------------------------
def _signed_postback(shared_data: Path) -> dict[str, Any]:
    payload = json.loads(_mock(shared_data, "postback.json").read_text())
    material = payload["order_id"] + payload["order_timestamp"] + SECRET
    return {**payload, "checksum": hashlib.sha256(material.encode()).hexdigest()}


def test_postback_with_valid_checksum_is_accepted_and_mapped(shared_data: Path) -> None:
    payload = _signed_postback(shared_data)
    assert verify_postback_checksum(payload, SECRET)
    assert verify_postback_checksum(payload, SecretStr(SECRET))
    report, fill = parse_postback(payload, SECRET, ts_init=TS_INIT)
    assert report == ExecutionReport(
        report_id=report.report_id,
        client_order_id="220303000308932",
        venue_order_id="220303000308932",
        account="AB1234",
        symbol="NSE:SBIN",
        side=Side.BUY,
        exec_type=ExecType.FILL,
        order_status=OrderStatus.FILLED,
        quantity=10**9,
        last_quantity=10**9,
        last_price=470 * 10**9,
        cum_quantity=10**9,
        leaves_quantity=0,
        avg_price=470 * 10**9,
        venue="NSE",
        raw_event="COMPLETE",
        ts_event=1_646_279_665_000_000_000,  # 2022-03-03 09:24:25 IST = 03:54:25 UTC
        ts_init=TS_INIT,
    )
    assert fill is not None and (fill.quantity, fill.price) == (10**9, 470 * 10**9)


def test_postback_mock_checksum_with_wrong_secret_is_rejected_and_counted(
    shared_data: Path,
) -> None:
    payload = json.loads(_mock(shared_data, "postback.json").read_text())
    assert not verify_postback_checksum(payload, "not-the-secret")
    before = _counter("bad_checksum")
    with pytest.raises(PostbackRejected) as info:
        parse_postback(payload, "not-the-secret", ts_init=TS_INIT)
    assert info.value.reason == "bad_checksum"
    assert _counter("bad_checksum") == before + 1
    assert not verify_postback_checksum({**payload, "checksum": None}, SECRET)


@pytest.fixture
def postback_server() -> Iterator[tuple[KitePostbackServer, list[ExecutionReport | Fill]]]:
    received: list[ExecutionReport | Fill] = []
    server = KitePostbackServer(SECRET, received.append, clock=lambda: TS_INIT)
    with server:
        yield server, received


def test_postback_receiver_accepts_valid_and_rejects_bad_checksum_over_http(
    shared_data: Path, postback_server: tuple[KitePostbackServer, list[ExecutionReport | Fill]]
) -> None:
    server, received = postback_server
    payload = _signed_postback(shared_data)
    with httpx.Client(timeout=5) as http:
        ok = http.post(server.url, content=json.dumps(payload))
        assert (ok.status_code, ok.json()) == (200, {"status": "ok"})
        assert [type(r) for r in received] == [ExecutionReport, Fill]
        report = received[0]
        assert isinstance(report, ExecutionReport)
        assert (report.symbol, report.order_status, report.ts_init) == (
            "NSE:SBIN",
            OrderStatus.FILLED,
            TS_INIT,
        )

        before = _counter("bad_checksum")
        forged = {**payload, "checksum": "0" * 64}
        bad = http.post(server.url, content=json.dumps(forged))
        assert (bad.status_code, bad.json()["reason"]) == (401, "bad_checksum")
        assert _counter("bad_checksum") == before + 1

        before_junk = _counter("bad_json")
        junk = http.post(server.url, content=b"{not json")
        assert (junk.status_code, junk.json()["reason"]) == (400, "bad_json")
        assert _counter("bad_json") == before_junk + 1
        elsewhere = f"http://127.0.0.1:{server.port}/elsewhere"
        assert http.post(elsewhere, content=b"{}").status_code == 404
    assert len(received) == 2  # nothing from the rejected ones


# ---- config -----------------------------------------------------------------------------
def test_config_from_settings_names_the_missing_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("KITE_API_KEY", "KITE_API_SECRET", "KITE_ACCESS_TOKEN"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(f"OMNIQUANT_FEEDS__{var}", raising=False)
    monkeypatch.setenv("KITE_API_KEY", "key")
    with pytest.raises(MissingCredentialError, match="KITE_ACCESS_TOKEN, KITE_API_SECRET"):
        KiteConfig.from_settings(load_settings())
    monkeypatch.setenv("KITE_ACCESS_TOKEN", "s3cr3t-token")
    config = KiteConfig.from_settings(load_settings(), require_api_secret=False)
    assert config.access_token.get_secret_value() == "s3cr3t-token"
    assert config.api_secret is None
    assert "s3cr3t" not in repr(config)
    monkeypatch.setenv("KITE_API_SECRET", "shh")
    assert KiteConfig.from_settings(load_settings()).api_secret == SecretStr("shh")


# ---- the feed against a real websocket server -------------------------------------------
class KiteServer:
    """A loopback stand-in for ws.kite.trade: checks the login, records what the client
    sends, and plays a script of frames."""

    def __init__(self, script: list[bytes | str], *, close_after: bool = False) -> None:
        self.script = script
        self.close_after = close_after
        self.received: list[Any] = []
        self.queries: list[dict[str, list[str]]] = []
        self.port = 0

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        query = parse_qs(urlsplit(request.path).query)
        self.queries.append(query)
        if query.get("api_key") != ["key"] or query.get("access_token") != ["tok"]:
            return connection.respond(HTTPStatus.FORBIDDEN, "invalid token\n")
        return None

    async def handler(self, ws: ServerConnection) -> None:
        self.received.append(json.loads(await ws.recv()))  # subscribe
        self.received.append(json.loads(await ws.recv()))  # mode
        for message in self.script:
            await ws.send(message)
        if self.close_after:
            await ws.close()
            return
        async for message in ws:
            self.received.append(json.loads(message))


async def _serving(server: KiteServer) -> AsyncGenerator[int, None]:
    async with serve(server.handler, "127.0.0.1", 0, process_request=server.process_request) as s:
        server.port = s.sockets[0].getsockname()[1]
        yield server.port


def _feed(port: int, instruments: InstrumentMap, token: str = "tok") -> KiteFeed:
    config = KiteConfig(
        api_key=SecretStr("key"),
        access_token=SecretStr(token),
        ws_url=f"ws://127.0.0.1:{port}",
    )
    return KiteFeed(config, instruments, clock=lambda: TS_INIT, open_timeout_s=2)


def test_feed_against_a_real_websocket_server_yields_records_field_by_field(
    shared_data: Path, instruments: InstrumentMap
) -> None:
    full, quote = _packet(shared_data, "full"), _packet(shared_data, "quote")
    postback = json.loads(_mock(shared_data, "postback.json").read_text())
    opened = {**postback, "status": "OPEN", "filled_quantity": 0, "pending_quantity": 1}
    opened["average_price"] = 0
    truncated = _frame(full)[:100]
    script: list[bytes | str] = [
        b"\x00",  # heartbeat
        _frame(full, quote),
        _frame(full),  # unchanged snapshot: nothing
        json.dumps({"type": "order", "data": opened}),
        json.dumps({"type": "order", "data": postback}),
        json.dumps({"type": "message", "data": "market opens soon"}),
        json.dumps({"type": "error", "data": "Invalid instrument token"}),
        "{not json",
        json.dumps({"type": "order", "data": {**postback, "transaction_type": None}}),
        truncated,
    ]
    server = KiteServer(script)

    async def scenario() -> list[Any]:
        gen = _serving(server)
        port = await anext(gen)
        feed = _feed(port, instruments)
        await feed.connect()
        await feed.subscribe(["NSE:INFY", "nse:centralbk-be"])
        assert feed.subscribed == {"NSE:INFY", "NSE:CENTRALBK-BE"}
        events = feed.events()
        got = [await asyncio.wait_for(anext(events), 2) for _ in range(9)]
        await feed.unsubscribe(["NSE:CENTRALBK-BE"])
        assert feed.subscribed == {"NSE:INFY"}
        for _ in range(50):
            if len(server.received) == 3:
                break
            await asyncio.sleep(0.01)
        await feed.close()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(anext(events), 2)
        await gen.aclose()
        return got

    trade, quote_rec, opened_rep, done_rep, fill, venue_error, junk, sideless, bad = asyncio.run(
        scenario()
    )
    assert server.received == [
        {"a": "subscribe", "v": [INFY, 3813889]},
        {"a": "mode", "v": ["full", [INFY, 3813889]]},
        {"a": "unsubscribe", "v": [3813889]},
    ]
    assert isinstance(trade, Trade)
    assert (trade.symbol, trade.venue, trade.price, trade.size, trade.ts_event) == (
        "NSE:INFY",
        "NSE",
        1_573_700_000_000,
        7_000_000_000,
        1_625_461_887_000_000_000,
    )
    assert (trade.source, trade.ts_init, trade.flags) == ("kite", TS_INIT, ["LTP_SNAPSHOT"])
    assert isinstance(quote_rec, Quote)
    assert (quote_rec.bid_price, quote_rec.bid_size, quote_rec.ask_price, quote_rec.ask_size) == (
        1_573_400_000_000,
        5_000_000_000,
        1_573_700_000_000,
        172_000_000_000,
    )
    assert isinstance(opened_rep, ExecutionReport)
    assert (opened_rep.exec_type, opened_rep.order_status, opened_rep.leaves_quantity) == (
        ExecType.NEW,
        OrderStatus.NEW,
        10**9,
    )
    assert isinstance(done_rep, ExecutionReport)
    assert (done_rep.exec_type, done_rep.order_status, done_rep.raw_event) == (
        ExecType.FILL,
        OrderStatus.FILLED,
        "COMPLETE",
    )
    assert (done_rep.cum_quantity, done_rep.avg_price, done_rep.symbol) == (
        10**9,
        470 * 10**9,
        "NSE:SBIN",
    )
    assert isinstance(fill, Fill)
    assert (fill.fill_id, fill.quantity, fill.price, fill.venue_order_id) == (
        "220303000308932-1",
        10**9,
        470 * 10**9,
        "220303000308932",
    )
    assert isinstance(venue_error, Malformed) and venue_error.reason == "venue_error"
    assert venue_error.error == "Invalid instrument token"
    assert isinstance(junk, Malformed) and (junk.reason, junk.raw) == ("bad_json", b"{not json")
    assert isinstance(sideless, Malformed) and sideless.reason == "missing_field"
    assert "transaction_type" in sideless.error
    assert isinstance(bad, Malformed)
    assert (bad.reason, bad.raw, bad.received_ns) == ("truncated_packet", truncated, TS_INIT)


def test_feed_raises_disconnected_when_the_server_drops_the_link(
    shared_data: Path, instruments: InstrumentMap
) -> None:
    server = KiteServer([_frame(_packet(shared_data, "full"))], close_after=True)

    async def scenario() -> list[Any]:
        gen = _serving(server)
        port = await anext(gen)
        feed = _feed(port, instruments)
        await feed.connect()
        await feed.subscribe(["NSE:INFY"])
        got = []
        with pytest.raises(FeedDisconnected):
            async for event in feed.events():
                got.append(event)
        await feed.close()
        await gen.aclose()
        return got

    assert [type(e) for e in asyncio.run(scenario())] == [Trade, Quote]


def test_feed_with_a_rejected_token_fails_without_retry(instruments: InstrumentMap) -> None:
    server = KiteServer([])

    async def scenario() -> None:
        gen = _serving(server)
        port = await anext(gen)
        feed = _feed(port, instruments, token="expired")
        with pytest.raises(FeedError, match="HTTP 403") as info:
            await feed.connect()
        assert "expired" not in str(info.value)
        with pytest.raises(UnknownInstrumentError):
            await feed.subscribe(["NSE:NOPE"])
        await gen.aclose()

    asyncio.run(scenario())
    assert server.queries == [{"api_key": ["key"], "access_token": ["expired"]}]


# ---- instrument dump over REST ----------------------------------------------------------
class _DumpHandler(BaseHTTPRequestHandler):
    body = b""
    seen: list[tuple[str, str | None, str | None]] = []

    def do_GET(self) -> None:
        self.seen.append(
            (self.path, self.headers.get("Authorization"), self.headers.get("X-Kite-Version"))
        )
        if self.headers.get("Authorization") != "token key:tok":
            payload = b'{"status":"error","message":"Invalid token","error_type":"TokenException"}'
            self.send_response(403)
        else:
            payload = self.body
            self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


def test_fetch_instruments_downloads_the_dump_with_kite_headers(shared_data: Path) -> None:
    _DumpHandler.body = _mock(shared_data, "instruments_nse.csv").read_bytes()
    _DumpHandler.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _DumpHandler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        good = KiteConfig(api_key=SecretStr("key"), access_token=SecretStr("tok"), rest_url=base)
        imap = asyncio.run(fetch_instruments(good, "nse"))
        assert len(imap) == 99 and all(i.exchange == "NSE" for i in imap)
        bad = good.model_copy(update={"access_token": SecretStr("old")})
        with pytest.raises(FeedError, match="403 TokenException: Invalid token"):
            asyncio.run(fetch_instruments(bad))
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert _DumpHandler.seen == [
        ("/instruments/NSE", "token key:tok", "3"),
        ("/instruments", "token key:old", "3"),
    ]
