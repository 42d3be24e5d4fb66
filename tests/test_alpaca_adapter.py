"""Alpaca adapter: pure parsing against Alpaca's own payloads, then the feeds (alpaca-py's
stream clients) against real websocket servers on 127.0.0.1 that speak Alpaca's protocols.

Vendor payloads come from the shared data folder (alpaca-docs examples, alpaca-py test
fixtures); a missing file skips the test naming the path. Nothing of the SDK is mocked.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgpack
import pytest
from conftest import shared_file
from pydantic import SecretStr
from websockets.asyncio.server import ServerConnection, serve

from core.config import load_settings
from core.errors import FeedParseError, MissingCredentialError
from producers.alpaca import AlpacaConfig, AlpacaStockFeed, AlpacaTradeUpdates
from producers.alpaca.parsing import (
    EXCHANGE_MIC,
    StreamControl,
    decode_market_frame,
    decode_trading_frame,
    exchange_venue,
    loads_msgpack,
    parse_market_message,
    parse_timestamp_ns,
    parse_trade_update,
)
from producers.base import FeedDisconnected, FeedError, FeedEvent, Malformed
from schemas.fixedpoint import to_fixed
from schemas.models import (
    Bar,
    ExecType,
    ExecutionReport,
    Fill,
    OrderStatus,
    Quote,
    Side,
    Trade,
)

REALTIME = (
    "alpaca-docs/content/api-references/market-data-api/stock-pricing-data/realtime.examples.json"
)
STREAMING = "alpaca-docs/content/api-references/trading-api/streaming.examples.json"
SDK_WS = "alpaca-py/tests/data/test_websockets.payloads.json"
SDK_ORDERS = "alpaca-py/tests/trading/trading_client/test_order_routes.payloads.json"

KEY, SECRET = "PKTEST0000000000", "loopback-secret"
TS_INIT = 1_700_000_000_123_456_789
TIMEOUT_S = 5.0


def fx(value: str) -> int:
    return to_fixed(Decimal(value))


def _ext(value: Any) -> Any:
    """The shared files write msgpack Timestamp fixtures as {"__msgpack_ext_timestamp__": ...}."""
    if isinstance(value, dict):
        if set(value) == {"__msgpack_ext_timestamp__"}:
            ts = value["__msgpack_ext_timestamp__"]
            return msgpack.Timestamp(ts["seconds"], ts["nanoseconds"])
        return {k: _ext(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ext(v) for v in value]
    return value


def _load(root: Path, relative: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(shared_file(root, relative).read_text())
    return data


def docs_message(root: Path, kind: str) -> dict[str, Any]:
    """The realtime-docs example whose T is ``kind`` (floats as JSON gives them)."""
    for example in _load(root, REALTIME)["examples"]:
        message = example["message"]
        if isinstance(message, dict) and message.get("T") == kind:
            return dict(message)
    raise AssertionError(f"no T={kind!r} example in {REALTIME}")


def sdk_messages(root: Path) -> list[dict[str, Any]]:
    """alpaca-py's msgpack-decoded stream fixtures, with real msgpack Timestamps."""
    return [_ext(p["ws_message"]) for p in _load(root, SDK_WS)["payloads"]]


def via_msgpack(message: Any) -> Any:
    """What the feed reads after the server msgpack-encodes ``message`` (its doubles as
    the decimals they were written from)."""
    return loads_msgpack(msgpack.packb(message))


def docs_fill(root: Path) -> dict[str, Any]:
    message: dict[str, Any] = _load(root, STREAMING)["examples"][-1]["message"]
    assert message["stream"] == "trade_updates"
    return message


def recorded_order(root: Path) -> dict[str, Any]:
    """The market order object alpaca-py's tests get back from POST /v2/orders."""
    payload = _load(root, SDK_ORDERS)["payloads"][0]
    assert payload["test"] == "test_market_order"
    order: dict[str, Any] = payload["body"]
    return order


def parse_one(message: Any, data_feed: str = "iex") -> Any:
    return parse_market_message(message, data_feed=data_feed, ts_init=TS_INIT)


# ---- scalars -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected_ns"),
    [
        ("2021-02-22T15:51:44.208Z", 1_614_009_104_208_000_000),
        ("2021-02-22T15:51:45.335689322Z", 1_614_009_105_335_689_322),
        ("2021-02-22T19:15:00Z", 1_614_021_300_000_000_000),
        ("2022-04-19T13:45:04.981350886-04:00", 1_650_390_304_981_350_886),
        ("2022-04-19T19:15:04.981350886+05:30", 1_650_375_904_981_350_886),
        ("2022-04-11T14:30:00.008348Z", 1_649_687_400_008_348_000),
        ("2022-04-11T14:30:00.008348000000Z", 1_649_687_400_008_348_000),
        ("1970-01-01T00:00:00.000000001Z", 1),
    ],
)
def test_rfc3339_timestamp_is_exact_utc_nanoseconds(text: str, expected_ns: int) -> None:
    assert parse_timestamp_ns(text) == expected_ns


def test_msgpack_timestamp_fixture_is_ten_seconds_and_ten_nanoseconds(shared_data: Path) -> None:
    wire_value = via_msgpack(sdk_messages(shared_data)[0])["t"]
    assert isinstance(wire_value, msgpack.Timestamp)
    assert parse_timestamp_ns(wire_value) == 10_000_000_010


