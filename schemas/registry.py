"""The local Avro schemas: loaded, canonicalized, fingerprinted and looked up.

``schemas/avro/<record>.avsc`` is the current schema of each value record (the writer schema we
produce with and the reader schema we decode into). ``schemas/avro/history/<record>/v<N>.avsc``
are older versions that may still sit on a topic: we never write them, but a record written with
one decodes by Avro schema resolution into the current schema.

On the wire (single-object encoding) a schema is named by the CRC-64-AVRO fingerprint of its
Parsing Canonical Form. Both are implemented here from the Avro specification rather than taken
from a library, because they *are* the wire format: they must not change when a dependency does.
fastavro's own implementation is used only as an independent cross-check in the tests.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import SchemaParseException

from core.errors import SerdeError, UnknownSchemaError

__all__ = [
    "AVRO_DIR",
    "LocalSchemaRegistry",
    "SchemaVersion",
    "canonical_form",
    "crc64_avro",
    "default_registry",
    "fingerprint",
    "full_name",
    "named_types",
    "qualify",
    "snake_case",
]

AVRO_DIR = Path(__file__).with_name("avro")
HISTORY_DIR = "history"

PRIMITIVE_TYPES = frozenset(
    {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
)
NAMED_TYPES = frozenset({"record", "error", "enum", "fixed"})

_HISTORY_FILE = re.compile(r"^v([1-9][0-9]*)\.avsc$")

# --- names -----------------------------------------------------------------------------------


def full_name(name: str, namespace: str | None) -> str:
    """Avro full name: a dotted name is already full; otherwise prefix the namespace."""
    if "." in name or not namespace:
        return name
    return f"{namespace}.{name}"


def snake_case(record_name: str) -> str:
    """``OrderRequest`` → ``order_request``: the .avsc file name of a record."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", record_name.rpartition(".")[2]).lower()


def qualify(schema: Any, namespace: str | None = None) -> Any:
    """A copy of ``schema`` in which every name is a full name.

    Named types get their full ``name`` (the ``namespace`` attribute is folded in and dropped,
    aliases are qualified too) and every reference to a named type becomes its full name, using
    the namespace inheritance rules of the spec. All other attributes (doc, default ...) are kept,
    so the result serves both the canonical form and the compatibility checker.
    """
    if isinstance(schema, str):
        return schema if schema in PRIMITIVE_TYPES else full_name(schema, namespace)
    if isinstance(schema, list):
        return [qualify(branch, namespace) for branch in schema]
    if not isinstance(schema, dict) or "type" not in schema:
        raise SerdeError(f"not an Avro schema: {schema!r:.200}")
    kind = schema["type"]
    out = dict(schema)
    if not isinstance(kind, str):
        # {"type": {...}} or {"type": [...]}: a wrapped schema.
        out["type"] = qualify(kind, namespace)
    elif kind in NAMED_TYPES:
        name = full_name(schema["name"], schema.get("namespace", namespace))
        inner_namespace = name.rpartition(".")[0] or None
        out["name"] = name
        out.pop("namespace", None)
        if "aliases" in schema:
            out["aliases"] = [full_name(alias, inner_namespace) for alias in schema["aliases"]]
        if kind in ("record", "error"):
            out["fields"] = [
                {**fld, "type": qualify(fld["type"], inner_namespace)} for fld in schema["fields"]
            ]
    elif kind == "array":
        out["items"] = qualify(schema["items"], namespace)
    elif kind == "map":
        out["values"] = qualify(schema["values"], namespace)
    elif kind not in PRIMITIVE_TYPES:
        out["type"] = qualify(kind, namespace)  # {"type": "SomeName"}: a wrapped reference
    return out


def named_types(qualified: Any) -> dict[str, dict[str, Any]]:
    """Full name → definition of every named type defined inside a :func:`qualify`-ed schema."""
    found: dict[str, dict[str, Any]] = {}

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for branch in node:
                walk(branch)
        elif isinstance(node, dict):
            kind = node["type"]
            if not isinstance(kind, str):
                walk(kind)
            elif kind in NAMED_TYPES:
                found[node["name"]] = node
                for fld in node.get("fields", ()):
                    walk(fld["type"])
            elif kind == "array":
                walk(node["items"])
            elif kind == "map":
                walk(node["values"])

    walk(qualified)
    return found


