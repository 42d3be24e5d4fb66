"""BACKWARD compatibility of Avro schemas: can a consumer on the new schema read old records?

Confluent's BACKWARD level is Avro schema resolution with the new schema as the reader and the
previous one as the writer. The rules checked here (Avro specification, "Schema Resolution"):

- records: matched by unqualified name (or the writer's full name in the reader's aliases);
  a reader field missing from the writer needs a default that is valid for its type; a writer
  field missing from the reader is skipped, so removing a field is fine;
- enums: a writer symbol the reader lacks needs an enum ``default`` on the reader side;
- fixed: same name and size;
- arrays and maps: item and value types resolve recursively;
- unions: every branch the writer may have used must resolve against the reader (a reader union
  resolves a writer type if any branch does), so ``T`` → ``["null", T]`` is compatible and
  ``["null", T]`` → ``T`` is not;
- promotions: int → long, float, double; long → float, double; float → double;
  string ↔ bytes.

:func:`check_backward` returns the list of problems, each naming the path of the offending field;
an empty list means compatible.
"""

from __future__ import annotations

from typing import Any

import fastavro
from fastavro.schema import SchemaParseException

from core.errors import SerdeError
from schemas.registry import NAMED_TYPES, PRIMITIVE_TYPES, named_types, qualify

__all__ = ["check_backward"]

# writer type → reader types that can read it (besides the same type)
_PROMOTIONS: dict[str, frozenset[str]] = {
    "int": frozenset({"long", "float", "double"}),
    "long": frozenset({"float", "double"}),
    "float": frozenset({"double"}),
    "string": frozenset({"bytes"}),
    "bytes": frozenset({"string"}),
}
_COMPLEX_TYPES = NAMED_TYPES | {"array", "map"}
_INT_RANGE = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}


def check_backward(reader_new: dict[str, Any], writer_old: dict[str, Any]) -> list[str]:
    """Problems that stop ``reader_new`` from reading data written with ``writer_old``."""
    qualified: list[Any] = []
    for role, schema in (("reader", reader_new), ("writer", writer_old)):
        try:
            fastavro.parse_schema(schema, named_schemas={})  # valid Avro at all?
            qualified.append(qualify(schema))
        except (SchemaParseException, SerdeError, KeyError, TypeError, ValueError) as exc:
            return [f"the {role} schema is not valid Avro: {exc}"]
    reader, writer = qualified
    resolver = _Resolver(named_types(reader), named_types(writer))
    return resolver.check(reader, writer, _label(reader))


