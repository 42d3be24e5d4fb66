"""Bars app: trades → event-time OHLCV bars (with VWAP and trade count) per symbol.

One :class:`~streams.logic.ohlcv.BarBuilder` per configured interval lives in the symbol's
state (trades are keyed by symbol). A bar closes once event time passes its end plus the
grace period and is published on ``market.bars`` (key symbol, ``ts_event`` = bar start). A
trade whose bar has already closed is late: it goes unchanged to ``market.trades.late``
with a ``late_interval_ms`` header naming the intervals it missed, and is counted —
never silently dropped. A bar every trade of which was volume-only under the bar rule has
no price and is not published (its volume is counted in the metric by reason).
"""

from __future__ import annotations

import itertools
import uuid
from typing import Any

from quixstreams import State

from core.config import Settings
from core.metrics import BAR_LATE_TRADES, BAR_TRADES_LEFT_OUT, BARS
from streams.logic.ohlcv import BarBuilder, BarRule, TradeUse
from streams.runtime import StreamApp, require_event_time

_RULES = {"all": BarRule.ALL_TRADES, "lean": BarRule.LEAN}
LATE_HEADER = "late_interval_ms"


STATE_KEY = "bars"  # one state entry per symbol: {"token": ..., "builders": {interval: ...}}


class BarsProcessor:
    """Wires the pure bar builders to Quix state. No I/O of its own."""

    def __init__(self, settings: Settings) -> None:
        self.intervals = tuple(settings.bars.intervals_ms)
        self.grace_ms = settings.bars.grace_ms
        self.rule = _RULES[settings.bars.rule]
        # The builders this process last stored per symbol, under the token stored with
        # them: a state that still holds that token holds exactly these builders, so they
        # are not rebuilt from the snapshot (the costliest step per trade). Any other token
        # (a checkpoint rolled back, the partition processed elsewhere) rebuilds from state.
        self._live: dict[str, tuple[str, dict[int, BarBuilder]]] = {}
        self._run = uuid.uuid4().hex[:12]
        self._writes = itertools.count()

    def _builders(self, symbol: str, state: State[str, Any]) -> dict[int, BarBuilder]:
        live = self._live.pop(symbol, None)  # out while mutated: a failure leaves no stale copy
        stored = state.get(STATE_KEY)
        if stored is not None and live is not None and live[0] == stored["token"]:
            return live[1]
        if stored is not None:
            kept = {int(i): BarBuilder.restore(b) for i, b in stored["builders"].items()}
        else:  # the layout before one entry per symbol: one entry per interval
            kept = {}
            for interval in self.intervals:
                old = state.get(f"bars:{interval}")
                if old is not None:
                    kept[interval] = BarBuilder.restore(old)
                    state.delete(f"bars:{interval}")  # replaced by STATE_KEY below
        return {
            interval: kept.get(interval) or BarBuilder(symbol, interval, self.grace_ms, self.rule)
            for interval in self.intervals
        }

    def on_trade(self, trade: dict[str, Any], state: State[str, Any]) -> dict[str, Any]:
        # A pre-epoch trade is dead-lettered before it reaches the state (OutOfRange).
        require_event_time(trade)
        symbol = str(trade["symbol"])
        builders = self._builders(symbol, state)
        bars: list[dict[str, Any]] = []
        late: list[int] = []
        price, size, ts_event = int(trade["price"]), int(trade["size"]), int(trade["ts_event"])
        conditions, flags = trade.get("conditions") or (), trade.get("flags") or ()
        for interval, builder in builders.items():
            outcome = builder.add_trade(price, size, ts_event, conditions, flags)
            if outcome.use == TradeUse.LATE:
                late.append(interval)
                BAR_LATE_TRADES.labels(str(interval)).inc()
            elif outcome.use != TradeUse.BAR and interval == self.intervals[0]:
                BAR_TRADES_LEFT_OUT.labels(outcome.use.value, outcome.reason or "").inc()
            for closed in outcome.closed:
                bar = closed.to_bar(str(trade["venue"]), str(trade["source"]))
                if bar is not None:
                    BARS.labels(str(interval)).inc()
                    bars.append(bar.model_dump())
        token = f"{self._run}:{next(self._writes)}"
        state.set(
            STATE_KEY,
            {"token": token, "builders": {str(i): b.snapshot() for i, b in builders.items()}},
        )
        self._live[symbol] = (token, builders)
        return {"bars": bars, "late": trade if late else None, "late_intervals": late}


def _late_headers(value: Any, _key: Any, _ts: int, headers: Any) -> list[tuple[str, bytes]]:
    kept = [(k, v) for k, v in (headers or []) if k != LATE_HEADER]
    intervals = ",".join(str(i) for i in value["late_intervals"])
    return [*kept, (LATE_HEADER, intervals.encode())]


def build(settings: Settings, name: str) -> StreamApp:
    """The app under the stage name the registry gives it (its group and dead letters)."""
    stream = StreamApp(settings, name)
    processor = BarsProcessor(settings)
    outputs = stream.dataframe("market.trades").apply(processor.on_trade, stateful=True)

    bars = outputs.apply(lambda out: out["bars"], expand=True)
    bars.to_topic(stream.topic("market.bars"))

    late = outputs.filter(lambda out: out["late"] is not None)
    late = late.set_headers(_late_headers).apply(lambda out: out["late"])
    late.to_topic(stream.topic("market.trades.late"))
    return stream


def run(settings: Settings, *, name: str) -> None:
    build(settings, name).run()
