"""Lean / AlgoSeek US-equity tick files: ``.../tick/<sym>/<yyyymmdd>_{trade,quote}.zip``.

Each zip holds one headerless CSV (format: Lean's ``Data/equity/readme.md``):

- trade: ``time_ms, price, size, exchange, sale_condition, suspicious``
- quote: ``time_ms, bid_price, bid_size, ask_price, ask_size, exchange, quote_condition,
  suspicious`` — one side per row, the other side ``0,0`` (that side becomes ``None``)

``time_ms`` is the wall-clock reading in America/New_York since local midnight of the date in
the file name (fractions allowed, kept to the ns); prices are integer deci-cents (USD × 10⁴;
fixed-point = × 10⁵, exact); sizes are shares. ``exchange`` letters become MIC venue codes
(an unknown letter is kept verbatim); the condition code is kept verbatim in ``conditions``;
``suspicious=1`` becomes ``flags=["suspicious"]`` — the tick is kept, never dropped (Lean's own
bars drop them; deciding that is the consumer's business).

The file is streamed in 1 MiB chunks of the zip member: memory is bounded whatever its size.
"""

from __future__ import annotations

import re
import zipfile
import zlib
from collections.abc import Callable, Iterator
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Final

from schemas.fixedpoint import INT64_MAX
from schemas.models import AggressorSide

from ._avro import codes_bytes, long_bytes, optional_long, string_bytes, trade_side_bytes
from ._model import (
    QUOTE,
    SKIP,
    TRADE,
    Body,
    Item,
    ReplayError,
    Skip,
    SourceFile,
)
from ._time import DAY_NS, NS_PER_MS, LocalDay, parse_ms_of_day

SOURCE: Final = "lean"
LEAN_NAME: Final = re.compile(r"(\d{8})_(trade|quote)\.zip", re.IGNORECASE)
_MEMBER_NAME: Final = re.compile(r"(\d{8})_([^_]+)_(trade|quote)_tick\.csv", re.IGNORECASE)

# AlgoSeek exchange letters (Lean Data/equity/readme.md "Tick Exchange Codes") → ISO 10383 MIC.
VENUES: Final[dict[bytes, str]] = {
    b"A": "XASE",  # NYSE MKT
    b"B": "XBOS",  # NASDAQ OMX BX
    b"C": "XCIS",  # National Stock Exchange
    b"D": "FINR",  # FINRA (ADF / TRF reports)
    b"I": "XISX",  # International Securities Exchange
    b"J": "EDGA",  # Direct Edge A
    b"K": "EDGX",  # Direct Edge X
    b"M": "XCHI",  # Chicago Stock Exchange
    b"N": "XNYS",  # New York Stock Exchange
    b"P": "ARCX",  # NYSE Arca
    b"Q": "XNAS",  # NASDAQ
    b"T": "XNAS",  # NASDAQ OMX
    b"W": "CBSX",  # CBOE Stock Exchange
    b"X": "XPHL",  # NASDAQ OMX PSX
    b"Y": "BATY",  # BATS Y-Exchange
    b"Z": "BATS",  # BATS Exchange
}

_CHUNK: Final = 1 << 20
CACHE_ENTRIES: Final = 1 << 16  # distinct row bodies (and parts) kept per file; ~25 MB at most
_PRICE_EXP: Final = 5  # deci-cents → 1e-9 units
_SIZE_EXP: Final = 9  # shares → 1e-9 units
_SUSPICIOUS: Final = {b"0": (), b"1": ("suspicious",)}

_Invalid = tuple[str, str]  # (reason, detail) cached for a body that is not a valid row
# exchange+condition+suspicious → venue, conditions, flags, venue bytes, conditions…source bytes
_Rest = tuple[str, tuple[str, ...], tuple[str, ...], bytes, bytes]
_NO_SIDE: Final = optional_long(None) * 2  # bid or ask price and size, both null
_NO_SIDE_NO_ID: Final = trade_side_bytes(AggressorSide.NONE, None)


def is_lean_tick_path(path: Path) -> bool:
    return bool(LEAN_NAME.fullmatch(path.name)) and path.parent.parent.name.lower() == "tick"


