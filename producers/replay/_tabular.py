"""Generic trade/quote files: CSV (with a header), NDJSON, Parquet — one row per record.

Columns (names case-insensitive; unknown columns are ignored):

============== ============================================================================
symbol         required, 1-64 characters
ts_event       required; the first non-empty of ``ts_event``, ``ts``, ``timestamp``,
               ``time``: ISO-8601 **with** a zone (``Z``/``±HH:MM``, up to 9 fractional
               digits) or an epoch number whose unit is read from its magnitude (< 1e11 s,
               < 1e14 ms, < 1e17 µs, else ns; fractions must stay exact to the ns). Parquet
               timestamp columns with a zone are exact; zone-less ones are refused.
type           optional ``trade``/``quote`` (or ``t``/``q``); else a row with ``price`` is a
               trade and one with any of ``bid_price``/``ask_price``/sizes is a quote
price, size   trade price and quantity (decimal numbers; exact at 1e-9)
bid_price, bid_size, ask_price, ask_size
               quote sides; empty means "side absent" (null)
venue          venue code (alias ``exchange``); default ``XXXX`` (ISO 10383 "no market")
conditions     ``|``-separated in CSV, a list in NDJSON/Parquet; kept verbatim
flags          same; ``suspicious`` = 1/true adds the flag ``suspicious``
aggressor_side BUYER/SELLER/NONE (B/BUY/S/SELL accepted); default NONE
trade_id       optional
source         default ``replay``
============== ============================================================================

Numbers: CSV text and NDJSON numbers are parsed as exact decimals (JSON floats never become
binary floats); Parquet float columns go through their shortest repr (``repr(1.1)`` = 1.1),
decimal columns are exact. ``ts_init`` is always ``ts_event`` (see the package docs).
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import IO, Any, Final, cast

from schemas.fixedpoint import FixedPointError, to_fixed
from schemas.models import AggressorSide

from ._avro import quote_middle, trade_middle
from ._model import (
    QUOTE,
    SKIP,
    TRADE,
    Body,
    Item,
    Kind,
    ReplayError,
    Skip,
    SourceFile,
    quote_fields,
    trade_fields,
)
from ._time import TimestampError, parse_timestamp

DEFAULT_SOURCE: Final = "replay"
DEFAULT_VENUE: Final = "XXXX"
TIME_COLUMNS: Final = ("ts_event", "ts", "timestamp", "time")
_QUOTE_COLUMNS: Final = ("bid_price", "bid_size", "ask_price", "ask_size")
_KINDS: Final = {"trade": TRADE, "t": TRADE, "quote": QUOTE, "q": QUOTE}
_SIDES: Final = {
    "buyer": AggressorSide.BUYER,
    "buy": AggressorSide.BUYER,
    "b": AggressorSide.BUYER,
    "seller": AggressorSide.SELLER,
    "sell": AggressorSide.SELLER,
    "s": AggressorSide.SELLER,
    "none": AggressorSide.NONE,
    "": AggressorSide.NONE,
}
_TRUE: Final = frozenset({"1", "true", "yes", "y"})
_FALSE: Final = frozenset({"0", "false", "no", "n", ""})
_BATCH_ROWS: Final = 8192


class EpochNs(int):
    """An int that is already UTC ns since the epoch (Parquet timestamp columns)."""


class RowError(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int | Decimal) and not isinstance(value, bool):
        return str(value)
    raise TypeError(type(value).__name__)


def _fixed(value: Any, what: str) -> int:
    reason = "bad_size" if what.endswith("size") else "bad_price"
    if isinstance(value, bool):
        raise RowError(reason, f"{what} {value!r} is not a number")
    if isinstance(value, float):
        value = Decimal(repr(value))
    elif isinstance(value, str):
        try:
            value = Decimal(value.strip())
        except InvalidOperation:
            raise RowError(reason, f"{what} {value!r} is not a number") from None
    if isinstance(value, Decimal) and not value.is_finite():
        raise RowError(reason, f"{what} {value} is not a finite number")
    if not isinstance(value, int | Decimal):
        raise RowError(reason, f"{what} {value!r} is not a number")
    try:
        return to_fixed(value)
    except FixedPointError as exc:
        raise RowError(reason, f"{what}: {exc}") from None


def _optional_fixed(row: Mapping[str, Any], name: str) -> int | None:
    value = row.get(name)
    return None if _empty(value) else _fixed(value, name)


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if _empty(value):
        return ()
    if isinstance(value, str):
        return tuple(s.strip() for s in value.split("|") if s.strip())
    if isinstance(value, list | tuple):
        try:
            return tuple(_text(v) for v in value)
        except TypeError:
            pass
    raise RowError(f"bad_{what}", f"{what} {value!r} is not a list of codes")


def parse_row(row: Mapping[str, Any], source: str = DEFAULT_SOURCE) -> tuple[int, Kind, str, Body]:
    """One generic row (lower-case column names) → (ts_event, kind, symbol, Body).

    Raises :class:`RowError` with a short reason for anything that is not a valid record.
    """
    try:
        symbol = _text(row.get("symbol") or "")
    except TypeError:
        symbol = ""
    if not 1 <= len(symbol) <= 64:
        raise RowError("bad_symbol", f"symbol {row.get('symbol')!r} must have 1-64 characters")
    stamp = next((row[c] for c in TIME_COLUMNS if not _empty(row.get(c))), None)
    if stamp is None:
        raise RowError("no_timestamp", f"none of {', '.join(TIME_COLUMNS)} is set")
    try:
        ts = int(stamp) if isinstance(stamp, EpochNs) else parse_timestamp(stamp)
    except TimestampError as exc:
        raise RowError("bad_timestamp", str(exc)) from None
    if not -(2**63) <= ts < 2**63:
        raise RowError("bad_timestamp", f"{stamp!r} is outside the int64 ns range")
    kind_text = row.get("type")
    if _empty(kind_text):
        if not _empty(row.get("price")):
            kind = TRADE
        elif any(not _empty(row.get(c)) for c in _QUOTE_COLUMNS):
            kind = QUOTE
        else:
            raise RowError("no_price", "neither price nor bid/ask columns are set")
    else:
        found = _KINDS.get(str(kind_text).strip().lower())
        if found is None:
            raise RowError("bad_type", f"type {kind_text!r} is not trade or quote")
        kind = found
    try:
        venue = _text(row.get("venue") or row.get("exchange") or DEFAULT_VENUE)
        src = _text(row.get("source") or source)
        trade_id = None if _empty(row.get("trade_id")) else _text(row.get("trade_id"))
    except TypeError as exc:
        raise RowError("bad_field", f"a text column holds a {exc}") from None
    conditions = _strings(row.get("conditions"), "conditions")
    flags = _strings(row.get("flags"), "flags")
    suspicious = row.get("suspicious")
    if not _empty(suspicious):
        marker = str(suspicious).strip().lower()
        if marker in _TRUE:
            flags = (*flags, "suspicious") if "suspicious" not in flags else flags
        elif marker not in _FALSE:
            raise RowError("bad_suspicious", f"suspicious {suspicious!r} is not 0/1")
    if kind == TRADE:
        if _empty(row.get("price")):
            raise RowError("bad_price", "a trade needs a price")
        if _empty(row.get("size")):
            raise RowError("bad_size", "a trade needs a size")
        side = _SIDES.get(str(row.get("aggressor_side") or "").strip().lower())
        if side is None:
            raise RowError("bad_aggressor_side", f"{row.get('aggressor_side')!r}")
        fields = trade_fields(
            venue=venue,
            price=_fixed(row["price"], "price"),
            size=_fixed(row["size"], "size"),
            source=src,
            conditions=conditions,
            flags=flags,
            aggressor_side=side,
            trade_id=trade_id,
        )
        return ts, kind, symbol, Body(fields, trade_middle(fields))
    fields = quote_fields(
        venue=venue,
        bid_price=_optional_fixed(row, "bid_price"),
        bid_size=_optional_fixed(row, "bid_size"),
        ask_price=_optional_fixed(row, "ask_price"),
        ask_size=_optional_fixed(row, "ask_size"),
        source=src,
        conditions=conditions,
        flags=flags,
    )
    return ts, kind, symbol, Body(fields, quote_middle(fields))


def _check_columns(path: Path, columns: Iterable[str]) -> None:
    names = set(columns)
    missing = []
    if "symbol" not in names:
        missing.append("symbol")
    if not names.intersection(TIME_COLUMNS):
        missing.append("/".join(TIME_COLUMNS))
    if not names.intersection(("price", *_QUOTE_COLUMNS)):
        missing.append("price or bid_price/ask_price")
    if missing:
        raise ReplayError(f"{path}: no column {', no column '.join(missing)}")


class _RowFile(SourceFile):
    """Shared loop: raw rows → items, keeping the file order checks and counters."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = path.stat().st_size

    def _rows(self) -> Iterator[tuple[int, bytes, Mapping[str, Any] | RowError]]:
        raise NotImplementedError

    def items(self, index: int, on_skip: Callable[[Skip], None] | None = None) -> Iterator[Item]:
        path = self.path
        rows = skipped = out_of_order = 0
        high = -(2**63)
        self.done = self.rows = self.skipped = self.out_of_order = 0
        try:
            for line, raw, row in self._rows():
                rows += 1
                try:
                    if isinstance(row, RowError):
                        raise row
                    ts, kind, symbol, body = parse_row(row)
                except RowError as exc:
                    skipped += 1
                    skip = Skip(exc.reason, raw, path, line, exc.detail)
                    if on_skip is None:
                        yield high, index, line, SKIP, "", skip
                    else:
                        on_skip(skip)
                    continue
                if ts < high:
                    out_of_order += 1
                else:
                    high = ts
                yield ts, index, line, kind, symbol, body
                if rows % 4096 == 0:
                    self.rows, self.skipped, self.out_of_order = rows, skipped, out_of_order
        finally:
            self.rows, self.skipped, self.out_of_order = rows, skipped, out_of_order


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _open_binary(path: Path) -> tuple[IO[bytes], IO[bytes]]:
    """(stream to read, raw file for progress); ``.gz`` files are decompressed."""
    raw: IO[bytes] = path.open("rb")
    if path.suffix.lower() == ".gz":
        return cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb")), raw
    return raw, raw


