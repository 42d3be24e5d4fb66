"""Event-time OHLCV bars of one symbol, and the vendor's (Lean/AlgoSeek) sale-condition rule.

A pure state machine: no I/O, no clock. Time is the trade's own ``ts_event`` (int UTC ns).

Bars
    A bar covers ``[start, start + interval)`` with ``start = ts - ts mod interval``: aligned
    to the Unix epoch on event time (UTC), for any interval of whole milliseconds (1 s, 1 min,
    5 min, 7 ms ...). ``ts_event`` of a :class:`~schemas.models.Bar` is that start.
    open / close are the prices of the bar's earliest / latest trade in event time; a tie on
    ``ts_event`` goes to the earlier arrival for the open and to the later arrival for the
    close. high / low are the extreme prices, volume the sum of sizes, trade_count the number
    of trades counted in the volume. Buckets without trades produce no bar.

VWAP (exact)
    ``pv_sum = sum(price * size)`` (raw units, 1e-18) and ``volume = sum(size)`` are kept as
    exact Python ints; VWAP is ``pv_sum / volume`` rounded half-even to the raw unit (1e-9),
    ``None`` when the volume is 0. It weighs the same trades as the volume.

Event time, grace and late trades
    The watermark is the highest ``ts_event`` seen (or given to :meth:`BarBuilder.advance`).
    A bar closes when the watermark reaches ``bar_end + grace``: until then, trades for it are
    still added, in any order. A trade whose bar has closed is LATE: it is returned as such
    (:attr:`TradeUse.LATE`, so the app can route it to a late-trades topic) and counted in
    :attr:`BarBuilder.late_trades`; it never changes an emitted bar and is never dropped
    silently. :meth:`BarBuilder.flush` closes every open bar at the end of a stream; a trade
    for a flushed bar is late too.

One builder per symbol
    The stream apps keep state per record key (the symbol), and Kafka partitions by it, so a
    builder holds one symbol: its snapshot is that key's state, its watermark is that symbol's
    own event time (a busy symbol never closes a quiet symbol's bar before the quiet symbol's
    trades arrive). A quiet symbol's bar can be closed from outside with
    :meth:`BarBuilder.advance` (e.g. with a partition watermark). One interval per builder.

Trade rules (:class:`BarRule`)
    ``ALL_TRADES``: every trade counts for price and volume.
    ``LEAN``: the rule that reproduces the vendor's own Lean/AlgoSeek trade bars from Lean's
    tick files (:func:`lean_eligibility`). Each trade is one of
    :attr:`TradeUse.BAR` (sets prices and counts in volume), :attr:`TradeUse.VOLUME_ONLY`
    (volume, trade count and VWAP, not open/high/low/close) or :attr:`TradeUse.EXCLUDED`
    (not in the bar at all); VOLUME_ONLY and EXCLUDED trades are counted by reason
    (:attr:`BarBuilder.volume_only`, :attr:`BarBuilder.excluded`) and the reason is returned
    with the trade. An excluded trade does not move the watermark (a print we do not trust
    does not close bars). A bar holding only volume-only trades has no price: its
    :class:`ClosedBar` has ``open is None`` and :meth:`ClosedBar.to_bar` gives ``None``.

The LEAN rule and where it comes from
    Lean's tick CSV carries the AlgoSeek sale condition as a hexadecimal flag set (Lean
    ``Common/Data/Auxiliary/TradeConditionFlags.cs``, parsed with ``NumberStyles.HexNumber``
    in ``Common/Data/Market/Tick.cs``; table in Lean's ``Data/equity/readme.md``), plus a
    ``suspicious`` bit. Lean's readme: "TradeBars ... have suspicious ticks filtered out"
    (also ``Engine/DataFeeds/AggregationManager.cs``: non-tick subscriptions drop suspicious
    ticks). QuantConnect's documentation (Lean Engine > Data Format > Core Data Types, "Trade
    Tick") lists IntermarketSweep, TradeThroughExempt and OddLot as "Excluded" from TradeBars
    and the others as "Included", and points to AlgoSeek's bar guide for the rest. Lean's
    public code holds no AlgoSeek equity bar converter, so the rule was fitted to the
    vendor's minute bars with documented flags only, one flag at a time, and kept only where
    it holds on every symbol and day (tests/test_bars_reference.py prints the rates):

    1. ``suspicious`` → EXCLUDED (Lean readme).
    2. OfficialOpen (0x4000000) or OfficialClose (0x1000000) → EXCLUDED: a market centre's
       report of its official price, not another execution. Its size is not in the
       vendor's volume (IBM 2013-10-07 09:30 is exactly 64 shares short: its one
       ``4000000`` print), and leaving it out of prices too lifts OHLC agreement by 0.3 pp
       on IBM (both days) and AIG.
    3. Unless the trade carries ExtendedHours (0x2000, the Form T report of a trade outside
       regular hours): IntermarketSweep (0x20), AveragePrice (0x100000), DerivativelyPriced
       (0x200) or OddLot (0x80000000) → VOLUME_ONLY. Average-price and derivatively-priced
       prints are the classic CTA/UTP prints that count for volume but not for last sale
       or high-low; sweeps are QuantConnect's "Excluded". In pre- and post-market bars the
       vendor takes prices from these prints as well (IBM 2013-10-07 16:17 and 16:24 are
       ``102000`` average-price Form T prints; excluding ``20002020`` sweeps everywhere
       takes SPY's agreement from 99.8 % to 72 %), which the flag expresses without a
       session calendar (on these files a 09:30–16:00 ET session rule agrees just as well).
       TradeThroughExempt (0x20000000) is *not* excluded although QuantConnect's table says
       so: it is on 44 % of SPY's trades, and excluding it outside extended hours lowers
       OHLC agreement (SPY 99.8 → 99.3 %, IBM 2013-10-08 99.8 → 99.3 %; 71 % for SPY if in
       extended hours too). No trade in these files carries OddLot (odd lots reached the
       consolidated tape only in December 2013): it follows QuantConnect's table, untested.
    4. A condition code that is not 1–8 hex digits → EXCLUDED ``unknown_condition``.

    Agreement with the vendor's minute bars (bar start labels, every vendor bar; OHLC all
    four equal / volume equal), ALL_TRADES → LEAN:

    =========  ===============  ===============  ===============  ===============
    symbol     OHLC 2013-10-07  volume           OHLC 2013-10-08  volume
    =========  ===============  ===============  ===============  ===============
    SPY        84.2 → 99.8 %    99.6 → 99.6 %    80.7 → 99.8 %    99.8 → 99.8 %
    IBM        53.4 → 99.6 %    99.1 → 99.6 %    54.0 → 99.8 %    99.1 → 99.3 %
    BAC        93.9 → 99.7 %    99.5 → 99.7 %    89.0 → 99.8 %    99.5 → 99.5 %
    AIG        67.0 → 99.8 %    98.8 → 98.8 %    (no tick file)
    =========  ===============  ===============  ===============  ===============

    SPY's second bars (2013-10-07, 16,675 bars): OHLC 86.6 → 99.98 %, volume 92.9 → 92.9 %,
    99.98 % once (b) below is applied to our bars.

    What remains is not a per-trade rule:

    (a) Auctions. The regular session's first bar opens at the primary market's opening
        auction price and the last one (15:59) closes at its closing auction price (IBM
        2013-10-07: open 182.00 = the NYSE opening print of 09:30:16, though Form T trades
        at 181.90 printed at 09:30:00.07; close 182.01 = the NYSE closing print reported at
        16:01:04). The vendor also moves NYSE closing prints reported after 16:00 into its
        15:59 bar (151,665 shares for IBM 2013-10-07, 262,948 for IBM 2013-10-08,
        2,000,995 and 2,631,493 for BAC, 253,146 for AIG), leaves most of Arca's auction
        prints out of SPY's volume (2013-10-07: ~238k shares at 09:30, 669,373 of the
        672,873 at 16:00; the first 3,500-share print is in its 15:59 bar), a late NYSE
        opening print out of IBM's (2013-10-08 09:31: 88,065 shares) and Nasdaq's cross
        prints (0x200000, five in these files, all at 09:30 or 16:00) out of the volume
        while they still set prices. That is session and listing-market logic, which a
        trade filter cannot express. (a) and (b) are all the volume differences, and (a)
        all the price differences but (c).
    (b) A bucket whose trades are all volume-only has no bar in the vendor's data and its
        volume is added to the bar before (AIG 2013-10-07 13:47: 1,500 sweep shares sit in
        the vendor's 13:46 bar): the vendor's consolidator opens bars on priced trades only.
        We keep event time instead: such a bucket is its own price-less :class:`ClosedBar`.
    (c) A vendor price that no tick has: SPY 2013-10-08 15:03 high 167.51, while every tick
        of that minute is at most 165.99.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction
from functools import lru_cache
from typing import Any, Final

from schemas.models import Bar, Trade

__all__ = [
    "BarBuilder",
    "BarRule",
    "ClosedBar",
    "Eligibility",
    "TradeOutcome",
    "TradeUse",
    "classify",
    "lean_eligibility",
]

SNAPSHOT_VERSION: Final = 1
_NS_PER_MS: Final = 1_000_000

# Lean TradeConditionFlags (hexadecimal sale-condition flag set of AlgoSeek ticks).
INTERMARKET_SWEEP: Final = 1 << 5
DERIVATIVELY_PRICED: Final = 1 << 9
EXTENDED_HOURS: Final = 1 << 13
AVERAGE_PRICE: Final = 1 << 20
OFFICIAL_CLOSE: Final = 1 << 24
OFFICIAL_OPEN: Final = 1 << 26
ODD_LOT: Final = 1 << 31
_HEX_CODE: Final = re.compile(r"[0-9A-Fa-f]{1,8}")
# Prints that count for volume but do not set prices, unless reported as extended hours.
_NO_PRICE: Final = (
    (INTERMARKET_SWEEP, "intermarket_sweep"),
    (AVERAGE_PRICE, "average_price"),
    (DERIVATIVELY_PRICED, "derivatively_priced"),
    (ODD_LOT, "odd_lot"),
)


class BarRule(StrEnum):
    """Which trades build a bar: every trade, or the vendor's rule (:func:`lean_eligibility`)."""

    ALL_TRADES = "ALL_TRADES"
    LEAN = "LEAN"


