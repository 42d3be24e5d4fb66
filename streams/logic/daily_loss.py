"""Session days in an exchange's time zone and the daily loss limit of one account.

Pure: no I/O, no clock (time is the observation's ``ts_event``, int UTC ns). Money is raw
fixed-point (int, scale 1e-9) and exact.

Session day
    A session day ``D`` starts at the *cut* — wall time ``cut`` (default ``00:00``, local
    midnight) on local date ``D`` in the zone (``zoneinfo``) — and ends at the next day's
    cut: ``day_of(t) = D`` with ``start(D) <= t < start(D + 1)``. A day is labelled by the
    local date on which it starts (with a 17:00 cut, Monday 17:00 to Tuesday 17:00 is
    Monday's). The cut is read with ``fold=0`` (PEP 495): an ambiguous wall time (autumn
    back) is its first occurrence; a wall time inside a spring-forward gap is read with
    the offset before the gap (02:30 in New York's 02:00→03:00 gap starts the day at 03:30
    EDT). So days start at increasing instants and ``day_of`` never goes back in time;
    a day is 23 or 25 hours long across a DST change.

Daily PnL
    ``pnl = equity - day_start_equity``. The day's start equity is the equity of the last
    observation before the day (the last one of the previous session day that had any, so
    a weekend or a gap is spanned by the next day), or the equity of the very first
    observation on the first day. ``loss = max(0, -pnl)``.

Limit
    WARNING when ``loss >= warning × limit`` (default 80 %), BREACH when ``loss >= limit``;
    both decided exactly on the integers. Each level fires once per session day, at the
    first observation that reaches it (a jump past both fires both); a recovery and a
    second fall the same day fire nothing new. A new day re-arms both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from fractions import Fraction
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["DailyLossTracker", "DailyLossUpdate", "SessionCalendar"]

_NS_PER_S: Final = 1_000_000_000
_NS_PER_US: Final = 1_000
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_DAY: Final = timedelta(days=1)


class SessionCalendar:
    """Maps event times (UTC ns) to session days of ``timezone`` cut at local ``cut``."""

    def __init__(self, timezone: str = "America/New_York", cut: str = "00:00") -> None:
        try:
            self._tz = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {timezone!r}") from exc
        try:
            self._cut = time.fromisoformat(cut)
        except ValueError as exc:
            raise ValueError(f"day cut must be a wall time like '17:00', got {cut!r}") from exc
        if self._cut.tzinfo is not None:
            raise ValueError(f"day cut is a wall time of the zone, without an offset: {cut!r}")
        self.timezone = timezone
        self.cut = cut
        self._span: tuple[int, int, date] | None = None  # last day looked up: [start, end)

    def start_ns(self, day: date) -> int:
        """The instant (UTC ns) at which session day ``day`` starts."""
        local = datetime.combine(day, self._cut, tzinfo=self._tz)  # fold=0
        return (local - _EPOCH) // timedelta(microseconds=1) * _NS_PER_US

    def day_of(self, ts_ns: int) -> date:
        """The session day holding the instant ``ts_ns``."""
        span = self._span
        if span is not None and span[0] <= ts_ns < span[1]:
            return span[2]
        day = datetime.fromtimestamp(ts_ns // _NS_PER_S, self._tz).date()
        while ts_ns < self.start_ns(day):
            day -= _ONE_DAY
        while ts_ns >= self.start_ns(day + _ONE_DAY):
            day += _ONE_DAY
        self._span = (self.start_ns(day), self.start_ns(day + _ONE_DAY), day)
        return day


@dataclass(frozen=True, slots=True)
class DailyLossUpdate:
    """The session day's PnL after one observation (money raw)."""

    day: date
    day_start_equity: int
    pnl: int
    loss: int  # max(0, -pnl)
    warning: bool  # the loss reached the warning level at this observation, first time today
    breach: bool  # the loss reached the limit at this observation, first time today


class DailyLossTracker:
    """Daily PnL of one account against its loss limit; snapshot/restore between records."""

    def __init__(self, limit: int, warning: Fraction) -> None:
        if limit <= 0:
            raise ValueError(f"daily loss limit must be positive, got {limit}")
        if not 0 < warning <= 1:
            raise ValueError(f"warning level must be a fraction in (0, 1], got {warning}")
        self.limit = limit
        self.warning = warning
        self._day: date | None = None
        self._start = 0  # equity the day's PnL is measured from
        self._equity = 0  # last observed equity
        self._warned = False
        self._breached = False

    def current(self) -> DailyLossUpdate:
        """The day's PnL at the last observation (no new alert); raises before any."""
        if self._day is None:
            raise ValueError("no equity observed yet")
        pnl = self._equity - self._start
        return DailyLossUpdate(self._day, self._start, pnl, max(0, -pnl), False, False)

    def update(self, day: date, equity: int) -> DailyLossUpdate:
        """Observe ``equity`` (raw) on session ``day`` (never earlier than the last one)."""
        if self._day is None:
            self._start = equity
        elif day < self._day:
            raise ValueError(f"session day {day} is before the current one {self._day}")
        elif day > self._day:
            self._start = self._equity
            self._warned = self._breached = False
        self._day, self._equity = day, equity
        loss = max(0, self._start - equity)
        warning = not self._warned and (
            loss * self.warning.denominator >= self.limit * self.warning.numerator
        )
        breach = not self._breached and loss >= self.limit
        self._warned |= warning
        self._breached |= breach
        pnl = equity - self._start
        return DailyLossUpdate(day, self._start, pnl, loss, warning, breach)

    # -- state --------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The state as a JSON-able dict (the day as an ISO date)."""
        return {
            "day": None if self._day is None else self._day.isoformat(),
            "start_equity": self._start,
            "equity": self._equity,
            "warned": self._warned,
            "breached": self._breached,
        }

    @classmethod
    def restore(cls, data: Mapping[str, Any], limit: int, warning: Fraction) -> DailyLossTracker:
        """Rebuild from :meth:`snapshot` output with the given limit and warning level."""
        tracker = cls(limit, warning)
        day = data["day"]
        tracker._day = None if day is None else date.fromisoformat(str(day))
        tracker._start = int(data["start_equity"])
        tracker._equity = int(data["equity"])
        tracker._warned = bool(data["warned"])
        tracker._breached = bool(data["breached"])
        return tracker
