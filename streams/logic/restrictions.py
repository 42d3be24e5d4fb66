"""Symbols a desk may not trade freely: its own restricted list, and NSE's F&O ban list.

Pure: no I/O, no clock (the app reads the file and passes the text and the order's time).

NSE's daily bulletin (``fo_secban.csv``, as NSE publishes it) is not a regular CSV::

    Securities in Ban For Trade Date 07-OCT-2026:
    1,AMBUJACEM
    2,BANDHANBNK

(on a day without bans the first line ends in ``NIL`` and no rows follow). A security in the
ban period accepts only orders that reduce an existing position (SEBI's rule for F&O
contracts in the ban period), and the list applies to its own trade date in India
(Asia/Kolkata): a list for another date bans nothing, so a stale file never blocks trading
by accident, nor keeps a ban after it is lifted. Symbols match as written or after an
exchange prefix (``NSE:SAIL``, ``NFO:SAIL`` → ``SAIL``); mapping derivative contract names
(``SAIL26OCTFUT``) to their underlying needs the instrument dump and is not done here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Final
from zoneinfo import ZoneInfo

__all__ = ["FoBanList", "parse_fo_ban_list", "underlying"]

_IST: Final = ZoneInfo("Asia/Kolkata")
_TITLE: Final = re.compile(
    r"^Securities in Ban For Trade Date (\d{2}-[A-Z]{3}-\d{4}):\s*(NIL)?\s*$"
)
_ROW: Final = re.compile(r"^\s*(\d+)\s*,\s*([A-Z0-9&\-]+)\s*$")


def underlying(symbol: str) -> str:
    """``NSE:SAIL`` → ``SAIL``; a symbol without an exchange prefix as it is."""
    return symbol.rpartition(":")[2].upper()


@dataclass(frozen=True, slots=True)
class FoBanList:
    """The securities in the F&O ban period on one trade date."""

    trade_date: date
    symbols: frozenset[str]

    def bans(self, symbol: str, ts_event_ns: int) -> bool:
        """Whether ``symbol`` is in the ban period at event time ``ts_event_ns``."""
        day = datetime.fromtimestamp(ts_event_ns / 1e9, tz=UTC).astimezone(_IST).date()
        return day == self.trade_date and underlying(symbol) in self.symbols


def parse_fo_ban_list(text: str) -> FoBanList:
    """Parse NSE's ``fo_secban.csv``; ValueError naming the line that is not in its format."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError("F&O ban list is empty: expected 'Securities in Ban For Trade Date ...'")
    title = _TITLE.match(lines[0].strip())
    if title is None:
        raise ValueError(f"F&O ban list line 1 is not NSE's title line: {lines[0][:80]!r}")
    trade_date = datetime.strptime(title.group(1).title(), "%d-%b-%Y").date()  # noqa: DTZ007
    if title.group(2):
        if len(lines) > 1:
            raise ValueError("F&O ban list says NIL but lists securities")
        return FoBanList(trade_date, frozenset())
    symbols = set()
    for number, line in enumerate(lines[1:], start=2):
        row = _ROW.match(line)
        if row is None:
            raise ValueError(f"F&O ban list line {number} is not 'serial,SYMBOL': {line[:80]!r}")
        symbols.add(row.group(2))
    return FoBanList(trade_date, frozenset(symbols))
