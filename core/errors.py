"""The one exception tree of OmniQuant Streams.

OmniquantError
├── ConfigError            invalid or missing setting; names the setting
│   └── MissingCredentialError
├── StackError             a local service could not be started or reached
│   └── JavaNotFoundError
├── SerdeError             bytes could not be encoded/decoded with our schemas
│   └── UnknownSchemaError
├── TopicError             topic catalog / creation problems
├── ClickHouseError        a ClickHouse (chDB or server) statement failed or could not connect
├── DeliveryError          the broker did not acknowledge a produced record
└── SupervisorError        a pipeline stage died or a dependency went away
"""

from __future__ import annotations


class OmniquantError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(OmniquantError):
    """A setting is invalid or missing. The message names the setting (env variable)."""


class MissingCredentialError(ConfigError):
    """A credential needed by a feed or broker is not set."""


class StackError(OmniquantError):
    """A local service (Kafka, Redis, ClickHouse) could not be started, stopped or reached."""


class JavaNotFoundError(StackError):
    """No Java 17+ runtime to run the local Kafka broker."""


class SerdeError(OmniquantError):
    """A record could not be serialized or deserialized."""


class UnknownSchemaError(SerdeError):
    """The framing header refers to a schema we do not know (fingerprint or registry id)."""


class TopicError(OmniquantError):
    """A topic could not be created or does not match the catalog."""


class ClickHouseError(OmniquantError):
    """A ClickHouse statement failed, or chDB / the server could not be opened or reached."""


class DeliveryError(OmniquantError):
    """A produced record was not acknowledged by the broker (acks=all)."""


class SupervisorError(OmniquantError):
    """A supervised pipeline stage exited, or a service it needs stopped answering."""
