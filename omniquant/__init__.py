"""OmniQuant Streams composition root: the `omniquant` CLI, the supervisor, the stage
registry and the local stack. The only package that imports every other one.

Layers, top to bottom (import-linter checks them in CI, see ``.importlinter``)::

    omniquant            CLI, supervisor, stage registry, local stack
    streams              stream apps (Quix) and their runtime; streams.logic is pure
    sinks | producers    ClickHouse sink; feeds into Kafka (independent of each other)
    schemas              records, Avro schemas, serde
    core                 config, errors, topic catalog, Kafka/ClickHouse wiring, logs, metrics
"""

from omniquant.stages import STAGES, StageSpec, stage, topic_catalog

__all__ = ["STAGES", "StageSpec", "stage", "topic_catalog"]
__version__ = "0.1.0"
