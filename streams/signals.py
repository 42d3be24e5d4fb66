"""Signals app: trades → event-time bars → SMA crossover → signals and order requests.

State per symbol (Quix state, keyed by the record key = symbol): the crossover's bars and
SMAs, and the strategy's target position, so a restart resumes exactly where it stopped.
"""

from __future__ import annotations

import logging
from typing import Any

from quixstreams import State

from core.config import Settings
from core.metrics import LATE_TRADES
from schemas.fixedpoint import to_fixed
from schemas.models import Signal
from streams.logic.orders import signal_to_order
from streams.logic.sma import SmaCrossover
from streams.runtime import StreamApp, correlation_headers, now_ns

log = logging.getLogger(__name__)


class SignalsProcessor:
    """Wires the pure crossover and order logic to Quix state. No I/O of its own."""

    def __init__(self, settings: Settings) -> None:
        self.strategy = settings.strategy
        self.quantity = to_fixed(settings.strategy.order_quantity)

    def on_trade(self, trade: dict[str, Any], state: State[str, Any]) -> dict[str, Any] | None:
        snapshot = state.get("sma")
        sma = (
            SmaCrossover.restore(snapshot)
            if snapshot is not None
            else SmaCrossover(
                symbol=trade["symbol"],
                bar_interval_ms=self.strategy.bar_interval_ms,
                fast=self.strategy.fast_window,
                slow=self.strategy.slow_window,
            )
        )
        result = sma.on_trade(trade["price"], trade["ts_event"])
        state.set("sma", sma.snapshot())
        if result.late:
            LATE_TRADES.inc()
        crossover = result.crossover
        if crossover is None:
            return None
        ts_init = now_ns()
        signal = Signal(
            signal_id=f"{self.strategy.strategy_id}-{trade['symbol']}-{crossover.sequence}",
            strategy_id=self.strategy.strategy_id,
            symbol=trade["symbol"],
            direction=crossover.direction,
            price=crossover.price,
            fast_value=crossover.fast,
            slow_value=crossover.slow,
            ts_event=crossover.ts_event,
            ts_init=ts_init,
        )
        position = int(state.get("position", 0))
        order = signal_to_order(
            signal, current_position=position, quantity=self.quantity, ts_init=ts_init
        )
        if order is not None:
            new_position = position + (order.quantity if order.side == "BUY" else -order.quantity)
            state.set("position", new_position)
        return {
            "signal": signal.model_dump(),
            "order": order.model_dump() if order is not None else None,
        }


def build(settings: Settings, name: str) -> StreamApp:
    """The app under the stage name the registry gives it (its group and dead letters)."""
    stream = StreamApp(settings, name)
    processor = SignalsProcessor(settings)
    trades = stream.dataframe("market.trades")
    outputs = trades.apply(processor.on_trade, stateful=True).filter(lambda out: out is not None)

    signals = outputs.apply(lambda out: out["signal"])
    signals = signals.set_headers(correlation_headers("signal_id"))
    signals.to_topic(stream.topic("signals"))

    orders = outputs.filter(lambda out: out["order"] is not None).apply(lambda out: out["order"])
    orders = orders.set_headers(correlation_headers("client_order_id"))
    orders.to_topic(stream.topic("orders.requests"))
    return stream


def run(settings: Settings, *, name: str) -> None:
    build(settings, name).run()
