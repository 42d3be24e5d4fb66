"""``zscore-mean-reversion``: fade closes far from their rolling mean.

``z = (close - mean) / std`` over the last ``window`` closes, the one that just closed
included (``std`` the sample standard deviation, ddof 1). ``z < -entry`` targets LONG,
``z > entry`` SHORT; a LONG is closed (FLAT) once ``z >= -exit``, a SHORT once ``z <= exit``;
otherwise the target stays. With a constant window (std 0) nothing changes.

Exact: with ``S`` and ``Q`` the sum and the sum of squares of the window's raw closes,
``d = n * close - S`` and ``X = n * Q - S**2``, ``z**2 = d**2 (n - 1) / (n X)``; a threshold
``k = p / q`` (its decimal text, as a fraction) is compared as ``d**2 (n - 1) q**2`` against
``p**2 n X`` with the sign of ``d``: integers only, no square root, no float.

Signal values: ``fast_value`` the mean (half-even), ``slow_value`` the standard deviation
(rounded down to 1e-9).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from decimal import Decimal
from fractions import Fraction
from typing import Any

from pydantic import Field, model_validator

from schemas.models import SignalDirection
from streams.logic.strategies.base import (
    Bar,
    Strategy,
    StrategyParams,
    Target,
    div_half_even,
)

__all__ = ["ZScoreMeanReversionParams", "ZScoreMeanReversionStrategy"]


class ZScoreMeanReversionParams(StrategyParams):
    window: int = Field(default=20, ge=2, description="closes in the mean and std")
    entry: Decimal = Field(default=Decimal("2"), gt=0, description="|z| beyond which to enter")
    exit: Decimal = Field(default=Decimal("0.5"), ge=0, description="|z| within which to exit")

    @model_validator(mode="after")
    def _exit_below_entry(self) -> ZScoreMeanReversionParams:
        if self.exit >= self.entry:
            raise ValueError(f"exit ({self.exit}) must be smaller than entry ({self.entry})")
        return self


class ZScoreMeanReversionStrategy(Strategy):
    Params = ZScoreMeanReversionParams

    def __init__(self, params: ZScoreMeanReversionParams) -> None:
        super().__init__(params)
        self.window = params.window
        entry, exit_ = Fraction(params.entry), Fraction(params.exit)
        self._entry = (entry.numerator**2, entry.denominator**2)
        self._exit = (exit_.numerator**2, exit_.denominator**2)
        self._closes: deque[int] = deque(maxlen=params.window)
        self._direction = SignalDirection.FLAT

    def _beyond(self, d2n1: int, nx: int, threshold: tuple[int, int]) -> int:
        """Sign of ``|z| - k``: -1, 0 or 1."""
        p2, q2 = threshold
        lhs, rhs = d2n1 * q2, p2 * nx
        return (lhs > rhs) - (lhs < rhs)

    def on_bar(self, bar: Bar) -> Target | None:
        closes = self._closes
        closes.append(bar.close)
        n = len(closes)
        if n < self.window:
            return None
        s = sum(closes)
        x = n * sum(c * c for c in closes) - s * s
        if x == 0:
            return None
        d = n * bar.close - s
        d2n1, nx = d * d * (n - 1), n * x
        direction = self._direction
        if self._beyond(d2n1, nx, self._entry) > 0:  # |z| > entry
            direction = SignalDirection.LONG if d < 0 else SignalDirection.SHORT
        elif direction != SignalDirection.FLAT:
            # a LONG exits once z >= -exit, a SHORT once z <= exit
            toward_mean = d >= 0 if direction == SignalDirection.LONG else d <= 0
            if toward_mean or self._beyond(d2n1, nx, self._exit) <= 0:
                direction = SignalDirection.FLAT
        if direction == self._direction:
            return None
        self._direction = direction
        std = math.isqrt(x // (n * (n - 1)))  # floor(sqrt(X / (n (n - 1))))
        return Target(direction, (div_half_even(s, n), std))

    def snapshot(self) -> dict[str, Any]:
        return {"closes": list(self._closes), "direction": self._direction.value}

    def restore(self, state: Mapping[str, Any]) -> None:
        closes = [int(c) for c in state["closes"]]
        if len(closes) > self.window:
            raise ValueError(f"zscore state holds {len(closes)} closes > window={self.window}")
        self._closes = deque(closes, maxlen=self.window)
        self._direction = SignalDirection(state["direction"])