def test_msgpack_timestamp_keeps_nanoseconds_of_a_real_date() -> None:
    stamp = msgpack.Timestamp(1_614_009_105, 335_689_322)  # a 96-bit ext on the wire
    assert parse_timestamp_ns(via_msgpack(stamp)) == 1_614_009_105_335_689_322


@pytest.mark.parametrize(
    "bad",
    ["2021-02-22 15:51:44", "2021-02-30T00:00:00Z", "2021-02-22T15:51:44.1234567891Z", 1.5, None],
)
def test_unusable_timestamp_is_a_parse_error(bad: Any) -> None:
    with pytest.raises(FeedParseError) as err:
        parse_timestamp_ns(bad)
    assert err.value.reason == "bad_timestamp"


def test_msgpack_float_price_is_the_decimal_the_vendor_wrote() -> None:
    assert Decimal.from_float(177.79) != Decimal("177.79")  # the binary double is not 177.79 ...
    (message,) = decode_market_frame(msgpack.packb([{"p": 177.79, "s": 1, "l": [0.1]}]))
    assert message == {"p": Decimal("177.79"), "s": 1, "l": [Decimal("0.1")]}  # ... the price is


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "abc", "NaN", True, [1]])
def test_non_numbers_are_parse_errors(shared_data: Path, bad: Any) -> None:
    message = via_msgpack({**sdk_messages(shared_data)[1], "p": bad})
    with pytest.raises(FeedParseError, match="'p'") as err:
        parse_one(message)
    assert err.value.reason == "bad_decimal"


def test_a_float_that_bypassed_the_decoder_is_refused(shared_data: Path) -> None:
    message = {**via_msgpack(sdk_messages(shared_data)[1]), "p": 177.79}
    with pytest.raises(FeedParseError, match="'p' is a float") as err:
        parse_one(message)
    assert err.value.reason == "bad_decimal"


@pytest.mark.parametrize(
    ("code", "venue"),
    [("D", "XADF"), ("V", "IEXG"), ("Q", "XNAS"), ("U", "MEMX"), ("N", "XNYS"), ("P", "ARCX")],
)
def test_exchange_code_maps_to_mic(code: str, venue: str) -> None:
    assert exchange_venue(code) == venue


def test_every_alpaca_exchange_code_has_a_venue_and_unknown_ones_stay_visible() -> None:
    assert set(EXCHANGE_MIC) == set("ABCDEHIJKLMNPQSTUVWXYZ")
    assert exchange_venue("?") == "ALPACA:?"


# ---- market data: Alpaca's documented messages (JSON numbers) ----------------------------
def test_docs_trade_maps_field_by_field(shared_data: Path) -> None:
    message = docs_message(shared_data, "t")
    trade = parse_one(via_msgpack(message), data_feed="sip")
    assert trade == Trade(
        symbol="AAPL",
        venue="XADF",  # x: "D" FINRA ADF
        price=fx("126.55"),
        size=fx("1"),
        trade_id="96921",
        conditions=["@", "I"],
        flags=["tape:C"],
        source="alpaca",
        ts_event=1_614_009_104_208_000_000,  # 2021-02-22T15:51:44.208Z
        ts_init=TS_INIT,
    )


def test_docs_json_frame_parses_prices_as_decimals(shared_data: Path) -> None:
    frame = json.dumps([docs_message(shared_data, "t")])
    (message,) = decode_market_frame(frame)
    assert message["p"] == Decimal("126.55")
    assert parse_one(message).price == fx("126.55")


def test_docs_quote_with_sides_on_two_exchanges_is_a_consolidated_nbbo(shared_data: Path) -> None:
    quote = parse_one(via_msgpack(docs_message(shared_data, "q")), data_feed="sip")
    assert quote == Quote(
        symbol="AMD",
        venue="SIP",
        bid_price=fx("87.66"),
        bid_size=fx("1"),
        ask_price=fx("87.68"),
        ask_size=fx("4"),
        conditions=["R"],
        flags=["tape:C", "bid_venue:MEMX", "ask_venue:XNAS"],  # bx "U", ax "Q"
        source="alpaca",
        ts_event=1_614_009_105_335_689_322,  # all nine digits of .335689322
        ts_init=TS_INIT,
    )


@pytest.mark.parametrize(
    ("kind", "interval_ms", "volume", "ts_event"),
    [
        ("b", 60_000, "49378", 1_614_021_300_000_000_000),  # 2021-02-22T19:15:00Z
        ("d", 86_400_000, "749378", 1_613_448_000_000_000_000),  # 2021-02-16T04:00:00Z
    ],
)
def test_docs_minute_and_daily_bars_map_field_by_field(
    shared_data: Path, kind: str, interval_ms: int, volume: str, ts_event: int
) -> None:
    bar = parse_one(via_msgpack(docs_message(shared_data, kind)), data_feed="sip")
    assert bar == Bar(
        symbol="SPY",
        venue="SIP",
        interval_ms=interval_ms,
        open=fx("388.985"),
        high=fx("389.13"),
        low=fx("388.975"),
        close=fx("389.12"),
        volume=fx(volume),
        trade_count=0,  # the documented example carries no n / vw
        vwap=None,
        source="alpaca",
        ts_event=ts_event,
        ts_init=TS_INIT,
    )


def test_docs_trading_status_is_not_modelled_and_skipped(shared_data: Path) -> None:
    assert parse_one(docs_message(shared_data, "s")) is None


