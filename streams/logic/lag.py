"""Consumer-group lag: Burrow's sliding-window status rules, and time lag. Pure: no I/O, and
every call that needs the time is given it.

**Observations.** Every poll the lag monitor reads, per (group, topic, partition), the
committed offset and the partition's end offset (high watermark): an :class:`Observation`.
A :class:`PartitionWindow` keeps the last ``window`` of them (Burrow's storage
``intervals``), and a longer history of end offsets over time for interpolation.

**Status: Burrow's rules, ported.** The rule functions below are a line-by-line port of
``calculatePartitionStatus`` and its rules in linkedin/Burrow
``core/internal/evaluator/caching.go`` (commit ced55ba); their own test table
(``caching_test.go``, "the correctness proof for the evaluator") is replayed in
``tests/test_logic_lag.py``. In order, for a partition whose current lag is above
``allowed_lag`` (at or below it the partition is always OK):

1. STOP — the last commit is older than the span of the window's commits
   (``now - last > last - first``), unless a broker end offset in the window is at or
   below the last committed offset (the group was caught up recently);
2. REWIND — a committed offset went backwards and has not come back to where it was;
3. only if the lag was above ``allowed_lag`` at every commit in the window:
   STALL — the committed offset never changed over the window;
   WARN — the lag never decreased over the window (offsets advance, the group falls behind);
4. otherwise OK. A window less full than ``minimum_complete`` is OK (not judged yet).

Burrow sees every commit (it reads ``__consumer_offsets``); we poll the committed offset,
so each poll is one window entry, and the commit time of an entry is when its committed
offset was first seen (the poll at which it last moved). A consumer that stops therefore
goes STALL once the window holds only its last offset, then STOP. Our one addition to
rule 1 is a floor: STOP also needs the offset to have stood still for ``stop_after``
(Burrow's relative rule alone fires one poll after a consumer that committed once).

Our statuses and their gauge values: OK 0, WARN 1, STALL 2, STOP 3, ERROR 4. ERROR is
Burrow's REWIND plus what polling sees that Burrow's rules do not: the partition is gone
(no end offset: topic deleted), the committed offset is past the end, or the end offset
went backwards within the window (topic recreated or truncated). A group's status is its
worst partition's. ``max_lag_seconds`` (optional) raises a partition whose time lag is over
the limit to at least WARN.

**Lag.** ``end - committed``; but a read_committed group that has consumed everything is
left "behind" by transaction commit markers and aborted records, which take offsets and are
never delivered. The collector reads from the committed offset once per lagging partition
(the same read that gives the time lag); when it reaches the end without a record the
observation is ``caught_up`` and its lag is 0.

**Time lag** (how old the next unconsumed record is), two ways:

* *peek* — the timestamp of the record at the committed offset, read by the collector (one
  fetch per lagging partition, at most ``max_peeks`` per poll, within a time budget). Exact
  when record timestamps are wall time (a live producer's CreateTime, or LogAppendTime), and
  it knows records older than the monitor itself. Used whenever the read succeeded, unless
  the timestamp is not credible: our topics carry *event* time as CreateTime, and a replay of
  2013 ticks would show a lag of years. So when the end-offset history brackets the
  committed offset (we saw when that record was appended) and the record's timestamp is more
  than ``EVENT_TIME_SKEW_NS`` older than its append time, interpolation is used instead.
* *interpolated* (kafka-lag-exporter's method) — from the history of (time, end offset) the
  monitor observed: the time the end offset passed the committed offset, linear between the
  two observations around it; before the oldest point it is extrapolated at the history's
  mean rate (*extrapolated*). No I/O, works for any timestamps, resolution one poll. Used
  for partitions not peeked (over the budget, the read timed out, no timestamp).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import pairwise

from schemas.models import LagStatus

__all__ = [
    "EVENT_TIME_SKEW_NS",
    "STATUS_LEVEL",
    "BurrowOffset",
    "BurrowStatus",
    "EndPoint",
    "GroupLag",
    "LagBook",
    "LagRules",
    "Observation",
    "PartitionLag",
    "PartitionWindow",
    "TimeLag",
    "calculate_partition_status",
    "interpolate_time_lag",
]

NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000
# A record whose timestamp is this much older than when it was appended carries an event
# time (a replay), not the time it was written: its age is not the group's time lag.
EVENT_TIME_SKEW_NS = 60 * NS_PER_S

STATUS_LEVEL: dict[LagStatus, int] = {
    LagStatus.OK: 0,
    LagStatus.WARN: 1,
    LagStatus.STALL: 2,
    LagStatus.STOP: 3,
    LagStatus.ERROR: 4,
}


# ======================================================================================
# Burrow's rules (core/internal/evaluator/caching.go), ported as they are
# ======================================================================================
class BurrowStatus(StrEnum):
    """Burrow's partition statuses (protocol.StatusConstant)."""

    OK = "OK"
    WARN = "WARN"
    STOP = "STOP"
    STALL = "STALL"
    REWIND = "REWIND"


