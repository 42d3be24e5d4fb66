"""Strategies as plugins: one interface (:mod:`.base`), one module per shipped strategy.

- :class:`Strategy`, :class:`StrategyParams`, :class:`Bar`, :class:`Target` — what a
  strategy is, takes and returns
- :func:`load_strategy`, :func:`configure` — by entry-point name (group
  ``omniquant.strategies``) or ``package.module:Class``; parameters validated
- :class:`StrategyRunner` — trades → the stage's event-time bars → the strategy → new
  targets, with its state in two JSON-able parts (the signals stage and backtests use it)

Shipped (registered in ``pyproject.toml``): ``sma-crossover``, ``ema-crossover``,
``donchian-breakout``, ``zscore-mean-reversion``.
"""

from streams.logic.strategies.base import (
    ENTRY_POINT_GROUP,
    Bar,
    Configured,
    Emission,
    RunnerStep,
    Strategy,
    StrategyError,
    StrategyParams,
    StrategyRunner,
    Target,
    available_strategies,
    configure,
    load_strategy,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "Bar",
    "Configured",
    "Emission",
    "RunnerStep",
    "Strategy",
    "StrategyError",
    "StrategyParams",
    "StrategyRunner",
    "Target",
    "available_strategies",
    "configure",
    "load_strategy",
]
