"""Exact readers of vendor fields, shared by every venue's parsing (private to ``producers``).

Each reader takes a value and its field name (or a message and a key), returns it in our
terms and raises :class:`~core.errors.FeedParseError` naming the field when it does not
fit; the reasons are the ones listed there. Money stays exact from the vendor's text to
our int64 fixed-point units:

* :func:`loads_exact` decodes JSON with every non-integer number as a :class:`Decimal` made
  from its text (``parse_float=Decimal``); integers stay ints; NaN and ±Infinity are
  refused (``bad_json``).
* :func:`decimal_value` accepts int, Decimal and decimal text only. A float is refused
  (``bad_decimal``): a price that reached a float has already been rounded to binary. The
  one codec that carries binary doubles (msgpack, Alpaca) converts them where it decodes,
  with :func:`decimal_from_double`.
* :func:`fixed_value` turns that decimal into fixed-point units; finer than 1e-9 or beyond
  the int64 range is ``bad_value``, unless ``rounded`` (averages: half-even to 1e-9).
* :func:`timestamp_value` reads RFC-3339 text (up to 9 fraction digits, any offset) into
  int UTC nanoseconds without a float or a ``datetime`` fraction on the way.
* :func:`build` makes a record, turning the model's validation error into ``bad_value``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Final, TypeVar

from pydantic import BaseModel, ValidationError

from core.errors import FeedParseError
from schemas.fixedpoint import SCALE, FixedPointError, to_fixed

__all__ = [
    "build",
    "decimal_from_double",
    "decimal_value",
    "fixed_field",
    "fixed_value",
    "int_field",
    "loads_exact",
    "loads_object",
    "message_list",
    "optional_fixed_field",
    "optional_int_field",
    "required",
    "text_field",
    "timestamp_value",
]

_M = TypeVar("_M", bound=BaseModel)

_QUANTUM: Final = Decimal(1).scaleb(-SCALE)
#: |value| ≥ 10**10 is beyond int64 units at scale 1e-9 (9.22e9); refused before any
#: arithmetic, so a vendor's "1e999999" costs nothing.
_MAX_ADJUSTED: Final = 9
_DECIMAL_TEXT: Final = re.compile(r"\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\s*\Z")
_RFC3339: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))?\Z"
)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND: Final = timedelta(seconds=1)
_NS: Final = 1_000_000_000


# ---- frames ------------------------------------------------------------------------------
def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number we accept")


def loads_exact(raw: bytes | bytearray | str) -> Any:
    """JSON → Python, non-integer numbers as exact Decimals. Raises ``bad_json``."""
    try:
        return json.loads(raw, parse_float=Decimal, parse_constant=_refuse_constant)
    except (ValueError, TypeError, RecursionError) as exc:  # UnicodeDecodeError too
        raise FeedParseError("bad_json", f"not JSON: {exc}") from None


def loads_object(raw: bytes | bytearray | str) -> dict[str, Any]:
    """A frame that must be one JSON object. Raises ``bad_json`` or ``bad_frame``."""
    decoded = loads_exact(raw)
    if not isinstance(decoded, dict):
        raise FeedParseError(
            "bad_frame", f"frame is a JSON {type(decoded).__name__}, not an object"
        )
    return decoded


def message_list(decoded: Any) -> list[Any]:
    """A decoded frame as its messages: a list as is, one object as a list of one."""
    if isinstance(decoded, dict):
        return [decoded]
    if not isinstance(decoded, list):
        raise FeedParseError("bad_frame", f"frame is a {type(decoded).__name__}, not a list")
    return decoded


# ---- numbers -----------------------------------------------------------------------------
def decimal_from_double(value: float) -> Decimal:
    """A binary double from a codec that has no decimals (msgpack) → the decimal it was
    written from: its shortest repr (``177.79``, not ``177.789999...``). Non-finite doubles
    become NaN/Infinity, which :func:`decimal_value` then refuses."""
    return Decimal(repr(value))


def decimal_value(value: Any, name: str) -> Decimal:
    """An exact finite decimal from int, Decimal or decimal text. Raises ``bad_decimal``."""
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    elif isinstance(value, str) and _DECIMAL_TEXT.match(value):
        result = Decimal(value)
    elif isinstance(value, float):
        raise FeedParseError(
            "bad_decimal", f"field {name!r} is a float ({value!r}): not exact, decimal text wanted"
        )
    else:
        raise FeedParseError("bad_decimal", f"field {name!r} is not a decimal: {value!r:.80}")
    if not result.is_finite():
        raise FeedParseError("bad_decimal", f"field {name!r} is not finite: {value!r:.80}")
    return result


def fixed_value(value: Any, name: str, *, rounded: bool = False) -> int:
    """Fixed-point units (scale 1e-9) of an exact decimal. ``rounded`` (averages only)
    rounds half-even to 1e-9 instead of refusing finer digits. Raises ``bad_decimal`` or
    ``bad_value``."""
    dec = decimal_value(value, name)
    if dec.adjusted() > _MAX_ADJUSTED:
        raise FeedParseError(
            "bad_value", f"field {name!r}: {value!r:.80} is outside the int64 fixed-point range"
        )
    exact = dec.quantize(_QUANTUM, rounding=ROUND_HALF_EVEN)  # ≤ 19 digits: never inexact
    if exact != dec and not rounded:
        raise FeedParseError(
            "bad_value", f"field {name!r}: {value!r:.80} has more than {SCALE} decimal places"
        )
    try:
        return to_fixed(exact)
    except FixedPointError as exc:
        raise FeedParseError("bad_value", f"field {name!r}: {exc}") from None


# ---- fields of a message -----------------------------------------------------------------
def required(msg: Mapping[str, Any], key: str) -> Any:
    """``msg[key]``; absent or null is ``missing_field``."""
    value = msg.get(key)
    if value is None:
        raise FeedParseError("missing_field", f"field {key!r} is missing")
    return value


def text_field(msg: Mapping[str, Any], key: str) -> str:
    """A required non-empty string. Raises ``missing_field`` or ``bad_field``."""
    value = required(msg, key)
    if not isinstance(value, str) or not value:
        raise FeedParseError("bad_field", f"field {key!r} must be a non-empty string: {value!r}")
    return value


def int_field(msg: Mapping[str, Any], key: str) -> int:
    """A required integer (a bool is not one). Raises ``missing_field`` or ``bad_field``."""
    value = required(msg, key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise FeedParseError("bad_field", f"field {key!r} must be an integer, got {value!r:.80}")
    return value


def optional_int_field(msg: Mapping[str, Any], key: str) -> int | None:
    return None if msg.get(key) is None else int_field(msg, key)


def fixed_field(msg: Mapping[str, Any], key: str, *, rounded: bool = False) -> int:
    """A required money/quantity field as fixed-point units (see :func:`fixed_value`)."""
    return fixed_value(required(msg, key), key, rounded=rounded)


def optional_fixed_field(msg: Mapping[str, Any], key: str, *, rounded: bool = False) -> int | None:
    value = msg.get(key)
    return None if value is None else fixed_value(value, key, rounded=rounded)


# ---- time --------------------------------------------------------------------------------
def timestamp_value(value: Any, name: str, *, naive_utc_offset: timedelta | None = None) -> int:
    """RFC-3339 text → int UTC ns: ``2021-02-22T15:51:45.335689322Z``, any ``±hh:mm``
    offset, ``T`` or a space between date and time, up to 9 fraction digits (more only if
    they are zeros). Text without an offset is read at ``naive_utc_offset`` (a venue's
    fixed local time, e.g. IST +05:30); without one it is refused. Raises ``bad_timestamp``.
    """
    if not isinstance(value, str):
        raise FeedParseError("bad_timestamp", f"field {name!r} is a {type(value).__name__}")
    match = _RFC3339.match(value)
    if match is None or (match.group(8, 9) == (None, None) and naive_utc_offset is None):
        raise FeedParseError(
            "bad_timestamp", f"field {name!r}: not an RFC-3339 time: {value!r:.80}"
        )
    year, month, day, hour, minute, second = (int(g) for g in match.group(1, 2, 3, 4, 5, 6))
    fraction = match.group(7) or ""
    if len(fraction) > 9:
        if fraction[9:].strip("0"):
            raise FeedParseError(
                "bad_timestamp", f"field {name!r}: finer than nanoseconds: {value!r:.80}"
            )
        fraction = fraction[:9]
    try:
        whole = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError as exc:
        raise FeedParseError("bad_timestamp", f"field {name!r}: {value!r:.80}: {exc}") from None
    seconds = (whole - _EPOCH) // _SECOND
    if match.group(9):
        offset_h, offset_m = int(match.group(10)), int(match.group(11))
        if offset_h > 23 or offset_m > 59:
            raise FeedParseError("bad_timestamp", f"field {name!r}: bad offset in {value!r:.80}")
        offset = offset_h * 3600 + offset_m * 60
        seconds -= offset if match.group(9) == "+" else -offset
    elif match.group(8) is None and naive_utc_offset is not None:
        seconds -= naive_utc_offset // _SECOND
    return seconds * _NS + int(fraction.ljust(9, "0"))


# ---- records -----------------------------------------------------------------------------
def build(model: type[_M], **fields: Any) -> _M:
    """``model(**fields)``; a value the record refuses is ``bad_value`` naming the field."""
    try:
        return model(**fields)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise FeedParseError("bad_value", f"{model.__name__}.{where}: {first['msg']}") from None