def test_docs_control_messages_are_control_not_records(shared_data: Path) -> None:
    examples = _load(shared_data, REALTIME)["examples"]
    controls = [
        parse_one(item)
        for example in examples
        if isinstance(example["message"], list)
        for item in example["message"]
    ]
    assert all(isinstance(c, StreamControl) for c in controls)
    errors = {c.code: c.message for c in controls if c.kind == "error"}
    assert errors[402] == "auth failed" and errors[405] == "symbol limit exceeded"
    (subscription,) = [c for c in controls if c.kind == "subscription"]
    assert subscription.subscriptions == {
        "trades": ("AAPL",),
        "quotes": ("AMD", "CLDR"),
        "bars": ("IBM", "AAPL", "VOO"),
    }


# ---- market data: alpaca-py's msgpack fixtures (Timestamp ext, floats) -------------------
def test_sdk_msgpack_bar_trade_and_quote_map_field_by_field(shared_data: Path) -> None:
    bar_msg, trade_msg, quote_msg, *_ = (via_msgpack(m) for m in sdk_messages(shared_data))
    assert parse_one(bar_msg) == Bar(
        symbol="AAPL",
        venue="IEXG",
        interval_ms=60_000,
        open=fx("177.94"),
        high=fx("178.005"),
        low=fx("177.94"),
        close=fx("178.005"),
        volume=fx("8547"),
        trade_count=66,
        vwap=fx("177.987562"),
        source="alpaca",
        ts_event=10_000_000_010,
        ts_init=TS_INIT,
    )
    assert parse_one(trade_msg) == Trade(
        symbol="AAPL",
        venue="IEXG",  # x: "V"
        price=fx("177.79"),
        size=fx("90"),
        trade_id="6142",
        conditions=["@", "I"],
        flags=["tape:C"],
        source="alpaca",
        ts_event=10_000_000_010,
        ts_init=TS_INIT,
    )
    assert parse_one(quote_msg) == Quote(
        symbol="SPIP",
        venue="IEXG",  # bx = ax = "V"
        bid_price=fx("25.41"),
        bid_size=fx("35"),
        ask_price=fx("25.43"),
        ask_size=fx("35"),
        conditions=["R"],
        flags=["tape:B"],
        source="alpaca",
        ts_event=10_000_000_010,
        ts_init=TS_INIT,
    )


def test_sdk_orderbook_status_and_cancel_messages_are_skipped(shared_data: Path) -> None:
    skipped = [via_msgpack(m) for m in sdk_messages(shared_data) if m["T"] in {"o", "s", "x"}]
    assert len(skipped) == 3
    assert [parse_one(m) for m in skipped] == [None, None, None]


def test_updated_bar_is_a_minute_bar(shared_data: Path) -> None:
    message = {**via_msgpack(sdk_messages(shared_data)[0]), "T": "u"}
    bar = parse_one(message)
    assert isinstance(bar, Bar) and bar.interval_ms == 60_000 and bar.close == fx("178.005")


# ---- market data: malformed -------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"p": None}, "missing_field"),
        ({"p": "abc"}, "bad_decimal"),
        ({"p": 1.0000000001}, "bad_value"),  # finer than 1e-9: not representable exactly
        ({"t": "yesterday"}, "bad_timestamp"),
        ({"S": ""}, "bad_field"),
        ({"x": 7}, "bad_field"),
        ({"c": "@"}, "bad_field"),
        ({"T": "zz"}, "unknown_message"),
    ],
)
def test_broken_trade_message_is_a_parse_error(
    shared_data: Path, change: dict[str, Any], reason: str
) -> None:
    message = via_msgpack({**sdk_messages(shared_data)[1], **change})
    with pytest.raises(FeedParseError) as err:
        parse_one(message)
    assert err.value.reason == reason


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"\xc1", "bad_msgpack"),  # 0xc1 is never used in msgpack
        (b"\x93\x01", "bad_msgpack"),  # truncated array
        ("[{'T': 't'}]", "bad_json"),
        ('[{"T":"t","p":NaN}]', "bad_json"),
        (msgpack.packb("hello"), "bad_frame"),
    ],
)
def test_undecodable_frame_is_a_parse_error(frame: bytes | str, reason: str) -> None:
    with pytest.raises(FeedParseError) as err:
        decode_market_frame(frame)
    assert err.value.reason == reason


def test_non_object_message_is_a_parse_error() -> None:
    with pytest.raises(FeedParseError) as err:
        parse_one(["T", "t"])
    assert err.value.reason == "bad_message"


# ---- trade updates -----------------------------------------------------------------------
def test_docs_fill_gives_execution_report_and_fill_field_by_field(shared_data: Path) -> None:
    data = decode_trading_frame(json.dumps(docs_fill(shared_data)))["data"]
    report, fill = parse_trade_update(data, account="paper", ts_init=TS_INIT)
    order_id = "a5be8f5e-fdfa-41f5-a644-7a74fe947a8f"
    client_order_id = "4642fd68-d59a-47d7-a9ac-e22f536828d1"
    ts_event = 1_650_390_305_024_916_716  # 2022-04-19T17:45:05.024916716Z
    assert report == ExecutionReport(
        report_id="2f63ea93-423d-4169-b3f6-3fdafc10c418",
        client_order_id=client_order_id,
        venue_order_id=order_id,
        account="paper",
        symbol="SOLUSD",
        side=Side.SELL,
        exec_type=ExecType.FILL,
        order_status=OrderStatus.FILLED,
        quantity=fx("1790.86"),
        last_quantity=fx("1790.86"),
        last_price=fx("105.8988475"),
        cum_quantity=fx("1790.86"),
        leaves_quantity=0,
        avg_price=fx("105.8988475"),
        venue="ALPACA",
        raw_event="fill",
        ts_event=ts_event,
        ts_init=TS_INIT,
    )
    assert fill == Fill(
        fill_id="2f63ea93-423d-4169-b3f6-3fdafc10c418",
        client_order_id=client_order_id,
        venue_order_id=order_id,
        account="paper",
        symbol="SOLUSD",
        side=Side.SELL,
        quantity=fx("1790.86"),
        price=fx("105.8988475"),
        venue="ALPACA",
        ts_event=ts_event,
        ts_init=TS_INIT,
    )