class CsvFile(_RowFile):
    """A CSV file (``.csv``/``.csv.gz``) with a header row; ``,`` separated, ``"`` quoted."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        stream, raw = _open_binary(path)
        try:
            first = stream.readline().decode("utf-8-sig", "replace")
        finally:
            raw.close()
        self._header = [c.strip().lower() for c in next(csv.reader([first]), [])]
        _check_columns(path, self._header)

    def __repr__(self) -> str:
        return f"CsvFile({str(self.path)!r})"

    def _rows(self) -> Iterator[tuple[int, bytes, Mapping[str, Any] | RowError]]:
        header = self._header
        width = len(header)
        stream, raw_file = _open_binary(self.path)
        consumed: list[bytes] = []
        line_no = 1  # the header

        def lines() -> Iterator[str]:
            for data in stream:
                consumed.append(data)
                yield data.decode("utf-8", "surrogateescape")

        with raw_file, stream:
            stream.readline()
            rows = csv.reader(lines())
            while True:
                try:
                    fields: list[str] | None = next(rows)
                except StopIteration:
                    break
                except csv.Error as exc:  # e.g. a field over csv.field_size_limit(): skip it
                    fields, error = None, str(exc)
                first_line = line_no + 1
                line_no += len(consumed)
                raw = b"".join(consumed).rstrip(b"\r\n")
                consumed.clear()
                if first_line % 4096 == 0:
                    self.done = raw_file.tell()
                if fields is None:
                    yield first_line, raw, RowError("bad_csv", error)
                elif not fields or (len(fields) == 1 and not fields[0].strip()):
                    yield first_line, raw, RowError("blank_line", "empty line")
                elif len(fields) != width:
                    yield (
                        first_line,
                        raw,
                        RowError("bad_field_count", f"{len(fields)} fields, header has {width}"),
                    )
                elif not _is_utf8(raw):
                    yield first_line, raw, RowError("bad_encoding", "not UTF-8")
                else:
                    yield first_line, raw, dict(zip(header, fields, strict=True))
            self.done = self.size


class NdjsonFile(_RowFile):
    """Newline-delimited JSON (``.ndjson``/``.jsonl``, optionally ``.gz``): one object a line."""

    def __repr__(self) -> str:
        return f"NdjsonFile({str(self.path)!r})"

    def _rows(self) -> Iterator[tuple[int, bytes, Mapping[str, Any] | RowError]]:
        stream, raw_file = _open_binary(self.path)
        with raw_file, stream:
            for line_no, data in enumerate(stream, start=1):
                raw = data.rstrip(b"\r\n")
                if line_no % 4096 == 0:
                    self.done = raw_file.tell()
                if not raw.strip():
                    yield line_no, raw, RowError("blank_line", "empty line")
                    continue
                try:
                    obj = json.loads(raw, parse_float=Decimal)
                except (ValueError, RecursionError) as exc:
                    yield line_no, raw, RowError("bad_json", f"not JSON: {exc}")
                    continue
                if not isinstance(obj, dict):
                    yield line_no, raw, RowError("bad_json", "not a JSON object")
                    continue
                yield line_no, raw, {str(k).lower(): v for k, v in obj.items()}
            self.done = self.size


class ParquetFile(_RowFile):
    """A Parquet file, read one record batch at a time (needs ``pyarrow``)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ReplayError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from (
                exc
            )
        try:
            meta = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow raises ArrowInvalid, OSError ...
            raise ReplayError(f"{path}: not a readable Parquet file: {exc}") from None
        self._num_rows = meta.metadata.num_rows
        _check_columns(path, (name.lower() for name in meta.schema_arrow.names))

    def __repr__(self) -> str:
        return f"ParquetFile({str(self.path)!r})"

    def _rows(self) -> Iterator[tuple[int, bytes, Mapping[str, Any] | RowError]]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        row_no = 0
        with pq.ParquetFile(self.path) as reader:
            for batch in reader.iter_batches(batch_size=_BATCH_ROWS):
                columns: dict[str, list[Any]] = {}
                for name, column in zip(batch.schema.names, batch.columns, strict=True):
                    key = name.lower()
                    if pa.types.is_timestamp(column.type):
                        if column.type.tz is None:  # refused downstream: no zone
                            columns[key] = column.cast(pa.string()).to_pylist()
                            continue
                        ns = column.cast(pa.timestamp("ns", column.type.tz)).cast(pa.int64())
                        columns[key] = [None if v is None else EpochNs(v) for v in ns.to_pylist()]
                    else:
                        columns[key] = column.to_pylist()
                names = list(columns)
                for values in zip(*columns.values(), strict=True):
                    row_no += 1
                    row = dict(zip(names, values, strict=True))
                    raw = json.dumps(row, default=str, separators=(",", ":")).encode()
                    yield row_no, raw, row
                if self._num_rows:
                    self.done = self.size * row_no // self._num_rows
        self.done = self.size