# --- Parsing Canonical Form and CRC-64-AVRO ----------------------------------------------------


def _json_string(text: str) -> str:
    # [STRINGS]: literal UTF-8 instead of \uXXXX escapes.
    return json.dumps(text, ensure_ascii=False)


def _canonical(node: Any) -> str:
    if isinstance(node, str):  # a primitive or the full name of a named type
        return _json_string(node)
    if isinstance(node, list):
        return "[" + ",".join(_canonical(branch) for branch in node) + "]"
    kind = node["type"]
    if not isinstance(kind, str):
        return _canonical(kind)
    # [STRIP] + [ORDER]: only name, type, fields, symbols, items, values, size, in that order.
    if kind in ("record", "error"):
        fields = ",".join(
            '{"name":' + _json_string(fld["name"]) + ',"type":' + _canonical(fld["type"]) + "}"
            for fld in node["fields"]
        )
        return (
            '{"name":' + _json_string(node["name"]) + ',"type":"record","fields":[' + fields + "]}"
        )
    if kind == "enum":
        symbols = ",".join(_json_string(symbol) for symbol in node["symbols"])
        return (
            '{"name":' + _json_string(node["name"]) + ',"type":"enum","symbols":[' + symbols + "]}"
        )
    if kind == "fixed":
        # [INTEGERS]: int() drops any leading zeros or quotes.
        size = int(node["size"])
        return '{"name":' + _json_string(node["name"]) + ',"type":"fixed","size":' + f"{size}}}"
    if kind == "array":
        return '{"type":"array","items":' + _canonical(node["items"]) + "}"
    if kind == "map":
        return '{"type":"map","values":' + _canonical(node["values"]) + "}"
    # [PRIMITIVES]: {"type":"long", ...} → "long"; a wrapped reference → its full name.
    return _json_string(kind)


def canonical_form(schema: Any) -> str:
    """The Parsing Canonical Form of ``schema`` (Avro specification, "Parsing Canonical Form
    for Schemas": transformations PRIMITIVES, FULLNAMES, STRIP, ORDER, STRINGS, INTEGERS,
    WHITESPACE)."""
    return _canonical(qualify(schema))


_EMPTY64 = 0xC15D213AA4D7A795  # the spec's EMPTY: fingerprint of the empty byte string


def _rabin_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        fp = byte
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY64 & -(fp & 1))
        table.append(fp)
    return tuple(table)


_RABIN_TABLE = _rabin_table()


def crc64_avro(data: bytes) -> int:
    """64-bit Rabin fingerprint of ``data`` (the spec's CRC-64-AVRO), as an unsigned int."""
    fp = _EMPTY64
    for byte in data:
        fp = (fp >> 8) ^ _RABIN_TABLE[(fp ^ byte) & 0xFF]
    return fp


def fingerprint(schema: Any) -> int:
    """CRC-64-AVRO fingerprint of the schema's Parsing Canonical Form (UTF-8)."""
    return crc64_avro(canonical_form(schema).encode("utf-8"))


# --- the loaded schemas ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SchemaVersion:
    """One version of one record schema, ready for the serde."""

    full_name: str
    version: int | None  # None: the current schema; N: history/<record>/vN.avsc
    path: Path
    schema: dict[str, Any] = field(repr=False)  # as written, docs included
    canonical_form: str = field(repr=False)
    fingerprint: int
    parsed: Any = field(repr=False, compare=False)  # fastavro's parsed form

    @property
    def is_current(self) -> bool:
        return self.version is None

    @property
    def fingerprint_le(self) -> bytes:
        """The fingerprint as single-object encoding writes it: 8 bytes, little-endian."""
        return self.fingerprint.to_bytes(8, "little")

    @property
    def label(self) -> str:
        version = "current" if self.version is None else f"v{self.version}"
        return f"{self.full_name} {version} (fingerprint {self.fingerprint:016x})"

    @classmethod
    def from_file(cls, path: Path, version: int | None = None) -> SchemaVersion:
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SerdeError(f"cannot read Avro schema {path}: {exc}") from exc
        return cls.from_dict(schema, path, version)

    @classmethod
    def from_dict(cls, schema: Any, path: Path, version: int | None = None) -> SchemaVersion:
        if not isinstance(schema, dict) or schema.get("type") != "record":
            raise SerdeError(f"{path}: a value schema must be an Avro record")
        try:
            # A fresh named-types table per schema: versions of one record define the same names.
            parsed = fastavro.parse_schema(schema, named_schemas={})
            qualified = qualify(schema)
            canonical = _canonical(qualified)
        except (SchemaParseException, SerdeError, KeyError, TypeError, ValueError) as exc:
            raise SerdeError(f"{path}: invalid Avro schema: {exc}") from exc
        return cls(
            full_name=qualified["name"],
            version=version,
            path=path,
            schema=schema,
            canonical_form=canonical,
            fingerprint=crc64_avro(canonical.encode("utf-8")),
            parsed=parsed,
        )