# event → (exec type, the order status Alpaca reports with it, our order status)
EVENTS: dict[str, tuple[ExecType, str, OrderStatus]] = {
    "new": (ExecType.NEW, "new", OrderStatus.NEW),
    "fill": (ExecType.FILL, "filled", OrderStatus.FILLED),
    "partial_fill": (ExecType.PARTIAL_FILL, "partially_filled", OrderStatus.PARTIALLY_FILLED),
    "canceled": (ExecType.CANCELED, "canceled", OrderStatus.CANCELED),
    "expired": (ExecType.EXPIRED, "expired", OrderStatus.EXPIRED),
    "done_for_day": (ExecType.OTHER, "done_for_day", OrderStatus.PARTIALLY_FILLED),
    "replaced": (ExecType.REPLACED, "replaced", OrderStatus.CANCELED),
    "rejected": (ExecType.REJECTED, "rejected", OrderStatus.REJECTED),
    "pending_new": (ExecType.PENDING_NEW, "pending_new", OrderStatus.PENDING_NEW),
    "stopped": (ExecType.OTHER, "stopped", OrderStatus.PARTIALLY_FILLED),
    "pending_cancel": (ExecType.PENDING_CANCEL, "pending_cancel", OrderStatus.PENDING_CANCEL),
    "pending_replace": (ExecType.OTHER, "pending_replace", OrderStatus.PARTIALLY_FILLED),
    "calculated": (ExecType.OTHER, "calculated", OrderStatus.PARTIALLY_FILLED),
    "suspended": (ExecType.OTHER, "suspended", OrderStatus.PARTIALLY_FILLED),
    "order_replace_rejected": (ExecType.OTHER, "new", OrderStatus.NEW),
    "order_cancel_rejected": (ExecType.OTHER, "partially_filled", OrderStatus.PARTIALLY_FILLED),
    "accepted": (ExecType.PENDING_NEW, "accepted", OrderStatus.PENDING_NEW),
    "held": (ExecType.OTHER, "held", OrderStatus.PENDING_NEW),
    "restated": (ExecType.OTHER, "new", OrderStatus.NEW),
}


def _event(root: Path, event: str, status: str, **changes: Any) -> dict[str, Any]:
    """The docs' fill message turned into ``event``: 100 of 1790.86 filled so far."""
    data: dict[str, Any] = json.loads(json.dumps(docs_fill(root)["data"]))
    data["event"] = event
    data["order"].update(status=status, filled_qty="100", filled_avg_price="105.5")
    data["qty"], data["price"] = "100", "105.5"
    data.update(changes)
    return data


@pytest.mark.parametrize("event", sorted(EVENTS))
def test_every_trade_updates_event_maps(shared_data: Path, event: str) -> None:
    exec_type, alpaca_status, order_status = EVENTS[event]
    records = parse_trade_update(
        _event(shared_data, event, alpaca_status), account="live", ts_init=TS_INIT
    )
    report = records[0]
    assert isinstance(report, ExecutionReport)
    assert (report.exec_type, report.order_status, report.raw_event) == (
        exec_type,
        order_status,
        event,
    )
    assert (report.account, report.venue, report.cum_quantity) == ("live", "ALPACA", fx("100"))
    is_fill = event in {"fill", "partial_fill"}
    assert [type(r) for r in records] == ([ExecutionReport, Fill] if is_fill else [ExecutionReport])
    if is_fill:
        assert (report.last_quantity, report.last_price) == (fx("100"), fx("105.5"))
    else:
        assert (report.last_quantity, report.last_price) == (0, None)
    terminal = {OrderStatus.FILLED, OrderStatus.CANCELED, OrderStatus.REJECTED, OrderStatus.EXPIRED}
    expected_leaves = 0 if order_status in terminal else fx("1690.86")
    assert report.leaves_quantity == expected_leaves


@pytest.mark.parametrize(
    ("alpaca_status", "filled_qty", "order_status"),
    [
        ("pending_replace", "0", OrderStatus.NEW),
        ("done_for_day", "0", OrderStatus.NEW),
        ("stopped", "0", OrderStatus.NEW),
        ("calculated", "1790.86", OrderStatus.FILLED),
        ("calculated", "100", OrderStatus.PARTIALLY_FILLED),
        ("some_new_status", "100", OrderStatus.UNKNOWN),
    ],
)
def test_order_status_without_an_equivalent_follows_the_fills(
    shared_data: Path, alpaca_status: str, filled_qty: str, order_status: OrderStatus
) -> None:
    data = _event(shared_data, "new", alpaca_status)
    data["order"]["filled_qty"] = filled_qty
    (report,) = parse_trade_update(data, account="paper", ts_init=TS_INIT)
    assert isinstance(report, ExecutionReport) and report.order_status == order_status


