"""Replay: file readers (pure), event-time merge, exact encoding, and the producer on a real broker.

Lean expectations are computed independently with ``zoneinfo`` and ``Decimal``; row counts of
the shared Lean files are the ones SOURCES.md lists.
"""

from __future__ import annotations

import gzip
import json
import uuid
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, Consumer, Message, TopicPartition
from conftest import shared_file
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import producers.replay as replay_pkg
from core.config import Settings
from core.kafka import consumer_config, end_offsets, ensure_topics
from core.topics import TopicNames
from omniquant.stages import topic_catalog
from producers.replay import (
    OUT_OF_RANGE,
    ReplayError,
    Skip,
    open_file,
    open_files,
    parse_bound,
    parse_speed,
    parse_timestamp,
    read_files,
    replay,
)
from producers.replay._avro import (
    RecordEncoder,
    TimestampEncoder,
    avro_long,
    check_schemas,
    quote_middle,
    trade_middle,
)
from producers.replay._files import merge_items
from producers.replay._lean import LeanTickFile
from producers.replay._model import QUOTE, QUOTE_FIELDS, TRADE, TRADE_FIELDS, to_record
from schemas.fixedpoint import to_fixed
from schemas.models import AggressorSide, Quote, Trade
from schemas.serde import AvroSerde

NY = ZoneInfo("America/New_York")
LEAN_TICK = "Lean/Data/equity/usa/tick"

# SOURCES.md, "Equity tick data": exact rows per file.
LEAN_ROWS = {
    "aig/20131007_quote.zip": 1079935,
    "aig/20131007_trade.zip": 25351,
    "bac/20131007_quote.zip": 476855,
    "bac/20131007_trade.zip": 88172,
    "bac/20131008_quote.zip": 576096,
    "bac/20131008_trade.zip": 125872,
    "ibm/20131007_quote.zip": 109067,
    "ibm/20131007_trade.zip": 24293,
    "ibm/20131008_quote.zip": 125750,
    "ibm/20131008_trade.zip": 33381,
    "spy/20131007_trade.zip": 250601,
    "spy/20131008_trade.zip": 451545,
}


# ---- helpers ------------------------------------------------------------------------------
def utc_ns(dt: datetime) -> int:
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1_000


def et_ns(y: int, mo: int, d: int, h: int, mi: int = 0, s: int = 0, ns: int = 0) -> int:
    """Wall-clock time in New York → UTC ns, via zoneinfo (independent of the code under test)."""
    return utc_ns(datetime(y, mo, d, h, mi, s, tzinfo=NY)) + ns


def lean_zip(root: Path, symbol: str, day: str, kind: str, lines: list[str]) -> Path:
    path = root / "tick" / symbol.lower() / f"{day}_{kind}.zip"
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        member = f"{day}_{symbol.lower()}_{kind.title()}_Tick.csv"
        zf.writestr(member, "".join(line + "\n" for line in lines))
    return path


def records(path: Path) -> list[Trade | Quote | Skip]:
    return list(open_file(path))


def good(items: list[Trade | Quote | Skip]) -> list[Trade | Quote]:
    return [i for i in items if not isinstance(i, Skip)]


def skips(items: list[Trade | Quote | Skip]) -> list[Skip]:
    return [i for i in items if isinstance(i, Skip)]


def only_trades(items: list[Trade | Quote | Skip]) -> list[Trade]:
    out = [i for i in items if isinstance(i, Trade)]
    assert len(out) == len(good(items)), "expected trades only"
    return out


# ---- public surface -----------------------------------------------------------------------
def test_package_exports_exactly_its_public_api() -> None:
    assert sorted(replay_pkg.__all__) == sorted(
        [
            "OUT_OF_RANGE",
            "ReplayError",
            "ReplayStats",
            "Skip",
            "SourceFile",
            "open_file",
            "open_files",
            "parse_bound",
            "parse_speed",
            "parse_timestamp",
            "read_files",
            "replay",
        ]
    )


# ---- Lean readers -------------------------------------------------------------------------
def test_lean_trade_time_is_new_york_wall_clock_converted_to_utc_in_summer(tmp_path: Path) -> None:
    path = lean_zip(tmp_path, "IBM", "20131007", "trade", ["14430270,1815200,283,P,20002020,0"])
    [trade] = records(path)
    assert isinstance(trade, Trade)
    # 04:00:30.270 EDT = 08:00:30.270 UTC
    assert trade.ts_event == et_ns(2013, 10, 7, 4, 0, 30, 270_000_000)
    assert trade.ts_event == utc_ns(datetime(2013, 10, 7, 8, 0, 30, 270_000, tzinfo=UTC))
    assert trade.ts_init == trade.ts_event
    assert trade.symbol == "IBM"
    assert trade.source == "lean"


def test_lean_winter_date_uses_eastern_standard_time(tmp_path: Path) -> None:
    path = lean_zip(tmp_path, "SPY", "20131204", "trade", ["34200000,1800000,100,N,1,0"])
    [trade] = records(path)
    assert isinstance(trade, Trade)
    assert trade.ts_event == utc_ns(datetime(2013, 12, 4, 14, 30, tzinfo=UTC))  # 09:30 EST


