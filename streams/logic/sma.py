"""SMA crossover for one symbol: trades → event-time bar closes → fast/slow SMAs → crossovers.

A pure state machine: no I/O, no clock. Time is the trade's own ``ts_event`` (int UTC ns).

Bars
    Trades are bucketed by event time into bars of ``bar_interval_ms``; a bar's bucket is
    ``[start, start + interval)`` with ``start = ts - ts mod interval`` (aligned to the epoch).
    The open bar closes when a trade of a *later* bucket arrives; its close is the price of
    its latest trade in event time (a tie on ``ts_event`` goes to the later arrival). Buckets
    without trades produce no bar. A trade of an *earlier* bucket than the open one is late:
    it is ignored and counted (:attr:`TradeResult.late`, :attr:`SmaCrossover.late_trades`).

SMAs
    The last ``slow`` closes are kept. Fast and slow SMAs exist once ``slow`` closes do.
    Their *relation* is decided exactly, on the rationals (``sum_fast * slow`` vs
    ``sum_slow * fast``: no rounding can fake or hide a cross). The values reported in a
    :class:`Crossover` are ``sum / n`` rounded half-even to the raw unit (1e-9).

Crossovers
    The first strict relation (fast above or below slow) is the baseline and emits nothing.
    After that, a :class:`Crossover` is emitted when the strict relation flips: LONG when
    fast goes above slow, SHORT when it goes below. Equality keeps the previous relation
    (touching and turning back is not a cross; passing through equality is one cross).
    The crossover's ``ts_event`` is the event time of the trade that closed the bar — the
    earliest event time at which the close is known, so acting on it never looks ahead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from schemas.models import SignalDirection

__all__ = ["Crossover", "SmaCrossover", "TradeResult"]

SNAPSHOT_VERSION: Final = 1
_NS_PER_MS: Final = 1_000_000
_ABOVE: Final = "ABOVE"
_BELOW: Final = "BELOW"


@dataclass(frozen=True, slots=True)
class Crossover:
    """Fast SMA crossed the slow one at the close of the bar starting at ``bar_start_ns``."""

    direction: SignalDirection
    price: int  # the close that triggered it (raw fixed-point)
    fast: int  # fast SMA, raw, rounded half-even
    slow: int  # slow SMA, raw, rounded half-even
    ts_event: int  # event time of the trade that closed the bar
    bar_start_ns: int
    sequence: int  # 1 for the symbol's first crossover, then 2, 3, ...


@dataclass(frozen=True, slots=True)
class TradeResult:
    """What one trade did: closed a bar, produced a crossover, or was late and ignored."""

    crossover: Crossover | None = None
    bar_closed: bool = False
    late: bool = False


def _div_half_even(numerator: int, denominator: int) -> int:
    quotient, remainder = divmod(numerator, denominator)  # denominator > 0: remainder >= 0
    if remainder * 2 > denominator or (remainder * 2 == denominator and quotient % 2 == 1):
        quotient += 1
    return quotient


class SmaCrossover:
    """The crossover state machine of one symbol. Snapshot it to a JSON-able dict between
    records (:meth:`snapshot` / :meth:`restore`); it holds at most ``slow`` closes."""

    def __init__(self, symbol: str, bar_interval_ms: int, fast: int, slow: int) -> None:
        if not symbol:
            raise ValueError("symbol must not be empty")
        if bar_interval_ms < 1:
            raise ValueError(f"bar_interval_ms must be >= 1, got {bar_interval_ms}")
        if fast < 1 or slow <= fast:
            raise ValueError(f"need 1 <= fast < slow, got fast={fast} slow={slow}")
        self.symbol = symbol
        self.bar_interval_ms = bar_interval_ms
        self.fast = fast
        self.slow = slow
        self._interval_ns = bar_interval_ms * _NS_PER_MS
        self._bar_start: int | None = None  # open bar's bucket start
        self._bar_close: int | None = None  # open bar's close so far
        self._bar_last_ts: int | None = None  # ts_event of that close
        self._closes: list[int] = []  # closed bars, oldest first, at most `slow`
        self._relation: str | None = None  # last strict relation of fast vs slow
        self._sequence = 0
        self._late_trades = 0

    # -- reading ------------------------------------------------------------------------

    @property
    def closes(self) -> tuple[int, ...]:
        """Closes of the last (up to ``slow``) closed bars, oldest first."""
        return tuple(self._closes)

    @property
    def sequence(self) -> int:
        """Crossovers emitted so far for this symbol."""
        return self._sequence

    @property
    def late_trades(self) -> int:
        """Trades ignored because their bucket was already closed."""
        return self._late_trades

    def sma_values(self) -> tuple[int, int] | None:
        """(fast, slow) SMAs of the closed bars, raw and rounded half-even; None before
        ``slow`` closes exist."""
        if len(self._closes) < self.slow:
            return None
        return (
            _div_half_even(sum(self._closes[-self.fast :]), self.fast),
            _div_half_even(sum(self._closes), self.slow),
        )

    # -- the transition -----------------------------------------------------------------

    def on_trade(self, price: int, ts_event: int) -> TradeResult:
        """Feed one trade (raw price, event time in ns)."""
        bucket = ts_event - ts_event % self._interval_ns
        if self._bar_start is None:
            self._open_bar(bucket, price, ts_event)
            return TradeResult()
        if bucket < self._bar_start:
            self._late_trades += 1
            return TradeResult(late=True)
        if bucket == self._bar_start:
            assert self._bar_last_ts is not None
            if ts_event >= self._bar_last_ts:
                self._bar_close = price
                self._bar_last_ts = ts_event
            return TradeResult()
        crossover = self._close_bar(ts_event)
        self._open_bar(bucket, price, ts_event)
        return TradeResult(crossover=crossover, bar_closed=True)

    def _open_bar(self, bucket: int, price: int, ts_event: int) -> None:
        self._bar_start = bucket
        self._bar_close = price
        self._bar_last_ts = ts_event

    def _close_bar(self, ts_event: int) -> Crossover | None:
        assert self._bar_close is not None and self._bar_start is not None
        close, bar_start = self._bar_close, self._bar_start
        self._closes.append(close)
        if len(self._closes) > self.slow:
            del self._closes[0]
        if len(self._closes) < self.slow:
            return None
        fast_sum = sum(self._closes[-self.fast :])
        slow_sum = sum(self._closes)
        lhs, rhs = fast_sum * self.slow, slow_sum * self.fast  # exact comparison of the means
        if lhs == rhs:
            return None
        relation = _ABOVE if lhs > rhs else _BELOW
        previous, self._relation = self._relation, relation
        if previous is None or previous == relation:
            return None
        self._sequence += 1
        return Crossover(
            direction=SignalDirection.LONG if relation == _ABOVE else SignalDirection.SHORT,
            price=close,
            fast=_div_half_even(fast_sum, self.fast),
            slow=_div_half_even(slow_sum, self.slow),
            ts_event=ts_event,
            bar_start_ns=bar_start,
            sequence=self._sequence,
        )

    # -- state --------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The whole state as a JSON-able dict (ints within int64, strings, None, lists)."""
        return {
            "version": SNAPSHOT_VERSION,
            "symbol": self.symbol,
            "bar_interval_ms": self.bar_interval_ms,
            "fast": self.fast,
            "slow": self.slow,
            "bar_start_ns": self._bar_start,
            "bar_close": self._bar_close,
            "bar_last_ts": self._bar_last_ts,
            "closes": list(self._closes),
            "relation": self._relation,
            "sequence": self._sequence,
            "late_trades": self._late_trades,
        }

    @classmethod
    def restore(cls, data: Mapping[str, Any]) -> SmaCrossover:
        """Rebuild from :meth:`snapshot` output; raises ValueError on a foreign snapshot."""
        if data.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported SmaCrossover snapshot version {data.get('version')!r}")
        sma = cls(
            symbol=str(data["symbol"]),
            bar_interval_ms=int(data["bar_interval_ms"]),
            fast=int(data["fast"]),
            slow=int(data["slow"]),
        )
        open_bar = (data["bar_start_ns"], data["bar_close"], data["bar_last_ts"])
        if any(v is None for v in open_bar) and any(v is not None for v in open_bar):
            raise ValueError("SmaCrossover snapshot has a partly defined open bar")
        if open_bar[0] is not None:
            sma._open_bar(int(open_bar[0]), int(open_bar[1]), int(open_bar[2]))
        closes = [int(c) for c in data["closes"]]
        if len(closes) > sma.slow:
            raise ValueError(f"SmaCrossover snapshot holds {len(closes)} closes > slow={sma.slow}")
        sma._closes = closes
        relation = data["relation"]
        if relation not in (None, _ABOVE, _BELOW):
            raise ValueError(f"SmaCrossover snapshot has unknown relation {relation!r}")
        sma._relation = relation
        sma._sequence = int(data["sequence"])
        sma._late_trades = int(data["late_trades"])
        return sma
