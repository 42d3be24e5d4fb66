"""The small types every replay module shares: kinds, Skip, row bodies, the merge item."""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from core.errors import OmniquantError
from schemas.models import AggressorSide, Quote, Trade

Kind = int
TRADE: Final[Kind] = 0
QUOTE: Final[Kind] = 1
SKIP: Final[Kind] = 2

OUT_OF_RANGE: Final = "out_of_range"
"""Skip reason of rows outside --from/--to: counted, never dead-lettered (not a fault)."""


class ReplayError(OmniquantError):
    """A replay cannot start or cannot be trusted: bad path, unsupported file, bad option."""


@dataclass(frozen=True, slots=True)
class Skip:
    """A row that became no record. Counted under ``reason`` and dead-lettered with ``raw``."""

    reason: str  # short label: "bad_time", "bad_price", "bad_field_count", "out_of_range" ...
    raw: bytes  # the row as it was in the file (Parquet: the row as JSON)
    path: Path
    line: int  # 1-based line (CSV/NDJSON/Lean) or row number (Parquet)
    detail: str = ""
    symbol: str | None = None  # when the file names it (Lean paths)


TRADE_FIELDS: Final = (
    "venue",
    "price",
    "size",
    "aggressor_side",
    "trade_id",
    "conditions",
    "flags",
    "source",
)
QUOTE_FIELDS: Final = (
    "venue",
    "bid_price",
    "bid_size",
    "ask_price",
    "ask_size",
    "conditions",
    "flags",
    "source",
)


class Body:
    """Everything of a trade/quote row but symbol and times: field values and their bytes.

    Lean readers share one Body among all rows with the same text after the time column, so
    a million-row file encodes only its few thousand distinct bodies.
    """

    __slots__ = ("fields", "middle")

    def __init__(self, fields: tuple[Any, ...], middle: bytes) -> None:
        # Validated values in TRADE_FIELDS / QUOTE_FIELDS order; lists are tuples (shared).
        self.fields = fields
        self.middle = middle  # Avro bytes of venue … source


# The merge item: (ts_event, file index, line, kind, symbol, Body | Skip). The first three are
# unique per row, so tuple comparison never reaches the payload; ties in time break by file
# then line. ts_event of a Skip is the last good time of its file (it keeps its place).
Item = tuple[int, int, int, Kind, str, Any]


def to_record(kind: Kind, symbol: str, body: Body, ts_event: int) -> Trade | Quote:
    """Build the record from values the reader already validated (no pydantic re-validation).

    ``ts_init`` equals ``ts_event``: a replayed record is "created" at its event time, so the
    same file always yields the same records and the same bytes (see the package docs).
    """
    values = dict(zip(TRADE_FIELDS if kind == TRADE else QUOTE_FIELDS, body.fields, strict=True))
    values["conditions"] = list(values["conditions"])
    values["flags"] = list(values["flags"])
    if kind == TRADE:
        return Trade.model_construct(symbol=symbol, ts_event=ts_event, ts_init=ts_event, **values)
    return Quote.model_construct(symbol=symbol, ts_event=ts_event, ts_init=ts_event, **values)


def trade_fields(
    *,
    venue: str,
    price: int,
    size: int,
    source: str,
    conditions: tuple[str, ...] = (),
    flags: tuple[str, ...] = (),
    aggressor_side: AggressorSide = AggressorSide.NONE,
    trade_id: str | None = None,
) -> tuple[Any, ...]:
    return (venue, price, size, aggressor_side, trade_id, conditions, flags, source)


def quote_fields(
    *,
    venue: str,
    bid_price: int | None,
    bid_size: int | None,
    ask_price: int | None,
    ask_size: int | None,
    source: str,
    conditions: tuple[str, ...] = (),
    flags: tuple[str, ...] = (),
) -> tuple[Any, ...]:
    return (venue, bid_price, bid_size, ask_price, ask_size, conditions, flags, source)


class SourceFile(abc.ABC):
    """One input file. ``items()`` is the fast internal stream; iterating yields records.

    Counters are updated as the file is read (at least once per chunk and at the end):
    ``rows`` read, ``skipped`` of them, ``out_of_order`` rows (event time below the largest
    seen before in this file; still produced), and ``done``/``size`` in bytes for progress.
    """

    path: Path
    size: int = 0
    done: int = 0
    rows: int = 0
    skipped: int = 0
    out_of_order: int = 0

    @abc.abstractmethod
    def items(self, index: int, on_skip: Callable[[Skip], None] | None = None) -> Iterator[Item]:
        """Merge items in file order; ``index`` is this file's rank in the tie-break.

        Skipped rows are items of kind SKIP, or, with ``on_skip``, handed to it instead.
        """

    def __iter__(self) -> Iterator[Trade | Quote | Skip]:
        for ts, _, _, kind, symbol, payload in self.items(0):
            yield payload if kind == SKIP else to_record(kind, symbol, payload, ts)