class LocalSchemaRegistry:
    """Current and historical schemas, by full name and by fingerprint."""

    def __init__(self, versions: Iterable[SchemaVersion]) -> None:
        self._current: dict[str, SchemaVersion] = {}
        self._history: dict[str, list[SchemaVersion]] = {}
        self._by_fingerprint: dict[int, SchemaVersion] = {}
        items = sorted(versions, key=lambda v: v.version is not None)  # current ones first
        for item in items:
            if item.is_current:
                if item.full_name in self._current:
                    raise SerdeError(
                        f"{item.full_name} is defined twice: {self._current[item.full_name].path}"
                        f" and {item.path}"
                    )
                self._current[item.full_name] = item
            elif item.full_name not in self._current:
                raise SerdeError(f"{item.path}: history of {item.full_name}, which has no schema")
            known = self._by_fingerprint.get(item.fingerprint)
            if known is not None:
                if known.canonical_form != item.canonical_form:
                    raise SerdeError(f"fingerprint collision between {known.path} and {item.path}")
                continue  # a history file identical to another version: same schema
            self._by_fingerprint[item.fingerprint] = item
            if not item.is_current:
                self._history.setdefault(item.full_name, []).append(item)

    @classmethod
    def load(cls, directory: Path = AVRO_DIR) -> LocalSchemaRegistry:
        """Read ``<directory>/*.avsc`` and ``<directory>/history/<record>/v<N>.avsc``."""
        versions = [SchemaVersion.from_file(path) for path in sorted(directory.glob("*.avsc"))]
        for item in versions:
            expected = f"{snake_case(item.full_name)}.avsc"
            if item.path.name != expected:
                raise SerdeError(f"{item.path}: the file of {item.full_name} must be {expected}")
        for path in sorted((directory / HISTORY_DIR).glob("*/*.avsc")):
            match = _HISTORY_FILE.match(path.name)
            if match is None:
                raise SerdeError(f"{path}: history files are named v<N>.avsc")
            item = SchemaVersion.from_file(path, version=int(match.group(1)))
            if path.parent.name != snake_case(item.full_name):
                raise SerdeError(
                    f"{path}: history of {item.full_name} belongs in "
                    f"{HISTORY_DIR}/{snake_case(item.full_name)}/"
                )
            versions.append(item)
        if not versions:
            raise SerdeError(f"no Avro schemas in {directory}")
        return cls(versions)

    def current(self, full_name: str) -> SchemaVersion:
        try:
            return self._current[full_name]
        except KeyError:
            raise UnknownSchemaError(f"no local Avro schema named {full_name}") from None

    def by_fingerprint(self, fp: int) -> SchemaVersion:
        try:
            return self._by_fingerprint[fp]
        except KeyError:
            raise UnknownSchemaError(
                f"unknown schema fingerprint {fp:016x}: not a current or historical schema"
                " in schemas/avro"
            ) from None

    def history(self, full_name: str) -> tuple[SchemaVersion, ...]:
        """Older versions of a record, oldest first."""
        self.current(full_name)
        return tuple(sorted(self._history.get(full_name, ()), key=lambda v: v.version or 0))

    def current_versions(self) -> tuple[SchemaVersion, ...]:
        return tuple(self._current.values())

    def __iter__(self) -> Iterator[SchemaVersion]:
        """Every distinct version, current and historical."""
        return iter(tuple(self._by_fingerprint.values()))


@cache
def default_registry() -> LocalSchemaRegistry:
    """The schemas shipped in ``schemas/avro`` (loaded once per process)."""
    return LocalSchemaRegistry.load()
