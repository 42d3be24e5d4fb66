"""Time conversions for replay: local wall clock → UTC ns, and timestamp text → UTC ns.

Everything here is exact integer arithmetic; no float ever touches a timestamp.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Final
from zoneinfo import ZoneInfo

NS_PER_S: Final = 1_000_000_000
NS_PER_MS: Final = 1_000_000
DAY_NS: Final = 86_400 * NS_PER_S
EPOCH_ORDINAL: Final = date(1970, 1, 1).toordinal()
NEW_YORK: Final = ZoneInfo("America/New_York")

# Epoch numbers carry no unit, so it is read from the magnitude of the integer part:
#   |v| < 1e11 → seconds, < 1e14 → milliseconds, < 1e17 → microseconds, else nanoseconds.
# Every date from 1973-03-03 to 5138 is unambiguous (seconds end at 1e11, ms start at 1e11).
_EPOCH_UNITS: Final = ((10**11, NS_PER_S), (10**14, NS_PER_MS), (10**17, 1_000))

_ISO_RE: Final = re.compile(
    r"(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}(?::\d{2})?)(?:[.,](\d{1,9}))?"
    r"(Z|z|[+-]\d{2}(?::?\d{2})?)?"
)
_NUMBER_RE: Final = re.compile(r"[+-]?\d+(?:\.\d+)?")


class TimestampError(ValueError):
    """A timestamp that cannot be turned into exact UTC nanoseconds."""


class LocalDay:
    """One calendar day in a time zone: wall-clock ns since local midnight → UTC ns.

    The wall-clock reading is what Lean/AlgoSeek files store ("ms since midnight" means the
    local clock reading, as Lean's own reader adds it to the date before converting). On a day
    without an offset change the conversion is one addition; on a DST day each value asks
    ``zoneinfo`` (a 02:xx reading that does not exist or occurs twice resolves with fold=0,
    i.e. the offset in force before the change).
    """

    __slots__ = ("_base", "_midnight_ns", "_start", "day", "tz")

    def __init__(self, day: date, tz: ZoneInfo = NEW_YORK) -> None:
        self.day = day
        self.tz = tz
        self._midnight_ns = (day.toordinal() - EPOCH_ORDINAL) * DAY_NS  # midnight as if UTC
        self._start = datetime(day.year, day.month, day.day, tzinfo=tz)
        first = self._start.utcoffset()
        last = (self._start + timedelta(hours=23, minutes=59, seconds=59)).utcoffset()
        assert first is not None and last is not None  # ZoneInfo always answers
        self._base: int | None = (
            self._midnight_ns - _td_ns(first) if first == last else None
        )  # None: the offset changes during this day

    @property
    def constant_base(self) -> int | None:
        """UTC ns of local midnight when the offset is the same all day, else None."""
        return self._base

    def to_utc_ns(self, ns_of_day: int) -> int:
        if self._base is not None:
            return self._base + ns_of_day
        wall = self._start + timedelta(microseconds=ns_of_day // 1_000)
        offset = wall.utcoffset()
        assert offset is not None
        return self._midnight_ns + ns_of_day - _td_ns(offset)


def _td_ns(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * NS_PER_S + delta.microseconds * 1_000


def parse_ms_of_day(text: bytes) -> int | None:
    """``b"14400009.367"`` (ms, up to 6 decimals) → ns since midnight; None if malformed.

    More than 6 decimals would be below a nanosecond: accepted only if the extra digits are 0.
    """
    whole, dot, frac = text.partition(b".")
    if not whole.isdigit() or len(whole) > 8 or (dot and not frac.isdigit()):
        return None
    if len(frac) > 6:
        if frac[6:].strip(b"0"):
            return None
        frac = frac[:6]
    ns = int(whole) * NS_PER_MS + (int(frac.ljust(6, b"0")) if frac else 0)
    return ns if ns < DAY_NS else None


def epoch_to_ns(value: int | Decimal) -> int:
    """An epoch number in s/ms/µs/ns (unit from its magnitude, see ``_EPOCH_UNITS``) → ns."""
    magnitude = abs(int(value))
    factor = 1
    for limit, unit in _EPOCH_UNITS:
        if magnitude < limit:
            factor = unit
            break
    if isinstance(value, int):
        return value * factor
    ns = value * factor
    if ns != ns.to_integral_value():
        raise TimestampError(f"{value} has digits below a nanosecond")
    return int(ns)


def parse_timestamp(value: object) -> int:
    """A file's timestamp → UTC ns since the epoch.

    Accepted: an ISO-8601 string **with** a zone (``Z`` or ``±HH:MM``; 1-9 fractional digits,
    kept exactly), an epoch number as int, exact Decimal or numeric string (unit detected from
    the magnitude: s, ms, µs or ns), or an aware ``datetime``. A zone-less ISO string or naive
    datetime is refused: guessing a zone would shift every tick silently.
    """
    if isinstance(value, bool):
        raise TimestampError(f"not a timestamp: {value!r}")
    if isinstance(value, int | Decimal):
        return epoch_to_ns(value)
    if isinstance(value, float):
        return epoch_to_ns(Decimal(repr(value)))
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise TimestampError(f"datetime without a time zone: {value.isoformat()}")
        delta = value - datetime(1970, 1, 1, tzinfo=UTC)
        return _td_ns(delta)
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        raise TimestampError(f"not a timestamp: {type(value).__name__}")
    text = value.strip()
    if _NUMBER_RE.fullmatch(text):
        try:
            return epoch_to_ns(int(text) if "." not in text else Decimal(text))
        except InvalidOperation as exc:  # pragma: no cover - the regex admits only numbers
            raise TimestampError(f"not a number: {text!r}") from exc
    match = _ISO_RE.fullmatch(text)
    if match is None:
        raise TimestampError(f"not ISO-8601 or an epoch number: {text!r}")
    day, clock, frac, zone = match.groups()
    if zone is None:
        raise TimestampError(f"ISO-8601 timestamp without a zone (add Z or ±HH:MM): {text!r}")
    if zone in ("Z", "z"):
        zone = "+00:00"
    try:
        whole = datetime.fromisoformat(f"{day}T{clock}{zone}")
    except ValueError as exc:
        raise TimestampError(f"invalid date/time {text!r}: {exc}") from exc
    ns = _td_ns(whole - datetime(1970, 1, 1, tzinfo=UTC))
    return ns + (int(frac.ljust(9, "0")) if frac else 0)


def parse_bound(text: str) -> int:
    """A --from/--to value: ISO-8601 with a zone, or an integer of epoch **nanoseconds**."""
    stripped = text.strip()
    if re.fullmatch(r"[+-]?\d+", stripped):
        return int(stripped)
    if _NUMBER_RE.fullmatch(stripped):
        raise TimestampError(f"epoch bounds are integer nanoseconds: {text!r}")
    return parse_timestamp(stripped)
