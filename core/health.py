"""Liveness and readiness of this process, served next to ``/metrics`` (core.metrics).

Components register named checks, each a callable returning ``(ok, reason)``:

- **liveness** (``/healthz``): the process should be restarted when one fails; typically a
  :class:`Heartbeat` of the component's main loop (a loop that stopped turning);
- **readiness** (``/readyz``): the component does its job now (partitions assigned, caught
  up, connected to its feed). A process with no readiness check is ready once it serves.

A check registered as a bound method is held weakly: an app that is gone takes its checks
with it. A check that raises fails, with the exception as its reason. Checks run on the
HTTP server's thread, so they only read state the component's own thread keeps up to date.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["HEALTH", "Check", "Health", "Heartbeat", "Report"]

Check = Callable[[], tuple[bool, str]]
Kind = Literal["liveness", "readiness"]


@dataclass(frozen=True, slots=True)
class Report:
    """The result of one kind of check: ok when every check passed."""

    ok: bool
    checks: dict[str, tuple[bool, str]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.ok else "fail",
            "checks": {name: {"ok": ok, "reason": why} for name, (ok, why) in self.checks.items()},
            "failing": sorted(name for name, (ok, _) in self.checks.items() if not ok),
        }


class Health:
    """A registry of named checks, by kind."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._checks: dict[Kind, dict[str, Callable[[], Check | None]]] = {
            "liveness": {},
            "readiness": {},
        }

    def register(self, name: str, check: Check, *, kind: Kind = "readiness") -> None:
        """Add (or replace) a check. A bound method is held weakly."""
        ref: Callable[[], Check | None]
        if hasattr(check, "__self__") and hasattr(check, "__func__"):
            ref = weakref.WeakMethod(check)
        else:
            ref = lambda: check  # noqa: E731 - a strong reference with the same call shape
        with self._lock:
            self._checks[kind][name] = ref

    def unregister(self, name: str) -> None:
        with self._lock:
            for checks in self._checks.values():
                checks.pop(name, None)

    def names(self, kind: Kind = "readiness") -> list[str]:
        with self._lock:
            return sorted(self._checks[kind])

    def report(self, kind: Kind) -> Report:
        with self._lock:
            refs = list(self._checks[kind].items())
        results: dict[str, tuple[bool, str]] = {}
        for name, ref in refs:
            check = ref()
            if check is None:  # its component is gone
                with self._lock:
                    if self._checks[kind].get(name) is ref:
                        del self._checks[kind][name]
                continue
            try:
                ok, reason = check()
            except Exception as exc:  # a broken check fails, it does not break /readyz
                ok, reason = False, f"check raised {type(exc).__name__}: {exc}"
            results[name] = (bool(ok), str(reason))
        return Report(all(ok for ok, _ in results.values()), results)

    def liveness(self) -> Report:
        return self.report("liveness")

    def readiness(self) -> Report:
        return self.report("readiness")


class Heartbeat:
    """A main loop's pulse: :meth:`beat` once per turn (cheap), :meth:`check` fails once it
    has not beaten for ``stall_after_s``. Before the first beat the loop is starting: alive.
    """

    __slots__ = ("__weakref__", "_clock", "last", "stall_after_s")

    def __init__(self, stall_after_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_after_s = stall_after_s
        self._clock = clock
        self.last: float | None = None

    def beat(self) -> None:
        self.last = self._clock()

    def age(self) -> float | None:
        last = self.last
        return None if last is None else self._clock() - last

    def check(self) -> tuple[bool, str]:
        age = self.age()
        if age is None:
            return True, "starting: the main loop has not begun"
        if age > self.stall_after_s:
            return (
                False,
                f"main loop stalled: no turn for {age:.1f} s (limit {self.stall_after_s:g} s)",
            )
        return True, f"main loop turned {age:.1f} s ago"


#: this process's checks, served by :func:`core.metrics.serve_metrics`
HEALTH = Health()
