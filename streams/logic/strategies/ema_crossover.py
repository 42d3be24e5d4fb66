"""``ema-crossover``: fast and slow exponential moving averages of bar closes cross.

``ema = ema + alpha * (close - ema)`` with ``alpha = 2 / (n + 1)``, seeded with the first
close (pandas ``ewm(span=n, adjust=False)``). Arithmetic is :class:`decimal.Decimal` in a
fixed context of its own (38 significant digits, ROUND_HALF_EVEN), never float and never the
thread's context: the same closes give the same EMAs, digit for digit, on every machine.
(Exact rationals would be exact but their denominators grow by a factor ``n + 1`` per bar.)
The EMAs are kept in raw price units (1e-9) and stored as decimal strings.

Once ``slow`` closes have been seen, the first strict relation of fast to slow is the
baseline; each flip after it targets LONG (fast above) or SHORT (below; FLAT with
``long_only``). Equality keeps the previous relation.

Signal values: the two EMAs rounded half-even to 1e-9.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_HALF_EVEN, Context, Decimal
from typing import Any, Final

from pydantic import Field, model_validator

from schemas.models import SignalDirection
from streams.logic.strategies.base import Bar, Strategy, StrategyParams, Target

__all__ = ["EmaCrossoverParams", "EmaCrossoverStrategy"]

CONTEXT: Final = Context(prec=38, rounding=ROUND_HALF_EVEN)
_ONE: Final = Decimal(1)
_ABOVE: Final = "ABOVE"
_BELOW: Final = "BELOW"


class EmaCrossoverParams(StrategyParams):
    fast: int = Field(default=12, ge=1, description="span of the fast EMA, in bars")
    slow: int = Field(default=26, ge=2, description="span of the slow EMA (> fast)")
    long_only: bool = Field(default=False, description="FLAT instead of SHORT on a down-cross")

    @model_validator(mode="after")
    def _fast_below_slow(self) -> EmaCrossoverParams:
        if self.fast >= self.slow:
            raise ValueError(f"fast ({self.fast}) must be smaller than slow ({self.slow})")
        return self


def _to_raw(value: Decimal) -> int:
    return int(value.quantize(_ONE, rounding=ROUND_HALF_EVEN, context=CONTEXT))


class EmaCrossoverStrategy(Strategy):
    Params = EmaCrossoverParams

    def __init__(self, params: EmaCrossoverParams) -> None:
        super().__init__(params)
        self.slow, self.long_only = params.slow, params.long_only
        self._alpha_fast = CONTEXT.divide(Decimal(2), Decimal(params.fast + 1))
        self._alpha_slow = CONTEXT.divide(Decimal(2), Decimal(params.slow + 1))
        self._fast: Decimal | None = None
        self._slow: Decimal | None = None
        self._count = 0
        self._relation: str | None = None

    def _step(self, ema: Decimal, alpha: Decimal, close: Decimal) -> Decimal:
        return CONTEXT.add(ema, CONTEXT.multiply(alpha, CONTEXT.subtract(close, ema)))

    def on_bar(self, bar: Bar) -> Target | None:
        close = Decimal(bar.close)
        if self._fast is None or self._slow is None:
            fast = slow = close
        else:
            fast = self._step(self._fast, self._alpha_fast, close)
            slow = self._step(self._slow, self._alpha_slow, close)
        self._fast, self._slow = fast, slow
        self._count += 1
        if self._count < self.slow or fast == slow:
            return None
        relation = _ABOVE if fast > slow else _BELOW
        previous, self._relation = self._relation, relation
        if previous is None or previous == relation:
            return None
        if relation == _ABOVE:
            direction = SignalDirection.LONG
        else:
            direction = SignalDirection.FLAT if self.long_only else SignalDirection.SHORT
        return Target(direction, (_to_raw(fast), _to_raw(slow)))

    def snapshot(self) -> dict[str, Any]:
        return {
            "fast": None if self._fast is None else str(self._fast),
            "slow": None if self._slow is None else str(self._slow),
            "count": self._count,
            "relation": self._relation,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        if (state["fast"] is None) != (state["slow"] is None):
            raise ValueError("ema-crossover state has one EMA without the other")
        if state["relation"] not in (None, _ABOVE, _BELOW):
            raise ValueError(f"ema-crossover state has unknown relation {state['relation']!r}")
        self._fast = None if state["fast"] is None else Decimal(state["fast"])
        self._slow = None if state["slow"] is None else Decimal(state["slow"])
        self._count = int(state["count"])
        self._relation = state["relation"]