@pytest.mark.parametrize(
    ("day", "ms", "expected"),
    [
        # 2013-03-10: clocks jump 02:00 EST → 03:00 EDT
        ("20130310", 5_400_000, (2013, 3, 10, 6, 30)),  # 01:30 EST
        ("20130310", 14_400_000, (2013, 3, 10, 8, 0)),  # 04:00 EDT
        ("20130310", 72_000_000, (2013, 3, 11, 0, 0)),  # 20:00 EDT
        # 2013-11-03: clocks fall back 02:00 EDT → 01:00 EST
        ("20131103", 1_800_000, (2013, 11, 3, 4, 30)),  # 00:30 EDT
        ("20131103", 14_400_000, (2013, 11, 3, 9, 0)),  # 04:00 EST
    ],
)
def test_lean_times_on_dst_change_days_follow_the_wall_clock(
    tmp_path: Path, day: str, ms: int, expected: tuple[int, int, int, int, int]
) -> None:
    path = lean_zip(tmp_path, "SPY", day, "trade", [f"{ms},1800000,100,N,1,0"])
    [trade] = records(path)
    assert isinstance(trade, Trade)
    assert trade.ts_event == utc_ns(datetime(*expected, tzinfo=UTC))
    y, mo, d = int(day[:4]), int(day[4:6]), int(day[6:])
    wall = datetime(y, mo, d, tzinfo=NY) + timedelta(milliseconds=ms)
    assert trade.ts_event == utc_ns(wall)


def test_lean_fractional_milliseconds_are_kept_to_the_nanosecond(tmp_path: Path) -> None:
    lines = [
        "14400009.367,1374500,100,D,1,0",
        "14400009.3671,1374500,100,D,1,0",
        "14400009.367123,1374500,100,D,1,0",
        "14400009.3671230,1374500,100,D,1,0",  # 7th digit 0: still exact
        "14400009.3671234,1374500,100,D,1,0",  # below a nanosecond: refused
    ]
    items = records(lean_zip(tmp_path, "BAC", "20131008", "trade", lines))
    base = et_ns(2013, 10, 8, 4, 0, 0, 9_000_000)
    assert [t.ts_event for t in good(items)] == [
        base + 367_000,
        base + 367_100,
        base + 367_123,
        base + 367_123,
    ]
    [skip] = skips(items)
    assert (skip.reason, skip.line) == ("bad_time", 5)


def test_lean_deci_cent_prices_become_exact_fixed_point(tmp_path: Path) -> None:
    lines = ["14400000,1815200,283,P,1,0", "14400001,1,1,P,1,0", "14400002,99999999999,7,P,1,0"]
    parsed = only_trades(records(lean_zip(tmp_path, "IBM", "20131007", "trade", lines)))
    assert [t.price for t in parsed] == [
        to_fixed(Decimal("181.52")),
        to_fixed(Decimal("0.0001")),
        to_fixed(Decimal("9999999.9999")),
    ]
    assert [t.size for t in parsed] == [to_fixed(283), to_fixed(1), to_fixed(7)]
    assert all(isinstance(t.price, int) for t in parsed)


def test_lean_quote_rows_are_one_sided_and_the_other_side_is_none(tmp_path: Path) -> None:
    lines = ["14400054,0,0,1836300,100,Q,1,0", "14400241,1800100,300,0,0,P,1,0"]
    ask_only, bid_only = good(records(lean_zip(tmp_path, "IBM", "20131007", "quote", lines)))
    assert isinstance(ask_only, Quote) and isinstance(bid_only, Quote)
    assert (ask_only.bid_price, ask_only.bid_size) == (None, None)
    assert (ask_only.ask_price, ask_only.ask_size) == (183_630_000_000, 100 * 10**9)
    assert (bid_only.bid_price, bid_only.bid_size) == (180_010_000_000, 300 * 10**9)
    assert (bid_only.ask_price, bid_only.ask_size) == (None, None)
    assert (ask_only.venue, bid_only.venue) == ("XNAS", "ARCX")
    assert ask_only.conditions == ["1"]


def test_lean_suspicious_ticks_are_kept_and_flagged(tmp_path: Path) -> None:
    lines = ["14400000,1815200,283,P,20002020,1", "14400001,1815200,283,P,20002020,0"]
    flagged, plain = good(records(lean_zip(tmp_path, "IBM", "20131007", "trade", lines)))
    assert flagged.flags == ["suspicious"]
    assert plain.flags == []
    assert flagged.conditions == plain.conditions == ["20002020"]


def test_lean_exchange_letters_map_to_mic_and_unknown_letters_are_kept(tmp_path: Path) -> None:
    lines = [f"1440000{i},1815200,1,{code},1,0" for i, code in enumerate("DNPTQZU")]
    trades = good(records(lean_zip(tmp_path, "IBM", "20131007", "trade", lines)))
    assert [t.venue for t in trades] == ["FINR", "XNYS", "ARCX", "XNAS", "XNAS", "BATS", "U"]


