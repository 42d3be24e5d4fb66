"""``sma-crossover``: fast and slow simple moving averages of bar closes cross.

The same rule as :class:`streams.logic.sma.SmaCrossover` (whose signals it reproduces):
the last ``slow`` closes are kept; once there are ``slow`` of them, the relation of the fast
SMA to the slow one is decided exactly on the sums (``sum_fast * slow`` vs
``sum_slow * fast``: no rounding can fake or hide a cross). The first strict relation is the
baseline and targets nothing; each flip after it does: fast above slow → LONG, below → SHORT
(FLAT with ``long_only``). Equality keeps the previous relation.

Signal values: ``fast_value`` / ``slow_value`` are the SMAs, rounded half-even to 1e-9.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Final

from pydantic import Field, model_validator

from schemas.models import SignalDirection
from streams.logic.sma import SmaCrossover
from streams.logic.strategies.base import (
    Bar,
    Strategy,
    StrategyParams,
    StrategyRunner,
    Target,
    div_half_even,
)

__all__ = ["SmaCrossoverParams", "SmaCrossoverStrategy", "adopt_sma_machine"]

_ABOVE: Final = "ABOVE"
_BELOW: Final = "BELOW"


class SmaCrossoverParams(StrategyParams):
    fast: int = Field(default=5, ge=1, description="bars in the fast SMA")
    slow: int = Field(default=20, ge=2, description="bars in the slow SMA (> fast)")
    long_only: bool = Field(default=False, description="FLAT instead of SHORT on a down-cross")

    @model_validator(mode="after")
    def _fast_below_slow(self) -> SmaCrossoverParams:
        if self.fast >= self.slow:
            raise ValueError(f"fast ({self.fast}) must be smaller than slow ({self.slow})")
        return self


class SmaCrossoverStrategy(Strategy):
    Params = SmaCrossoverParams

    def __init__(self, params: SmaCrossoverParams) -> None:
        super().__init__(params)
        self.fast, self.slow, self.long_only = params.fast, params.slow, params.long_only
        self._closes: deque[int] = deque(maxlen=params.slow)
        self._relation: str | None = None

    def on_bar(self, bar: Bar) -> Target | None:
        closes = self._closes
        closes.append(bar.close)
        if len(closes) < self.slow:
            return None
        slow_sum = sum(closes)
        fast_sum = sum(closes[i] for i in range(self.slow - self.fast, self.slow))
        lhs, rhs = fast_sum * self.slow, slow_sum * self.fast
        if lhs == rhs:
            return None
        relation = _ABOVE if lhs > rhs else _BELOW
        previous, self._relation = self._relation, relation
        if previous is None or previous == relation:
            return None
        if relation == _ABOVE:
            direction = SignalDirection.LONG
        else:
            direction = SignalDirection.FLAT if self.long_only else SignalDirection.SHORT
        values = (div_half_even(fast_sum, self.fast), div_half_even(slow_sum, self.slow))
        return Target(direction, values)

    def snapshot(self) -> dict[str, Any]:
        return {"closes": list(self._closes), "relation": self._relation}

    def restore(self, state: Mapping[str, Any]) -> None:
        closes = [int(c) for c in state["closes"]]
        if len(closes) > self.slow:
            raise ValueError(f"sma-crossover state holds {len(closes)} closes > slow={self.slow}")
        if state["relation"] not in (None, _ABOVE, _BELOW):
            raise ValueError(f"sma-crossover state has unknown relation {state['relation']!r}")
        self._closes = deque(closes, maxlen=self.slow)
        self._relation = state["relation"]


def adopt_sma_machine(
    runner: StrategyRunner, sma: Mapping[str, Any], bar: Sequence[int | None] | None
) -> bool:
    """Continue in ``runner`` from the state of :class:`streams.logic.sma.SmaCrossover`
    (``sma_state()`` or a version-1 ``snapshot()``, and ``bar_state()``), as the signals
    stage stored it before strategies were plugins.

    The open bar and the sequence are always taken over (signal ids stay unique); the closes
    and the relation too when ``runner`` runs ``sma-crossover`` with the same windows and
    not long-only, and the function then returns True. Otherwise the strategy starts afresh
    (False)."""
    machine = SmaCrossover.from_states(sma, bar)
    state = machine.sma_state()
    start, close, close_ts, late = machine.bar_state()
    strategy = runner.strategy
    same = (
        isinstance(strategy, SmaCrossoverStrategy)
        and (strategy.fast, strategy.slow) == (machine.fast, machine.slow)
        and not strategy.long_only
    )
    direction = SignalDirection.FLAT
    if same:
        strategy.restore({"closes": state["closes"], "relation": state["relation"]})
        if machine.sequence:
            above = state["relation"] == _ABOVE
            direction = SignalDirection.LONG if above else SignalDirection.SHORT
    open_bar = None
    if start is not None and close is not None and close_ts is not None:
        open_bar = (start, close, close_ts)
    runner.adopt(
        sequence=machine.sequence, direction=direction, open_bar=open_bar, late=int(late or 0)
    )
    return same
