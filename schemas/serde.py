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

The hot path of the stream apps skips pydantic both ways, on dicts:

- :meth:`AvroSerde.decode_dict` gives fastavro's dict (enums as their symbol strings, nested
  records as dicts) and accepts exactly the bytes :meth:`AvroSerde.decode` accepts: the Avro
  schema checks types and enum symbols, and the few model rules a schema cannot express
  (string lengths, positive quantities; Avro ``long`` is int64 already) are checked by a
  function compiled per model from its field constraints.
- :meth:`AvroSerde.encode_dict` writes a dict of the model's fields (what ``model_dump()`` or
  ``decode_dict`` give) with fastavro, unvalidated, like :meth:`AvroSerde.encode`.
"""

from __future__ import annotations

import io
import json
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

import annotated_types
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import SchemaParseException
from pydantic import BaseModel, SecretStr, ValidationError
from pydantic.fields import FieldInfo

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
    check: _Check  # the model's rules beyond the schema, on the decoded dict


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
        # Nested records must become dicts for fastavro; flat ones are read straight from the
        # model's field dict, which saves a model_dump() per record on the hot path.
        datum = record.model_dump() if writer.nested else record.__dict__
        return self._write(type(record), writer, datum, topic)

    def encode_dict(
        self, model: type[Record], datum: Mapping[str, Any], topic: str | None = None
    ) -> bytes:
        """A dict of ``model``'s fields → framed Avro bytes, without building the model.

        ``datum`` is what ``model_dump()`` or :meth:`decode_dict` give (enums as members or
        symbol strings, nested records as dicts). Like :meth:`encode`, it is not validated:
        fastavro rejects values that do not fit the schema (SerdeError).
        """
        writer = self._writers.get(model)
        if writer is None:
            raise SerdeError(
                f"{model.__name__} is not a value record with an Avro schema"
                f" (one of {', '.join(m.__name__ for m in VALUE_MODELS)})"
            )
        return self._write(model, writer, datum, topic)

    def _write(
        self, model: type[Record], writer: _Writer, datum: Mapping[str, Any], topic: str | None
    ) -> bytes:
        if self._client is None:
            header = writer.single_object_header
        else:
            header = self._registry_header(model, writer.schema, topic)
        out = io.BytesIO()
        out.write(header)
        try:
            schemaless_writer(out, writer.schema.parsed, datum)
        except Exception as exc:  # fastavro raises ValueError, TypeError, OverflowError ...
            raise SerdeError(
                f"cannot encode {model.__name__} with {writer.schema.full_name}:"
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

    def decode_dict(
        self, data: bytes, model: type[Record], topic: str | None = None
    ) -> dict[str, Any]:
        """Like :meth:`decode_as`, but the record comes back as fastavro's dict, not a model.

        Accepts and refuses exactly what :meth:`decode_as` does (the model's rules are checked
        on the dict); enums are their symbol strings and nested records dicts.
        """
        reader, offset = self._reader_of(data, topic)
        if reader.model is not model:
            raise SerdeError(
                f"expected a {model.AVRO_NAME} but the record is a {reader.model.AVRO_NAME}"
                f"{_on(topic)}"
            )
        values = self._read_values(reader, data, offset, topic)
        problem = reader.check(values)
        if problem is not None:
            raise SerdeError(
                f"decoded {reader.label} is not a valid {model.__name__}{_on(topic)}: {problem}"
            )
        return values

    def _reader_of(self, data: bytes, topic: str | None) -> tuple[_Reader, int]:
        """The reader for the framing header of ``data``, and where the body starts."""
        if type(data) is bytes and data[:2] == SINGLE_OBJECT_MAGIC:  # the usual case, quickly
            known = self._by_fingerprint.get(data[2:_SINGLE_OBJECT_HEADER_LEN])
            if known is not None:
                return known, _SINGLE_OBJECT_HEADER_LEN
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
        values = self._read_values(reader, data, offset, topic)
        try:
            return reader.model.model_validate(values)
        except ValidationError as exc:
            raise SerdeError(
                f"decoded {reader.label} is not a valid {reader.model.__name__}{_on(topic)}: {exc}"
            ) from exc

    def _read_values(
        self, reader: _Reader, data: bytes, offset: int, topic: str | None
    ) -> dict[str, Any]:
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
        return cast(dict[str, Any], values)  # a record schema reads as a dict

    def _reader_for(
        self, model: type[Record], writer: Any, writer_fingerprint: int, label: str
    ) -> _Reader:
        current = self._schemas.current(model.AVRO_NAME)
        check = model_check(model)
        if writer_fingerprint == current.fingerprint:
            return _Reader(model, current.parsed, None, label, check)  # no resolution needed
        return _Reader(model, writer, current.parsed, label, check)

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
            int(schema_id),
            _Reader(
                model, schema.parsed, None, f"{schema.label} id {schema_id}", model_check(model)
            ),
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


# --- the model's rules on a decoded dict --------------------------------------------------------

_Check = Callable[[Mapping[str, Any]], "str | None"]  # None when valid, else what is wrong
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_CHECKS: dict[type[BaseModel], _Check] = {}


def model_check(model: type[BaseModel]) -> _Check:
    """A function telling what in a decoded dict breaks ``model``'s rules (None if nothing).

    Built from the field constraints (``min_length``, ``max_length``, ``gt``, ``ge``, ``lt``,
    ``le``) for values the Avro schema already typed: int64 bounds are skipped (an Avro long
    is one), optional fields are checked when set, lists of records item by item. A model with
    a rule this does not know is checked by pydantic instead, so nothing is let through.
    """
    check = _CHECKS.get(model)
    if check is None:
        check = _CHECKS[model] = _compile_check(model)
    return check


def _compile_check(model: type[BaseModel]) -> _Check:
    field_checks: list[tuple[str, Callable[[Any], str | None]]] = []
    try:
        for name, info in model.model_fields.items():
            check = _value_check(info.annotation, info.metadata)
            if check is not None:
                field_checks.append((name, check))
    except _UnknownRule:
        return _pydantic_check(model)
    if not field_checks:
        return _no_problem

    def check_record(values: Mapping[str, Any]) -> str | None:
        for name, check in field_checks:
            problem = check(values[name])
            if problem is not None:
                return f"{name}: {problem}"
        return None

    return check_record


class _UnknownRule(Exception):
    pass


def _no_problem(_values: Mapping[str, Any]) -> None:
    return None


def _pydantic_check(model: type[BaseModel]) -> _Check:
    def check(values: Mapping[str, Any]) -> str | None:
        try:
            model.model_validate(values)
        except ValidationError as exc:
            return str(exc)
        return None

    return check


def _value_check(annotation: Any, metadata: list[Any]) -> Callable[[Any], str | None] | None:
    """The check of one value of ``annotation`` carrying ``metadata``; None when there is none."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        inner, *extra = typing.get_args(annotation)
        return _value_check(inner, [*metadata, *extra])
    own = _bounds_check(metadata)
    if origin is typing.Union or origin is types.UnionType:
        branches = [a for a in typing.get_args(annotation) if a is not type(None)]
        if own is not None or len(branches) != 1:
            raise _UnknownRule
        inner_check = _value_check(branches[0], [])
        return None if inner_check is None else _optional(inner_check)
    if origin is list:
        item_check = _value_check(typing.get_args(annotation)[0], [])
        return _all_of([c for c in (own, None if item_check is None else _each(item_check)) if c])
    if origin is not None:  # dict[str, str] ...: nothing inside may carry a rule
        if any(_value_check(arg, []) is not None for arg in typing.get_args(annotation)):
            raise _UnknownRule
        return own
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        record_check = model_check(annotation)
        nested = None if record_check is _no_problem else record_check
        return _all_of([c for c in (own, nested) if c])
    return own