def test_unknown_event_is_kept_as_other_with_its_name(shared_data: Path) -> None:
    data = _event(shared_data, "trade_bust", "filled")
    (report,) = parse_trade_update(data, account="paper", ts_init=TS_INIT)
    assert isinstance(report, ExecutionReport)
    assert (report.exec_type, report.raw_event) == (ExecType.OTHER, "trade_bust")
    assert report.client_order_id == "4642fd68-d59a-47d7-a9ac-e22f536828d1"


def test_recorded_rest_order_as_accepted_event_uses_updated_at(shared_data: Path) -> None:
    order = recorded_order(shared_data)  # qty is the int 1 here, filled_qty the string "0"
    (report,) = parse_trade_update(
        {"event": "accepted", "order": order}, account="paper", ts_init=TS_INIT
    )
    assert isinstance(report, ExecutionReport)
    assert report.exec_type == ExecType.PENDING_NEW
    assert report.order_status == OrderStatus.PENDING_NEW
    assert report.symbol == "AAPL`"  # sic: the SDK's fixture
    assert (report.side, report.quantity, report.cum_quantity) == (Side.BUY, fx("1"), 0)
    assert report.leaves_quantity == fx("1") and report.avg_price is None
    assert report.ts_event == 1_615_919_881_942_282_000  # order.updated_at
    ts = report.ts_event
    assert report.report_id == f"61e69015-8549-4bfd-b9c3-01e75843f47d:accepted:{ts}:0"


def test_fill_without_execution_id_gets_a_stable_fill_id(shared_data: Path) -> None:
    data = _event(shared_data, "partial_fill", "partially_filled")
    del data["execution_id"]
    _, fill = parse_trade_update(data, account="paper", ts_init=TS_INIT)
    assert isinstance(fill, Fill)
    assert fill.fill_id == "a5be8f5e-fdfa-41f5-a644-7a74fe947a8f:100000000000"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"order": None}, "missing_field"),
        ({"order": "x"}, "bad_message"),
        ({"price": None}, "missing_field"),
        ({"qty": "0"}, "bad_value"),  # a fill of nothing
        ({"price": "12.3.4"}, "bad_decimal"),
        ({"timestamp": "2022-13-01T00:00:00Z"}, "bad_timestamp"),
        ({"event": None}, "missing_field"),
    ],
)
def test_broken_trade_update_is_a_parse_error(
    shared_data: Path, change: dict[str, Any], reason: str
) -> None:
    data = {**_event(shared_data, "fill", "filled"), **change}
    with pytest.raises(FeedParseError) as err:
        parse_trade_update(data, account="paper", ts_init=TS_INIT)
    assert err.value.reason == reason


def test_order_side_we_do_not_know_is_a_parse_error(shared_data: Path) -> None:
    data = _event(shared_data, "new", "new")
    data["order"]["side"] = "sideways"
    with pytest.raises(FeedParseError, match="sideways"):
        parse_trade_update(data, account="paper", ts_init=TS_INIT)


# ---- config ------------------------------------------------------------------------------
def test_missing_credentials_fail_naming_both_variables() -> None:
    settings = load_settings(feeds={"alpaca_api_key_id": None, "alpaca_api_secret_key": None})
    with pytest.raises(MissingCredentialError) as err:
        AlpacaConfig.from_settings(settings)
    assert "APCA_API_KEY_ID" in str(err.value) and "APCA_API_SECRET_KEY" in str(err.value)


def test_missing_secret_fails_naming_only_the_secret() -> None:
    settings = load_settings(feeds={"alpaca_api_key_id": KEY, "alpaca_api_secret_key": " "})
    with pytest.raises(MissingCredentialError) as err:
        AlpacaConfig.from_settings(settings)
    assert "APCA_API_SECRET_KEY" in str(err.value) and "APCA_API_KEY_ID " not in str(err.value)


def test_config_from_settings_keeps_secrets_out_of_repr() -> None:
    settings = load_settings(
        feeds={"alpaca_api_key_id": KEY, "alpaca_api_secret_key": SECRET, "alpaca_paper": False}
    )
    config = AlpacaConfig.from_settings(settings, data_feed="sip")
    assert (config.paper, config.account, config.data_feed) == (False, "live", "sip")
    assert config.api_secret_key.get_secret_value() == SECRET
    assert SECRET not in repr(config) and KEY not in repr(config)


# ---- loopback servers --------------------------------------------------------------------
Handler = Callable[[ServerConnection], Awaitable[None]]


@asynccontextmanager
async def loopback(handler: Handler) -> AsyncIterator[str]:
    """A real websocket server on 127.0.0.1 (free port); yields its ws:// URL."""
    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/"


def config(
    *, data_stream_url: str | None = None, trading_stream_url: str | None = None
) -> AlpacaConfig:
    return AlpacaConfig(
        api_key_id=SecretStr(KEY),
        api_secret_key=SecretStr(SECRET),
        open_timeout_s=2.0,
        data_stream_url=data_stream_url,
        trading_stream_url=trading_stream_url,
    )


def clock() -> Callable[[], int]:
    ticks = itertools.count(TS_INIT, 1000)
    return lambda: next(ticks)


