"""The bars stage's state handling: the builders it keeps in memory between trades never
make it emit anything a builder rebuilt from the stored state would not.

Reference: the same trades fed to plain BarBuilders (one per symbol and interval, no state
store, no cache). Rollbacks stand in for an aborted checkpoint or a partition handed over
and back: the state store goes back to an earlier copy and the trades since are redelivered.
"""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest

from core.config import load_settings
from streams.bars import STATE_KEY, BarsProcessor
from streams.logic.ohlcv import BarBuilder, BarRule

INTERVALS = [1000, 5000]
T0 = 1_700_000_000_000_000_000


class DictState:
    """Quix's State interface over a dict (the store itself is tested by Quix)."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self.data: dict[str, Any] = data if data is not None else {}

    def get(self, key: str, default: Any = None) -> Any:
        return copy.deepcopy(self.data.get(key, default))  # the store hands out copies

    def set(self, key: str, value: Any) -> None:
        self.data[key] = copy.deepcopy(value)

    def delete(self, key: str) -> None:
        self.data.pop(key, None)


def _trades(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    ts = T0
    out = []
    for _ in range(n):
        ts += rng.randint(1, 900_000_000)
        late = rng.random() < 0.05  # some trades arrive after their bar closed
        out.append(
            {
                "symbol": rng.choice(["AAA", "BBB"]),
                "venue": "XNAS",
                "source": "test",
                "price": rng.randint(1, 10**6) * 10**6,
                "size": rng.randint(1, 500) * 10**9,
                "ts_event": ts - (6_000_000_000 if late else 0),
                "conditions": [],
                "flags": [],
            }
        )
    return out


def _reference(trades: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    builders: dict[tuple[str, int], BarBuilder] = {}
    bars = []
    for t in trades:
        for interval in INTERVALS:
            key = (t["symbol"], interval)
            b = builders.setdefault(key, BarBuilder(t["symbol"], interval, 0, BarRule.ALL_TRADES))
            outcome = b.add_trade(t["price"], t["size"], t["ts_event"], (), ())
            for closed in outcome.closed:
                bar = closed.to_bar("XNAS", "test")
                if bar is not None:
                    bars.append(_bar_key(bar.model_dump()))
    return bars


def _bar_key(bar: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(sorted((k, v) for k, v in bar.items() if k != "ts_init"))


def _processor() -> BarsProcessor:
    return BarsProcessor(load_settings(bars={"intervals_ms": INTERVALS}))


def _feed(
    proc: BarsProcessor, states: dict[str, DictState], trades: list[dict[str, Any]]
) -> list[tuple[Any, ...]]:
    bars: list[tuple[Any, ...]] = []
    for t in trades:
        state: Any = states.setdefault(t["symbol"], DictState())
        out = proc.on_trade(t, state)
        bars.extend(_bar_key(b) for b in out["bars"])
    return bars


def test_bars_equal_plain_builders_fed_the_same_trades() -> None:
    trades = _trades(3_000, seed=1)
    expected = _reference(trades)
    assert len(expected) > 100
    assert _feed(_processor(), {}, trades) == expected


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_a_rolled_back_state_is_rebuilt_not_served_from_memory(seed: int) -> None:
    trades = _trades(2_000, seed=seed)
    expected = _reference(trades)
    proc = _processor()
    states: dict[str, DictState] = {}
    rng = random.Random(seed)
    emitted: list[tuple[Any, ...]] = []
    at = 0
    while at < len(trades):
        checkpoint = {s: copy.deepcopy(st.data) for s, st in states.items()}
        batch = trades[at : at + rng.randint(50, 300)]
        out = _feed(proc, states, batch)
        if rng.random() < 0.4:  # the checkpoint fails: state rolled back, batch redelivered
            states = {s: DictState(copy.deepcopy(d)) for s, d in checkpoint.items()}
            continue
        emitted.extend(out)
        at += len(batch)
    assert emitted == expected


def test_another_process_writing_the_partition_is_noticed() -> None:
    trades = _trades(1_500, seed=5)
    expected = _reference(trades)
    first, second = _processor(), _processor()
    states: dict[str, DictState] = {}
    emitted = _feed(first, states, trades[:500])
    emitted += _feed(second, states, trades[500:1000])  # the partition moved away...
    emitted += _feed(first, states, trades[1000:])  # ...and back: first's memory is stale
    assert emitted == expected


def test_state_written_one_entry_per_interval_is_carried_over() -> None:
    trades = _trades(1_000, seed=6)
    expected = _reference(trades)
    states: dict[str, DictState] = {}
    emitted = _feed(_processor(), states, trades[:400])
    for state in states.values():  # rewrite as the earlier layout: bars:<interval>
        stored = state.data.pop(STATE_KEY)
        for interval, snapshot in stored["builders"].items():
            state.data[f"bars:{interval}"] = snapshot
    emitted += _feed(_processor(), states, trades[400:])
    assert emitted == expected
    assert all(set(s.data) == {STATE_KEY} for s in states.values())
