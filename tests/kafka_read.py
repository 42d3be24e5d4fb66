"""Reading what landed on a real topic, and writing one record to see if it lands, for
integration tests."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer


def read_topic(bootstrap: str, topic: str, expected: int, timeout_s: float = 30.0) -> list[Any]:
    """Every message of ``topic`` from the start: waits until ``expected`` have arrived and
    the topic then stays quiet for one poll (so extra messages are seen too), or times out."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    out: list[Any] = []
    try:
        for _ in range(int(timeout_s / 0.3)):
            msg = consumer.poll(0.3)
            if msg is not None and msg.error() is None:
                out.append(msg)
            elif len(out) >= expected:
                break
    finally:
        consumer.close()
    return out


def read_until(
    bootstrap: str, topic: str, done: Callable[[list[Any]], bool], timeout_s: float = 60.0
) -> list[Any]:
    """Every message of ``topic`` from the start until ``done(messages)`` holds (checked
    after each message), or the timeout; the caller asserts on what it got."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.3)
            if msg is not None and msg.error() is None:
                out.append(msg)
                if done(out):
                    break
    finally:
        consumer.close()
    return out


def produce_one(config: Mapping[str, str], topic: str) -> KafkaError | None:
    """One record to ``topic`` with these client settings; the delivery error (None: it
    was written). A refusal (an ACL, a wrong password) is the error, not an exception."""
    outcome: list[KafkaError | None] = []
    producer = Producer({**config, "message.timeout.ms": "20000", "log_level": "0"})
    producer.produce(topic, b"x", on_delivery=lambda err, _msg: outcome.append(err))
    producer.flush(30)
    assert outcome, f"no delivery report for {topic}"
    return outcome[0]