class TradeUse(StrEnum):
    """What a trade did to the bars."""

    BAR = "BAR"  # sets prices and counts in volume
    VOLUME_ONLY = "VOLUME_ONLY"  # volume, trade count and VWAP, not open/high/low/close
    EXCLUDED = "EXCLUDED"  # left out by the rule (counted by reason)
    LATE = "LATE"  # its bar had closed (counted; the bar is not changed)


@dataclass(frozen=True, slots=True)
class Eligibility:
    """A rule's verdict on one trade: BAR, VOLUME_ONLY or EXCLUDED, and why (None for BAR)."""

    use: TradeUse
    reason: str | None = None


_FULL: Final = Eligibility(TradeUse.BAR)


@lru_cache(maxsize=4096)
def _lean(conditions: tuple[str, ...], flags: tuple[str, ...]) -> Eligibility:
    if "suspicious" in flags:
        return Eligibility(TradeUse.EXCLUDED, "suspicious")
    bits = 0
    for code in conditions:
        if _HEX_CODE.fullmatch(code) is None:
            return Eligibility(TradeUse.EXCLUDED, "unknown_condition")
        bits |= int(code, 16)
    if bits & OFFICIAL_OPEN:
        return Eligibility(TradeUse.EXCLUDED, "official_open")
    if bits & OFFICIAL_CLOSE:
        return Eligibility(TradeUse.EXCLUDED, "official_close")
    if not bits & EXTENDED_HOURS:
        for bit, reason in _NO_PRICE:
            if bits & bit:
                return Eligibility(TradeUse.VOLUME_ONLY, reason)
    return _FULL


