"""The exact field readers every venue shares (producers._fields), and one FeedParseError.

Properties: any decimal with at most 9 fractional digits inside the int64 fixed-point range
comes back as exactly its units; floats and bools are refused naming the field. Then one
malformed input per venue, from the payloads the adapters' tests already use, shows that
every venue speaks the same error with a reason.
"""

from __future__ import annotations

import json
import pickle
import struct
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_alpaca_adapter import parse_one, sdk_messages, via_msgpack
from test_kite_adapter import INFY, _frame, _mock

from core.errors import FeedParseError, OmniquantError
from producers._fields import (
    build,
    decimal_from_double,
    decimal_value,
    fixed_field,
    fixed_value,
    int_field,
    loads_exact,
    loads_object,
    message_list,
    optional_fixed_field,
    optional_int_field,
    required,
    text_field,
    timestamp_value,
)
from producers.alpaca.parsing import decode_market_frame
from producers.base import Malformed
from producers.kite import PostbackRejected, parse_postback
from producers.kite.messages import parse_text_message
from producers.kite.orders import order_to_records
from producers.kite.ticks import decode_frame
from producers.polygon.parsing import parse_ws_frame, trade_from_ws
from schemas.fixedpoint import INT64_MAX, from_fixed
from schemas.models import Trade

MAX_VALUE = Decimal(INT64_MAX).scaleb(-9)  # 9223372036.854775807


def reason_of(call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(FeedParseError) as err:
        call(*args, **kwargs)
    return err.value.reason


# ---- the error ---------------------------------------------------------------------------
def test_feed_parse_error_is_in_the_tree_with_a_snake_case_reason() -> None:
    error = FeedParseError("bad_decimal", "field 'p' is a float")
    assert isinstance(error, OmniquantError) and not isinstance(error, ValueError)
    assert (error.reason, str(error)) == ("bad_decimal", "field 'p' is a float")
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.reason, str(copy)) == (FeedParseError, "bad_decimal", str(error))
    for bad in ("Bad Decimal", "bad-decimal", "", "_x", "x_"):
        with pytest.raises(ValueError, match="snake_case"):
            FeedParseError(bad, "detail")


def test_malformed_from_error_carries_reason_and_message() -> None:
    error = FeedParseError("missing_field", "field 'p' is missing")
    bad = Malformed.from_error("polygon", b"raw", error, 7, where="message 2 of 3")
    assert bad == Malformed("polygon", b"raw", "missing_field", "message 2 of 3: " + str(error), 7)
    assert Malformed.from_error("kite", b"", error, 1).error == "field 'p' is missing"


# ---- JSON --------------------------------------------------------------------------------
def test_exact_json_keeps_decimal_text_and_ints() -> None:
    decoded = loads_exact(b'{"p": 161.87, "s": 300, "e": 1e-9, "big": 12345678901234567890}')
    assert decoded == {
        "p": Decimal("161.87"),
        "s": 300,
        "e": Decimal("1e-9"),
        "big": 12345678901234567890,
    }
    assert type(decoded["s"]) is int and type(decoded["big"]) is int


@pytest.mark.parametrize(
    "raw",
    [
        b'{"p": NaN}',
        b'{"p": Infinity}',
        b'{"p": -Infinity}',
        b"not json",
        b"\xff\xfe[]",
        b"[" * 100_000,  # nesting deeper than the decoder's recursion
        b"",
    ],
)
def test_exact_json_refuses_non_numbers_and_garbage(raw: bytes) -> None:
    assert reason_of(loads_exact, raw) == "bad_json"


def test_frame_shapes() -> None:
    assert loads_object('{"a": 1}') == {"a": 1}
    assert reason_of(loads_object, "[1]") == "bad_frame"
    assert message_list({"a": 1}) == [{"a": 1}]
    assert message_list([1, 2]) == [1, 2]
    assert reason_of(message_list, "text") == "bad_frame"


# ---- decimals and fixed point ------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Decimal("161.87"), Decimal("161.87")),
        ("105.8988475", Decimal("105.8988475")),
        (" 1.5 ", Decimal("1.5")),
        ("-37.63", Decimal("-37.63")),
        ("1e3", Decimal("1000")),
        (".5", Decimal("0.5")),
        (12, Decimal(12)),
    ],
)
def test_decimal_value_reads_ints_decimals_and_decimal_text(value: Any, expected: Decimal) -> None:
    result = decimal_value(value, "price")
    assert result == expected and isinstance(result, Decimal)


