"""EventTimeOrder: the records of every partition a process consumes in one event-time order.

The reference is a plain sort of everything produced by (timestamp, topic, partition,
offset): with each partition's timestamps non-decreasing (event time as the Kafka
timestamp), that is the only order in which no record goes before an earlier one of any
partition. The buffer gets the records in arbitrary fetch batches, each with the
watermarks a consumer would see, and is drained greedily between batches.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from confluent_kafka import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.ordering import EventTimeOrder

TOPICS = ("orders", "trades", "reports")


@dataclass(frozen=True)
class Message:
    """The part of confluent_kafka.Message the buffer reads."""

    _topic: str
    _partition: int
    _offset: int
    _ts: int

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return 1, self._ts


def message(topic: str, partition: int, offset: int, ts: int) -> Any:
    """A record as the buffer sees it (typed Any: it stands in for confluent_kafka's)."""
    return Message(topic, partition, offset, ts)


def produced(gaps: list[list[int]], partitions: int) -> dict[tuple[str, int], list[Any]]:
    """Each (topic, partition)'s records, timestamps non-decreasing within it."""
    out: dict[tuple[str, int], list[Any]] = {}
    keys = [(topic, p) for p in range(partitions) for topic in TOPICS]
    for (topic, partition), steps in zip(keys, gaps, strict=False):
        ts, msgs = 1_000, []
        for offset, gap in enumerate(steps):
            ts += gap
            msgs.append(message(topic, partition, offset, ts))
        out[(topic, partition)] = msgs
    return out


def drain(buffer: EventTimeOrder, logs: dict[tuple[str, int], list[Any]], seed: int) -> list[Any]:
    """Feed the records in random fetch batches (a consumer's view: each partition in offset
    order, watermarks = what was produced), popping everything the buffer gives between."""
    rng = random.Random(seed)
    buffer.assign_partitions([TopicPartition(t, p) for t, p in logs])
    watermarks = {key: len(msgs) for key, msgs in logs.items()}
    fetched = dict.fromkeys(logs, 0)
    total = sum(map(len, logs.values()))
    out: list[Any] = []
    for _ in range(10 * total + 10):
        batch = []
        for key in rng.sample(list(logs), k=rng.randint(1, len(logs))):
            n = rng.randint(0, 3)
            batch += logs[key][fetched[key] : fetched[key] + n]
            fetched[key] = min(fetched[key] + n, len(logs[key]))
        buffer.feed(batch, high_watermarks=watermarks)
        while (msg := buffer.pop()) is not None:
            out.append(msg)
        if len(out) == total:
            break
    return out


@settings(max_examples=300, deadline=None)
@given(
    gaps=st.lists(
        st.lists(st.integers(min_value=0, max_value=5), min_size=0, max_size=12),
        min_size=9,
        max_size=9,
    ),
    partitions=st.integers(min_value=2, max_value=3),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_records_come_out_in_one_event_time_order_across_every_partition(
    gaps: list[list[int]], partitions: int, seed: int
) -> None:
    logs = produced(gaps, partitions)
    got = drain(EventTimeOrder(max_partition_buffer_size=4), logs, seed)
    want = sorted(
        (m for msgs in logs.values() for m in msgs),
        key=lambda m: (m._ts, m._topic, m._partition, m._offset),
    )
    assert [(m._topic, m._partition, m._offset) for m in got] == [
        (m._topic, m._partition, m._offset) for m in want
    ]


def test_a_partition_with_records_still_to_fetch_holds_the_others_back() -> None:
    buffer = EventTimeOrder()
    buffer.assign_partitions([TopicPartition("trades", 0), TopicPartition("trades", 1)])
    late = message("trades", 0, 0, 5_000)
    early = message("trades", 1, 0, 1_000)
    # partition 1 has a record at the broker (watermark 1) that is not fetched yet
    buffer.feed([late], high_watermarks={("trades", 0): 1, ("trades", 1): 1})
    assert buffer.pop() is None
    buffer.feed([early], high_watermarks={("trades", 0): 1, ("trades", 1): 1})
    assert buffer.pop() is early
    # partition 1 drained: until a fetch tells its watermark again, more may have come
    assert buffer.pop() is None
    buffer.feed([], high_watermarks={("trades", 0): 1, ("trades", 1): 1})
    assert buffer.pop() is late


def test_an_idle_partition_does_not_hold_the_others_back() -> None:
    buffer = EventTimeOrder()
    buffer.assign_partitions([TopicPartition("trades", 0), TopicPartition("orders", 1)])
    only = message("trades", 0, 7, 5_000)
    # orders/1 is at its watermark: consumed up to offset 3 of 3
    buffer.feed([], high_watermarks={}, positions={("orders", 1): 3})
    buffer.feed([only], high_watermarks={("trades", 0): 8, ("orders", 1): 3})
    assert buffer.pop() is only


def test_a_revoked_partition_no_longer_holds_the_others_back() -> None:
    buffer = EventTimeOrder()
    buffer.assign_partitions([TopicPartition("trades", 0), TopicPartition("trades", 1)])
    msg = message("trades", 0, 0, 5_000)
    buffer.feed([msg], high_watermarks={("trades", 0): 1, ("trades", 1): 4})
    assert buffer.pop() is None
    buffer.revoke_partitions([TopicPartition("trades", 1)])
    assert buffer.pop() is msg