async def drain(events: AsyncIterator[FeedEvent]) -> tuple[list[FeedEvent], BaseException | None]:
    """Every event until the stream ends; the exception that ended it, if any."""
    received: list[FeedEvent] = []
    try:
        async with asyncio.timeout(TIMEOUT_S):
            async for event in events:
                received.append(event)
    except (FeedDisconnected, FeedError) as exc:
        return received, exc
    return received, None


class MarketDataServer:
    """Alpaca's market-data protocol (msgpack): connected, auth, subscription ack, data frames.

    After its frames the server hangs up ("going away") or, with ``hang_up=False``, keeps
    the connection and records what the client sends until the client leaves.
    """

    def __init__(
        self,
        frames: Sequence[bytes] = (),
        *,
        hang_up: bool = True,
        instead_of_ack: dict[str, Any] | None = None,
    ) -> None:
        self.frames = frames
        self.hang_up = hang_up
        self.instead_of_ack = instead_of_ack
        self.received: list[Any] = []
        self.content_type: str | None = None
        self.client_message = asyncio.Event()

    async def __call__(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.content_type = ws.request.headers.get("Content-Type")
        await ws.send(msgpack.packb([{"T": "success", "msg": "connected"}]))
        auth = msgpack.unpackb(await ws.recv())
        self.received.append(auth)
        if (auth.get("key"), auth.get("secret")) != (KEY, SECRET):
            await ws.send(msgpack.packb([{"T": "error", "code": 402, "msg": "auth failed"}]))
            return
        await ws.send(msgpack.packb([{"T": "success", "msg": "authenticated"}]))
        subscribe = msgpack.unpackb(await ws.recv())
        self.received.append(subscribe)
        ack = {"T": "subscription", **{k: v for k, v in subscribe.items() if k != "action"}}
        await ws.send(msgpack.packb([self.instead_of_ack or ack]))
        for frame in self.frames:
            await ws.send(frame)
        if self.hang_up:
            await ws.close(1001, "server going away")
            return
        async for message in ws:
            self.received.append(msgpack.unpackb(message))
            self.client_message.set()


async def run_stock_feed(
    server: MarketDataServer, symbols: Sequence[str] = ("AAPL", "SPY")
) -> tuple[list[FeedEvent], BaseException | None, AlpacaStockFeed]:
    async with loopback(server) as url:
        feed = AlpacaStockFeed(config(data_stream_url=url), clock=clock())
        await feed.connect()
        await feed.subscribe(symbols)
        events, ended_by = await drain(feed.events())
        await feed.close()
        return events, ended_by, feed


def test_stock_feed_normalizes_recorded_messages_from_a_loopback_server(
    shared_data: Path,
) -> None:
    docs = [docs_message(shared_data, k) for k in ("t", "q", "b", "d", "s")]
    sdk = sdk_messages(shared_data)
    bad_trade = {**sdk[1], "p": "abc"}
    garbage = b"\xc1\xc1 not msgpack"
    server = MarketDataServer(
        [
            msgpack.packb(docs),  # the docs' examples (RFC-3339 strings)
            msgpack.packb(sdk),  # alpaca-py's fixtures (Timestamp ext)
            garbage,
            msgpack.packb([sdk[1], bad_trade]),
        ]
    )
    events, ended_by, feed = asyncio.run(run_stock_feed(server))

    # what the SDK said on our behalf
    assert server.content_type == "application/msgpack"
    assert server.received[0] == {"action": "auth", "key": KEY, "secret": SECRET}
    subscribe = server.received[1]
    assert subscribe.pop("action") == "subscribe"
    assert {k: sorted(v) for k, v in subscribe.items()} == {
        "trades": ["AAPL", "SPY"],
        "quotes": ["AAPL", "SPY"],
        "bars": ["AAPL", "SPY"],
    }
    assert {k: sorted(v) for k, v in feed.confirmed.items()} == {
        k: sorted(v) for k, v in subscribe.items()
    }
    assert isinstance(ended_by, FeedDisconnected)  # the server hung up
    assert feed.ignored == {"s": 2, "o": 1, "x": 1}

    # the clock ticks once per frame; frame 0 is the subscription ack
    frame1, frame2, frame3, frame4 = (TS_INIT + i * 1000 for i in range(1, 5))
    bars = [
        Bar(
            symbol="SPY",
            venue="IEXG",  # the feed is configured for iex
            interval_ms=interval,
            open=fx("388.985"),
            high=fx("389.13"),
            low=fx("388.975"),
            close=fx("389.12"),
            volume=fx(volume),
            trade_count=0,
            source="alpaca",
            ts_event=ts_event,
            ts_init=frame1,
        )
        for interval, volume, ts_event in (
            (60_000, "49378", 1_614_021_300_000_000_000),
            (86_400_000, "749378", 1_613_448_000_000_000_000),
        )
    ]
    sdk_bar = Bar(
        symbol="AAPL",
        venue="IEXG",
        interval_ms=60_000,
        open=fx("177.94"),
        high=fx("178.005"),
        low=fx("177.94"),
        close=fx("178.005"),
        volume=fx("8547"),
        trade_count=66,
        vwap=fx("177.987562"),
        source="alpaca",
        ts_event=10_000_000_010,
        ts_init=frame2,
    )
    sdk_trade = Trade(
        symbol="AAPL",
        venue="IEXG",
        price=fx("177.79"),
        size=fx("90"),
        trade_id="6142",
        conditions=["@", "I"],
        flags=["tape:C"],
        source="alpaca",
        ts_event=10_000_000_010,
        ts_init=frame2,
    )
    expected: list[FeedEvent] = [
        # frame 1: the docs' trade, quote, minute bar, daily bar (the status is skipped)
        Trade(
            symbol="AAPL",
            venue="XADF",
            price=fx("126.55"),
            size=fx("1"),
            trade_id="96921",
            conditions=["@", "I"],
            flags=["tape:C"],
            source="alpaca",
            ts_event=1_614_009_104_208_000_000,
            ts_init=frame1,
        ),
        Quote(
            symbol="AMD",
            venue="SIP",
            bid_price=fx("87.66"),
            bid_size=fx("1"),
            ask_price=fx("87.68"),
            ask_size=fx("4"),
            conditions=["R"],
            flags=["tape:C", "bid_venue:MEMX", "ask_venue:XNAS"],
            source="alpaca",
            ts_event=1_614_009_105_335_689_322,
            ts_init=frame1,
        ),
        *bars,
        # frame 2: alpaca-py's bar, trade, quote, (order book, status, cancel skipped), bar
        sdk_bar,
        sdk_trade,
        Quote(
            symbol="SPIP",
            venue="IEXG",
            bid_price=fx("25.41"),
            bid_size=fx("35"),
            ask_price=fx("25.43"),
            ask_size=fx("35"),
            conditions=["R"],
            flags=["tape:B"],
            source="alpaca",
            ts_event=10_000_000_010,
            ts_init=frame2,
        ),
        sdk_bar,
        # frame 3: not msgpack at all -> the frame's bytes
        Malformed("alpaca", garbage, "bad_msgpack", "", frame3),
        # frame 4: a good trade, then a bad one: dead-lettered alone, re-encoded as msgpack
        sdk_trade.model_copy(update={"ts_init": frame4}),
        Malformed("alpaca", msgpack.packb(bad_trade), "bad_decimal", "", frame4),
    ]
    assert len(events) == len(expected)
    for got, want in zip(events, expected, strict=True):
        if isinstance(want, Malformed):
            assert isinstance(got, Malformed)
            assert (got.source, got.raw, got.reason, got.received_ns) == (
                want.source,
                want.raw,
                want.reason,
                want.received_ns,
            )
            assert got.error
        else:
            assert got == want


def test_stock_feed_with_wrong_key_fails_to_connect_with_feed_error() -> None:
    server = MarketDataServer()

    async def scenario() -> None:
        async with loopback(server) as url:
            feed = AlpacaStockFeed(
                config(data_stream_url=url).model_copy(update={"api_secret_key": SecretStr("x")})
            )
            with pytest.raises(FeedError, match="auth failed"):
                await feed.connect()
            await feed.close()

    asyncio.run(scenario())
    assert server.received == [{"action": "auth", "key": KEY, "secret": "x"}]


def test_stock_feed_with_nothing_listening_is_disconnected_not_fatal() -> None:
    async def scenario() -> None:
        async with loopback(MarketDataServer()) as url:
            pass  # the port is free again: nothing listens there now
        feed = AlpacaStockFeed(config(data_stream_url=url))
        with pytest.raises(FeedDisconnected):
            await feed.connect()
        with pytest.raises(FeedDisconnected):
            await feed.subscribe(["AAPL"])

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("code", "message", "error"),
    [
        (405, "symbol limit exceeded", FeedError),
        (409, "insufficient subscription", FeedError),
        (406, "connection limit exceeded", FeedDisconnected),
    ],
)
def test_stream_error_after_subscribing_ends_events(
    code: int, message: str, error: type[Exception]
) -> None:
    server = MarketDataServer(
        hang_up=False, instead_of_ack={"T": "error", "code": code, "msg": message}
    )
    events, ended_by, _ = asyncio.run(run_stock_feed(server))
    assert events == []
    assert type(ended_by) is error and message in str(ended_by)


