"""The local stack's shape (how many nodes, secure or not), kept in ``<state_dir>/stack.json``
by `omniquant up` so every other command on that state dir finds the same stack."""

from __future__ import annotations

import json
from pathlib import Path

from core.config import Settings

__all__ = ["save_shape", "shape_file", "with_saved_shape"]

_SHAPE_FIELDS = ("kafka_brokers", "kafka_secure")


def shape_file(settings: Settings) -> Path:
    return settings.state_dir / "stack.json"


def save_shape(settings: Settings) -> None:
    """Remember how `omniquant up` started the local stack (nodes, secure), so the other
    commands on this state dir find it without the same flags."""
    path = shape_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = {name: getattr(settings.stack, name) for name in _SHAPE_FIELDS}
    path.write_text(json.dumps(shape) + "\n")


def with_saved_shape(settings: Settings) -> Settings:
    """``settings`` with the shape `omniquant up` saved for its state dir, for each field
    the environment does not set itself (OMNIQUANT_STACK__KAFKA_BROKERS / __KAFKA_SECURE)."""
    if not settings.uses_local_kafka:
        return settings
    try:
        saved = json.loads(shape_file(settings).read_text())
    except (OSError, ValueError):
        return settings
    update = {
        name: saved[name]
        for name in _SHAPE_FIELDS
        if name in saved and name not in settings.stack.model_fields_set
    }
    if not update:
        return settings
    stack = type(settings.stack).model_validate(
        {**settings.stack.model_dump(exclude_unset=True), **update}
    )
    return settings.model_copy(update={"stack": stack})
