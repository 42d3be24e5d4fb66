"""OmniQuant Streams shared runtime: config, topic catalog, Kafka wiring, local stack, CLI."""

from omniquant.config import Settings, load_settings
from omniquant.errors import OmniquantError
from omniquant.topics import TopicNames, catalog

__all__ = ["OmniquantError", "Settings", "TopicNames", "catalog", "load_settings"]
__version__ = "0.1.0"