def test_unsubscribe_reaches_the_server_and_close_ends_events_quietly() -> None:
    server = MarketDataServer(hang_up=False)

    async def scenario() -> tuple[list[FeedEvent], BaseException | None, frozenset[str]]:
        async with loopback(server) as url:
            feed = AlpacaStockFeed(config(data_stream_url=url), clock=clock())
            await feed.connect()
            await feed.subscribe(["AAPL", "SPY"])
            reading = asyncio.create_task(drain(feed.events()))
            await feed.unsubscribe(["SPY", "MSFT"])
            async with asyncio.timeout(TIMEOUT_S):
                while len(server.received) < 5:
                    await server.client_message.wait()
                    server.client_message.clear()
            await feed.close()
            events, ended_by = await reading
            return events, ended_by, feed.subscribed

    events, ended_by, subscribed = asyncio.run(scenario())
    assert (events, ended_by, subscribed) == ([], None, frozenset({"AAPL"}))
    assert server.received[2:] == [
        {"action": "unsubscribe", "trades": ["SPY"]},
        {"action": "unsubscribe", "quotes": ["SPY"]},
        {"action": "unsubscribe", "bars": ["SPY"]},
    ]


class TradingServer:
    """Alpaca's trading stream: authenticate → authorization, listen → listening, updates.

    Replies are JSON in binary frames, as the paper endpoint sends them; ``frames`` go out
    as given (bytes: binary, str: text). Then the server hangs up.
    """

    def __init__(self, frames: Sequence[bytes | str] = (), *, streams: list[str] | None = None):
        self.frames = frames
        self.streams = streams
        self.received: list[Any] = []

    async def __call__(self, ws: ServerConnection) -> None:
        auth = json.loads(await ws.recv())
        self.received.append(auth)
        ok = auth.get("data") == {"key_id": KEY, "secret_key": SECRET}
        status = "authorized" if ok else "unauthorized"
        reply = {"stream": "authorization", "data": {"status": status, "action": "authenticate"}}
        await ws.send(json.dumps(reply).encode())
        if not ok:
            return
        listen = json.loads(await ws.recv())
        self.received.append(listen)
        streams = listen["data"]["streams"] if self.streams is None else self.streams
        await ws.send(json.dumps({"stream": "listening", "data": {"streams": streams}}).encode())
        for frame in self.frames:
            await ws.send(frame)
        await ws.close(1001, "server going away")