@dataclass(frozen=True, slots=True)
class BurrowOffset:
    """protocol.ConsumerOffset: a committed offset, when it was committed, and the lag then
    (None: not known)."""

    offset: int
    timestamp_ms: int
    lag: int | None


def is_lag_always_not_zero(offsets: Sequence[BurrowOffset], allowed_lag: int) -> bool:
    """Rule 1: if over the stored period the lag is ever zero (<= allowed), the period is OK."""
    return all(o.lag is None or o.lag > allowed_lag for o in offsets)


def check_if_offsets_rewind(offsets: Sequence[BurrowOffset]) -> int:
    """Rule 2: index of the first commit below the one before it; -1 when none is."""
    for i in range(1, len(offsets)):
        if offsets[i].offset < offsets[i - 1].offset:
            return i
    return -1


def check_if_rewind_recovered(offsets: Sequence[BurrowOffset], reset_index: int) -> bool:
    """Rule 2, part 2: after the rewind, the group got back to where it had been."""
    previous = offsets[reset_index - 1].offset
    return any(o.offset >= previous for o in offsets[reset_index:])


def check_if_offsets_stopped(offsets: Sequence[BurrowOffset], now_ms: int) -> bool:
    """Rule 3: the time since the last commit is longer than the window's commits span."""
    first, last = offsets[0].timestamp_ms, offsets[-1].timestamp_ms
    return (now_ms - last) > (last - first)


def check_if_offsets_stalled(offsets: Sequence[BurrowOffset]) -> bool:
    """Rule 4: the committed offset never changes (lag is known to be non-zero)."""
    return all(offsets[i].offset == offsets[i - 1].offset for i in range(1, len(offsets)))


def check_if_lag_not_decreasing(offsets: Sequence[BurrowOffset]) -> bool:
    """Rule 5: offsets advance but the lag never decreases (a slow consumer)."""
    last: int | None = None
    for o in offsets:
        if o.lag is not None:
            if last is not None and o.lag < last:
                return False
            last = o.lag
    return True


def check_if_recent_lag_zero(
    offsets: Sequence[BurrowOffset], broker_offsets: Sequence[int]
) -> bool:
    """A recent broker end offset at or below the last commit: the group was caught up."""
    last = offsets[-1].offset
    return any(b <= last for b in broker_offsets)


def calculate_partition_status(
    offsets: Sequence[BurrowOffset],
    broker_offsets: Sequence[int],
    current_lag: int,
    now_ms: int,
    allowed_lag: int,
    *,
    min_stop_ms: int = 0,
) -> BurrowStatus:
    """Burrow's ``calculatePartitionStatus`` (``now_ms`` in ms where Burrow takes seconds).

    ``min_stop_ms`` is ours (0 is Burrow's behaviour): STOP also needs the last commit to be
    at least that old.
    """
    if current_lag > allowed_lag:
        if (
            check_if_offsets_stopped(offsets, now_ms)
            and now_ms - offsets[-1].timestamp_ms >= min_stop_ms
            and not check_if_recent_lag_zero(offsets, broker_offsets)
        ):
            return BurrowStatus.STOP
        rewind = check_if_offsets_rewind(offsets)
        if rewind > 0 and not check_if_rewind_recovered(offsets, rewind):
            return BurrowStatus.REWIND
        if is_lag_always_not_zero(offsets, allowed_lag):
            if check_if_offsets_stalled(offsets):
                return BurrowStatus.STALL
            if check_if_lag_not_decreasing(offsets):
                return BurrowStatus.WARN
    return BurrowStatus.OK


_FROM_BURROW = {
    BurrowStatus.OK: LagStatus.OK,
    BurrowStatus.WARN: LagStatus.WARN,
    BurrowStatus.STALL: LagStatus.STALL,
    BurrowStatus.STOP: LagStatus.STOP,
    BurrowStatus.REWIND: LagStatus.ERROR,
}