class _Resolver:
    def __init__(
        self, reader_names: dict[str, dict[str, Any]], writer_names: dict[str, dict[str, Any]]
    ) -> None:
        self._reader_names = reader_names
        self._writer_names = writer_names
        # (reader, writer) record pairs being checked: stops recursion on recursive types.
        self._in_progress: set[tuple[str, str]] = set()

    def check(self, reader: Any, writer: Any, path: str) -> list[str]:
        reader = _deref(reader, self._reader_names)
        writer = _deref(writer, self._writer_names)
        if isinstance(writer, list):  # each branch the writer may have used must be readable
            problems: list[str] = []
            for branch in writer:
                problems += self.check(reader, branch, f"{path}<{_label(branch)}>")
            return problems
        if isinstance(reader, list):
            if any(not self.check(branch, writer, path) for branch in reader):
                return []
            return [
                f"{path}: writer type {_label(writer)} matches no branch of the reader union"
                f" {[_label(branch) for branch in reader]}"
            ]
        reader_kind, writer_kind = _kind(reader), _kind(writer)
        if reader_kind != writer_kind:
            if reader_kind in _PROMOTIONS.get(writer_kind, ()):
                return []
            return [f"{path}: reader type {reader_kind} cannot read writer type {writer_kind}"]
        if reader_kind in PRIMITIVE_TYPES:
            return []
        if reader_kind == "array":
            return self.check(reader["items"], writer["items"], f"{path}[]")
        if reader_kind == "map":
            return self.check(reader["values"], writer["values"], f"{path}{{}}")
        if not _same_name(reader, writer):
            return [
                f"{path}: reader {reader_kind} {reader['name']} cannot read writer {writer_kind}"
                f" {writer['name']} (different names; an alias would allow it)"
            ]
        if reader_kind == "fixed":
            if int(reader["size"]) != int(writer["size"]):
                return [f"{path}: fixed size changed from {writer['size']} to {reader['size']}"]
            return []
        if reader_kind == "enum":
            return _check_enum(reader, writer, path)
        return self._check_record(reader, writer, path)

    def _check_record(self, reader: dict[str, Any], writer: dict[str, Any], path: str) -> list[str]:
        key = (reader["name"], writer["name"])
        if key in self._in_progress:
            return []
        self._in_progress.add(key)
        try:
            writer_fields = {fld["name"]: fld for fld in writer["fields"]}
            problems: list[str] = []
            for fld in reader["fields"]:
                field_path = f"{path}.{fld['name']}"
                names = [fld["name"], *fld.get("aliases", ())]
                source = next((writer_fields[n] for n in names if n in writer_fields), None)
                if source is not None:
                    problems += self.check(fld["type"], source["type"], field_path)
                elif "default" not in fld:
                    problems.append(f"{field_path}: field added without a default")
                elif not self._valid_default(fld["type"], fld["default"]):
                    problems.append(
                        f"{field_path}: default {fld['default']!r} is not a valid"
                        f" {_label(fld['type'])} (for a union: of its first branch)"
                    )
            return problems
        finally:
            self._in_progress.discard(key)

    def _valid_default(self, schema: Any, value: Any) -> bool:
        """Is ``value`` a valid JSON default for ``schema`` (spec: "Complex Types" / defaults)?"""
        schema = _deref(schema, self._reader_names)
        if isinstance(schema, list):
            return bool(schema) and self._valid_default(schema[0], value)
        kind = _kind(schema)
        if kind == "null":
            return value is None
        if kind == "boolean":
            return isinstance(value, bool)
        if kind in _INT_RANGE:
            low, high = _INT_RANGE[kind]
            return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
        if kind in ("float", "double"):
            return isinstance(value, int | float) and not isinstance(value, bool)
        if kind in ("string", "bytes"):
            return isinstance(value, str)
        if kind == "enum":
            return value in schema["symbols"]
        if kind == "fixed":
            return isinstance(value, str) and len(value) == int(schema["size"])
        if kind == "array":
            return isinstance(value, list) and all(
                self._valid_default(schema["items"], item) for item in value
            )
        if kind == "map":
            return isinstance(value, dict) and all(
                self._valid_default(schema["values"], item) for item in value.values()
            )
        return isinstance(value, dict) and all(  # record
            self._valid_default(fld["type"], value[fld["name"]])
            if fld["name"] in value
            else "default" in fld
            for fld in schema["fields"]
        )


def _check_enum(reader: dict[str, Any], writer: dict[str, Any], path: str) -> list[str]:
    missing = [symbol for symbol in writer["symbols"] if symbol not in reader["symbols"]]
    if not missing:
        return []
    default = reader.get("default")
    if default is None:
        return [f"{path}: enum {reader['name']} lost symbols {missing} and has no default"]
    if default not in reader["symbols"]:
        return [f"{path}: enum {reader['name']} default {default!r} is not one of its symbols"]
    return []


def _deref(node: Any, names: dict[str, dict[str, Any]]) -> Any:
    """Follow named-type references and unwrap ``{"type": "long", ...}`` to ``"long"``."""
    while True:
        if isinstance(node, str):
            if node in PRIMITIVE_TYPES:
                return node
            node = names[node]  # qualify() + parse_schema() guarantee the name is defined
        elif isinstance(node, dict) and not (
            isinstance(node["type"], str) and node["type"] in _COMPLEX_TYPES
        ):
            node = node["type"]
        else:
            return node


def _kind(node: Any) -> str:
    if isinstance(node, str):
        return node
    kind = node["type"]
    return "record" if kind == "error" else str(kind)


def _same_name(reader: dict[str, Any], writer: dict[str, Any]) -> bool:
    def short(name: str) -> str:
        return name.rpartition(".")[2]

    return short(reader["name"]) == short(writer["name"]) or writer["name"] in reader.get(
        "aliases", ()
    )


def _label(node: Any) -> str:
    if isinstance(node, str):
        return node
    if isinstance(node, list):
        return "union"
    kind = node["type"]
    if isinstance(kind, str) and kind in NAMED_TYPES:
        return str(node["name"])
    return str(kind) if isinstance(kind, str) else _label(kind)
