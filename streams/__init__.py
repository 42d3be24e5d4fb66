"""Stream apps: each a small Quix Streams application with one job.

- :mod:`streams.signals` — trades → event-time bars → SMA crossover → signals, order requests
- :mod:`streams.risk_gate` — order requests → risk decisions, approved orders
- :mod:`streams.execution` — approved orders → paper fills, execution reports, positions
- :mod:`streams.logic` — the pure state machines these apps wire to Kafka and state

Each module exposes ``build(settings) -> StreamApp`` and ``run(settings)``.
"""

__all__ = ["execution", "logic", "risk_gate", "signals"]