async def run_trade_updates(
    server: TradingServer,
) -> tuple[list[FeedEvent], BaseException | None, AlpacaTradeUpdates]:
    async with loopback(server) as url:
        feed = AlpacaTradeUpdates(config(trading_stream_url=url), clock=clock())
        await feed.connect()
        await feed.subscribe(["AAPL"])  # account-wide: filters nothing
        events, ended_by = await drain(feed.events())
        await feed.close()
        return events, ended_by, feed


def test_trade_updates_feed_normalizes_recorded_events_from_a_loopback_server(
    shared_data: Path,
) -> None:
    fill_frame = json.dumps(docs_fill(shared_data)).encode()  # the docs' example, verbatim
    order = recorded_order(shared_data)
    accepted = json.dumps(
        {"stream": "trade_updates", "data": {"event": "accepted", "order": order}}
    )
    partial = {
        "stream": "trade_updates",
        "data": _event(shared_data, "partial_fill", "partially_filled"),
    }
    unknown = {"stream": "trade_updates", "data": _event(shared_data, "trade_bust", "filled")}
    truncated = b'{"stream":"trade_updates","data":{"event":"fill"'
    server = TradingServer(
        [accepted, fill_frame, json.dumps(partial).encode(), truncated, json.dumps(unknown)]
    )
    events, ended_by, feed = asyncio.run(run_trade_updates(server))

    assert server.received == [
        {"action": "authenticate", "data": {"key_id": KEY, "secret_key": SECRET}},
        {"action": "listen", "data": {"streams": ["trade_updates"]}},
    ]
    assert feed.listening == ("trade_updates",) and feed.subscribed == frozenset()
    assert isinstance(ended_by, FeedDisconnected)

    t = [TS_INIT + i * 1000 for i in range(6)]  # frame 0: listening (authorization: connect)
    expected = [
        *parse_trade_update({"event": "accepted", "order": order}, account="paper", ts_init=t[1]),
        *parse_trade_update(docs_fill(shared_data)["data"], account="paper", ts_init=t[2]),
        *parse_trade_update(partial["data"], account="paper", ts_init=t[3]),
        Malformed("alpaca-trading", truncated, "bad_json", "", t[4]),
        *parse_trade_update(unknown["data"], account="paper", ts_init=t[5]),
    ]
    assert [type(e).__name__ for e in events] == [
        "ExecutionReport",
        "ExecutionReport",
        "Fill",
        "ExecutionReport",
        "Fill",
        "Malformed",
        "ExecutionReport",
    ]
    for got, want in zip(events, expected, strict=True):
        if isinstance(want, Malformed):
            assert isinstance(got, Malformed)
            assert (got.source, got.raw, got.reason, got.received_ns) == (
                want.source,
                want.raw,
                want.reason,
                want.received_ns,
            )
        else:
            assert got == want

    accepted_report, fill_report, fill = events[0], events[1], events[2]
    assert isinstance(accepted_report, ExecutionReport)
    assert (accepted_report.exec_type, accepted_report.raw_event) == (
        ExecType.PENDING_NEW,
        "accepted",
    )
    assert isinstance(fill_report, ExecutionReport) and isinstance(fill, Fill)
    assert fill.fill_id == "2f63ea93-423d-4169-b3f6-3fdafc10c418"
    assert (fill.price, fill.quantity) == (fx("105.8988475"), fx("1790.86"))
    assert fill.client_order_id == "4642fd68-d59a-47d7-a9ac-e22f536828d1"
    assert fill.venue == "ALPACA" and fill.ts_event == 1_650_390_305_024_916_716
    partial_fill = events[4]
    assert isinstance(partial_fill, Fill) and partial_fill.quantity == fx("100")
    kept = events[6]
    assert isinstance(kept, ExecutionReport)
    assert (kept.exec_type, kept.raw_event) == (ExecType.OTHER, "trade_bust")


def test_trade_updates_with_wrong_secret_fail_to_connect_with_feed_error() -> None:
    server = TradingServer()

    async def scenario() -> None:
        async with loopback(server) as url:
            bad = config(trading_stream_url=url).model_copy(
                update={"api_secret_key": SecretStr("x")}
            )
            feed = AlpacaTradeUpdates(bad)
            with pytest.raises(FeedError, match="failed to authenticate"):
                await feed.connect()
            await feed.close()

    asyncio.run(scenario())


def test_trade_updates_not_granted_by_the_server_is_a_feed_error() -> None:
    events, ended_by, _ = asyncio.run(run_trade_updates(TradingServer(streams=[])))
    assert events == [] and isinstance(ended_by, FeedError)
    assert "trade_updates not available" in str(ended_by)
