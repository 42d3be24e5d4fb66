"""The ground floor every other package stands on: typed config, the exception tree, the
topic catalog, Kafka and ClickHouse wiring, structured logs and metrics.

It imports nothing of this project above it (import-linter checks it in CI).
"""

from core.config import Settings, load_settings
from core.errors import OmniquantError
from core.topics import RECORD_TOPICS, TopicCatalog, TopicNames, TopicSpec

__all__ = [
    "RECORD_TOPICS",
    "OmniquantError",
    "Settings",
    "TopicCatalog",
    "TopicNames",
    "TopicSpec",
    "load_settings",
]
