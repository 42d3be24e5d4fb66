"""Exact bytes of both framings, and every way a message can be malformed.

The golden bytes are committed literals. They are not just "what the code printed": the body is
laid out by hand field by field below (Avro binary encoding: zig-zag varints, length-prefixed
UTF-8, union branch indices, array blocks), the long varints are re-derived with a spec-level
encoder that is itself checked against the spec's table, and the single-object fingerprint is
re-derived with fastavro. For the Confluent framing there is no registry server here (no Docker):
confluent_kafka's MockSchemaRegistryClient serves as the registry. It is only a schema store
(subject → id → schema), not a broker, and confluent_kafka's own AvroSerializer and
AvroDeserializer on the same store cross-check our framing.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryError
from confluent_kafka.schema_registry._sync.mock_schema_registry_client import (
    MockSchemaRegistryClient,
)
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from fastavro import parse_schema, schemaless_writer
from fastavro.schema import fingerprint as fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form
from hypothesis import given
from hypothesis import strategies as st

from core.config import load_settings
from core.errors import ConfigError, SerdeError, StackError, UnknownSchemaError
from schemas.models import AggressorSide, Quote, RiskCheck, Trade
from schemas.registry import (
    AVRO_DIR,
    LocalSchemaRegistry,
    canonical_form,
    crc64_avro,
    default_registry,
)
from schemas.serde import AvroSerde

TOPIC = "omniquant.market.trades"

GOLDEN_TRADE = Trade(
    symbol="AAPL",
    venue="XNAS",
    price=190_120_000_000,  # 190.12
    size=100_000_000_000,  # 100
    aggressor_side=AggressorSide.BUYER,
    trade_id="T1",
    conditions=["@"],
    flags=[],
    source="sim",
    ts_event=1_700_000_000_000_000_000,
    ts_init=1_700_000_000_000_000_123,
)

# The Avro body of GOLDEN_TRADE, field by field, in schema order.
BODY_LAYOUT: list[tuple[str, str]] = [
    ("symbol", "084141504c"),  # length 4 → zig-zag 8; "AAPL"
    ("venue", "08584e4153"),  # length 4; "XNAS"
    ("price", "80e8c7c0880b"),  # long 190_120_000_000 → zig-zag 380_240_000_000, 7-bit groups
    ("size", "80a0b787e905"),  # long 100_000_000_000 → zig-zag 200_000_000_000
    ("aggressor_side", "00"),  # enum index 0 = BUYER
    ("trade_id", "02045431"),  # union branch 1 (string); length 2; "T1"
    ("conditions", "02024000"),  # block of 1 item; length 1, "@"; end block
    ("flags", "00"),  # empty array: only the end block
    ("source", "0673696d"),  # length 3; "sim"
    ("ts_event", "8080d0e2c6bfce972f"),  # long 1_700_000_000_000_000_000
    ("ts_init", "f681d0e2c6bfce972f"),  # long 1_700_000_000_000_000_123
]
GOLDEN_BODY = bytes.fromhex("".join(part for _, part in BODY_LAYOUT))
TRADE_FINGERPRINT_LE = "e2776c5f7c7f0027"  # CRC-64-AVRO of trade.avsc's canonical form
GOLDEN_SINGLE_OBJECT = bytes.fromhex("c301" + TRADE_FINGERPRINT_LE) + GOLDEN_BODY
GOLDEN_CONFLUENT = bytes.fromhex("00" + "00000001") + GOLDEN_BODY  # first id the store assigns


def zigzag_varint(value: int) -> bytes:
    """Avro ``long`` encoding as the spec defines it, independent of fastavro."""
    encoded = (value << 1) ^ (value >> 63)
    out = bytearray()
    while encoded >= 0x80:
        out.append((encoded & 0x7F) | 0x80)
        encoded >>= 7
    out.append(encoded)
    return bytes(out)


def trade_schema() -> dict[str, Any]:
    return json.loads((AVRO_DIR / "trade.avsc").read_text(encoding="utf-8"))


# --- the golden bytes are derived, not printed -----------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, "00"), (-1, "01"), (1, "02"), (-2, "03"), (2, "04"), (-64, "7f"), (64, "8001")],
)
def test_reference_varint_encoder_matches_the_spec_table(value: int, expected: str) -> None:
    assert zigzag_varint(value).hex() == expected


def test_hand_laid_out_golden_body_matches_the_spec_encoding_of_each_long() -> None:
    layout = dict(BODY_LAYOUT)
    for name in ("price", "size", "ts_event", "ts_init"):
        assert layout[name] == zigzag_varint(getattr(GOLDEN_TRADE, name)).hex(), name
    assert [name for name, _ in BODY_LAYOUT] == list(Trade.model_fields)


def test_golden_fingerprint_is_what_fastavro_computes_for_trade_avsc() -> None:
    pcf = to_parsing_canonical_form(trade_schema())
    assert fastavro_fingerprint(pcf, "CRC-64-AVRO") == TRADE_FINGERPRINT_LE


# --- our serde produces and reads exactly those bytes -----------------------------------------


def test_trade_encodes_to_golden_single_object_bytes() -> None:
    encoded = AvroSerde().encode(GOLDEN_TRADE)
    assert encoded[:2] == b"\xc3\x01"
    assert encoded.hex() == GOLDEN_SINGLE_OBJECT.hex()


def test_golden_single_object_bytes_decode_to_the_trade() -> None:
    assert AvroSerde().decode(GOLDEN_SINGLE_OBJECT) == GOLDEN_TRADE


def test_trade_encodes_to_golden_confluent_bytes_with_schema_id_from_the_registry() -> None:
    serde = AvroSerde(registry_client=MockSchemaRegistryClient({"url": "mock://golden"}))
    encoded = serde.encode(GOLDEN_TRADE, topic=TOPIC)
    assert encoded.hex() == GOLDEN_CONFLUENT.hex()
    assert serde.decode_as(encoded, Trade, topic=TOPIC) == GOLDEN_TRADE


def test_confluent_kafka_serializer_and_deserializer_agree_with_our_framing() -> None:
    client = MockSchemaRegistryClient({"url": "mock://interop"})
    ours = AvroSerde(registry_client=client).encode(GOLDEN_TRADE, topic=TOPIC)
    ctx = SerializationContext(TOPIC, MessageField.VALUE)

    theirs = AvroSerializer(
        client,
        conf={"auto.register.schemas": False, "use.latest.version": True},
        to_dict=lambda record, _ctx: record.model_dump(mode="json"),
    )(GOLDEN_TRADE, ctx)
    assert theirs == ours

    decoded = AvroDeserializer(client)(ours, ctx)
    assert decoded == GOLDEN_TRADE.model_dump(mode="json")


def test_record_framed_by_confluent_kafka_serializer_decodes_with_our_serde() -> None:
    client = MockSchemaRegistryClient({"url": "mock://foreign"})
    schema_str = json.dumps(trade_schema())
    data = AvroSerializer(client, schema_str, lambda r, _c: r.model_dump(mode="json"))(
        GOLDEN_TRADE, SerializationContext(TOPIC, MessageField.VALUE)
    )
    assert data is not None and data[0] == 0
    assert AvroSerde(registry_client=client).decode(data, topic=TOPIC) == GOLDEN_TRADE


# --- the Rabin fingerprint and canonical form against the spec's test data --------------------

# From Apache Avro's share/test/data/schema-tests.txt (input, canonical form, fingerprint as a
# signed Java long); the Java implementation cross-checks these values.
SPEC_CASES = [
    ('"null"', '"null"', 7195948357588979594),
    ('{"type":"int"}', '"int"', 8247732601305521295),
    ('"string"', '"string"', -8142146995180207161),
    ('[ "int" , {"type":"boolean"} ]', '["int","boolean"]', 5392556393470105090),
    (
        '{"fields":[], "type":"record", "name":"foo", "namespace":"x.y"}',
        '{"name":"x.y.foo","type":"record","fields":[]}',
        5916914534497305771,
    ),
    (
        '{"fields":[], "type":"record", "name":"a.b.foo", "namespace":"x.y"}',
        '{"name":"a.b.foo","type":"record","fields":[]}',
        -4616218487480524110,
    ),
    (
        '{ "fields":[{"type":"boolean", "aliases":[], "name":"f1", "default":"true"},'
        ' {"order":"descending","name":"f2","doc":"Hello","type":"int"}],'
        ' "type":"record", "name":"foo" }',
        '{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"},'
        '{"name":"f2","type":"int"}]}',
        -4860222112080293046,
    ),
    (
        '{"namespace":"x.y.z", "type":"enum", "name":"foo", "doc":"foo bar",'
        ' "symbols":["A1", "A2"]}',
        '{"name":"x.y.z.foo","type":"enum","symbols":["A1","A2"]}',
        -4448647247586288245,
    ),
    (
        '{"namespace":"x.y.z", "type":"fixed", "name":"foo", "doc":"foo bar", "size":32}',
        '{"name":"x.y.z.foo","type":"fixed","size":32}',
        -3064184465700546786,
    ),
    (
        '{ "items":{"type":"null"}, "type":"array"}',
        '{"type":"array","items":"null"}',
        -589620603366471059,
    ),
    (
        '{ "values":"string", "type":"map"}',
        '{"type":"map","values":"string"}',
        -8732877298790414990,
    ),
    (
        '{"name":"PigValue","type":"record",'
        ' "fields":[{"name":"value", "type":["null", "int", "long", "PigValue"]}]}',
        '{"name":"PigValue","type":"record","fields":[{"name":"value",'
        '"type":["null","int","long","PigValue"]}]}',
        -1759257747318642341,
    ),
]


@pytest.mark.parametrize(("schema_text", "canonical", "java_fingerprint"), SPEC_CASES)
def test_canonical_form_and_rabin_fingerprint_match_the_avro_spec_test_data(
    schema_text: str, canonical: str, java_fingerprint: int
) -> None:
    assert canonical_form(json.loads(schema_text)) == canonical
    unsigned = java_fingerprint & 0xFFFF_FFFF_FFFF_FFFF
    assert crc64_avro(canonical.encode()) == unsigned
    # Single-object encoding writes the fingerprint little-endian, as fastavro reports it.
    assert unsigned.to_bytes(8, "little").hex() == fastavro_fingerprint(canonical, "CRC-64-AVRO")


@given(st.binary(max_size=200))
def test_rabin_fingerprint_matches_fastavro_on_arbitrary_bytes(data: bytes) -> None:
    # fastavro hashes str; latin-1 maps every byte to one code point, then UTF-8 re-encodes it,
    # so hash the same UTF-8 bytes on our side.
    text = data.decode("latin-1")
    ours = crc64_avro(text.encode("utf-8")).to_bytes(8, "little").hex()
    assert ours == fastavro_fingerprint(text, "CRC-64-AVRO")


def test_our_canonical_form_of_every_schema_matches_fastavros() -> None:
    for version in default_registry():
        assert version.canonical_form == to_parsing_canonical_form(version.schema), version.path


# --- malformed input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty message"),
        (b"\xc3", "truncated or bad single-object header"),
        (b"\x00", "truncated Confluent header"),
        (b"\xc3\x01\xe2\x77", "truncated or bad single-object header"),
        (b"\xc3\x02" + GOLDEN_SINGLE_OBJECT[2:], "truncated or bad single-object header"),
        (b"\x7b" + GOLDEN_SINGLE_OBJECT[1:], "unknown framing: first byte 0x7b"),
        (GOLDEN_SINGLE_OBJECT[:10], "cannot decode the body"),
        (GOLDEN_SINGLE_OBJECT[:-1], "cannot decode the body"),
        (GOLDEN_SINGLE_OBJECT[:20], "cannot decode the body"),
        (GOLDEN_SINGLE_OBJECT + b"\x00", "1 trailing bytes"),
        (b"\x00not avro at all", "no schema registry is configured"),
    ],
    ids=[
        "empty",
        "one-byte",
        "one-byte-confluent-magic",
        "header-cut-in-fingerprint",
        "wrong-second-magic-byte",
        "unknown-magic",
        "header-without-body",
        "body-missing-last-byte",
        "body-cut-in-the-middle",
        "trailing-byte",
        "confluent-framing-without-registry",
    ],
)
def test_malformed_message_raises_serde_error_naming_the_problem(data: bytes, message: str) -> None:
    with pytest.raises(SerdeError, match=message):
        AvroSerde().decode(data, topic=TOPIC)


def test_unknown_fingerprint_raises_unknown_schema_error() -> None:
    with pytest.raises(UnknownSchemaError, match="unknown schema fingerprint 0101010101010101"):
        AvroSerde().decode(b"\xc3\x01" + b"\x01" * 8 + b"\x02")


def test_unknown_schema_id_in_the_registry_raises_unknown_schema_error() -> None:
    serde = AvroSerde(registry_client=MockSchemaRegistryClient({"url": "mock://empty"}))
    with pytest.raises(UnknownSchemaError, match="not found while fetching schema id 7"):
        serde.decode(b"\x00\x00\x00\x00\x07" + GOLDEN_BODY)


def test_registry_schema_of_a_record_we_do_not_know_raises_unknown_schema_error() -> None:
    client = MockSchemaRegistryClient({"url": "mock://stranger"})
    stranger = {"type": "record", "name": "Stranger", "namespace": "x", "fields": []}
    schema_id = client.register_schema("s-value", Schema(json.dumps(stranger), "AVRO"))
    with pytest.raises(
        UnknownSchemaError, match=re.escape("no local Avro schema named x.Stranger")
    ):
        AvroSerde(registry_client=client).decode(b"\x00" + schema_id.to_bytes(4, "big"))


def test_decode_as_another_record_type_raises_serde_error() -> None:
    with pytest.raises(
        SerdeError, match=re.escape("expected a io.omniquant.market.Quote but the record is")
    ):
        AvroSerde().decode_as(GOLDEN_SINGLE_OBJECT, Quote)


def test_enum_index_outside_the_symbols_raises_serde_error() -> None:
    body = bytearray(GOLDEN_BODY)
    enum_at = len(bytes.fromhex("".join(part for _, part in BODY_LAYOUT[:4])))
    body[enum_at] = 0x08  # index 4; AggressorSide has 3 symbols
    with pytest.raises(SerdeError, match="cannot decode the body"):
        AvroSerde().decode(GOLDEN_SINGLE_OBJECT[:10] + bytes(body))


def test_well_formed_avro_that_breaks_the_model_rules_raises_serde_error() -> None:
    # An empty symbol is valid Avro but not a valid Trade: decode validates, it does not trust.
    out = io.BytesIO()
    values = GOLDEN_TRADE.model_dump(mode="json") | {"symbol": ""}
    schemaless_writer(out, parse_schema(trade_schema(), named_schemas={}), values)
    with pytest.raises(SerdeError, match="is not a valid Trade"):
        AvroSerde().decode(GOLDEN_SINGLE_OBJECT[:10] + out.getvalue())


@given(st.binary(max_size=80))
def test_arbitrary_bytes_after_a_valid_header_decode_or_raise_serde_error_only(
    body: bytes,
) -> None:
    try:
        record = AvroSerde().decode(GOLDEN_SINGLE_OBJECT[:10] + body)
    except SerdeError:
        return
    assert isinstance(record, Trade)


# --- encoding errors and configuration ----------------------------------------------------------


def test_encoding_a_record_that_is_not_a_value_record_raises_serde_error() -> None:
    with pytest.raises(SerdeError, match="RiskCheck is not a value record"):
        AvroSerde().encode(RiskCheck(name="x", passed=True))


def test_encoding_an_unvalidated_out_of_range_value_raises_serde_error() -> None:
    bad = Trade.model_construct(**(dict(GOLDEN_TRADE) | {"price": 2**64}))
    with pytest.raises(SerdeError, match="cannot encode Trade"):
        AvroSerde().encode(bad)


def test_encoding_for_a_registry_without_a_topic_raises_serde_error() -> None:
    serde = AvroSerde(registry_client=MockSchemaRegistryClient({"url": "mock://no-topic"}))
    with pytest.raises(SerdeError, match="needs the topic"):
        serde.encode(GOLDEN_TRADE)


def test_basic_auth_without_a_registry_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="SCHEMA_REGISTRY_BASIC_AUTH"):
        AvroSerde(basic_auth="user:secret")


def test_from_settings_uses_single_object_encoding_without_a_registry_url() -> None:
    settings = load_settings(kafka={"schema_registry_url": None})
    serde = AvroSerde.from_settings(settings)
    assert not serde.uses_registry
    assert serde.encode(GOLDEN_TRADE) == GOLDEN_SINGLE_OBJECT


def test_from_settings_with_a_registry_url_and_basic_auth_uses_the_registry() -> None:
    settings = load_settings(
        kafka={
            "schema_registry_url": "http://registry.invalid:8081",
            "schema_registry_basic_auth": "user:secret",
        }
    )
    serde = AvroSerde.from_settings(settings)  # the client connects lazily: no I/O here
    assert serde.uses_registry
    with pytest.raises(SerdeError, match="needs the topic"):
        serde.encode(GOLDEN_TRADE)


class FailingRegistry:
    """A registry client whose every call fails with ``error``."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def get_schema(self, schema_id: int) -> Schema:
        raise self.error

    def register_schema(self, subject: str, schema: Schema) -> int:
        raise self.error


