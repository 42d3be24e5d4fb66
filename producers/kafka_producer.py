"""Producing our records to Kafka: idempotent, acks=all, every delivery checked.

A failed delivery is an error, not a log line: the next ``send``/``flush`` raises
:class:`DeliveryError`. A full local queue (``BufferError``) is handled by serving delivery
callbacks and trying again, never by dropping the record.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from core.config import Settings
from core.errors import DeliveryError
from core.kafka import producer_config
from core.metrics import MESSAGES_OUT
from schemas.models import Record
from schemas.serde import AvroSerde

log = logging.getLogger(__name__)

Headers = Sequence[tuple[str, bytes | str]]


class RecordProducer:
    def __init__(self, settings: Settings, app: str, serde: AvroSerde | None = None) -> None:
        self._app = app
        self._serde = serde or AvroSerde.from_settings(settings)
        self._producer = Producer(producer_config(settings, **{"client.id": app}))
        self._failures: list[str] = []
        self._sent_counters: dict[str, Any] = {}  # per topic: labels() costs more than inc()
        self.delivered = 0

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._failures.append(f"{msg.topic()}: {err.str()}")
        else:
            self.delivered += 1

    def _raise_failures(self) -> None:
        if self._failures:
            failures, self._failures = self._failures, []
            raise DeliveryError(f"{len(failures)} record(s) not delivered; first: {failures[0]}")

    def send(
        self,
        topic: str,
        record: Record,
        *,
        key: str,
        timestamp_ns: int | None = None,
        headers: Headers | None = None,
    ) -> None:
        """Encode and enqueue ``record``; the Kafka timestamp is the event time (ms)."""
        self.send_raw(
            topic,
            self._serde.encode(record, topic=topic),
            key=key,
            timestamp_ms=(timestamp_ns if timestamp_ns is not None else record_ts(record))
            // 1_000_000,
            headers=headers,
        )

    def send_raw(
        self,
        topic: str,
        value: bytes,
        *,
        key: str | bytes | None,
        timestamp_ms: int | None = None,
        headers: Headers | None = None,
    ) -> None:
        self._raise_failures()
        kwargs: dict[str, Any] = {"key": key, "value": value, "on_delivery": self._on_delivery}
        if timestamp_ms is not None:
            kwargs["timestamp"] = timestamp_ms
        if headers:
            kwargs["headers"] = list(headers)
        while True:
            try:
                self._producer.produce(topic, **kwargs)
                break
            except BufferError:
                # Local queue full: serve delivery reports to make room, then retry.
                self._producer.poll(0.1)
        counter = self._sent_counters.get(topic)
        if counter is None:
            counter = self._sent_counters[topic] = MESSAGES_OUT.labels(self._app, topic)
        counter.inc()
        self._producer.poll(0)

    def flush(self, timeout: float = 30.0) -> None:
        remaining = self._producer.flush(timeout)
        if remaining:
            raise DeliveryError(f"{remaining} record(s) still unacknowledged after {timeout} s")
        self._raise_failures()

    def close(self, timeout: float = 30.0) -> None:
        self.flush(timeout)


def record_ts(record: Record) -> int:
    ts = getattr(record, "ts_event", None)
    if not isinstance(ts, int):
        raise TypeError(f"{type(record).__name__} has no ts_event")
    return ts
