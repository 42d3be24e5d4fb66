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

State
    The machine is small and kept in two parts that change at different rates:

    - the *open bar* (:meth:`SmaCrossover.bar_state`): bucket start, close so far, its event
      time and the count of late trades — what an ordinary trade changes;
    - the *SMA state* (:meth:`SmaCrossover.sma_state`): the parameters, the last ``slow``
      closes, the last strict relation and the crossover sequence — changed only when a bar
      closes.

    A caller that persists them (the signals app) rewrites the second part only after a bar
    closed; :meth:`SmaCrossover.from_states` rebuilds the machine from both. The one-piece
    :meth:`SmaCrossover.snapshot` / :meth:`SmaCrossover.restore` (version 1) are kept too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from schemas.models import SignalDirection

__all__ = ["Crossover", "SmaCrossover", "TradeResult"]

SNAPSHOT_VERSION: Final = 1  # snapshot(): the whole machine in one dict
SMA_STATE_VERSION: Final = 2  # sma_state(): the SMA part; the open bar is in bar_state()
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


# Results without a crossover carry no data of their own: one shared instance each.
_NOTHING: Final = TradeResult()
_LATE: Final = TradeResult(late=True)
_CLOSED: Final = TradeResult(bar_closed=True)


def _div_half_even(numerator: int, denominator: int) -> int:
    quotient, remainder = divmod(numerator, denominator)  # denominator > 0: remainder >= 0
    if remainder * 2 > denominator or (remainder * 2 == denominator and quotient % 2 == 1):
        quotient += 1
    return quotient


class SmaCrossover:
    """The crossover state machine of one symbol; it holds at most ``slow`` closes.

    Its state is JSON-able in two parts (:meth:`bar_state`, :meth:`sma_state`, rebuilt by
    :meth:`from_states`) or in one (:meth:`snapshot` / :meth:`restore`)."""

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
        bar_start = self._bar_start
        if bucket == bar_start:  # the common case first: one more trade in the open bar
            if ts_event >= self._bar_last_ts:  # type: ignore[operator]  # set with bar_start
                self._bar_close = price
                self._bar_last_ts = ts_event
            return _NOTHING
        if bar_start is None:
            self._open_bar(bucket, price, ts_event)
            return _NOTHING
        if bucket < bar_start:
            self._late_trades += 1
            return _LATE
        crossover = self._close_bar(ts_event)
        self._open_bar(bucket, price, ts_event)
        if crossover is None:
            return _CLOSED
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

    def bar_state(self) -> list[int | None]:
        """The open bar and the late count: ``[bar_start_ns, close, close_ts, late_trades]``
        (the first three None before the first trade). JSON-able, changes with every trade."""
        return [self._bar_start, self._bar_close, self._bar_last_ts, self._late_trades]

    def sma_state(self) -> dict[str, Any]:
        """Parameters, closes, relation and sequence (JSON-able); changes only at bar closes."""
        return {
            "version": SMA_STATE_VERSION,
            "symbol": self.symbol,
            "bar_interval_ms": self.bar_interval_ms,
            "fast": self.fast,
            "slow": self.slow,
            "closes": list(self._closes),
            "relation": self._relation,
            "sequence": self._sequence,
        }

    @classmethod
    def from_states(cls, sma: Mapping[str, Any], bar: Sequence[int | None] | None) -> SmaCrossover:
        """Rebuild from :meth:`sma_state` and :meth:`bar_state` output.

        ``sma`` may also be a version-1 :meth:`snapshot` (state written before the split);
        its open bar and late count are then used unless ``bar`` is given. ``bar`` None with
        a version-2 ``sma`` means no trade since: no open bar. Raises ValueError on state
        that is not ours.
        """
        version = sma.get("version")
        if version == SNAPSHOT_VERSION:
            whole = cls.restore(sma)
            if bar is not None:
                whole._set_bar_state(bar)
            return whole
        if version != SMA_STATE_VERSION:
            raise ValueError(f"unsupported SmaCrossover state version {version!r}")
        machine = cls(
            symbol=str(sma["symbol"]),
            bar_interval_ms=int(sma["bar_interval_ms"]),
            fast=int(sma["fast"]),
            slow=int(sma["slow"]),
        )
        machine._set_sma_part(sma["closes"], sma["relation"], sma["sequence"])
        if bar is not None:
            machine._set_bar_state(bar)
        return machine

    def _set_bar_state(self, bar: Sequence[int | None]) -> None:
        if len(bar) != 4 or bar[3] is None:
            raise ValueError(f"SmaCrossover bar state must be [start, close, ts, late]: {bar!r}")
        self._set_open_bar(bar[0], bar[1], bar[2])
        self._late_trades = int(bar[3])

    def _set_open_bar(self, start: int | None, close: int | None, last_ts: int | None) -> None:
        if start is None and close is None and last_ts is None:
            self._bar_start = self._bar_close = self._bar_last_ts = None
            return
        if start is None or close is None or last_ts is None:
            raise ValueError("SmaCrossover state has a partly defined open bar")
        self._open_bar(int(start), int(close), int(last_ts))

    def _set_sma_part(self, closes: Sequence[Any], relation: Any, sequence: Any) -> None:
        values = [int(c) for c in closes]
        if len(values) > self.slow:
            raise ValueError(f"SmaCrossover state holds {len(values)} closes > slow={self.slow}")
        if relation not in (None, _ABOVE, _BELOW):
            raise ValueError(f"SmaCrossover state has unknown relation {relation!r}")
        self._closes = values
        self._relation = relation
        self._sequence = int(sequence)

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
        sma._set_open_bar(data["bar_start_ns"], data["bar_close"], data["bar_last_ts"])
        sma._set_sma_part(data["closes"], data["relation"], data["sequence"])
        sma._late_trades = int(data["late_trades"])
        return sma
