"""BACKWARD compatibility: consumers on a new schema can read everything written before.

(a) The checker itself, on known compatible and incompatible changes.
(b) Every schemas/avro/*.avsc against its previous committed version in git: HEAD's version
    when the working tree changed the file, else the version just before the newest commit that
    changed it. A schema with no such version (new file, no git) has nothing to compare.
(c) Every history/<record>/v<N>.avsc is readable with the current schema.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from schemas.compat import check_backward
from schemas.registry import AVRO_DIR, default_registry

BASE: dict[str, Any] = {
    "type": "record",
    "name": "Order",
    "namespace": "io.test",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "qty", "type": "int"},
        {"name": "note", "type": ["null", "string"], "default": None},
        {
            "name": "side",
            "type": {"type": "enum", "name": "Side", "symbols": ["BUY", "SELL"]},
        },
        {
            "name": "legs",
            "type": {
                "type": "array",
                "items": {
                    "type": "record",
                    "name": "Leg",
                    "fields": [{"name": "price", "type": "long"}],
                },
            },
            "default": [],
        },
        {"name": "tags", "type": {"type": "map", "values": "string"}, "default": {}},
    ],
}


def changed(**edits: Any) -> dict[str, Any]:
    """BASE with fields replaced (dict), removed (None) or appended (new name)."""
    schema = copy.deepcopy(BASE)
    names = [f["name"] for f in schema["fields"]]
    for name, new in edits.items():
        if name in names:
            index = next(i for i, f in enumerate(schema["fields"]) if f["name"] == name)
            if new is None:
                del schema["fields"][index]
            else:
                schema["fields"][index] = {"name": name, **new}
        else:
            schema["fields"].append({"name": name, **new})
    return schema


def leg_with(price_type: Any, **extra: Any) -> dict[str, Any]:
    leg = {"type": "record", "name": "Leg", "fields": [{"name": "price", "type": price_type}]}
    leg["fields"] += [{"name": n, **f} for n, f in extra.items()]
    return {"type": {"type": "array", "items": leg}, "default": []}


# --- (a) the checker ------------------------------------------------------------------------

INCOMPATIBLE = {
    "field-added-without-default": (changed(venue={"type": "string"}), "venue: field added"),
    "enum-symbol-removed-without-default": (
        changed(side={"type": {"type": "enum", "name": "Side", "symbols": ["BUY"]}}),
        "lost symbols ['SELL'] and has no default",
    ),
    "long-narrowed-to-int": (
        changed(legs=leg_with("int")),
        "legs[].price: reader type int cannot read writer type long",
    ),
    "int-to-string": (changed(qty={"type": "string"}), "qty: reader type string cannot read"),
    "nullable-made-required": (
        changed(note={"type": "string"}),
        "note<null>: reader type string cannot read writer type null",
    ),
    "nested-field-added-without-default": (
        changed(legs=leg_with("long", venue={"type": "string"})),
        "legs[].venue: field added without a default",
    ),
    "added-field-default-of-the-wrong-type": (
        changed(venue={"type": ["null", "string"], "default": "x"}),
        "venue: default 'x' is not a valid union",
    ),
    "record-renamed": (
        {**BASE, "name": "Ticket"},
        "reader record io.test.Ticket cannot read writer record io.test.Order",
    ),
    "map-values-narrowed": (
        changed(tags={"type": {"type": "map", "values": "int"}, "default": {}}),
        "tags{}: reader type int cannot read writer type string",
    ),
    "array-became-map": (
        changed(legs={"type": {"type": "map", "values": "long"}, "default": {}}),
        "legs: reader type map cannot read writer type array",
    ),
}

COMPATIBLE = {
    "unchanged": BASE,
    "field-with-default-added": changed(venue={"type": "string", "default": "SIM"}),
    "optional-field-added": changed(venue={"type": ["null", "string"], "default": None}),
    "optional-field-removed": changed(note=None),
    "required-field-removed": changed(qty=None),
    "int-promoted-to-long": changed(qty={"type": "long"}),
    "int-promoted-to-double": changed(qty={"type": "double"}),
    "string-read-as-bytes": changed(id={"type": "bytes"}),
    "required-made-nullable": changed(qty={"type": ["null", "int"], "default": None}),
    "enum-symbol-added": changed(
        side={"type": {"type": "enum", "name": "Side", "symbols": ["BUY", "SELL", "SHORT"]}}
    ),
    "enum-symbol-removed-with-reader-default": changed(
        side={"type": {"type": "enum", "name": "Side", "symbols": ["BUY"], "default": "BUY"}}
    ),
    "nested-field-with-default-added": changed(
        legs=leg_with("long", venue={"type": "string", "default": ""})
    ),
    "docs-and-order-attributes-changed": {**BASE, "doc": "new doc"},
    "record-renamed-with-alias": {**BASE, "name": "Ticket", "aliases": ["io.test.Order"]},
}


@pytest.mark.parametrize("case", INCOMPATIBLE, ids=list(INCOMPATIBLE))
def test_incompatible_change_is_rejected_with_the_field_path(case: str) -> None:
    reader, expected = INCOMPATIBLE[case]
    problems = check_backward(reader, BASE)
    assert any(expected in problem for problem in problems), problems


@pytest.mark.parametrize("case", COMPATIBLE, ids=list(COMPATIBLE))
def test_compatible_change_is_accepted(case: str) -> None:
    assert check_backward(COMPATIBLE[case], BASE) == []


def test_long_read_as_int_is_rejected_but_int_read_as_long_is_accepted() -> None:
    old = changed(qty={"type": "long"})
    assert check_backward(BASE, old) != []
    assert check_backward(old, BASE) == []


def test_enum_default_that_is_not_a_symbol_is_rejected() -> None:
    reader = changed(
        side={"type": {"type": "enum", "name": "Side", "symbols": ["BUY"], "default": "X"}}
    )
    problems = check_backward(reader, BASE)
    assert problems  # fastavro refuses the schema, or the checker flags the default


def test_invalid_schema_is_reported_not_raised() -> None:
    problems = check_backward({"type": "record", "name": "X", "fields": [{"name": "a"}]}, BASE)
    assert problems and "reader schema is not valid Avro" in problems[0]


def test_recursive_record_is_checked_without_looping() -> None:
    node = {
        "type": "record",
        "name": "Node",
        "fields": [{"name": "next", "type": ["null", "Node"], "default": None}],
    }
    grown = copy.deepcopy(node)
    grown["fields"].append({"name": "label", "type": "string"})
    assert check_backward(node, node) == []
    assert check_backward(grown, node) == ["Node.label: field added without a default"]


# --- (b) the working tree against the previous committed version ------------------------------


def git(repo: Path, *args: str) -> str | None:
    """stdout of a git command in ``repo``; None when git is missing or the command fails."""
    try:
        result = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, check=False
        )
    except OSError:
        return None
    return result.stdout if result.returncode == 0 else None


def previous_committed_version(path: Path) -> str | None:
    """The version of ``path`` to check the working tree against, or None when there is none."""
    top = git(path.parent, "rev-parse", "--show-toplevel")
    if top is None:
        return None
    repo = Path(top.strip())
    rel = path.resolve().relative_to(repo.resolve()).as_posix()
    at_head = git(repo, "show", f"HEAD:{rel}")
    if at_head is None:
        return None  # not committed yet: a new schema
    if path.read_text(encoding="utf-8") != at_head:
        return at_head
    commits = (git(repo, "log", "--format=%H", "--", rel) or "").split()
    if not commits:
        return None
    return git(repo, "show", f"{commits[0]}^:{rel}")  # None when that commit created it


@pytest.mark.parametrize("path", sorted(AVRO_DIR.glob("*.avsc")), ids=lambda p: p.name)
def test_schema_is_backward_compatible_with_its_previous_committed_version(path: Path) -> None:
    previous = previous_committed_version(path)
    if previous is None:
        pytest.skip(f"{path.name}: no previous committed version to compare with")
    current = json.loads(path.read_text(encoding="utf-8"))
    assert check_backward(current, json.loads(previous)) == []


def commit_all(repo: Path, message: str) -> None:
    assert git(repo, "add", "-A") is not None
    identity = ("-c", "user.name=test", "-c", "user.email=test@example.invalid")
    assert git(repo, *identity, "commit", "-q", "-m", message) is not None


def test_previous_version_is_head_when_dirty_else_the_one_before_the_last_change(
    tmp_path: Path,
) -> None:
    if git(tmp_path, "init", "-q") is None:
        pytest.skip("git is not available")
    schema = tmp_path / "order.avsc"
    assert previous_committed_version(schema.parent / "missing.avsc") is None

    v1 = json.dumps(BASE)
    v2 = json.dumps(changed(venue={"type": "string", "default": "SIM"}))
    v3 = json.dumps(changed(venue={"type": "string"}, broker={"type": "string"}))
    schema.write_text(v1)
    assert previous_committed_version(schema) is None  # untracked: nothing to compare
    commit_all(tmp_path, "v1")
    assert previous_committed_version(schema) is None  # the commit that created it

    schema.write_text(v2)
    assert previous_committed_version(schema) == v1  # dirty: compare with HEAD
    commit_all(tmp_path, "v2")
    (tmp_path / "other.txt").write_text("unrelated")
    commit_all(tmp_path, "unrelated change")
    assert previous_committed_version(schema) == v1  # clean: the version before v2's commit
    assert check_backward(json.loads(v2), json.loads(v1)) == []

    schema.write_text(v3)
    previous = previous_committed_version(schema)
    assert previous == v2
    assert check_backward(json.loads(v3), json.loads(previous)) != []


# --- (c) historical versions are readable with the current schema -----------------------------


def history_versions() -> list[Any]:
    return [version for version in default_registry() if not version.is_current]


@pytest.mark.parametrize("version", history_versions(), ids=lambda v: v.label)
def test_historical_schema_is_readable_with_the_current_schema(version: Any) -> None:
    current = default_registry().current(version.full_name)
    assert check_backward(current.schema, version.schema) == []


def test_every_history_file_is_loaded_as_a_version() -> None:
    files = sorted((AVRO_DIR / "history").glob("*/*.avsc"))
    loaded = sorted(version.path for version in history_versions())
    assert loaded == files
