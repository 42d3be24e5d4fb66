"""Trading states of accounts, from the control stream: ACTIVE, REDUCING or HALTED.

Pure: no I/O, no clock. A ``TRADING_STATE`` control record sets the state of one scope —
an account, or ``*`` for every account. An account's effective state is the more
restrictive of its own and the global one (HALTED > REDUCING > ACTIVE), so ``halt`` without
an account stops everyone and ``resume`` without one lifts only the global halt. The latest
record per scope wins (the control topic is compacted by scope), by event time; a record
older than the one in force is ignored, so replaying the topic gives the same states.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from schemas.models import Control, ControlType, TradingState

__all__ = ["ALL_ACCOUNTS", "ScopeState", "TradingStates"]

ALL_ACCOUNTS: Final = "*"
_RANK: Final = {TradingState.ACTIVE: 0, TradingState.REDUCING: 1, TradingState.HALTED: 2}


@dataclass(frozen=True, slots=True)
class ScopeState:
    """The state in force for one scope, and the command that set it."""

    state: TradingState
    reason: str
    command_id: str
    issued_by: str
    ts_event: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "reason": self.reason,
            "command_id": self.command_id,
            "issued_by": self.issued_by,
            "ts_event": self.ts_event,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScopeState:
        return cls(
            TradingState(data["state"]),
            str(data["reason"]),
            str(data["command_id"]),
            str(data["issued_by"]),
            int(data["ts_event"]),
        )


_ACTIVE: Final = ScopeState(TradingState.ACTIVE, "", "", "", 0)


class TradingStates:
    """Scope → state in force, fed by control records; answers an account's state."""

    def __init__(self, states: Mapping[str, ScopeState] | None = None) -> None:
        self._states: dict[str, ScopeState] = dict(states or {})

    def apply(self, control: Control) -> bool:
        """Take a control record into account; True when it changed a state."""
        if control.control_type != ControlType.TRADING_STATE or control.trading_state is None:
            return False
        current = self._states.get(control.scope)
        if current is not None and control.ts_event < current.ts_event:
            return False  # an older command than the one in force
        new = ScopeState(
            control.trading_state,
            control.reason,
            control.command_id,
            control.issued_by,
            control.ts_event,
        )
        if current == new:
            return False
        self._states[control.scope] = new
        return True

    def apply_all(self, controls: Iterable[Control]) -> None:
        for control in controls:
            self.apply(control)

    def of(self, account: str) -> ScopeState:
        """The effective state of ``account``: the stricter of its own and the global."""
        own = self._states.get(account, _ACTIVE)
        everyone = self._states.get(ALL_ACCOUNTS, _ACTIVE)
        return everyone if _RANK[everyone.state] > _RANK[own.state] else own

    def scopes(self) -> dict[str, ScopeState]:
        return dict(self._states)

    def snapshot(self) -> dict[str, Any]:
        return {scope: state.to_dict() for scope, state in sorted(self._states.items())}

    @classmethod
    def restore(cls, data: Mapping[str, Any]) -> TradingStates:
        return cls({str(k): ScopeState.from_dict(v) for k, v in data.items()})