def lean_eligibility(conditions: Iterable[str], flags: Iterable[str] = ()) -> Eligibility:
    """The vendor's (Lean/AlgoSeek) rule for one trade of a Lean tick file: its sale-condition
    codes (hex flag sets, OR-ed together) and flags. See the module docstring for the rule,
    its sources and how well it reproduces the vendor's bars."""
    return _lean(tuple(conditions), tuple(flags))


def classify(rule: BarRule, conditions: Iterable[str], flags: Iterable[str] = ()) -> Eligibility:
    """The verdict of ``rule`` on a trade with these conditions and flags."""
    if rule is BarRule.ALL_TRADES:
        return _FULL
    return lean_eligibility(conditions, flags)


@dataclass(frozen=True, slots=True)
class ClosedBar:
    """A finished bar. Prices are raw fixed-point; ``open``/``high``/``low``/``close`` are
    None only when every trade of the bar was volume-only (no trade could set a price)."""

    symbol: str
    interval_ms: int
    start_ns: int  # inclusive
    open: int | None
    high: int | None
    low: int | None
    close: int | None
    volume: int  # raw fixed-point sum of sizes
    trade_count: int
    pv_sum: int  # sum(price * size), raw units squared (1e-18), exact
    closed_at_ns: int  # the event time (watermark) at which the bar closed

    @property
    def end_ns(self) -> int:
        """Exclusive end of the bar."""
        return self.start_ns + self.interval_ms * _NS_PER_MS

    @property
    def vwap(self) -> int | None:
        """``pv_sum / volume`` rounded half-even to the raw unit; None for zero volume."""
        if self.volume == 0:
            return None
        return round(Fraction(self.pv_sum, self.volume))  # Fraction rounds half to even

    def to_bar(self, venue: str, source: str, ts_init: int | None = None) -> Bar | None:
        """The :class:`Bar` record (``ts_event`` = bar start; ``ts_init`` defaults to
        :attr:`closed_at_ns`, so a replay gives the same records); None for a bar without
        price."""
        if self.open is None or self.high is None or self.low is None or self.close is None:
            return None
        return Bar(
            symbol=self.symbol,
            venue=venue,
            interval_ms=self.interval_ms,
            open=self.open,
            high=self.high,
            low=self.low,
            close=self.close,
            volume=self.volume,
            trade_count=self.trade_count,
            vwap=self.vwap,
            source=source,
            ts_event=self.start_ns,
            ts_init=self.closed_at_ns if ts_init is None else ts_init,
        )