def _scaled(text: bytes, exp: int) -> int | None:
    """Unsigned decimal text × 10**exp as an exact int64, or None."""
    if len(text) > 30:  # far beyond int64 whatever the scale; int() would refuse huge strings
        return None
    if text.isdigit():
        value = int(text) * 10**exp
    else:
        whole, dot, frac = text.partition(b".")
        if not (dot and whole.isdigit() and frac.isdigit()):
            return None
        try:
            scaled = Decimal(text.decode("ascii")).scaleb(exp)
        except InvalidOperation:  # pragma: no cover - digits only by now
            return None
        if scaled != scaled.to_integral_value():
            return None
        value = int(scaled)
    return value if value <= INT64_MAX else None


def _venue(code: bytes) -> str | None:
    venue = VENUES.get(code)
    if venue is not None:
        return venue
    code = code.strip()
    return code.decode("ascii") if code.isalnum() and code.isascii() else None


def _condition(code: bytes) -> tuple[str, ...] | None:
    code = code.strip()
    if not code:
        return ()
    if not (code.isascii() and code.isalnum()):
        return None
    return (code.decode("ascii"),)


class LeanTickFile(SourceFile):
    """A Lean equity tick zip; symbol and date from its path, kind from its name.

    ``cache_limit`` bounds each of its memos (row bodies, prices, sizes, codes); a merge of
    many files lowers it so that the memos of all files together stay bounded.
    """

    cache_limit: int = CACHE_ENTRIES

    def __init__(self, path: Path) -> None:
        match = LEAN_NAME.fullmatch(path.name)
        if match is None or path.parent.parent.name.lower() != "tick":
            raise ReplayError(
                f"{path}: not a Lean tick file (expected .../tick/<symbol>/<yyyymmdd>_"
                "trade.zip or _quote.zip)"
            )
        self.path = path
        self.symbol = path.parent.name.upper()
        stamp = match[1]
        try:
            self.day = date(int(stamp[:4]), int(stamp[4:6]), int(stamp[6:]))
        except ValueError as exc:
            raise ReplayError(f"{path}: {stamp} is not a date: {exc}") from None
        self.kind = TRADE if match[2].lower() == "trade" else QUOTE
        self._clock = LocalDay(self.day)
        try:
            with zipfile.ZipFile(path) as zf:
                members = [m for m in zf.infolist() if not m.is_dir()]
        except (OSError, zipfile.BadZipFile) as exc:
            raise ReplayError(f"{path}: cannot open zip: {exc}") from None
        if len(members) != 1:
            raise ReplayError(f"{path}: expected one CSV in the zip, found {len(members)}")
        self._member = members[0].filename
        inner = _MEMBER_NAME.fullmatch(Path(self._member).name)
        if inner is not None and (
            inner[1] != stamp
            or inner[2].upper() != self.symbol
            or inner[3].lower() != match[2].lower()
        ):
            raise ReplayError(
                f"{path}: holds {self._member}, which names another day, symbol or kind"
            )
        self.size = members[0].file_size
        self._reset_memos()

    def __repr__(self) -> str:
        return f"LeanTickFile({str(self.path)!r})"

    # --- row bodies (everything after the time column), parsed once per distinct text ------
    # A body new as a whole is mostly made of known parts (prices, sizes, exchange+codes):
    # those are memoized per file, so a miss costs a few dict lookups and a concatenation.
    def _reset_memos(self) -> None:
        self._prices: dict[bytes, tuple[int, bytes]] = {}
        self._sizes: dict[bytes, tuple[int, bytes]] = {}
        self._rests: dict[tuple[bytes, bytes, bytes], _Rest | _Invalid] = {}

    def _number(
        self, text: bytes, exp: int, memo: dict[bytes, tuple[int, bytes]]
    ) -> tuple[int, bytes] | None:
        """(value, its Avro bytes — a union branch for quotes) of a price/size text."""
        value = _scaled(text, exp)
        if value is None:
            return None
        encoded = long_bytes(value) if self.kind == TRADE else b"\x02" + long_bytes(value)
        if len(memo) >= self.cache_limit:
            memo.clear()
        memo[text] = (value, encoded)
        return value, encoded

    def _rest(self, exchange: bytes, condition: bytes, suspicious: bytes) -> _Rest | _Invalid:
        key = (exchange, condition, suspicious)
        rest = self._rests.get(key)
        if rest is not None:
            return rest
        venue = _venue(exchange)
        conditions = _condition(condition)
        flags = _SUSPICIOUS.get(suspicious.strip())
        if venue is None:
            rest = ("bad_exchange", f"exchange {exchange!r} is not a letter code")
        elif conditions is None:
            rest = ("bad_condition", f"condition {condition!r} is not a code")
        elif flags is None:
            rest = ("bad_suspicious", f"suspicious {suspicious!r} is not 0 or 1")
        else:
            rest = (
                venue,
                conditions,
                flags,
                string_bytes(venue),
                codes_bytes(conditions, flags, SOURCE),
            )
        if len(self._rests) >= self.cache_limit:
            self._rests.clear()
        self._rests[key] = rest
        return rest

    def _trade_body(self, tail: bytes) -> Body | _Invalid:
        parts = tail.rstrip(b"\r").split(b",")
        if len(parts) != 5:
            return "bad_field_count", f"expected 6 columns, got {len(parts) + 1}"
        price_text, size_text, exchange, condition, suspicious = parts
        price = self._prices.get(price_text) or self._number(price_text, _PRICE_EXP, self._prices)
        if price is None or price[0] <= 0:
            return "bad_price", f"price {price_text!r} is not a positive deci-cent amount"
        size = self._sizes.get(size_text) or self._number(size_text, _SIZE_EXP, self._sizes)
        if size is None:
            return "bad_size", f"size {size_text!r} is not a non-negative number"
        rest = self._rest(exchange, condition, suspicious)
        if len(rest) == 2:
            return rest
        venue, conditions, flags, venue_bytes, codes = rest
        # in TRADE_FIELDS order (aggressor NONE, no trade id)
        fields = (venue, price[0], size[0], AggressorSide.NONE, None, conditions, flags, SOURCE)
        return Body(fields, venue_bytes + price[1] + size[1] + _NO_SIDE_NO_ID + codes)

    def _quote_body(self, tail: bytes) -> Body | _Invalid:
        parts = tail.rstrip(b"\r").split(b",")
        if len(parts) != 7:
            return "bad_field_count", f"expected 8 columns, got {len(parts) + 1}"
        bid_p_text, bid_s_text, ask_p_text, ask_s_text, exchange, condition, suspicious = parts
        prices, sizes, number = self._prices, self._sizes, self._number
        bid_p = prices.get(bid_p_text) or number(bid_p_text, _PRICE_EXP, prices)
        ask_p = prices.get(ask_p_text) or number(ask_p_text, _PRICE_EXP, prices)
        if bid_p is None or ask_p is None:
            text = bid_p_text if bid_p is None else ask_p_text
            return "bad_price", f"price {text!r} is not a non-negative number"
        bid_s = sizes.get(bid_s_text) or number(bid_s_text, _SIZE_EXP, sizes)
        ask_s = sizes.get(ask_s_text) or number(ask_s_text, _SIZE_EXP, sizes)
        if bid_s is None or ask_s is None:
            text = bid_s_text if bid_s is None else ask_s_text
            return "bad_size", f"size {text!r} is not a non-negative number"
        (bid_price, bid_price_b), (bid_size, bid_size_b) = bid_p, bid_s
        (ask_price, ask_price_b), (ask_size, ask_size_b) = ask_p, ask_s
        rest = self._rest(exchange, condition, suspicious)
        if len(rest) == 2:
            return rest
        venue, conditions, flags, venue_bytes, codes = rest
        # One-sided update: a side quoted as 0 @ 0 is absent.
        bid: tuple[int | None, int | None] = (bid_price, bid_size)
        bid_bytes = bid_price_b + bid_size_b
        if bid_price == 0 and bid_size == 0:
            bid, bid_bytes = (None, None), _NO_SIDE
        ask: tuple[int | None, int | None] = (ask_price, ask_size)
        ask_bytes = ask_price_b + ask_size_b
        if ask_price == 0 and ask_size == 0:
            ask, ask_bytes = (None, None), _NO_SIDE
        # in QUOTE_FIELDS order
        fields = (venue, bid[0], bid[1], ask[0], ask[1], conditions, flags, SOURCE)
        return Body(fields, venue_bytes + bid_bytes + ask_bytes + codes)

    def _chunks(self) -> Iterator[list[bytes]]:
        """Lines of the member, a chunk at a time (the last line may lack its newline)."""
        try:
            with zipfile.ZipFile(self.path) as zf, zf.open(self._member) as fh:
                pending = b""
                while True:
                    chunk = fh.read(_CHUNK)
                    if not chunk:
                        if pending:
                            yield [pending]
                        return
                    self.done += len(chunk)
                    lines = (pending + chunk).split(b"\n")
                    pending = lines.pop()
                    yield lines
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise ReplayError(f"{self.path}: cannot read the zip: {exc}") from exc

    def items(self, index: int, on_skip: Callable[[Skip], None] | None = None) -> Iterator[Item]:
        kind, symbol, path = self.kind, self.symbol, self.path
        parse = self._trade_body if kind == TRADE else self._quote_body
        base = self._clock.constant_base
        to_utc = self._clock.to_utc_ns
        limit = self.cache_limit
        cache: dict[bytes, Body] = {}  # distinct row bodies → their parsed, encoded Body
        cache_get = cache.get
        invalid: dict[bytes, tuple[str, str]] = {}  # bodies that are no valid row → why
        line_no = skipped = out_of_order = 0
        last_text: bytes | None = None  # time text of the last good row (None: no row yet)
        ts = high = -1  # current row's time; highest time so far (order check, Skip position)
        late = False  # the current time is below ``high``: rows with it are out of order
        self.done = self.rows = self.skipped = self.out_of_order = 0
        self._reset_memos()
        try:
            for lines in self._chunks():
                for line_no, line in enumerate(lines, line_no + 1):  # noqa: B020
                    text, _, tail = line.partition(b",")
                    body = cache_get(tail)
                    if body is not None and text == last_text:  # the hot path: known body,
                        if late:  # same instant as the row before
                            out_of_order += 1
                        yield ts, index, line_no, kind, symbol, body
                        continue
                    why = None
                    if body is None:
                        why = invalid.get(tail)
                        if why is None:
                            parsed = parse(tail)
                            if parsed.__class__ is Body:
                                body = parsed
                                if len(cache) >= limit:
                                    cache.clear()  # O(1); FIFO deletes make dict iteration slow
                                cache[tail] = body
                            else:
                                why = invalid[tail] = parsed  # type: ignore[assignment]
                                if len(invalid) >= limit:
                                    invalid.clear()
                    if body is not None and text != last_text:
                        ns = DAY_NS
                        if text.isdigit():
                            if len(text) <= 8:
                                ns = int(text) * NS_PER_MS
                        else:
                            exact = parse_ms_of_day(text)
                            if exact is not None:
                                ns = exact
                        if ns < DAY_NS:
                            ts = base + ns if base is not None else to_utc(ns)
                            last_text = text
                            late = ts < high
                            if not late:
                                high = ts
                        else:
                            body = None
                            why = ("bad_time", f"time {text!r} is not ms since midnight")
                    if body is not None:
                        if late:
                            out_of_order += 1
                        yield ts, index, line_no, kind, symbol, body
                        continue
                    assert why is not None
                    reason, detail = why
                    if not line.strip():
                        reason, detail = "blank_line", "empty line"
                    skipped += 1
                    skip = Skip(reason, line, path, line_no, detail, symbol)
                    if on_skip is None:
                        yield high, index, line_no, SKIP, symbol, skip
                    else:
                        on_skip(skip)
                self.rows, self.skipped, self.out_of_order = line_no, skipped, out_of_order
        finally:
            self.rows, self.skipped, self.out_of_order = line_no, skipped, out_of_order
