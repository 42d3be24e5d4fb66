"""Avro bytes ↔ domain records, in one place, in one of two framings.

- No schema registry configured: Avro *single-object encoding*,
  ``C3 01 | CRC-64-AVRO fingerprint of the writer schema (8 bytes, little-endian) | body``;
  the fingerprint is resolved against the local schemas (current and historical versions).
- Schema registry configured: the *Confluent wire format*,
  ``00 | schema id (4 bytes, big-endian) | body``; schemas are registered under the subject
  ``<topic>-value`` (TopicNameStrategy) and looked up by id through ``confluent_kafka``'s
  Schema Registry client.

Decoding accepts both framings whatever the configuration (Confluent-framed bytes need a
registry, of course), so a topic can move from one to the other without a flag day. The body is
always read with our *current* schema as the reader schema (Avro schema resolution): a record
written with an older version decodes into today's model, with defaults for added fields.

Decoding validates through the pydantic model: a record that does not satisfy the model is a
:class:`SerdeError`, never a half-valid object. Encoding trusts the record (it was validated when
it was built) and lets fastavro reject values that do not fit the schema.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import SchemaParseException
from pydantic import SecretStr, ValidationError

from core.errors import ConfigError, SerdeError, StackError, UnknownSchemaError
from schemas.compat import check_backward
from schemas.models import MODEL_BY_AVRO_NAME, VALUE_MODELS, Record
from schemas.registry import (
    LocalSchemaRegistry,
    SchemaVersion,
    default_registry,
    fingerprint,
    qualify,
)


class _RegistrySettings(Protocol):
    """What :meth:`AvroSerde.from_settings` reads (``core.config.KafkaSettings`` has it)."""

    @property
    def schema_registry_url(self) -> str | None: ...
    @property
    def schema_registry_basic_auth(self) -> SecretStr | None: ...


class _HasKafkaSettings(Protocol):
    @property
    def kafka(self) -> _RegistrySettings: ...


__all__ = ["AvroSerde"]

R = TypeVar("R", bound=Record)

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = 0
_SINGLE_OBJECT_HEADER_LEN = 10  # magic (2) + fingerprint (8)
_CONFLUENT_HEADER_LEN = 5  # magic (1) + schema id (4)


@dataclass(frozen=True, slots=True)
class _Reader:
    """How to decode bodies written with one writer schema."""

    model: type[Record]
    writer: Any  # fastavro-parsed writer schema
    reader: Any  # fastavro-parsed current schema; None when the writer *is* the current schema
    label: str  # names the writer schema in error messages


@dataclass(frozen=True, slots=True)
class _Writer:
    schema: SchemaVersion
    single_object_header: bytes
    nested: bool  # has record-valued fields, so the record must be dumped to plain dicts


class AvroSerde:
    """Encodes and decodes every value record; one instance per process is plenty."""

    def __init__(
        self,
        schema_registry_url: str | None = None,
        registry_client: Any | None = None,
        basic_auth: str | None = None,
        *,
        schemas: LocalSchemaRegistry | None = None,
    ) -> None:
        """Single-object encoding unless a registry URL or client is given.

        ``basic_auth`` is ``user:password`` for the registry at ``schema_registry_url``;
        ``schemas`` replaces the local schemas shipped in ``schemas/avro`` (tests).
        """
        self._schemas = schemas or default_registry()
        self._client = _registry_client(schema_registry_url, registry_client, basic_auth)
        self._writers: dict[type[Record], _Writer] = {}
        self._by_fingerprint: dict[bytes, _Reader] = {}
        for model in VALUE_MODELS:
            version = self._schemas.current(model.AVRO_NAME)
            self._writers[model] = _Writer(
                schema=version,
                single_object_header=SINGLE_OBJECT_MAGIC + version.fingerprint_le,
                nested=_has_nested_records(model),
            )
        for version in self._schemas:
            model_of_version = MODEL_BY_AVRO_NAME.get(version.full_name)
            if model_of_version is not None:
                self._by_fingerprint[version.fingerprint_le] = self._reader_for(
                    model_of_version, version.parsed, version.fingerprint, version.label
                )
        # Confluent framing: (topic, model) → 5-byte header, and schema id → reader.
        self._registry_headers: dict[tuple[str, type[Record]], bytes] = {}
        self._by_schema_id: dict[int, _Reader] = {}

    @classmethod
    def from_settings(cls, settings: _HasKafkaSettings) -> AvroSerde:
        """Registry from ``settings.kafka`` if its URL is set; single-object encoding otherwise."""
        auth = settings.kafka.schema_registry_basic_auth
        return cls(
            schema_registry_url=settings.kafka.schema_registry_url,
            basic_auth=auth.get_secret_value() if auth is not None else None,
        )

    @property
    def uses_registry(self) -> bool:
        return self._client is not None

    # --- encode ---------------------------------------------------------------------------------

    def encode(self, record: Record, topic: str | None = None) -> bytes:
        """Record → framed Avro bytes. ``topic`` (physical name) names the registry subject."""
        writer = self._writers.get(type(record))
        if writer is None:
            raise SerdeError(
                f"{type(record).__name__} is not a value record with an Avro schema"
                f" (one of {', '.join(m.__name__ for m in VALUE_MODELS)})"
            )
        if self._client is None:
            header = writer.single_object_header
        else:
            header = self._registry_header(type(record), writer.schema, topic)
        # Nested records must become dicts for fastavro; flat ones are read straight from the
        # model's field dict, which saves a model_dump() per record on the hot path.
        datum = record.model_dump() if writer.nested else record.__dict__
        out = io.BytesIO()
        out.write(header)
        try:
            schemaless_writer(out, writer.schema.parsed, datum)
        except Exception as exc:  # fastavro raises ValueError, TypeError, OverflowError ...
            raise SerdeError(
                f"cannot encode {type(record).__name__} with {writer.schema.full_name}:"
                f" {type(exc).__name__}: {exc}"
            ) from exc
        return out.getvalue()

    # --- decode ---------------------------------------------------------------------------------

    def decode(self, data: bytes, topic: str | None = None) -> Record:
        """Framed Avro bytes → the model of the writer's record type (validated)."""
        reader, offset = self._reader_of(data, topic)
        return self._read(reader, data, offset, topic)

    def decode_as(self, data: bytes, model: type[R], topic: str | None = None) -> R:
        """Like :meth:`decode`, but the record must be a ``model``; SerdeError otherwise."""
        reader, offset = self._reader_of(data, topic)
        if reader.model is not model:
            raise SerdeError(
                f"expected a {model.AVRO_NAME} but the record is a {reader.model.AVRO_NAME}"
                f"{_on(topic)}"
            )
        return cast(R, self._read(reader, data, offset, topic))  # reader.model is model

    def _reader_of(self, data: bytes, topic: str | None) -> tuple[_Reader, int]:
        """The reader for the framing header of ``data``, and where the body starts."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise SerdeError(f"expected bytes, got {type(data).__name__}{_on(topic)}")
        size = len(data)
        if size == 0:
            raise SerdeError(f"empty message: no Avro framing header{_on(topic)}")
        if data[0] == SINGLE_OBJECT_MAGIC[0]:
            if size < _SINGLE_OBJECT_HEADER_LEN or data[1] != SINGLE_OBJECT_MAGIC[1]:
                raise SerdeError(
                    f"truncated or bad single-object header: {bytes(data[:10]).hex()}"
                    f" ({size} bytes; expected C3 01 + 8-byte fingerprint){_on(topic)}"
                )
            reader = self._by_fingerprint.get(bytes(data[2:_SINGLE_OBJECT_HEADER_LEN]))
            if reader is None:
                fp = int.from_bytes(data[2:_SINGLE_OBJECT_HEADER_LEN], "little")
                raise UnknownSchemaError(
                    f"unknown schema fingerprint {fp:016x}: not a current or historical schema"
                    f" in schemas/avro{_on(topic)}"
                )
            return reader, _SINGLE_OBJECT_HEADER_LEN
        if data[0] == CONFLUENT_MAGIC:
            if size < _CONFLUENT_HEADER_LEN:
                raise SerdeError(
                    f"truncated Confluent header: {bytes(data).hex()} ({size} bytes; expected"
                    f" 00 + 4-byte schema id){_on(topic)}"
                )
            schema_id = int.from_bytes(data[1:_CONFLUENT_HEADER_LEN], "big")
            return self._reader_for_schema_id(schema_id, topic), _CONFLUENT_HEADER_LEN
        raise SerdeError(
            f"unknown framing: first byte 0x{data[0]:02x} (expected C3 01 for single-object"
            f" encoding or 00 for the Confluent wire format){_on(topic)}"
        )

    def _read(self, reader: _Reader, data: bytes, offset: int, topic: str | None) -> Record:
        body = io.BytesIO(data)
        body.seek(offset)
        try:
            values = schemaless_reader(body, reader.writer, reader.reader)
        except Exception as exc:  # EOFError, IndexError, UnicodeDecodeError, ... on bad bytes
            raise SerdeError(
                f"cannot decode the body as {reader.label}{_on(topic)}:"
                f" {type(exc).__name__}: {exc or 'truncated'}"
            ) from exc
        if body.tell() != len(data):
            raise SerdeError(
                f"{len(data) - body.tell()} trailing bytes after a {reader.label} body{_on(topic)}"
            )
        try:
            return reader.model.model_validate(values)
        except ValidationError as exc:
            raise SerdeError(
                f"decoded {reader.label} is not a valid {reader.model.__name__}{_on(topic)}: {exc}"
            ) from exc

    def _reader_for(
        self, model: type[Record], writer: Any, writer_fingerprint: int, label: str
    ) -> _Reader:
        current = self._schemas.current(model.AVRO_NAME)
        if writer_fingerprint == current.fingerprint:
            return _Reader(model, current.parsed, None, label)  # no resolution needed
        return _Reader(model, writer, current.parsed, label)

    # --- Confluent Schema Registry ----------------------------------------------------------------

    def _registry_header(
        self, model: type[Record], schema: SchemaVersion, topic: str | None
    ) -> bytes:
        if topic is None:
            raise SerdeError(
                f"encoding {model.__name__} for a schema registry needs the topic: the subject"
                " is <topic>-value"
            )
        header = self._registry_headers.get((topic, model))
        if header is not None:
            return header
        subject = f"{topic}-value"
        # Registered as written (docs included) so the registry shows the documentation.
        schema_id = self._call_registry(
            f"registering {schema.full_name} under subject {subject}",
            lambda client: client.register_schema(subject, _registry_schema(schema.schema)),
        )
        header = bytes([CONFLUENT_MAGIC]) + int(schema_id).to_bytes(4, "big")
        self._registry_headers[(topic, model)] = header
        # Our own records come back under this id: no registry round trip to read them.
        self._by_schema_id.setdefault(
            int(schema_id), _Reader(model, schema.parsed, None, f"{schema.label} id {schema_id}")
        )
        return header

    def _reader_for_schema_id(self, schema_id: int, topic: str | None) -> _Reader:
        reader = self._by_schema_id.get(schema_id)
        if reader is not None:
            return reader
        if self._client is None:
            raise SerdeError(
                f"record is in the Confluent wire format (schema id {schema_id}) but no schema"
                " registry is configured (set SCHEMA_REGISTRY_URL or"
                f" OMNIQUANT_KAFKA__SCHEMA_REGISTRY_URL){_on(topic)}"
            )
        registered = self._call_registry(
            f"fetching schema id {schema_id}", lambda client: client.get_schema(schema_id)
        )
        if (registered.schema_type or "AVRO") != "AVRO" or registered.references:
            raise SerdeError(
                f"schema id {schema_id} is not a self-contained Avro schema"
                f" (type {registered.schema_type}, {len(registered.references or ())} references)"
            )
        try:
            writer_schema = json.loads(registered.schema_str)
            name = qualify(writer_schema)["name"]
            writer_parsed = parse_schema(writer_schema, named_schemas={})
        except (SchemaParseException, SerdeError, KeyError, TypeError, ValueError) as exc:
            raise SerdeError(f"schema id {schema_id} is not valid Avro: {exc}") from exc
        current = self._schemas.current(name)  # UnknownSchemaError when it is not ours
        model = MODEL_BY_AVRO_NAME.get(name)
        if model is None:
            raise UnknownSchemaError(f"schema id {schema_id} is {name}, not a value record")
        # Fail with the reason now rather than with a confusing error on every body later.
        problems = check_backward(current.schema, writer_schema)
        if problems:
            raise SerdeError(
                f"schema id {schema_id} ({name}) cannot be read with our current schema:"
                f" {'; '.join(problems)}"
            )
        reader = self._reader_for(
            model, writer_parsed, fingerprint(writer_schema), f"{name} id {schema_id}"
        )
        self._by_schema_id[schema_id] = reader
        return reader

    def _call_registry(self, what: str, call: Callable[[Any], Any]) -> Any:
        from confluent_kafka.schema_registry import SchemaRegistryError

        try:
            return call(self._client)
        except SchemaRegistryError as exc:
            status = exc.http_status_code or 0
            if status == 404:
                raise UnknownSchemaError(f"schema registry: not found while {what}: {exc}") from exc
            if status in (401, 403):  # every record would fail alike: not the record's fault
                raise ConfigError(
                    f"schema registry rejected the credentials while {what} (check"
                    f" OMNIQUANT_KAFKA__SCHEMA_REGISTRY_BASIC_AUTH): {exc}"
                ) from exc
            if 400 <= status < 500:  # incompatible (409), invalid (422) ...
                raise SerdeError(f"schema registry refused {what}: {exc}") from exc
            raise StackError(f"schema registry failed while {what}: {exc}") from exc
        except Exception as exc:  # transport: the registry is down, not the record bad
            raise StackError(f"schema registry unreachable while {what}: {exc}") from exc


def _on(topic: str | None) -> str:
    return f" (topic {topic})" if topic else ""


def _has_nested_records(model: type[Record]) -> bool:
    for info in model.model_fields.values():
        annotation = info.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        if any(isinstance(c, type) and issubclass(c, Record) for c in candidates):
            return True
    return False


def _registry_schema(schema: dict[str, Any]) -> Any:
    from confluent_kafka.schema_registry import Schema

    return Schema(json.dumps(schema, separators=(",", ":")), "AVRO")


def _registry_client(url: str | None, client: Any | None, basic_auth: str | None) -> Any | None:
    if client is not None:
        if url is not None:
            raise ConfigError("pass either schema_registry_url or registry_client, not both")
        return client
    if url is None:
        if basic_auth is not None:
            raise ConfigError(
                "OMNIQUANT_KAFKA__SCHEMA_REGISTRY_BASIC_AUTH is set but no schema registry URL"
                " (SCHEMA_REGISTRY_URL / OMNIQUANT_KAFKA__SCHEMA_REGISTRY_URL)"
            )
        return None
    # Imported here: the registry client pulls in httpx and authlib, which single-object
    # encoding never needs.
    from confluent_kafka.schema_registry import SchemaRegistryClient

    conf = {"url": url}
    if basic_auth is not None:
        conf["basic.auth.user.info"] = basic_auth
    try:
        return SchemaRegistryClient(conf)
    except ValueError as exc:
        raise ConfigError(f"schema registry configuration: {exc}") from exc