@pytest.mark.parametrize(
    "value",
    [
        True,
        False,
        1.5,
        float("nan"),
        "abc",
        "NaN",
        "Infinity",
        "1_000",
        "12.3.4",
        "",
        None,
        [1],
        Decimal("NaN"),
        Decimal("-Infinity"),
    ],
)
def test_decimal_value_refuses_what_is_not_an_exact_finite_decimal(value: Any) -> None:
    with pytest.raises(FeedParseError, match="'price'") as err:
        decimal_value(value, "price")
    assert err.value.reason == "bad_decimal"


fractional_digits = st.integers(min_value=0, max_value=9)


@given(
    decimals=fractional_digits.flatmap(
        lambda places: st.decimals(
            min_value=-MAX_VALUE,
            max_value=MAX_VALUE,
            places=places,
            allow_nan=False,
            allow_infinity=False,
        )
    )
)
def test_every_decimal_with_at_most_nine_places_in_range_round_trips_exactly(
    decimals: Decimal,
) -> None:
    units = fixed_value(decimals, "price")
    assert from_fixed(units) == decimals
    assert units == int(decimals.scaleb(9))
    assert fixed_value(str(decimals), "price") == units  # the vendor's text, same units


@given(units=st.integers(min_value=-INT64_MAX, max_value=INT64_MAX))
def test_every_int64_unit_count_round_trips_through_its_decimal_text(units: int) -> None:
    text = str(Decimal(units).scaleb(-9))
    assert fixed_value(text, "size") == units


@given(value=st.floats(allow_nan=True, allow_infinity=True))
def test_floats_are_refused_naming_the_field(value: float) -> None:
    with pytest.raises(FeedParseError, match="'bid_price'") as err:
        fixed_value(value, "bid_price")
    assert err.value.reason == "bad_decimal"


@given(value=st.booleans(), field=st.sampled_from(["p", "size", "average_price"]))
def test_bools_are_refused_naming_the_field(value: bool, field: str) -> None:
    with pytest.raises(FeedParseError, match=repr(field)) as err:
        fixed_value(value, field)
    assert err.value.reason == "bad_decimal"


@pytest.mark.parametrize(
    "value",
    [
        "0.0000000001",  # finer than 1e-9
        "1.0000000000000000000000000000001",  # more digits than Decimal's context holds
        str(MAX_VALUE + Decimal("1e-9")),  # one unit beyond int64
        "-9223372036.854775808",  # int64's minimum: not symmetric, refused
        "1e30",
        "1e999999",  # refused before any arithmetic
        "1e-999999",
    ],
)
def test_values_our_records_cannot_hold_are_bad_values(value: str) -> None:
    with pytest.raises(FeedParseError, match="'p'") as err:
        fixed_value(value, "p")
    assert err.value.reason == "bad_value"


def test_rounded_reads_averages_half_even_to_nine_places() -> None:
    assert fixed_value("177.9875625", "vw", rounded=True) == 177_987_562_500
    assert fixed_value("0.00000000050", "vw", rounded=True) == 0  # half to even (0)
    assert fixed_value("0.0000000015", "vw", rounded=True) == 2  # half to even (2)
    assert reason_of(fixed_value, "1e999999", "vw", rounded=True) == "bad_value"


def test_trailing_zeros_beyond_nine_places_are_still_exact() -> None:
    assert fixed_value("1.500000000000", "p") == 1_500_000_000


@given(value=st.floats(allow_nan=False, allow_infinity=False))
def test_a_double_becomes_the_shortest_decimal_that_round_trips(value: float) -> None:
    dec = decimal_from_double(value)
    assert dec == Decimal(repr(value)) and float(dec) == value


def test_non_finite_doubles_are_refused_after_conversion() -> None:
    for value in (float("nan"), float("inf"), float("-inf")):
        assert reason_of(decimal_value, decimal_from_double(value), "p") == "bad_decimal"


# ---- fields of a message -----------------------------------------------------------------
def test_field_readers_name_the_field_and_say_why() -> None:
    msg = {"sym": "AAPL", "x": 12, "p": Decimal("1.5"), "empty": "", "flag": True, "none": None}
    assert required(msg, "sym") == "AAPL"
    assert text_field(msg, "sym") == "AAPL"
    assert int_field(msg, "x") == 12
    assert fixed_field(msg, "p") == 1_500_000_000
    assert optional_fixed_field(msg, "none") is None and optional_int_field(msg, "gone") is None
    assert optional_fixed_field(msg, "p") == 1_500_000_000 and optional_int_field(msg, "x") == 12
    assert reason_of(required, msg, "none") == "missing_field"
    assert reason_of(text_field, msg, "gone") == "missing_field"
    assert reason_of(text_field, msg, "empty") == "bad_field"
    assert reason_of(text_field, msg, "x") == "bad_field"
    assert reason_of(int_field, msg, "flag") == "bad_field"
    assert reason_of(int_field, msg, "p") == "bad_field"
    with pytest.raises(FeedParseError, match="'flag'"):
        fixed_field(msg, "flag")


