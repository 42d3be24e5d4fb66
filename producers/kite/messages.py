"""Kite websocket text messages: ``{"type": "order"|"error"|"message", "data": ...}``.

Pure: no I/O. A text frame is decoded with the shared exact JSON reader
(:func:`producers._fields.loads_object`: fractional numbers as :class:`~decimal.Decimal`,
NaN/Infinity refused), then told apart by ``type``:

- ``order`` → :class:`OrderUpdate`: the order object, the same shape as a postback
  (``postback.json``); :mod:`producers.kite.orders` turns it into records.
- ``error`` → :class:`VenueError`: an error Kite reports on the connection.
- ``message`` → :class:`VenueNotice`: a broadcast text.

Anything else raises :class:`~core.errors.FeedParseError` (``bad_json``, ``bad_frame``,
``bad_message``, ``unknown_message``); the feed turns it into a ``Malformed``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.errors import FeedParseError
from producers._fields import loads_object

__all__ = ["OrderUpdate", "VenueError", "VenueNotice", "parse_text_message"]


@dataclass(frozen=True, slots=True)
class OrderUpdate:
    """``{"type": "order", "data": {...}}``: the order object (same shape as a postback)."""

    order: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class VenueError:
    """``{"type": "error", "data": "..."}``: an error Kite reports on the connection."""

    message: str


@dataclass(frozen=True, slots=True)
class VenueNotice:
    """``{"type": "message", "data": "..."}``: a broadcast text message from Kite."""

    message: str


def parse_text_message(text: str | bytes) -> OrderUpdate | VenueError | VenueNotice:
    """Decode a text frame. JSON numbers with a fraction become Decimal (exact money)."""
    msg = loads_object(text)
    kind, data = msg.get("type"), msg.get("data")
    if kind == "order":
        if not isinstance(data, dict) or not data:
            raise FeedParseError("bad_message", "order update without an order object")
        return OrderUpdate(data)
    if kind == "error":
        return VenueError(str(data))
    if kind == "message":
        return VenueNotice(str(data))
    raise FeedParseError("unknown_message", f"unknown text message type {kind!r:.50}")
