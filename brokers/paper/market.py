"""The paper venue's memory of one symbol's market: recent trades and quotes in event time.

Pure: no I/O, no clock. :class:`SymbolHistory` keeps the trades and the quotes of the last
``window_ns`` of event time (measured back from the newest tick seen), each series sorted by
event time, so the venue can answer "what was the market as of time t" for any t inside the
window (:meth:`SymbolHistory.as_of`) and replay what came after it
(:meth:`SymbolHistory.after`). That is what makes fills independent of when an order
arrives relative to the market data: an order that arrives late is worked against the
history exactly as it would have been worked live.

Per tick the cost is O(1) amortised: in-order ticks are appended, old ones are dropped from
the front (by advancing an offset; the list is compacted once the dead prefix dominates). The
newest tick older than the window is kept as the series' *anchor*: it is the answer to an
as-of query at the window's start. A tick older than the newest one seen (another topic can
lag) is inserted at its place, so later as-of queries see it; one older than the window
only replaces the anchor if it is newer than it.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterator
from dataclasses import dataclass
from operator import attrgetter
from typing import Generic, TypeVar

__all__ = ["Key", "QuoteTick", "SymbolHistory", "Tick", "TradeTick"]


@dataclass(frozen=True, slots=True)
class TradeTick:
    """A print: its price (raw fixed-point). Its size does not matter to the paper venue."""

    ts: int
    seq: int  # arrival number within the symbol: breaks ties between equal times
    price: int


@dataclass(frozen=True, slots=True)
class QuoteTick:
    """The top of the book: prices and displayed sizes (raw fixed-point; None: no side)."""

    ts: int
    seq: int
    bid_price: int | None
    bid_size: int | None
    ask_price: int | None
    ask_size: int | None


Tick = TradeTick | QuoteTick
#: a point in a symbol's tick sequence: (event time, arrival number)
Key = tuple[int, int]
T = TypeVar("T", TradeTick, QuoteTick)

_TS = attrgetter("ts")
_ORDER = attrgetter("ts", "seq")
_COMPACT_AT = 1024  # dead prefix length worth a list copy


class _Series(Generic[T]):
    """One kind of tick, sorted by (ts, seq), trimmed from the front."""

    __slots__ = ("anchor", "head", "items")

    def __init__(self) -> None:
        self.items: list[T] = []
        self.head = 0  # items[:head] are trimmed
        self.anchor: T | None = None  # the newest tick trimmed (older than the window)

    def add(self, tick: T, horizon: int) -> None:
        items = self.items
        if tick.ts < horizon:  # a late tick from before the window
            if self.anchor is None or tick.ts >= self.anchor.ts:
                self.anchor = tick
            return
        if len(items) == self.head or items[-1].ts <= tick.ts:
            items.append(tick)
        else:
            insort(items, tick, lo=self.head, key=_ORDER)

    def trim(self, horizon: int) -> None:
        items, head = self.items, self.head
        end = len(items)
        while head < end and items[head].ts < horizon:
            head += 1
        if head != self.head:
            self.anchor = items[head - 1]
            if head >= _COMPACT_AT and head * 2 >= end:
                del items[:head]
                head = 0
            self.head = head

    def as_of(self, cut: Key) -> T | None:
        """The newest tick at or before ``cut`` (a (ts, seq) inside the window)."""
        index = bisect_right(self.items, cut, lo=self.head, key=_ORDER) - 1
        return self.items[index] if index >= self.head else self.anchor

    def after(self, cut: Key) -> Iterator[T]:
        items = self.items
        for index in range(bisect_right(items, cut, lo=self.head, key=_ORDER), len(items)):
            yield items[index]

    def first_at(self, ts: int) -> int | None:
        """The arrival number of the first tick at exactly ``ts``, if any."""
        index = bisect_left(self.items, ts, lo=self.head, key=_TS)
        if index < len(self.items) and self.items[index].ts == ts:
            return self.items[index].seq  # sorted by (ts, seq): the first at ts
        return None

    def first_key(self) -> Key | None:
        first = self.anchor
        if first is None and self.head < len(self.items):
            first = self.items[self.head]
        return None if first is None else (first.ts, first.seq)

    def __len__(self) -> int:
        return len(self.items) - self.head + (self.anchor is not None)


class SymbolHistory:
    """Trades and quotes of one symbol over the last ``window_ns`` of its event time."""

    __slots__ = ("_seq", "newest_ts", "quotes", "trades", "window_ns")

    def __init__(self, window_ns: int) -> None:
        self.window_ns = window_ns
        self.trades: _Series[TradeTick] = _Series()
        self.quotes: _Series[QuoteTick] = _Series()
        self.newest_ts: int | None = None
        self._seq = 0

    @property
    def horizon(self) -> int | None:
        """The oldest time an as-of query can be answered for (None: nothing seen yet)."""
        return None if self.newest_ts is None else self.newest_ts - self.window_ns

    def add_trade(self, ts: int, price: int) -> tuple[TradeTick, bool]:
        """Record a trade; returns it and whether it is in order (not older than the newest)."""
        self._seq += 1
        tick = TradeTick(ts, self._seq, price)
        return tick, self._add(tick, self.trades)

    def add_quote(
        self,
        ts: int,
        bid_price: int | None,
        bid_size: int | None,
        ask_price: int | None,
        ask_size: int | None,
    ) -> tuple[QuoteTick, bool]:
        """Record a quote; returns it and whether it is in order."""
        self._seq += 1
        tick = QuoteTick(ts, self._seq, bid_price, bid_size, ask_price, ask_size)
        return tick, self._add(tick, self.quotes)

    def _add(self, tick: T, series: _Series[T]) -> bool:
        newest = self.newest_ts
        if newest is not None and tick.ts < newest:
            series.add(tick, newest - self.window_ns)
            return False
        self.newest_ts = tick.ts
        horizon = tick.ts - self.window_ns
        series.add(tick, horizon)
        if newest is None or horizon > newest - self.window_ns:
            self.trades.trim(horizon)
            self.quotes.trim(horizon)
        return True

    def covers(self, ts: int) -> bool:
        """True if the market as of ``ts`` is known: ``ts`` is within the window."""
        horizon = self.horizon
        return horizon is not None and ts >= horizon

    def seen_up_to(self, ts: int) -> bool:
        """True once a tick at or after ``ts`` has been seen."""
        return self.newest_ts is not None and self.newest_ts >= ts

    def cut(self, ts: int) -> Key:
        """Where the market "as of ``ts``" ends: after every tick before ``ts`` and the
        first tick at exactly ``ts`` (the one that, arriving live, tells the venue that
        ``ts`` has come). Ticks at ``ts`` that arrive after it come after the cut, as they
        would for an order that was waiting. Arrival numbers start at 1, so (ts, 0) is
        "before every tick at ts"."""
        firsts = [s for s in (self.trades.first_at(ts), self.quotes.first_at(ts)) if s]
        return (ts, min(firsts)) if firsts else (ts, 0)

    def as_of(self, cut: Key) -> tuple[QuoteTick | None, TradeTick | None]:
        """The newest quote and the newest trade at or before ``cut``."""
        return self.quotes.as_of(cut), self.trades.as_of(cut)

    def quoted_before(self, tick: Tick) -> bool:
        """True if a quote came before ``tick`` (from then on the symbol is quote-driven)."""
        first = self.quotes.first_key()
        return first is not None and first < (tick.ts, tick.seq)

    def after(self, cut: Key) -> Iterator[Tick]:
        """Every tick after ``cut``, trades and quotes merged in (ts, arrival) order."""
        trades: Iterator[Tick] = self.trades.after(cut)
        quotes: Iterator[Tick] = self.quotes.after(cut)
        return heapq.merge(trades, quotes, key=_ORDER)

    def __len__(self) -> int:
        """Ticks kept (window plus anchors)."""
        return len(self.trades) + len(self.quotes)
