"""Structured JSON logs carrying a correlation id across topics.

The correlation id (client order id for order flow, signal id for signals) travels in the
Kafka header ``correlation_id``; each app puts it in a context variable while it handles the
record so that every log line written meanwhile carries it.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

CORRELATION_HEADER = "correlation_id"

_correlation_id: ContextVar[str | None] = ContextVar("correlation_id", default=None)
_app_name: ContextVar[str] = ContextVar("app_name", default="omniquant")

# Attributes every LogRecord has; anything else passed via `extra=` is emitted as a field.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


def current_correlation_id() -> str | None:
    return _correlation_id.get()


@contextmanager
def correlated(correlation_id: str | None) -> Iterator[None]:
    """Log lines written inside the block carry ``correlation_id``."""
    token = _correlation_id.set(correlation_id)
    try:
        yield
    finally:
        _correlation_id.reset(token)


def header_value(headers: Sequence[tuple[str, bytes | str | None]] | None, name: str) -> str | None:
    """First value of header ``name`` as str (Kafka headers are a list of (key, bytes))."""
    for key, value in headers or ():
        if key == name and value is not None:
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return None


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC ISO-8601), level, logger, app, msg, correlation_id."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        doc: dict[str, object] = {
            "ts": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "app": _app_name.get(),
            "msg": record.getMessage(),
        }
        cid = _correlation_id.get()
        if cid is not None:
            doc["correlation_id"] = cid
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def configure_logging(app: str, level: str = "INFO", stream: object = None) -> None:
    """Route all logging (ours, quixstreams', librdkafka's) through one JSON handler."""
    _app_name.set(app)
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("quixstreams",):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
