"""Stream apps: each a small Quix Streams application with one job, and their runtime.

- :mod:`streams.signals` — trades → event-time bars → SMA crossover → signals, order requests
- :mod:`streams.risk_gate` — order requests → risk decisions, approved orders
- :mod:`streams.execution` — approved orders → a venue (paper, Alpaca, Kite) → execution
  reports, fills (a hand-written transactional loop, not a Quix app)
- :mod:`streams.portfolio`, :mod:`streams.risk_metrics` — positions, equity, VaR, drawdown
- :mod:`streams.account_view` — the account beyond one symbol, for the risk gate
- :mod:`streams.sink_clickhouse` — every record topic → its ClickHouse table
- :mod:`streams.runtime` — what every app is built on (:class:`StreamApp`: Avro topics,
  dead letters, consumer group and state dir per stage)
- :mod:`streams.logic` — the pure state machines these apps wire to Kafka and state

Each app module exposes ``build(settings, name) -> StreamApp`` and ``run(settings, name=...)``;
the stage registry (``omniquant.stages``) names them.
"""

from streams.runtime import DeadLetters, StreamApp, correlation_headers

__all__ = ["DeadLetters", "StreamApp", "correlation_headers"]
