"""`omniquant schemas export DIR`: what an integrator in another language gets — one .avsc per
record topic under its TopicNameStrategy subject, and the single-object header — checked by
producing a record the way a non-Python producer would (fastavro from the exported file, the
header from the index; no project encoder) and decoding it with our serde."""

from __future__ import annotations

import io
import json
from pathlib import Path

from fastavro import parse_schema, schemaless_writer
from fastavro.schema import fingerprint as fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form
from typer.testing import CliRunner

from core.topics import RECORD_TOPICS
from omniquant.cli import app
from schemas.models import Trade
from schemas.serde import AvroSerde


def test_export_writes_every_record_topic_under_its_subject(tmp_path: Path) -> None:
    out = tmp_path / "schemas"
    result = CliRunner().invoke(
        app, ["schemas", "export", str(out)], env={"OMNIQUANT_TOPIC_PREFIX": "desk1."}
    )
    assert result.exit_code == 0, result.output
    index = json.loads((out / "subjects.json").read_text())
    want = {f"desk1.{t.logical_name}-value" for t in RECORD_TOPICS if t.value_schema}
    assert {e["subject"] for e in index} == want
    assert len(list(out.glob("*.avsc"))) == len(want)
    for entry in index:
        schema = json.loads((out / entry["file"]).read_text())
        parsed = parse_schema(schema)
        assert entry["record"] == parsed["name"]
        # fastavro's own CRC-64-AVRO of the canonical form, not ours: it gives the 8 bytes
        # as the wire has them (little-endian); the index's number is the 64-bit value
        wire = fastavro_fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO")
        assert entry["single_object_header"] == "c301" + wire
        assert entry["fingerprint"] == bytes.fromhex(wire)[::-1].hex()


def test_a_record_made_from_the_exported_files_alone_decodes(tmp_path: Path) -> None:
    out = tmp_path / "schemas"
    assert CliRunner().invoke(app, ["schemas", "export", str(out)]).exit_code == 0
    entry = next(e for e in json.loads((out / "subjects.json").read_text())
                 if e["topic"].endswith("market.trades"))  # fmt: skip
    schema = parse_schema(json.loads((out / entry["file"]).read_text()))
    record = {
        "symbol": "SPY", "venue": "ARCA", "price": 168_250_000_000, "size": 100_000_000_000,
        "aggressor_side": "BUYER", "trade_id": "t-1", "conditions": [], "flags": [],
        "source": "java-producer", "ts_event": 1_381_152_600_000_000_000,
        "ts_init": 1_381_152_600_000_000_001,
    }  # fmt: skip
    body = io.BytesIO()
    schemaless_writer(body, schema, record)
    framed = bytes.fromhex(entry["single_object_header"]) + body.getvalue()
    trade = AvroSerde().decode_as(framed, Trade)
    assert (trade.symbol, trade.price, trade.source) == ("SPY", 168_250_000_000, "java-producer")