# ======================================================================================
# Time lag
# ======================================================================================
@dataclass(frozen=True, slots=True)
class TimeLag:
    ns: int  # age of the next unconsumed record, >= 0
    method: str  # "none" (caught up), "peek", "interpolated", "extrapolated", "unknown"

    @property
    def seconds(self) -> float:
        return self.ns / NS_PER_S


@dataclass(slots=True)
class EndPoint:
    """The end offset ``end`` was observed from ``first_ns`` to ``last_ns``."""

    first_ns: int
    last_ns: int
    end: int


def _appended_at(points: Sequence[EndPoint], offset: int) -> tuple[int, bool] | None:
    """When the record at ``offset`` was appended, from the end-offset history; and whether
    the history brackets it (False: extrapolated before the oldest point). None: unknown."""
    if not points or offset >= points[-1].end:
        return None
    for before, after in pairwise(points):
        if before.end <= offset < after.end:
            # records before.end .. after.end-1 arrived in (before.last_ns, after.first_ns]
            span = after.first_ns - before.last_ns
            done = offset - before.end + 1
            return before.last_ns + span * done // (after.end - before.end), True
    oldest, newest = points[0], points[-1]  # offset < oldest.end: before the history
    if newest.end > oldest.end and newest.first_ns > oldest.first_ns:
        rate_ns = (newest.first_ns - oldest.first_ns) / (newest.end - oldest.end)
        return oldest.first_ns - round((oldest.end - offset) * rate_ns), False
    return oldest.first_ns, False  # at least this old


def interpolate_time_lag(points: Sequence[EndPoint], committed: int, now_ns: int) -> TimeLag:
    """kafka-lag-exporter's time lag: now minus when the end offset passed ``committed``."""
    found = _appended_at(points, committed)
    if found is None:
        return TimeLag(0, "unknown")
    at, bracketed = found
    return TimeLag(max(0, now_ns - at), "interpolated" if bracketed else "extrapolated")


# ======================================================================================
# The window of one partition, and the book of every group's partitions
# ======================================================================================
@dataclass(frozen=True, slots=True)
class Observation:
    """One poll of one (group, topic, partition)."""

    ts_ns: int
    committed: int
    end: int | None  # None: no end offset (the topic or partition is gone)
    caught_up: bool = False  # a read from ``committed`` reached the end without a record
    head_ts_ns: int | None = None  # timestamp of the record at ``committed``, when read

    @property
    def lag(self) -> int | None:
        if self.end is None:
            return None
        return 0 if self.caught_up else max(0, self.end - self.committed)

    @property
    def effective_end(self) -> int | None:
        return self.committed if self.caught_up else self.end


@dataclass(frozen=True, slots=True)
class LagRules:
    window: int = 12
    stop_after_ns: int = 120 * NS_PER_S
    allowed_lag: int = 0
    minimum_complete: float = 0.5
    max_lag_seconds: float | None = None
    history: int = 360  # end-offset points kept for interpolation (distinct ends)


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """A partition's verdict at one evaluation."""

    group: str
    topic: str
    partition: int
    committed: int
    end: int | None
    lag: int
    time_lag: TimeLag
    status: LagStatus
    reason: str  # which rule decided, for people

    @property
    def lag_seconds(self) -> float:
        return self.time_lag.seconds


@dataclass(frozen=True, slots=True)
class GroupLag:
    group: str
    partitions: tuple[PartitionLag, ...]

    @property
    def status(self) -> LagStatus:
        """The worst partition's status (OK for a group with no partitions, like Burrow)."""
        return max(
            (p.status for p in self.partitions), key=STATUS_LEVEL.__getitem__, default=LagStatus.OK
        )

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)