def test_lean_malformed_rows_become_skips_with_reason_raw_line_and_position(
    tmp_path: Path,
) -> None:
    lines = [
        "14400000,1815200,283,P,1,0",
        "14400001,abc,283,P,1,0",
        "14400002,1815200,283,P,1",
        "14400003,1815200,-5,P,1,0",
        "",
        "14400004,1815200,283,P,1,2",
        "noon,1815200,283,P,1,0",
        "99999999,1815200,283,P,1,0",
        "14400005,0,283,P,1,0",
        "14400006,1815200,283,,1,0",
        "14400007,1815200,283,P,1,0",
        ",1815200,283,P,1,0",  # same body as a good row, no time
    ]
    path = lean_zip(tmp_path, "IBM", "20131007", "trade", lines)
    reader = open_file(path)
    items = list(reader)
    assert len(items) == len(lines) == reader.rows
    assert [(s.reason, s.line) for s in skips(items)] == [
        ("bad_price", 2),
        ("bad_field_count", 3),
        ("bad_size", 4),
        ("blank_line", 5),
        ("bad_suspicious", 6),
        ("bad_time", 7),
        ("bad_time", 8),
        ("bad_price", 9),
        ("bad_exchange", 10),
        ("bad_time", 12),
    ]
    assert reader.skipped == 10
    first = skips(items)[0]
    assert first.raw == b"14400001,abc,283,P,1,0"
    assert first.path == path and first.symbol == "IBM" and first.detail


