"""Drawdown of one account's equity: running peak, current and maximum drawdown, exactly.

Pure: no I/O, no clock. Equity is raw fixed-point (int, scale 1e-9); every money figure
here is an exact int, and the fractions are decided on the integers.

Conventions
    ``peak`` is the highest equity observed so far (the first observation starts it).
    The money drawdown is ``peak - equity`` (>= 0). The drawdown fraction is
    ``(peak - equity) / peak`` as the correctly rounded float of that rational, clamped to
    ``[0, 1]`` (equity below zero is a total loss, 1.0); it is 0.0 while the peak is not
    positive (a fraction of a non-positive peak means nothing; the money drawdown is still
    reported).

    The maximum drawdown fraction is kept as the exact rational ``(drawdown, peak)`` of the
    worst observation (compared by cross-multiplication), so it never decreases and a
    snapshot restores it bit for bit. The maximum money drawdown is tracked on its own:
    the two maxima can come from different observations (a 10 % fall from a high peak can
    be more money than a 20 % fall from a low one).

Alert
    :meth:`DrawdownTracker.update` reports ``crossed`` when the drawdown fraction reaches
    the threshold (``>=``, exactly on the rationals) from below: once per crossing. The
    alert re-arms when the drawdown falls back strictly below the threshold.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

__all__ = ["DrawdownTracker", "DrawdownUpdate"]


@dataclass(frozen=True, slots=True)
class DrawdownUpdate:
    """The drawdown after one observation (money raw, fractions in [0, 1])."""

    peak: int
    drawdown: int  # peak - equity, >= 0
    fraction: float
    max_drawdown: int  # largest money drawdown so far
    max_fraction: float  # largest drawdown fraction so far
    crossed: bool  # the fraction reached the threshold from below at this observation


def _fraction(drawdown: int, peak: int) -> float:
    if peak <= 0:
        return 0.0
    return min(1.0, drawdown / peak)  # int / int: the correctly rounded float


class DrawdownTracker:
    """Peak and drawdowns of one equity series; snapshot/restore between observations."""

    def __init__(self, threshold: Fraction) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"drawdown threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self._peak: int | None = None
        self._equity = 0
        self._max_money = 0
        self._max_num = 0  # worst drawdown fraction so far, exactly: max_num / max_den
        self._max_den = 1
        self._alerted = False  # at or above the threshold since the last crossing
        self._crossings = 0

    @property
    def crossings(self) -> int:
        """How many times the drawdown reached the threshold from below."""
        return self._crossings

    def _at_or_above(self, drawdown: int, peak: int) -> bool:
        return peak > 0 and drawdown * self.threshold.denominator >= (
            self.threshold.numerator * peak
        )

    def current(self) -> DrawdownUpdate:
        """The drawdown at the last observation (``crossed`` False); raises before any."""
        if self._peak is None:
            raise ValueError("no equity observed yet")
        drawdown = self._peak - self._equity
        return DrawdownUpdate(
            peak=self._peak,
            drawdown=drawdown,
            fraction=_fraction(drawdown, self._peak),
            max_drawdown=self._max_money,
            max_fraction=min(1.0, self._max_num / self._max_den),
            crossed=False,
        )

    def update(self, equity: int) -> DrawdownUpdate:
        """Observe ``equity`` (raw); return the drawdown after it."""
        peak = equity if self._peak is None else max(self._peak, equity)
        self._peak, self._equity = peak, equity
        drawdown = peak - equity
        self._max_money = max(self._max_money, drawdown)
        if peak > 0 and drawdown * self._max_den > self._max_num * peak:
            self._max_num, self._max_den = drawdown, peak
        crossed = False
        if self._at_or_above(drawdown, peak):
            if not self._alerted:
                self._alerted = crossed = True
                self._crossings += 1
        else:
            self._alerted = False
        return replace(self.current(), crossed=crossed)

    # -- state --------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The state as a JSON-able dict (money as decimal strings: products may pass int64)."""
        return {
            "peak": None if self._peak is None else str(self._peak),
            "equity": str(self._equity),
            "max_drawdown": str(self._max_money),
            "max_fraction": [str(self._max_num), str(self._max_den)],
            "alerted": self._alerted,
            "crossings": self._crossings,
        }

    @classmethod
    def restore(cls, data: Mapping[str, Any], threshold: Fraction) -> DrawdownTracker:
        """Rebuild from :meth:`snapshot` output with the given alert threshold."""
        tracker = cls(threshold)
        peak = data["peak"]
        tracker._peak = None if peak is None else int(peak)
        tracker._equity = int(data["equity"])
        tracker._max_money = int(data["max_drawdown"])
        num, den = (int(v) for v in data["max_fraction"])
        if den <= 0 or num < 0:
            raise ValueError(f"drawdown snapshot has an invalid max fraction {num}/{den}")
        tracker._max_num, tracker._max_den = num, den
        tracker._alerted = bool(data["alerted"])
        tracker._crossings = int(data["crossings"])
        return tracker
