"""`omniquant schemas export DIR`: every topic's value schema, named as a registry names it.

Integrators producing or consuming by topic in another language need the schemas and the
subject names. Subjects follow the Confluent TopicNameStrategy our serde registers under
(``<physical topic>-value``); each file is the current ``.avsc`` as written (docs kept).
``subjects.json`` lists, per subject, its topic, record and the CRC-64-AVRO fingerprint that
single-object encoding puts on the wire without a registry (``C3 01`` + 8 bytes little-endian).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import typer

from core.topics import TopicCatalog
from schemas.registry import LocalSchemaRegistry

__all__ = ["ExportedSchema", "app", "export_schemas"]


@dataclass(frozen=True)
class ExportedSchema:
    subject: str
    topic: str
    record: str
    file: str
    fingerprint: str  # the 64-bit CRC-64-AVRO fingerprint as a hex number (big-endian)
    single_object_header: str  # hex of the 10 bytes before a single-object body


def export_schemas(
    catalog: TopicCatalog, prefix: str, registry: LocalSchemaRegistry, out_dir: Path
) -> list[ExportedSchema]:
    """Write ``<subject>.avsc`` for every record topic of ``catalog`` in namespace ``prefix``
    and ``subjects.json`` listing them. Returns the list."""
    out_dir.mkdir(parents=True, exist_ok=True)
    exported: list[ExportedSchema] = []
    for topic, spec in catalog.physical(prefix):
        if spec.value_schema is None:  # dead letters carry raw bytes
            continue
        schema = registry.current(spec.value_schema)
        subject = f"{topic}-value"
        name = f"{subject}.avsc"
        (out_dir / name).write_text(json.dumps(schema.schema, indent=2) + "\n")
        exported.append(
            ExportedSchema(
                subject=subject,
                topic=topic,
                record=schema.full_name,
                file=name,
                fingerprint=f"{schema.fingerprint:016x}",
                single_object_header=(b"\xc3\x01" + schema.fingerprint_le).hex(),
            )
        )
    index = [asdict(e) for e in exported]
    (out_dir / "subjects.json").write_text(json.dumps(index, indent=2) + "\n")
    return exported


app = typer.Typer(add_completion=False, no_args_is_help=True, help="the topics' Avro schemas")


@app.command("export")
def export(
    out: Annotated[Path, typer.Argument(help="directory for <subject>.avsc and subjects.json")],
) -> None:
    """Write every record topic's value schema under its registry subject name."""
    from core.config import load_settings
    from core.errors import ConfigError
    from omniquant.stages import topic_catalog
    from schemas.registry import default_registry

    try:
        settings = load_settings()
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    exported = export_schemas(topic_catalog(), settings.topic_prefix, default_registry(), out)
    for item in exported:
        typer.echo(f"{item.subject:<45} {item.record:<40} {out / item.file}")
    typer.echo(f"{len(exported)} schemas, index in {out / 'subjects.json'}")