@pytest.mark.parametrize(
    ("error", "raised"),
    [
        (SchemaRegistryError(503, 50301, "unavailable"), StackError),
        (httpx.ConnectError("connection refused"), StackError),
        (SchemaRegistryError(401, 40101, "unauthorized"), ConfigError),
    ],
    ids=["server-error", "unreachable", "bad-credentials"],
)
def test_registry_outage_or_bad_credentials_is_not_reported_as_a_bad_record(
    error: Exception, raised: type[Exception]
) -> None:
    # A SerdeError would dead-letter every good record while the registry is down.
    serde = AvroSerde(registry_client=FailingRegistry(error))
    with pytest.raises(raised) as info:
        serde.decode(b"\x00\x00\x00\x00\x07" + GOLDEN_BODY)
    assert not isinstance(info.value, SerdeError)
    with pytest.raises(raised):
        serde.encode(GOLDEN_TRADE, topic=TOPIC)


# --- historical writer schemas ------------------------------------------------------------------


def write_schema_tree(root: Path, history: dict[str, Any]) -> LocalSchemaRegistry:
    """A copy of schemas/avro plus ``history/trade/v1.avsc``."""
    for path in AVRO_DIR.glob("*.avsc"):
        (root / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    (root / "history" / "trade").mkdir(parents=True)
    (root / "history" / "trade" / "v1.avsc").write_text(json.dumps(history), encoding="utf-8")
    return LocalSchemaRegistry.load(root)


def trade_v1_schema() -> dict[str, Any]:
    """An older Trade: no trade_id, conditions or flags, and only two aggressor symbols."""
    schema = trade_schema()
    schema["fields"] = [
        f for f in schema["fields"] if f["name"] not in ("trade_id", "conditions", "flags")
    ]
    aggressor = next(f for f in schema["fields"] if f["name"] == "aggressor_side")
    del aggressor["default"]
    aggressor["type"] = {"type": "enum", "name": "AggressorSide", "symbols": ["BUYER", "SELLER"]}
    return schema


def test_record_written_with_a_historical_schema_decodes_into_the_current_model(
    tmp_path: Path,
) -> None:
    old = trade_v1_schema()
    schemas = write_schema_tree(tmp_path, old)
    v1 = schemas.history("io.omniquant.market.Trade")[0]
    out = io.BytesIO()
    values = GOLDEN_TRADE.model_dump(mode="json", exclude={"trade_id", "conditions", "flags"})
    schemaless_writer(out, v1.parsed, values)
    data = b"\xc3\x01" + crc64_avro(canonical_form(old).encode()).to_bytes(8, "little")

    decoded = AvroSerde(schemas=schemas).decode_as(data + out.getvalue(), Trade)

    # Fields the old writer lacked take the current schema's defaults.
    assert decoded == GOLDEN_TRADE.model_copy(update={"trade_id": None, "conditions": []})
    # The shipped schemas know nothing of this v1: its fingerprint is unknown there.
    with pytest.raises(UnknownSchemaError):
        AvroSerde().decode(data + out.getvalue())


def test_record_registered_with_an_older_schema_version_decodes_into_the_current_model() -> None:
    client = MockSchemaRegistryClient({"url": "mock://old-writer"})
    data = AvroSerializer(
        client,
        json.dumps(trade_v1_schema()),
        lambda r, _c: r.model_dump(mode="json", exclude={"trade_id", "conditions", "flags"}),
    )(GOLDEN_TRADE, SerializationContext(TOPIC, MessageField.VALUE))
    assert data is not None
    decoded = AvroSerde(registry_client=client).decode_as(data, Trade, topic=TOPIC)
    assert decoded == GOLDEN_TRADE.model_copy(update={"trade_id": None, "conditions": []})


def test_registry_writer_schema_the_current_schema_cannot_read_raises_serde_error() -> None:
    client = MockSchemaRegistryClient({"url": "mock://incompatible"})
    incompatible = trade_schema()
    for fld in incompatible["fields"]:
        if fld["name"] == "price":
            fld["type"] = "string"
    schema_id = client.register_schema(f"{TOPIC}-value", Schema(json.dumps(incompatible), "AVRO"))
    with pytest.raises(SerdeError, match="price: reader type long cannot read writer type"):
        AvroSerde(registry_client=client).decode(b"\x00" + schema_id.to_bytes(4, "big") + b"\x00")
