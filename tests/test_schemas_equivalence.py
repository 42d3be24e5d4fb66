"""Each pydantic value model and its .avsc describe the same record.

Checked field by field (names, order, types, nullability, defaults, enum symbols, docs), then by
round-tripping hypothesis-generated records through Avro in both framings. The Confluent framing
uses confluent_kafka's MockSchemaRegistryClient as the registry: an in-memory schema store, no
broker and no server involved.
"""

from __future__ import annotations

import types
import typing
from enum import StrEnum
from functools import cache
from typing import Any, get_args, get_origin

import annotated_types
import pytest
from confluent_kafka.schema_registry._sync.mock_schema_registry_client import (
    MockSchemaRegistryClient,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic.fields import FieldInfo

from core.topics import RECORD_TOPICS
from schemas import VALUE_MODELS, AvroSerde, Record
from schemas.models import FixedPointField, TimestampNsField
from schemas.registry import AVRO_DIR, default_registry, qualify, snake_case

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MODEL_IDS = [model.__name__ for model in VALUE_MODELS]


def avsc(model: type[Record]) -> dict[str, Any]:
    return default_registry().current(model.AVRO_NAME).schema


@cache
def single_object_serde() -> AvroSerde:
    return AvroSerde()


@cache
def mock_registry() -> MockSchemaRegistryClient:
    return MockSchemaRegistryClient({"url": "mock://equivalence"})


@cache
def registry_serde() -> AvroSerde:
    return AvroSerde(registry_client=mock_registry())


# --- annotations → what the schema must say ---------------------------------------------------


def unwrap(annotation: Any, metadata: list[Any]) -> tuple[Any, list[Any]]:
    """Strip ``Annotated`` layers, collecting their metadata (pydantic FieldInfo expanded)."""
    while get_origin(annotation) is typing.Annotated:
        annotation, *extra = get_args(annotation)
        for item in extra:
            metadata = [*metadata, *(item.metadata if isinstance(item, FieldInfo) else [item])]
    return annotation, metadata


def optional_inner(annotation: Any) -> Any | None:
    """``X | None`` → X; anything else → None."""
    if get_origin(annotation) in (typing.Union, types.UnionType):
        members = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(members) != len(get_args(annotation)):
            assert len(members) == 1, f"only T | None unions are mapped to Avro: {annotation}"
            return members[0]
    return None


def assert_type_matches(annotation: Any, avro: Any, where: str) -> None:
    """The Avro type ``avro`` is the one our conventions give the Python ``annotation``."""
    annotation, _ = unwrap(annotation, [])
    inner = optional_inner(annotation)
    if inner is not None:
        assert isinstance(avro, list) and len(avro) == 2 and avro[0] == "null", (
            f"{where}: optional field must be ['null', T], got {avro}"
        )
        assert_type_matches(inner, avro[1], where)
        return
    assert not (isinstance(avro, list) and "null" in avro), f"{where}: required but nullable"
    origin = get_origin(annotation)
    if origin is list:
        assert isinstance(avro, dict) and avro["type"] == "array", f"{where}: {avro}"
        assert_type_matches(get_args(annotation)[0], avro["items"], f"{where}[]")
    elif origin is dict:
        assert get_args(annotation)[0] is str, f"{where}: Avro map keys are strings"
        assert isinstance(avro, dict) and avro["type"] == "map", f"{where}: {avro}"
        assert_type_matches(get_args(annotation)[1], avro["values"], f"{where}{{}}")
    elif isinstance(annotation, type) and issubclass(annotation, StrEnum):
        assert isinstance(avro, dict) and avro["type"] == "enum", f"{where}: {avro}"
        assert avro["name"].rpartition(".")[2] == annotation.__name__, where
        assert avro["symbols"] == [member.value for member in annotation], where
        assert avro.get("doc"), f"{where}: enum without doc"
        if "default" in avro:
            assert avro["default"] in avro["symbols"], where
    elif isinstance(annotation, type) and issubclass(annotation, Record):
        assert isinstance(avro, dict) and avro["type"] == "record", f"{where}: {avro}"
        assert_record_matches(annotation, avro)
    else:
        expected = {str: "string", int: "long", bool: "boolean"}[annotation]
        assert avro == expected, f"{where}: {annotation.__name__} must be {expected!r}, got {avro}"


def assert_record_matches(model: type[Record], schema: dict[str, Any]) -> None:
    """``schema`` has gone through registry.qualify(): every name in it is a full name."""
    assert schema["name"] == model.AVRO_NAME, f"{schema['name']} is not {model.AVRO_NAME}"
    assert schema.get("doc"), f"{model.__name__}: record without doc"
    fields = schema["fields"]
    assert [f["name"] for f in fields] == list(model.model_fields), "names or order differ"
    for avro_field, (name, info) in zip(fields, model.model_fields.items(), strict=True):
        where = f"{model.__name__}.{name}"
        assert_type_matches(info.annotation, avro_field["type"], where)
        assert_default_matches(info, avro_field, where)
        assert_doc_names_units(info, avro_field, where)


def assert_default_matches(info: FieldInfo, avro_field: dict[str, Any], where: str) -> None:
    if info.is_required():
        assert "default" not in avro_field, f"{where}: required in the model, default in Avro"
        return
    assert "default" in avro_field, f"{where}: default in the model, none in Avro"
    default = info.get_default(call_default_factory=True)
    expected = default.value if isinstance(default, StrEnum) else default
    assert avro_field["default"] == expected, f"{where}: {avro_field['default']!r} != {expected!r}"


def assert_doc_names_units(info: FieldInfo, avro_field: dict[str, Any], where: str) -> None:
    doc = avro_field.get("doc", "")
    assert doc, f"{where}: field without doc"
    _, metadata = unwrap(info.annotation, list(info.metadata))
    inner = optional_inner(unwrap(info.annotation, [])[0])
    if inner is not None:
        _, metadata = unwrap(inner, metadata)
    if any(isinstance(item, FixedPointField) for item in metadata):
        assert "fixed-point" in doc and "1e-9" in doc, f"{where}: doc must give the scale"
    if any(isinstance(item, TimestampNsField) for item in metadata):
        assert "UTC nanoseconds" in doc, f"{where}: doc must give the time unit"


# --- hypothesis strategies from the models --------------------------------------------------


def int_bounds(metadata: list[Any]) -> tuple[int | None, int | None]:
    """Inclusive (low, high) from annotated_types constraints; None where unconstrained."""
    low: int | None = None
    high: int | None = None
    for item in metadata:
        if isinstance(item, annotated_types.Ge | annotated_types.Gt):
            bound = int(item.ge) if isinstance(item, annotated_types.Ge) else int(item.gt) + 1
            low = bound if low is None else max(low, bound)
        elif isinstance(item, annotated_types.Le | annotated_types.Lt):
            bound = int(item.le) if isinstance(item, annotated_types.Le) else int(item.lt) - 1
            high = bound if high is None else min(high, bound)
    return low, high


def strategy(annotation: Any, metadata: list[Any]) -> st.SearchStrategy[Any]:
    annotation, metadata = unwrap(annotation, metadata)
    inner = optional_inner(annotation)
    if inner is not None:
        return st.none() | strategy(inner, metadata)
    origin = get_origin(annotation)
    if origin is list:
        return st.lists(strategy(get_args(annotation)[0], []), max_size=3)
    if origin is dict:
        key, value = get_args(annotation)
        return st.dictionaries(strategy(key, []), strategy(value, []), max_size=3)
    if isinstance(annotation, type) and issubclass(annotation, StrEnum):
        return st.sampled_from(annotation)
    if isinstance(annotation, type) and issubclass(annotation, Record):
        return records(annotation)
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        low, high = int_bounds(metadata)
        return st.integers(INT64_MIN if low is None else low, INT64_MAX if high is None else high)
    if annotation is str:
        min_size, max_size = 0, 20
        for item in metadata:
            if isinstance(item, annotated_types.MinLen):
                min_size = item.min_length
            elif isinstance(item, annotated_types.MaxLen):
                max_size = min(max_size, item.max_length)
        return st.text(min_size=min_size, max_size=max_size)
    raise AssertionError(f"no strategy for {annotation!r}")


def records(model: type[Record]) -> st.SearchStrategy[Record]:
    fields = {
        name: strategy(info.annotation, list(info.metadata))
        for name, info in model.model_fields.items()
    }
    return st.fixed_dictionaries(fields).map(model.model_validate)


# --- tests ------------------------------------------------------------------------------------


def test_every_value_model_has_exactly_one_schema_file_named_after_the_record() -> None:
    files = {path.name for path in AVRO_DIR.glob("*.avsc")}
    expected = {f"{snake_case(model.AVRO_NAME)}.avsc" for model in VALUE_MODELS}
    assert files == expected
    for model in VALUE_MODELS:
        assert default_registry().current(model.AVRO_NAME).path.name in expected


@pytest.mark.parametrize("model", VALUE_MODELS, ids=MODEL_IDS)
def test_schema_and_model_agree_on_fields_types_nullability_defaults_and_docs(
    model: type[Record],
) -> None:
    schema = avsc(model)
    assert schema["namespace"] == model.AVRO_NAME.rpartition(".")[0]
    assert_record_matches(model, qualify(schema))


@pytest.mark.parametrize("model", VALUE_MODELS, ids=MODEL_IDS)
def test_every_valid_model_integer_fits_the_avro_long(model: type[Record]) -> None:
    # Otherwise a record that validates could still fail to encode.
    def fits(annotation: Any, metadata: list[Any]) -> bool:
        annotation, metadata = unwrap(annotation, metadata)
        inner = optional_inner(annotation)
        if inner is not None:
            return fits(inner, metadata)
        if annotation is not int:
            return True
        low, high = int_bounds(metadata)
        return low is not None and high is not None and low >= INT64_MIN and high <= INT64_MAX

    unbounded = [
        name
        for name, info in model.model_fields.items()
        if not fits(info.annotation, info.metadata)
    ]
    assert unbounded == []


@pytest.mark.parametrize("model", VALUE_MODELS, ids=MODEL_IDS)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_generated_records_round_trip_through_single_object_encoding(
    model: type[Record], data: st.DataObject
) -> None:
    record = data.draw(records(model))
    serde = single_object_serde()
    encoded = serde.encode(record)
    assert encoded[:2] == b"\xc3\x01"
    assert serde.decode(encoded) == record
    assert serde.decode_as(encoded, model) == record


@pytest.mark.parametrize("model", VALUE_MODELS, ids=MODEL_IDS)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_generated_records_round_trip_through_confluent_wire_format(
    model: type[Record], data: st.DataObject
) -> None:
    record = data.draw(records(model))
    serde = registry_serde()
    topic = f"equivalence.{model.__name__}"
    encoded = serde.encode(record, topic=topic)
    assert encoded[0] == 0
    assert serde.decode(encoded, topic=topic) == record
    # A fresh serde on the same registry has no local cache: it reads the schema by id.
    fresh = AvroSerde(registry_client=mock_registry())
    assert fresh.decode_as(encoded, model, topic=topic) == record


def test_every_catalog_topic_with_a_value_schema_has_its_avsc_file_and_model() -> None:
    with_schema = [spec for spec in RECORD_TOPICS if spec.value_schema is not None]
    assert with_schema, "the catalog names no value schemas"
    models = {model.AVRO_NAME for model in VALUE_MODELS}
    for spec in with_schema:
        assert spec.value_schema is not None
        assert spec.value_schema in models, spec.logical_name
        version = default_registry().current(spec.value_schema)
        assert version.path.is_file(), spec.logical_name
        assert version.path.parent == AVRO_DIR
