"""The one exception tree of OmniQuant Streams.

OmniquantError
├── ConfigError            invalid or missing setting; names the setting
│   └── MissingCredentialError
├── StackError             a local service could not be started or reached
│   └── JavaNotFoundError
├── SerdeError             bytes could not be encoded/decoded with our schemas
│   └── UnknownSchemaError
├── FeedParseError         a vendor frame/message cannot become a record; carries a reason
├── TopicError             topic catalog / creation problems
├── ClickHouseError        a ClickHouse (chDB or server) statement failed or could not connect
├── DeliveryError          the broker did not acknowledge a produced record
└── SupervisorError        a pipeline stage died or a dependency went away
"""

from __future__ import annotations

import re
from typing import Final

_REASON: Final = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")


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


class FeedParseError(OmniquantError):
    """A vendor frame, packet or message that cannot become one of our records.

    ``reason`` is a short snake_case label for dead letters and metrics; the message says
    what and where, for a human. Feeds do not let it escape: they yield a
    ``producers.base.Malformed`` carrying both. The labels the venues share:

    ====================  ==============================================================
    ``bad_json``          not JSON, or JSON with NaN / Infinity (``bad_msgpack`` likewise)
    ``bad_frame``         decoded, but not the frame's shape; a binary frame's lengths
                          do not add up
    ``truncated_packet``  a binary frame ends inside a packet
    ``bad_packet``        a packet of no known layout
    ``bad_message``       a message that is not an object
    ``unknown_message``   a message type we do not know
    ``missing_field``     a required field is absent or null
    ``bad_field``         present, but of the wrong type or not one of its allowed values
    ``bad_decimal``       not an exact finite decimal (floats, bools, NaN are refused)
    ``bad_timestamp``     not a timestamp we can read exactly
    ``bad_value``         well formed, but our records cannot hold it (finer than 1e-9,
                          beyond int64, refused by the record's validation)
    ``bad_checksum``      a signature that does not verify
    ====================  ==============================================================
    """

    def __init__(self, reason: str, message: str) -> None:
        if not _REASON.fullmatch(reason):
            raise ValueError(f"parse error reason must be snake_case, got {reason!r}")
        super().__init__(message)
        self.reason = reason

    def __reduce__(self) -> tuple[type[FeedParseError], tuple[str, str]]:
        return type(self), (self.reason, str(self))


class KafkaAccessError(StackError):
    """The cluster refused this client: wrong SASL credentials, or a TLS certificate the
    client does not trust (retrying cannot help)."""


class TopicError(OmniquantError):
    """A topic could not be created or does not match the catalog."""


class ClickHouseError(OmniquantError):
    """A ClickHouse statement failed, or chDB / the server could not be opened or reached."""


class DeliveryError(OmniquantError):
    """A produced record was not acknowledged by the broker (acks=all)."""


class SupervisorError(OmniquantError):
    """A supervised pipeline stage exited, or a service it needs stopped answering."""
