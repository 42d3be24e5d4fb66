"""``donchian-breakout``: a close beyond the channel of the previous ``window`` bars.

The channel is the highest high and the lowest low of the ``window`` bars *before* the one
that just closed. A close above the upper band targets LONG, below the lower band SHORT
(FLAT with ``long_only``); inside the channel the target stays. Exact integer comparisons.

Signal values: ``fast_value`` the upper band, ``slow_value`` the lower band.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

from pydantic import Field

from schemas.models import SignalDirection
from streams.logic.strategies.base import Bar, Strategy, StrategyParams, Target

__all__ = ["DonchianBreakoutParams", "DonchianBreakoutStrategy"]


class DonchianBreakoutParams(StrategyParams):
    window: int = Field(default=20, ge=1, description="bars in the channel")
    long_only: bool = Field(default=False, description="FLAT instead of SHORT on a breakdown")


class DonchianBreakoutStrategy(Strategy):
    Params = DonchianBreakoutParams

    def __init__(self, params: DonchianBreakoutParams) -> None:
        super().__init__(params)
        self.window, self.long_only = params.window, params.long_only
        self._highs: deque[int] = deque(maxlen=params.window)
        self._lows: deque[int] = deque(maxlen=params.window)

    def on_bar(self, bar: Bar) -> Target | None:
        target = None
        if len(self._highs) == self.window:
            upper, lower = max(self._highs), min(self._lows)
            if bar.close > upper:
                target = Target(SignalDirection.LONG, (upper, lower))
            elif bar.close < lower:
                short = SignalDirection.FLAT if self.long_only else SignalDirection.SHORT
                target = Target(short, (upper, lower))
        self._highs.append(bar.high)
        self._lows.append(bar.low)
        return target

    def snapshot(self) -> dict[str, Any]:
        return {"highs": list(self._highs), "lows": list(self._lows)}

    def restore(self, state: Mapping[str, Any]) -> None:
        highs, lows = [int(v) for v in state["highs"]], [int(v) for v in state["lows"]]
        if len(highs) != len(lows) or len(highs) > self.window:
            raise ValueError(f"donchian-breakout state does not fit window={self.window}")
        self._highs = deque(highs, maxlen=self.window)
        self._lows = deque(lows, maxlen=self.window)