def test_lean_row_out_of_time_order_is_kept_in_place_and_counted(tmp_path: Path) -> None:
    lines = ["14400100,1,1,P,1,0", "14400050,2,1,P,1,0", "14400050,3,1,P,1,0", "14400200,4,1,P,1,0"]
    reader = open_file(lean_zip(tmp_path, "IBM", "20131007", "trade", lines))
    assert [t.price // 100_000 for t in only_trades(list(reader))] == [1, 2, 3, 4]  # file order
    assert reader.out_of_order == 2


def test_lean_reader_gives_the_same_records_when_its_memos_overflow(tmp_path: Path) -> None:
    lines = [
        f"{14400000 + i},{1815200 + i % 7},{100 + i % 5},{'PNQ'[i % 3]},1,{i % 2}"
        for i in range(60)
    ]
    lines += [f"{14400100 + i},1815200,x{i % 4},P,1,0" for i in range(8)]  # invalid bodies
    path = lean_zip(tmp_path, "IBM", "20131007", "trade", lines)
    roomy = records(path)
    tight = open_file(path)
    assert isinstance(tight, LeanTickFile)
    tight.cache_limit = 2
    assert list(tight) == roomy
    assert len(good(roomy)) == 60 and len(skips(roomy)) == 8


def test_lean_path_must_be_a_tick_file(tmp_path: Path) -> None:
    minute = tmp_path / "minute" / "ibm" / "20131007_trade.zip"
    minute.parent.mkdir(parents=True)
    minute.write_bytes(b"")
    with pytest.raises(ReplayError, match="unsupported file"):
        open_file(minute)
    with pytest.raises(ReplayError, match="no such file"):
        open_file(tmp_path / "tick" / "ibm" / "20131007_trade.zip")


def test_lean_records_built_without_validation_are_valid_models(tmp_path: Path) -> None:
    lines = ["14400054,0,0,1836300,100,Q,1,0", "14400241,1800100,300,0,0,P,800,1"]
    quotes = good(records(lean_zip(tmp_path, "IBM", "20131007", "quote", lines)))
    trades = good(
        records(lean_zip(tmp_path, "IBM", "20131007", "trade", ["14400000,1815200,283,P,1,1"]))
    )
    for record in [*quotes, *trades]:
        assert type(record).model_validate(record.model_dump()) == record


# ---- Avro bytes: identical to AvroSerde.encode ------------------------------------------------
def _encoded(encoder: RecordEncoder, record: Trade | Quote) -> bytes:
    if isinstance(record, Trade):
        middle = trade_middle([getattr(record, n) for n in TRADE_FIELDS])
        kind = TRADE
    else:
        middle = quote_middle([getattr(record, n) for n in QUOTE_FIELDS])
        kind = QUOTE
    return encoder.encode(kind, record.symbol, middle, record.ts_event, record.ts_init)


def test_fast_encoding_is_byte_identical_to_avro_serde_for_lean_rows(tmp_path: Path) -> None:
    serde = AvroSerde()
    encoder = RecordEncoder(serde, {TRADE: "t", QUOTE: "q"})
    trade_lines = ["14430270,1815200,283,P,20002020,0", "14400009.367,1374500,100,D,1,1"]
    quote_lines = ["14400054,0,0,1836300,100,Q,1,0", "14400241,1800100,300,0,0,P,1,1"]
    files = [
        lean_zip(tmp_path, "IBM", "20131007", "trade", trade_lines),
        lean_zip(tmp_path, "IBM", "20131007", "quote", quote_lines),
    ]
    readers = open_files(files)
    stamp = TimestampEncoder()
    checked = 0
    for ts, _, _, kind, symbol, body in merge_items(readers):
        record = to_record(kind, symbol, body, ts)
        tsb = stamp(ts)
        fast = encoder.prefix(kind, symbol) + body.middle + tsb + tsb  # what replay sends
        assert fast == serde.encode(record)
        checked += 1
    assert checked == 4


def test_fast_encoding_matches_avro_serde_for_every_row_of_a_real_lean_day(
    shared_data: Path,
) -> None:
    path = shared_file(shared_data, f"{LEAN_TICK}/ibm/20131007_trade.zip")
    serde = AvroSerde()
    encoder = RecordEncoder(serde, {TRADE: "t", QUOTE: "q"})
    stamp = TimestampEncoder()
    count = 0
    for ts, _, _, kind, symbol, body in open_file(path).items(0):
        tsb = stamp(ts)
        value = encoder.prefix(kind, symbol) + body.middle + tsb + tsb
        assert value == serde.encode(to_record(kind, symbol, body, ts))
        count += 1
    assert count == LEAN_ROWS["ibm/20131007_trade.zip"]


def test_lean_reader_streams_a_million_row_file_in_bounded_memory(shared_data: Path) -> None:
    import tracemalloc

    path = shared_file(shared_data, f"{LEAN_TICK}/aig/20131007_quote.zip")
    reader = open_file(path)
    tracemalloc.start()
    try:
        for count, _item in enumerate(reader.items(0), start=1):
            if count == 300_000:  # tracing is slow; a third of the file makes the point
                break
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 300_000
    assert peak < 24 * 2**20, f"peak {peak / 2**20:.1f} MiB"  # a list of the rows: far more


_int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_codes = st.lists(st.text(min_size=0, max_size=8), max_size=3)


@hyp_settings(max_examples=300, deadline=None)
@given(
    symbol=st.text(min_size=1, max_size=64),
    venue=st.text(max_size=6),
    price=_int64,
    size=_int64,
    side=st.sampled_from(list(AggressorSide)),
    trade_id=st.one_of(st.none(), st.text(max_size=10)),
    conditions=_codes,
    flags=_codes,
    ts=_int64,
    ts_init=_int64,
)
def test_fast_trade_encoding_equals_avro_serde_for_any_values(
    symbol: str,
    venue: str,
    price: int,
    size: int,
    side: AggressorSide,
    trade_id: str | None,
    conditions: list[str],
    flags: list[str],
    ts: int,
    ts_init: int,
) -> None:
    serde = AvroSerde()
    trade = Trade(
        symbol=symbol,
        venue=venue,
        price=price,
        size=size,
        aggressor_side=side,
        trade_id=trade_id,
        conditions=conditions,
        flags=flags,
        source="x",
        ts_event=ts,
        ts_init=ts_init,
    )
    assert _encoded(RecordEncoder(serde, {TRADE: "t"}), trade) == serde.encode(trade)


@hyp_settings(max_examples=300, deadline=None)
@given(
    sides=st.lists(st.one_of(st.none(), _int64), min_size=4, max_size=4),
    conditions=_codes,
    ts=_int64,
)
def test_fast_quote_encoding_equals_avro_serde_for_any_values(
    sides: list[int | None], conditions: list[str], ts: int
) -> None:
    serde = AvroSerde()
    bid_price, bid_size, ask_price, ask_size = sides
    quote = Quote(
        symbol="S",
        venue="V",
        bid_price=bid_price,
        bid_size=bid_size,
        ask_price=ask_price,
        ask_size=ask_size,
        conditions=conditions,
        source="replay",
        ts_event=ts,
        ts_init=ts,
    )
    assert _encoded(RecordEncoder(serde, {QUOTE: "q"}), quote) == serde.encode(quote)


@hyp_settings(max_examples=500, deadline=None)
@given(st.lists(_int64, min_size=1, max_size=50))
def test_timestamp_encoder_equals_plain_avro_long(values: list[int]) -> None:
    stamp = TimestampEncoder()
    for n in sorted(values):
        assert stamp(n) == avro_long(n)


def test_current_schemas_match_the_fast_encoder_layout() -> None:
    check_schemas()


# ---- merge ----------------------------------------------------------------------------------
def test_merge_orders_rows_of_all_files_by_event_time_then_file_then_line(
    tmp_path: Path,
) -> None:
    trades = lean_zip(
        tmp_path, "IBM", "20131007", "trade", ["14400010,1,1,P,1,0", "14400030,2,1,P,1,0"]
    )
    quotes = lean_zip(
        tmp_path,
        "IBM",
        "20131007",
        "quote",
        ["14400010,3,1,0,0,P,1,0", "14400020,4,1,0,0,P,1,0", "14400030,5,1,0,0,P,1,0"],
    )
    csv_file = tmp_path / "extra.csv"
    t0 = et_ns(2013, 10, 7, 4, 0, 0, 20_000_000)
    csv_file.write_text(f"symbol,ts,price,size\nAIG,{t0},6,1\nAIG,{t0 + 5_000_000},7,1\n")
    out = good(list(read_files([trades, quotes, csv_file])))
    order = [
        (r.ts_event, r.price if isinstance(r, Trade) else (r.bid_price or 0) // 100_000)
        for r in out
    ]
    assert [tag for _, tag in order] == [
        1 * 100_000,  # 04:00:00.010 trade (file 0)
        3,  # 04:00:00.010 quote (file 1)
        4,  # 04:00:00.020 quote (file 1) before the CSV row at the same time (file 2)
        6 * 10**9,
        7 * 10**9,  # 04:00:00.025
        2 * 100_000,  # 04:00:00.030 trade (file 0) before quote (file 1)
        5,
    ]
    assert [ts for ts, _ in order] == sorted(ts for ts, _ in order)


def test_same_file_given_twice_is_refused(tmp_path: Path) -> None:
    path = lean_zip(tmp_path, "IBM", "20131007", "trade", ["14400010,1,1,P,1,0"])
    with pytest.raises(ReplayError, match="given twice"):
        open_files([path, path])


def test_read_files_marks_rows_outside_the_window_out_of_range(tmp_path: Path) -> None:
    lines = ["14400000,1,1,P,1,0", "14400001,1,1,P,1,0", "14400002,1,1,P,1,0"]
    path = lean_zip(tmp_path, "IBM", "20131007", "trade", lines)
    start = et_ns(2013, 10, 7, 4, 0, 0, 1_000_000)
    items = list(read_files([path], from_ns=start, to_ns=start + 1_000_000))
    assert [type(i).__name__ for i in items] == ["Skip", "Trade", "Skip"]
    assert {s.reason for s in skips(items)} == {OUT_OF_RANGE}


# ---- generic CSV / NDJSON / Parquet ---------------------------------------------------------
T0 = 1_381_132_800_000_000_000  # 2013-10-07T08:00:00Z


def test_csv_reader_detects_timestamp_forms_and_parses_exact_decimals(tmp_path: Path) -> None:
    path = tmp_path / "ticks.csv"
    path.write_text(
        "symbol,timestamp,price,size,venue,conditions,suspicious\n"
        "AAPL,2013-10-07T08:00:00.123456789Z,181.52,100,XNAS,@|F,0\n"
        "AAPL,2013-10-07T04:00:00.5-04:00,0.1,0.5,,,1\n"
        "AAPL,1381132801,1,1,,,\n"  # epoch seconds
        "AAPL,1381132801500,1,1,,,\n"  # epoch ms
        "AAPL,1381132801500001,1,1,,,\n"  # epoch µs
        "AAPL,1381132801500000002,1,1,,,\n"  # epoch ns
        "AAPL,1381132801.25,1,1,,,\n"  # fractional seconds
    )
    trades = good(records(path))
    assert [t.ts_event for t in trades] == [
        T0 + 123_456_789,
        T0 + 500_000_000,
        T0 + 1_000_000_000,
        T0 + 1_500_000_000,
        T0 + 1_500_001_000,
        T0 + 1_500_000_002,
        T0 + 1_250_000_000,
    ]
    first, second = trades[0], trades[1]
    assert isinstance(first, Trade) and isinstance(second, Trade)
    assert (first.price, first.size) == (181_520_000_000, 100 * 10**9)
    assert (second.price, second.size) == (100_000_000, 500_000_000)
    assert first.conditions == ["@", "F"] and first.venue == "XNAS"
    assert second.flags == ["suspicious"] and second.venue == "XXXX"
    assert first.source == "replay"


def test_csv_quotes_and_malformed_rows(tmp_path: Path) -> None:
    path = tmp_path / "quotes.csv"
    path.write_text(
        "symbol,ts,bid_price,bid_size,ask_price,ask_size,type\n"
        "MSFT,2013-10-07T08:00:00Z,33.5,100,,,\n"
        "MSFT,2013-10-07T08:00:00,33.5,100,,,\n"  # no zone
        "MSFT,2013-10-07T08:00:01Z,abc,100,,,\n"
        "MSFT,2013-10-07T08:00:01Z,1,1\n"  # too few fields
        "\n"
        ",2013-10-07T08:00:01Z,1,1,,,\n"  # no symbol
        "MSFT,2013-10-07T08:00:02Z,,,34,200,quote\n"
        "MSFT,2013-10-07T08:00:02Z,,,34,200,bar\n"
    )
    items = records(path)
    quotes = good(items)
    assert len(quotes) == 2
    bid, ask = quotes
    assert isinstance(bid, Quote) and isinstance(ask, Quote)
    assert (bid.bid_price, bid.ask_price) == (33_500_000_000, None)
    assert (ask.bid_price, ask.ask_size) == (None, 200 * 10**9)
    assert [(s.reason, s.line) for s in skips(items)] == [
        ("bad_timestamp", 3),
        ("bad_price", 4),
        ("bad_field_count", 5),
        ("blank_line", 6),
        ("bad_symbol", 7),
        ("bad_type", 9),
    ]
    assert skips(items)[0].raw == b"MSFT,2013-10-07T08:00:00,33.5,100,,,"


def test_csv_row_the_csv_module_cannot_parse_is_skipped_and_reading_goes_on(
    tmp_path: Path,
) -> None:
    path = tmp_path / "wide.csv"
    path.write_text(
        "symbol,ts,price,size,conditions\n"
        f"A,{T0},1,1,{'x' * 200_000}\n"  # over csv.field_size_limit()
        f"A,{T0 + 1},2,1,\n"
    )
    items = records(path)
    assert [(s.reason, s.line) for s in skips(items)] == [("bad_csv", 2)]
    assert [t.ts_event for t in good(items)] == [T0 + 1]


def test_csv_without_required_columns_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("sym,when,px\nA,1,2\n")
    with pytest.raises(ReplayError, match="no column symbol"):
        open_file(path)


def test_ndjson_reader_keeps_json_numbers_exact(tmp_path: Path) -> None:
    path = tmp_path / "ticks.ndjson.gz"
    rows = [
        '{"symbol": "BTC", "ts": "2013-10-07T08:00:00Z", "price": 0.1, "size": 0.00000001}',
        '{"symbol": "BTC", "ts": 1381132800000, "price": 19000.123456789, "size": 2,'
        ' "aggressor_side": "SELL", "trade_id": "x1", "conditions": ["a", "b"]}',
        "not json",
        "[1, 2]",
        '{"symbol": "BTC", "ts": 1381132800000, "price": 1e400, "size": 1}',
    ]
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(rows) + "\n")
    items = records(path)
    first, second = good(items)
    assert isinstance(first, Trade) and isinstance(second, Trade)
    assert (first.price, first.size) == (100_000_000, 10)
    assert (second.price, second.aggressor_side, second.trade_id) == (
        19000_123_456_789,
        AggressorSide.SELLER,
        "x1",
    )
    assert second.conditions == ["a", "b"]
    assert [(s.reason, s.line) for s in skips(items)] == [
        ("bad_json", 3),
        ("bad_json", 4),
        ("bad_price", 5),
    ]


def test_parquet_reader_streams_record_batches_with_exact_timestamps(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    n = 20_000
    table = pa.table(
        {
            "symbol": ["ES"] * n,
            "ts_event": pa.array([T0 + i for i in range(n)], pa.timestamp("ns", tz="UTC")),
            "price": pa.array([Decimal("4500.25")] * n, pa.decimal128(12, 4)),
            "size": pa.array([1.5] * n, pa.float64()),
        }
    )
    path = tmp_path / "ticks.parquet"
    pq.write_table(table, path, row_group_size=3_000)
    reader = open_file(path)
    parsed = only_trades(list(reader))
    assert len(parsed) == n == reader.rows
    assert [t.ts_event for t in parsed[:3]] == [T0, T0 + 1, T0 + 2]
    assert parsed[-1].ts_event == T0 + n - 1
    assert {(t.price, t.size) for t in parsed} == {(4_500_250_000_000, 1_500_000_000)}


def test_parquet_timestamps_without_zone_are_refused_per_row(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table(
        {
            "symbol": ["ES", "ES"],
            "ts": pa.array([T0, T0 + 1], pa.timestamp("ns")),
            "bid_price": [1.25, 1.5],
        }
    )
    path = tmp_path / "naive.parquet"
    pq.write_table(table, path)
    items = records(path)
    assert [(s.reason, s.line) for s in skips(items)] == [
        ("bad_timestamp", 1),
        ("bad_timestamp", 2),
    ]
    assert json.loads(skips(items)[0].raw)["symbol"] == "ES"


# ---- options ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2013-10-07T08:00:00Z", T0),
        ("2013-10-07T04:00:00-04:00", T0),
        ("2013-10-07 08:00:00.000000001+00:00", T0 + 1),
        (str(T0), T0),
        ("0", 0),
    ],
)
def test_bounds_are_iso_with_zone_or_epoch_nanoseconds(text: str, expected: int) -> None:
    assert parse_bound(text) == expected


@pytest.mark.parametrize("text", ["2013-10-07T08:00:00", "1381132800.5", "yesterday"])
def test_bounds_without_zone_or_unit_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_bound(text)


def test_epoch_unit_is_detected_from_magnitude() -> None:
    assert parse_timestamp(1_381_132_800) == T0
    assert parse_timestamp(1_381_132_800_000) == T0
    assert parse_timestamp(1_381_132_800_000_000) == T0
    assert parse_timestamp(T0) == T0
    assert parse_timestamp(Decimal("1381132800.000000001")) == T0 + 1


@pytest.mark.parametrize(
    ("speed", "factor"), [("max", None), ("1x", 1.0), ("10x", 10.0), ("2.5", 2.5), (0.5, 0.5)]
)
def test_speed_forms(speed: str | float, factor: float | None) -> None:
    assert parse_speed(speed) == factor


@pytest.mark.parametrize("speed", ["0x", "-1", "fast", "nan"])
def test_bad_speed_is_refused(speed: str) -> None:
    with pytest.raises(ReplayError):
        parse_speed(speed)


# ---- against the real broker ------------------------------------------------------------------
def _consume_all(settings: Settings, topic: str, expected: int) -> Iterator[Message]:
    consumer = Consumer(consumer_config(settings, f"verify-{uuid.uuid4().hex[:8]}"))
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
        seen = 0
        idle = 0
        while seen < expected and idle < 20:
            batch = consumer.consume(10_000, timeout=0.5)
            idle = 0 if batch else idle + 1
            for msg in batch:
                assert msg.error() is None, msg.error()
                seen += 1
                yield msg
    finally:
        consumer.close()


def _end_total(settings: Settings, topic: str) -> int:
    return sum(end_offsets(settings, topic).values())


@pytest.mark.integration
def test_replay_of_one_lean_symbol_day_lands_every_row_exactly(
    settings: Settings, shared_data: Path
) -> None:
    trade_file = shared_file(shared_data, f"{LEAN_TICK}/ibm/20131007_trade.zip")
    quote_file = shared_file(shared_data, f"{LEAN_TICK}/ibm/20131007_quote.zip")
    ensure_topics(settings, topic_catalog())
    names = TopicNames(settings.topic_prefix)

    stats = replay([trade_file, quote_file], settings)

    n_trades, n_quotes = LEAN_ROWS["ibm/20131007_trade.zip"], LEAN_ROWS["ibm/20131007_quote.zip"]
    assert stats.ok and stats.reconciles
    assert stats.read == n_trades + n_quotes
    assert stats.read == stats.produced_total + stats.skipped_total + stats.failed
    assert stats.skipped_total == stats.failed == 0
    assert stats.produced == {names.trades: n_trades, names.quotes: n_quotes}
    # the broker agrees: end offsets are the SOURCES.md row counts minus reported skips
    assert _end_total(settings, names.trades) == n_trades - 0
    assert _end_total(settings, names.quotes) == n_quotes - 0
    assert _end_total(settings, names.dead_letter("feeds")) == 0

    serde = AvroSerde()
    topics: tuple[tuple[str, type[Trade] | type[Quote], int], ...] = (
        (names.trades, Trade, n_trades),
        (names.quotes, Quote, n_quotes),
    )
    for topic, model, count in topics:
        last_ts: dict[int, int] = {}
        seen = suspicious = 0
        for msg in _consume_all(settings, topic, count):
            value = msg.value()
            assert value is not None
            record: Trade | Quote = serde.decode_as(value, model, topic=topic)
            kind, ms = msg.timestamp()
            assert kind == TIMESTAMP_CREATE_TIME
            assert ms == record.ts_event // 1_000_000  # Kafka timestamp = event time
            assert msg.key() == b"IBM" == record.symbol.encode()
            assert record.ts_event >= last_ts.get(msg.partition(), 0)  # event order per partition
            last_ts[msg.partition()] = record.ts_event
            suspicious += record.flags == ["suspicious"]
            seen += 1
        assert seen == count
        if model is Quote:
            assert suspicious == 1  # the one AlgoSeek-flagged IBM quote of the day is kept


@pytest.mark.integration
def test_replay_of_every_lean_tick_file_matches_sources_row_counts(
    settings: Settings, shared_data: Path
) -> None:
    files = [shared_file(shared_data, f"{LEAN_TICK}/{rel}") for rel in LEAN_ROWS]
    ensure_topics(settings, topic_catalog())
    names = TopicNames(settings.topic_prefix)

    stats = replay(files, settings)

    trades = sum(n for rel, n in LEAN_ROWS.items() if rel.endswith("trade.zip"))
    quotes = sum(n for rel, n in LEAN_ROWS.items() if rel.endswith("quote.zip"))
    assert stats.ok
    assert (stats.read, stats.skipped_total, stats.failed) == (trades + quotes, 0, 0)
    assert stats.produced == {names.trades: trades, names.quotes: quotes}
    assert _end_total(settings, names.trades) == trades
    assert _end_total(settings, names.quotes) == quotes


@pytest.mark.integration
def test_replay_dead_letters_malformed_rows_and_reconciles_exactly(
    settings: Settings, tmp_path: Path
) -> None:
    ensure_topics(settings, topic_catalog())
    names = TopicNames(settings.topic_prefix)
    lean = lean_zip(
        tmp_path,
        "IBM",
        "20131007",
        "trade",
        [
            "14400000,1815200,283,P,1,0",
            "14400001,oops,283,P,1,0",
            "14400002,1815200,283,P,1,0",
            "14400003,1815200,283,P",
            "57600000,1815200,283,P,1,0",  # 16:00 ET, after --to
        ],
    )
    csv_file = tmp_path / "quotes.csv"
    csv_file.write_text(
        "symbol,ts,bid_price,bid_size\n"
        "IBM,2013-10-07T08:00:00.0015Z,181,5\n"
        "IBM,2013-10-07T08:00:00.002,181,5\n"  # no zone
        "IBM,2013-10-07T07:00:00Z,181,5\n"  # before --from
    )
    start = et_ns(2013, 10, 7, 4)
    stats = replay([lean, csv_file], settings, from_ns=start, to_ns=start + 3_600 * 10**9)

    assert stats.read == 8
    assert stats.produced == {names.trades: 2, names.quotes: 1}
    assert stats.skipped == {
        "bad_price": 1,
        "bad_field_count": 1,
        "bad_timestamp": 1,
        OUT_OF_RANGE: 2,
    }
    assert stats.failed == 0
    assert stats.read == stats.produced_total + stats.skipped_total + stats.failed
    assert stats.dead_lettered == 3 and stats.ok
    assert _end_total(settings, names.trades) == 2
    assert _end_total(settings, names.quotes) == 1
    dlq = names.dead_letter("feeds")
    assert _end_total(settings, dlq) == 3
    letters = {
        msg.value(): dict(msg.headers() or []) for msg in _consume_all(settings, dlq, expected=3)
    }
    assert set(letters) == {
        b"14400001,oops,283,P,1,0",
        b"14400003,1815200,283,P",
        b"IBM,2013-10-07T08:00:00.002,181,5",
    }
    headers = letters[b"14400001,oops,283,P,1,0"]
    assert headers["dlq.reason"] == b"bad_price"
    assert headers["dlq.line"] == b"2"
    assert headers["dlq.file"] == str(lean).encode()
    assert headers["dlq.app"] == b"feeds"


@pytest.mark.integration
def test_refused_deliveries_are_counted_as_failed_and_still_reconcile(
    settings: Settings, tmp_path: Path
) -> None:
    ensure_topics(settings, topic_catalog())
    names = TopicNames(settings.topic_prefix)
    path = tmp_path / "ticks.ndjson"
    huge = json.dumps(["C" * 1_100_000])  # the record exceeds the producer's message.max.bytes
    path.write_text(
        '{"symbol": "IBM", "ts": 1381132800000, "price": "181.52", "size": 1}\n'
        f'{{"symbol": "IBM", "ts": 1381132800001, "price": "181.52", "size": 1,'
        f' "conditions": {huge}}}\n'
        '{"symbol": "IBM", "ts": 1381132800002, "price": "181.53", "size": 1}\n'
    )

    stats = replay([path], settings)

    assert stats.read == 3
    assert stats.produced == {names.trades: 2, names.quotes: 0}
    assert stats.failed == 1 and "too large" in stats.errors[0].lower()
    assert stats.read == stats.produced_total + stats.skipped_total + stats.failed
    assert stats.reconciles and not stats.ok
    assert _end_total(settings, names.trades) == 2


@pytest.mark.integration
def test_paced_replay_waits_event_time_over_speed(settings: Settings, tmp_path: Path) -> None:
    ensure_topics(settings, topic_catalog())
    lines = ["14400000,1,1,P,1,0", "14400000,1,1,P,1,0", "14401000,1,1,P,1,0", "14404000,1,1,P,1,0"]
    path = lean_zip(tmp_path, "IBM", "20131007", "trade", lines)
    now = [100.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    stats = replay([path], settings, speed="10x", clock=lambda: now[0], sleep=sleep)

    assert stats.ok and stats.produced_total == 4
    assert sum(waits) == pytest.approx(0.4)  # 4 s of event time at 10x
    assert now[0] == pytest.approx(100.4)


@pytest.mark.integration
def test_replay_refuses_missing_topics_before_producing(settings: Settings, tmp_path: Path) -> None:
    path = lean_zip(tmp_path, "IBM", "20131007", "trade", ["14400000,1,1,P,1,0"])
    with pytest.raises(ReplayError, match="do not exist"):
        replay([path], settings)


@pytest.mark.integration
def test_cli_replay_prints_the_reconciliation_and_exits_zero(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from omniquant.cli import app

    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.chdir(tmp_path)  # no stray .env
    path = lean_zip(
        tmp_path, "IBM", "20131007", "trade", ["14400000,1,1,P,1,0", "14400001,x,1,P,1,0"]
    )
    prefix = f"cli{uuid.uuid4().hex[:8]}."
    result = CliRunner().invoke(
        app,
        [
            "replay",
            str(path),
            "--topic-prefix",
            prefix,
            "--from",
            "2013-10-07T08:00:00Z",
            "--to",
            str(T0 + 3_600 * 10**9),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "2 = 1 + 1 + 0 ✓" in result.output
    assert "skipped: bad_price" in result.output

    missing = CliRunner().invoke(app, ["replay", str(tmp_path / "nope.csv")])
    assert missing.exit_code == 1