@dataclass(frozen=True, slots=True)
class TradeOutcome:
    """What one trade did: its use (and the rule's reason), its bar, and the bars it closed."""

    use: TradeUse
    reason: str | None
    bar_start_ns: int
    closed: tuple[ClosedBar, ...] = ()


class _OpenBar:
    """Mutable accumulator of one open bar."""

    __slots__ = (
        "close",
        "close_ts",
        "count",
        "high",
        "low",
        "open",
        "open_ts",
        "pv",
        "volume",
    )

    def __init__(self) -> None:
        self.open: int | None = None
        self.open_ts = 0
        self.high = 0
        self.low = 0
        self.close = 0
        self.close_ts = 0
        self.volume = 0
        self.count = 0
        self.pv = 0

    def add(self, price: int, size: int, ts: int, priced: bool) -> None:
        self.volume += size
        self.count += 1
        self.pv += price * size
        if not priced:
            return
        if self.open is None:
            self.open = self.high = self.low = self.close = price
            self.open_ts = self.close_ts = ts
            return
        if ts < self.open_ts:  # a tie keeps the earlier arrival
            self.open, self.open_ts = price, ts
        if ts >= self.close_ts:  # a tie goes to the later arrival
            self.close, self.close_ts = price, ts
        if price > self.high:
            self.high = price
        elif price < self.low:
            self.low = price

    def state(self, start: int) -> dict[str, Any]:
        priced = self.open is not None
        return {
            "start_ns": start,
            "open": self.open,
            "open_ts": self.open_ts if priced else None,
            "high": self.high if priced else None,
            "low": self.low if priced else None,
            "close": self.close if priced else None,
            "close_ts": self.close_ts if priced else None,
            "volume": str(self.volume),  # exact sums may pass int64: kept as decimal text
            "trade_count": self.count,
            "pv_sum": str(self.pv),
        }

    @classmethod
    def from_state(cls, data: Mapping[str, Any]) -> _OpenBar:
        bar = cls()
        prices = (
            data["open"],
            data["open_ts"],
            data["high"],
            data["low"],
            data["close"],
            data["close_ts"],
        )
        if any(v is None for v in prices) and any(v is not None for v in prices):
            raise ValueError("BarBuilder snapshot has a partly priced bar")
        if prices[0] is not None:
            bar.open, bar.open_ts, bar.high, bar.low, bar.close, bar.close_ts = (
                int(v) for v in prices
            )
        bar.volume = int(data["volume"])
        bar.count = int(data["trade_count"])
        bar.pv = int(data["pv_sum"])
        return bar