@dataclass
class PartitionWindow:
    """The last ``rules.window`` observations of one partition, with the commit-time proxy of
    each (when its committed offset was first seen), and the end-offset history."""

    rules: LagRules
    observations: deque[tuple[Observation, int]] = field(init=False)
    ends: deque[EndPoint] = field(init=False)
    _moved_ns: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.observations = deque(maxlen=self.rules.window)
        self.ends = deque(maxlen=self.rules.history)

    def observe(self, obs: Observation) -> None:
        previous = self.observations[-1][0] if self.observations else None
        if previous is None or obs.committed != previous.committed:
            self._moved_ns = obs.ts_ns
        self.observations.append((obs, self._moved_ns))
        if obs.end is None:
            return
        if self.ends and obs.end < self.ends[-1].end:
            self.ends.clear()  # the log restarted (recreated, truncated): old points lie
        if self.ends and self.ends[-1].end == obs.end:
            self.ends[-1].last_ns = obs.ts_ns
        else:
            self.ends.append(EndPoint(obs.ts_ns, obs.ts_ns, obs.end))

    def time_lag(self, now_ns: int) -> TimeLag:
        obs = self.observations[-1][0]
        if obs.lag == 0:
            return TimeLag(0, "none")
        points = list(self.ends)
        if obs.head_ts_ns is not None:
            found = _appended_at(points, obs.committed)
            credible = (
                found is None or not found[1] or obs.head_ts_ns >= found[0] - EVENT_TIME_SKEW_NS
            )
            if credible:
                return TimeLag(max(0, now_ns - obs.head_ts_ns), "peek")
        return interpolate_time_lag(points, obs.committed, now_ns)

    def status(self, now_ns: int) -> tuple[LagStatus, str]:
        window = [o for o, _ in self.observations]
        last = window[-1]
        if last.end is None:
            return LagStatus.ERROR, "partition gone: no end offset"
        if last.committed > last.end:
            return LagStatus.ERROR, f"committed offset {last.committed} is past the end {last.end}"
        if any(o.end is not None and o.end > last.end for o in window):
            return LagStatus.ERROR, "end offset went backwards (topic recreated or truncated)"
        complete = len(window) / self.rules.window
        if complete < self.rules.minimum_complete:
            return LagStatus.OK, f"window {complete:.0%} full: not judged yet"
        offsets = [
            BurrowOffset(o.committed, moved // NS_PER_MS, o.lag) for o, moved in self.observations
        ]
        broker = [e for o in window if (e := o.effective_end) is not None]
        verdict = calculate_partition_status(
            offsets,
            broker,
            last.lag or 0,
            now_ns // NS_PER_MS,
            self.rules.allowed_lag,
            min_stop_ms=self.rules.stop_after_ns // NS_PER_MS,
        )
        return _FROM_BURROW[verdict], _REASONS[verdict]

    def evaluate(self, group: str, topic: str, partition: int, now_ns: int) -> PartitionLag:
        last = self.observations[-1][0]
        status, reason = self.status(now_ns)
        time_lag = self.time_lag(now_ns)
        limit = self.rules.max_lag_seconds
        if (
            limit is not None
            and time_lag.seconds > limit
            and STATUS_LEVEL[status] < STATUS_LEVEL[LagStatus.WARN]
        ):
            status, reason = LagStatus.WARN, f"time lag {time_lag.seconds:.1f} s over {limit} s"
        return PartitionLag(
            group,
            topic,
            partition,
            last.committed,
            last.end,
            last.lag or 0,
            time_lag,
            status,
            reason,
        )


_REASONS = {
    BurrowStatus.OK: "ok",
    BurrowStatus.WARN: "lag not decreasing over the window",
    BurrowStatus.STALL: "committed offset not moving while behind",
    BurrowStatus.STOP: "no commit for the stop time while behind",
    BurrowStatus.REWIND: "committed offset went backwards",
}

Key = tuple[str, str, int]  # (group, topic, partition)


class LagBook:
    """Every (group, topic, partition) the monitor watches: observe each poll, evaluate."""

    def __init__(self, rules: LagRules) -> None:
        self.rules = rules
        self._windows: dict[Key, PartitionWindow] = {}

    def observe(self, group: str, topic: str, partition: int, obs: Observation) -> None:
        key = (group, topic, partition)
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = PartitionWindow(self.rules)
        window.observe(obs)

    def retain(self, keys: Iterable[Key]) -> list[Key]:
        """Forget partitions not in ``keys`` (the group no longer has an offset for them, or
        the group is gone, as Burrow does); return the forgotten ones."""
        keep = set(keys)
        gone = [k for k in self._windows if k not in keep]
        for key in gone:
            del self._windows[key]
        return gone

    def evaluate(self, now_ns: int) -> list[GroupLag]:
        by_group: dict[str, list[PartitionLag]] = {}
        for (group, topic, partition), window in sorted(self._windows.items()):
            by_group.setdefault(group, []).append(window.evaluate(group, topic, partition, now_ns))
        return [GroupLag(g, tuple(parts)) for g, parts in by_group.items()]