def _optional(check: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    def optional(value: Any) -> str | None:
        return None if value is None else check(value)

    return optional


def _each(check: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    def each(values: Any) -> str | None:
        for i, value in enumerate(values):
            problem = check(value)
            if problem is not None:
                return f"[{i}] {problem}"
        return None

    return each


def _all_of(checks: list[Callable[[Any], str | None]]) -> Callable[[Any], str | None] | None:
    if not checks:
        return None
    if len(checks) == 1:
        return checks[0]

    def all_of(value: Any) -> str | None:
        for check in checks:
            problem = check(value)
            if problem is not None:
                return problem
        return None

    return all_of


def _bounds_check(metadata: list[Any]) -> Callable[[Any], str | None] | None:
    rules: list[Any] = []
    for rule in metadata:
        # A pydantic FieldInfo (Field(...) inside Annotated) carries its rules as metadata.
        rules.extend(rule.metadata if isinstance(rule, FieldInfo) else [rule])
    lengths = [r for r in rules if isinstance(r, annotated_types.MinLen | annotated_types.MaxLen)]
    checks = [c for c in map(_rule_check, (r for r in rules if r not in lengths)) if c]
    if lengths:
        checks.insert(0, _length_check(lengths))
    return _all_of(checks)


def _length_check(rules: list[Any]) -> Callable[[Any], str | None]:
    lo = max((r.min_length for r in rules if isinstance(r, annotated_types.MinLen)), default=0)
    hi = min((r.max_length for r in rules if isinstance(r, annotated_types.MaxLen)), default=None)
    if hi is None:
        return lambda v: None if len(v) >= lo else f"length {len(v)} < {lo}"
    top = hi
    return lambda v: None if lo <= len(v) <= top else f"length {len(v)} not in [{lo}, {top}]"


def _is_marker(rule: Any) -> bool:
    """Our own annotations (FixedPointField, ...) that describe a field but constrain nothing."""
    return type(rule).__module__ == "schemas.models"


def _rule_check(rule: Any) -> Callable[[Any], str | None] | None:
    if _is_marker(rule):
        return None
    if isinstance(rule, annotated_types.Ge):
        lo = rule.ge
        if lo == _INT64_MIN:
            return None
        return lambda v: None if v >= lo else f"{v} < {lo}"
    if isinstance(rule, annotated_types.Le):
        hi = rule.le
        if hi == _INT64_MAX:
            return None
        return lambda v: None if v <= hi else f"{v} > {hi}"
    if isinstance(rule, annotated_types.Gt):
        above = rule.gt
        return lambda v: None if v > above else f"{v} <= {above}"
    if isinstance(rule, annotated_types.Lt):
        below = rule.lt
        return lambda v: None if v < below else f"{v} >= {below}"
    raise _UnknownRule


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
