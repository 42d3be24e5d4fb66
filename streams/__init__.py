"""Stream apps: each a small Quix Streams application with one job, and their runtime.

- :mod:`streams.signals` — trades → event-time bars → SMA crossover → signals, order requests
- :mod:`streams.risk_gate` — order requests → risk decisions, approved orders
- :mod:`streams.execution` — approved orders → paper fills, execution reports, positions
- :mod:`streams.sink_clickhouse` — every record topic → its ClickHouse table
- :mod:`streams.runtime` — what every app is built on (:class:`StreamApp`: Avro topics,
  dead letters, consumer group and state dir per stage)
- :mod:`streams.logic` — the pure state machines these apps wire to Kafka and state

Each app module exposes ``build(settings, name) -> StreamApp`` and ``run(settings, name=...)``;
the stage registry (``omniquant.stages``) names them.
"""

from streams.runtime import DeadLetters, StreamApp, correlation_headers

__all__ = ["DeadLetters", "StreamApp", "correlation_headers"]
