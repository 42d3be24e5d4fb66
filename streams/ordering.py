"""One event-time order across every partition a process consumes.

Quix aligns records by timestamp only among the topics of one partition number
(``InternalConsumerBuffer``): partition 0 of trades with partition 0 of orders, but
partition 0 and partition 1 go at whatever pace the fetches bring them. That is enough for a
stage whose state is per key. It is not enough for one that decides with a view of the
whole account, as the risk gate does through its shared exposure book: what the other
symbols had written when an order was decided then depends on how the fetches interleaved
the partitions, so a restarted instance, resuming from its committed offsets, could decide
the same order differently (the kill loop saw 83–131 of 152 decisions differ in gross
leverage and buying power).

:class:`EventTimeOrder` keeps Quix's buffer mechanics (per-partition buffers, watermarks,
pausing full partitions so the others get fetched) but puts every assigned partition in one
group: the next record is the earliest ``(timestamp, topic, partition)`` among them, and
none is given while a partition with records still to fetch has none buffered. A
partition at its high watermark (idle) does not hold the others back, as in Quix. Processed
in that order, the records a checkpoint commits are a prefix of one sequence, and a
restart from it goes through the same sequence again.
"""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import TopicPartition
from quixstreams.internal_consumer.buffering import (
    Idleness,
    InternalConsumerBuffer,
    PartitionBuffer,
)
from quixstreams.models import SuccessfulConfluentKafkaMessageProto

_Key = tuple[str, int]


class EventTimeOrder(InternalConsumerBuffer):
    """Quix's consumer buffer with a single timestamp order over all its partitions."""

    def __init__(self, max_partition_buffer_size: int = 10_000) -> None:
        super().__init__(max_partition_buffer_size=max_partition_buffer_size)
        self._buffers: dict[_Key, PartitionBuffer] = {}
        self._max_size = max_partition_buffer_size

    def assign_partitions(self, topic_partitions: list[TopicPartition]) -> None:
        for tp in topic_partitions:
            key = (tp.topic, tp.partition)
            if key not in self._buffers:
                self._buffers[key] = PartitionBuffer(
                    partition=tp.partition, topic=tp.topic, max_size=self._max_size
                )

    def revoke_partitions(self, topic_partitions: list[TopicPartition]) -> None:
        for tp in topic_partitions:
            self._buffers.pop((tp.topic, tp.partition), None)

    def feed(
        self,
        messages: Iterable[SuccessfulConfluentKafkaMessageProto],
        high_watermarks: dict[_Key, int],
        positions: dict[_Key, int] | None = None,
    ) -> None:
        buffers = self._buffers
        for message in messages:
            buffers[(message.topic(), message.partition())].append(message)
        for key, watermark in high_watermarks.items():
            if (buffer := buffers.get(key)) is not None:
                buffer.set_high_watermark(watermark)
        for key, position in (positions or {}).items():
            if (buffer := buffers.get(key)) is not None:
                buffer.set_position(position)

    def pop(self) -> SuccessfulConfluentKafkaMessageProto | None:
        best: PartitionBuffer | None = None
        best_key: tuple[float, str, int] | None = None
        for buffer in self._buffers.values():
            if buffer.empty():
                if buffer.idleness() != Idleness.IDLE:
                    return None  # it may hold an earlier record: wait for its fetch
                continue
            key = (buffer.next_timestamp, buffer.topic, buffer.partition)
            if best_key is None or key < best_key:
                best, best_key = buffer, key
        return best.popleft() if best is not None else None

    def pause_full(self) -> list[tuple[str, int]]:
        if len(self._buffers) == 1:
            return []
        paused = []
        for buffer in self._buffers.values():
            if not buffer.paused and buffer.full() and buffer.idleness() == Idleness.ACTIVE:
                buffer.pause()  # type: ignore[no-untyped-call]
                paused.append((buffer.topic, buffer.partition))
        return paused

    def resume_empty(self) -> list[tuple[str, int]]:
        resumed = []
        for buffer in self._buffers.values():
            if buffer.paused and (buffer.idleness() != Idleness.ACTIVE or not buffer.full()):
                buffer.resume()  # type: ignore[no-untyped-call]
                resumed.append((buffer.topic, buffer.partition))
        return resumed

    def clear(self, topic: str, partition: int) -> None:
        if (buffer := self._buffers.get((topic, partition))) is not None:
            buffer.clear()  # type: ignore[no-untyped-call]

    def close(self) -> None:
        self._buffers.clear()