class BarBuilder:
    """Event-time bars of one symbol at one interval. Snapshot it to a JSON-able dict between
    records (:meth:`snapshot` / :meth:`restore`); it holds only its open bars."""

    def __init__(
        self,
        symbol: str,
        interval_ms: int,
        grace_ms: int = 0,
        rule: BarRule = BarRule.ALL_TRADES,
    ) -> None:
        if not symbol:
            raise ValueError("symbol must not be empty")
        if interval_ms < 1:
            raise ValueError(f"interval_ms must be >= 1, got {interval_ms}")
        if grace_ms < 0:
            raise ValueError(f"grace_ms must be >= 0, got {grace_ms}")
        self.symbol = symbol
        self.interval_ms = interval_ms
        self.grace_ms = grace_ms
        self.rule = BarRule(rule)
        self._interval = interval_ms * _NS_PER_MS
        self._grace = grace_ms * _NS_PER_MS
        self._bars: dict[int, _OpenBar] = {}
        self._watermark: int | None = None
        self._closed_end: int | None = None  # every bar ending at or before this is closed
        self._late = 0
        self._excluded: dict[str, int] = {}
        self._volume_only: dict[str, int] = {}

    # -- reading ------------------------------------------------------------------------

    @property
    def watermark_ns(self) -> int | None:
        """Highest event time seen (trades and :meth:`advance`); None before any."""
        return self._watermark

    @property
    def open_bar_starts(self) -> tuple[int, ...]:
        """Starts of the bars still open, oldest first."""
        return tuple(sorted(self._bars))

    @property
    def late_trades(self) -> int:
        """Trades returned as LATE: their bar had closed."""
        return self._late

    @property
    def excluded(self) -> dict[str, int]:
        """Trades the rule left out, by reason."""
        return dict(self._excluded)

    @property
    def volume_only(self) -> dict[str, int]:
        """Trades counted for volume but not prices, by reason."""
        return dict(self._volume_only)

    # -- the transitions ----------------------------------------------------------------

    def on_trade(self, trade: Trade) -> TradeOutcome:
        """Feed one trade record of this builder's symbol."""
        if trade.symbol != self.symbol:
            raise ValueError(f"trade of {trade.symbol!r} fed to the {self.symbol!r} bars")
        return self.add_trade(
            trade.price, trade.size, trade.ts_event, trade.conditions, trade.flags
        )

    def add_trade(
        self,
        price: int,
        size: int,
        ts_event: int,
        conditions: Sequence[str] = (),
        flags: Sequence[str] = (),
    ) -> TradeOutcome:
        """Feed one trade as raw values (fixed-point price and size, event time in ns)."""
        start = ts_event - ts_event % self._interval
        verdict = (
            _FULL if self.rule is BarRule.ALL_TRADES else _lean(tuple(conditions), tuple(flags))
        )
        if verdict.use is TradeUse.EXCLUDED:
            reason = verdict.reason or ""
            self._excluded[reason] = self._excluded.get(reason, 0) + 1
            return TradeOutcome(TradeUse.EXCLUDED, verdict.reason, start)
        if self._closed_end is not None and start + self._interval <= self._closed_end:
            self._late += 1
            return TradeOutcome(TradeUse.LATE, None, start)
        bar = self._bars.get(start)
        if bar is None:
            bar = self._bars[start] = _OpenBar()
        priced = verdict.use is TradeUse.BAR
        bar.add(price, size, ts_event, priced)
        if not priced:
            reason = verdict.reason or ""
            self._volume_only[reason] = self._volume_only.get(reason, 0) + 1
        closed = self._advance(ts_event)
        return TradeOutcome(verdict.use, verdict.reason, start, closed)

    def advance(self, event_time_ns: int) -> tuple[ClosedBar, ...]:
        """Move event time forward without a trade (e.g. to a partition watermark) and close
        the bars it passes; an earlier time changes nothing."""
        return self._advance(event_time_ns)

    def flush(self) -> tuple[ClosedBar, ...]:
        """End of stream: close every open bar, oldest first. Trades for them (or for any
        bar up to the watermark's) are late from now on."""
        if self._watermark is None:
            return ()
        end = self._watermark - self._watermark % self._interval + self._interval
        if self._bars:
            end = max(end, max(self._bars) + self._interval)
        return self._close_through(end, self._watermark)

    def _advance(self, ts: int) -> tuple[ClosedBar, ...]:
        if self._watermark is not None and ts <= self._watermark:
            return ()
        self._watermark = ts
        return self._close_through(ts - self._grace, ts)

    def _close_through(self, limit: int, closed_at: int) -> tuple[ClosedBar, ...]:
        if self._closed_end is None or limit > self._closed_end:
            self._closed_end = limit
        last_due = self._closed_end - self._interval  # bars starting at or before it end
        due = [start for start in self._bars if start <= last_due]
        if not due:
            return ()
        due.sort()
        return tuple(self._emit(start, self._bars.pop(start), closed_at) for start in due)

    def _emit(self, start: int, bar: _OpenBar, closed_at: int) -> ClosedBar:
        priced = bar.open is not None
        return ClosedBar(
            symbol=self.symbol,
            interval_ms=self.interval_ms,
            start_ns=start,
            open=bar.open,
            high=bar.high if priced else None,
            low=bar.low if priced else None,
            close=bar.close if priced else None,
            volume=bar.volume,
            trade_count=bar.count,
            pv_sum=bar.pv,
            closed_at_ns=closed_at,
        )

    # -- state --------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The whole state as a JSON-able dict (ints within int64 or decimal strings, None,
        lists, string-keyed dicts)."""
        return {
            "version": SNAPSHOT_VERSION,
            "symbol": self.symbol,
            "interval_ms": self.interval_ms,
            "grace_ms": self.grace_ms,
            "rule": self.rule.value,
            "watermark_ns": self._watermark,
            "closed_end_ns": self._closed_end,
            "bars": [self._bars[start].state(start) for start in sorted(self._bars)],
            "late_trades": self._late,
            "excluded": dict(self._excluded),
            "volume_only": dict(self._volume_only),
        }

    @classmethod
    def restore(cls, data: Mapping[str, Any]) -> BarBuilder:
        """Rebuild from :meth:`snapshot` output; raises ValueError on a foreign snapshot."""
        if data.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported BarBuilder snapshot version {data.get('version')!r}")
        builder = cls(
            symbol=str(data["symbol"]),
            interval_ms=int(data["interval_ms"]),
            grace_ms=int(data["grace_ms"]),
            rule=BarRule(data["rule"]),
        )
        watermark, closed_end = data["watermark_ns"], data["closed_end_ns"]
        builder._watermark = None if watermark is None else int(watermark)
        builder._closed_end = None if closed_end is None else int(closed_end)
        for item in data["bars"]:
            start = int(item["start_ns"])
            if start % builder._interval != 0:
                raise ValueError(f"BarBuilder snapshot bar start {start} is off the grid")
            builder._bars[start] = _OpenBar.from_state(item)
        builder._late = int(data["late_trades"])
        builder._excluded = {str(k): int(v) for k, v in data["excluded"].items()}
        builder._volume_only = {str(k): int(v) for k, v in data["volume_only"].items()}
        return builder