def test_build_turns_a_refused_value_into_bad_value() -> None:
    fields = dict(symbol="", venue="XNAS", price=1, size=1, source="t", ts_event=1, ts_init=1)
    with pytest.raises(FeedParseError, match=r"Trade\.symbol") as err:
        build(Trade, **fields)
    assert err.value.reason == "bad_value"
    assert build(Trade, **{**fields, "symbol": "AAPL"}).symbol == "AAPL"


# ---- time --------------------------------------------------------------------------------
IST = timedelta(hours=5, minutes=30)


@pytest.mark.parametrize(
    ("text", "offset", "expected_ns"),
    [
        ("2021-02-22T15:51:45.335689322Z", None, 1_614_009_105_335_689_322),
        ("2022-04-19T13:45:04.981350886-04:00", None, 1_650_390_304_981_350_886),
        ("2022-04-11T14:30:00.008348000000Z", None, 1_649_687_400_008_348_000),
        ("2022-03-03 09:24:25", IST, 1_646_279_665_000_000_000),  # Kite: IST wall clock
        ("2022-03-03T09:24:25+05:30", IST, 1_646_279_665_000_000_000),
        ("2022-03-03T03:54:25Z", IST, 1_646_279_665_000_000_000),  # an offset wins
    ],
)
def test_timestamps_are_exact_utc_nanoseconds(
    text: str, offset: timedelta | None, expected_ns: int
) -> None:
    assert timestamp_value(text, "t", naive_utc_offset=offset) == expected_ns


@pytest.mark.parametrize(
    "value",
    [
        "2021-02-22 15:51:44",  # no offset, and none to assume
        "2021-02-30T00:00:00Z",
        "2021-02-22T15:51:44.1234567891Z",
        "2021-02-22T15:51:44+24:00",
        "yesterday",
        1_614_009_104,
        None,
    ],
)
def test_unreadable_timestamps_are_refused_naming_the_field(value: Any) -> None:
    with pytest.raises(FeedParseError, match="'timestamp'") as err:
        timestamp_value(value, "timestamp")
    assert err.value.reason == "bad_timestamp"


# ---- every venue speaks FeedParseError ---------------------------------------------------
def test_polygon_bad_price_is_a_feed_parse_error_and_a_malformed_with_its_reason() -> None:
    frame = b'[{"ev":"T","sym":"X","x":12,"p":"abc","s":1,"t":1}]'
    with pytest.raises(FeedParseError) as err:
        trade_from_ws(json.loads(frame)[0], received_ns=1)
    (bad,) = parse_ws_frame(frame, received_ns=1)
    assert isinstance(bad, Malformed) and bad.reason == err.value.reason == "bad_decimal"


def test_alpaca_bad_price_and_bad_frame_are_feed_parse_errors(shared_data: Path) -> None:
    message = via_msgpack({**sdk_messages(shared_data)[1], "p": "abc"})
    assert reason_of(parse_one, message) == "bad_decimal"
    assert reason_of(decode_market_frame, b"\xc1") == "bad_msgpack"
    assert reason_of(decode_market_frame, msgpack.packb("hello")) == "bad_frame"


def test_kite_ticks_text_orders_and_postbacks_are_feed_parse_errors(shared_data: Path) -> None:
    [truncated] = decode_frame(_frame(struct.pack(">Ii", INFY, 1))[:-2], received_ns=1)
    assert isinstance(truncated, Malformed) and truncated.reason == "truncated_packet"
    assert reason_of(parse_text_message, "{not json") == "bad_json"
    assert reason_of(parse_text_message, '{"type": "ticker"}') == "unknown_message"
    order = loads_exact(_mock(shared_data, "postback.json").read_bytes())
    assert reason_of(
        order_to_records, {**order, "average_price": 470.5}, previous=None, ts_init=1
    ) == ("bad_decimal")
    with pytest.raises(FeedParseError) as err:  # a postback rejection is one too
        parse_postback(order, "not-the-secret", ts_init=1)
    assert isinstance(err.value, PostbackRejected) and err.value.reason == "bad_checksum"
