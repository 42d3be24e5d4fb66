"""The lag monitor against the session's real Kafka broker: consumer groups that stop, keep
up, lag by a known time, belong to someone else; and the stage's records and gauges."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from prometheus_client import REGISTRY

from core.config import LagSettings, Settings
from core.kafka import ensure_topics, producer_config
from core.topics import TopicCatalog, TopicSpec, spec
from schemas.models import ConsumerLag, LagStatus
from schemas.serde import AvroSerde
from streams.lag_monitor import LAG_TOPIC, LagCollector, LagMonitor
from streams.logic.lag import NS_PER_S, GroupLag, LagBook, LagRules, PartitionLag

pytestmark = pytest.mark.integration


def wait_for(condition: Callable[[], Any], timeout: float, every: float = 0.05) -> Any:
    """``condition()``'s first truthy value, polled until ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(every)


@pytest.fixture
def topic(settings: Settings) -> str:
    """A one-partition data topic of this test's namespace."""
    item = TopicSpec("lagdata", "k", None, "lag test data", partitions=1)
    ensure_topics(settings, TopicCatalog((item,)))
    return f"{settings.topic_prefix}lagdata"


@pytest.fixture
def producer(settings: Settings) -> Iterator[Producer]:
    p = Producer(producer_config(settings))
    yield p
    p.flush(10)


@pytest.fixture
def collector(settings: Settings) -> Iterator[LagCollector]:
    c = LagCollector(settings)
    yield c
    c.close()


def produce(producer: Producer, topic: str, n: int, timestamp_ms: int | None = None) -> None:
    for i in range(n):
        if timestamp_ms is None:
            producer.produce(topic, key=b"k", value=f"v{i}".encode())
        else:
            producer.produce(topic, key=b"k", value=f"v{i}".encode(), timestamp=timestamp_ms)
    assert producer.flush(10) == 0


def plain_consumer(settings: Settings, group: str) -> Consumer:
    """Someone else's consumer: plain confluent-kafka, no omniquant config."""
    return Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap(),
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )


def commit(settings: Settings, group: str, topic: str, offset: int) -> None:
    consumer = plain_consumer(settings, group)
    try:
        consumer.commit(offsets=[TopicPartition(topic, 0, offset)], asynchronous=False)
    finally:
        consumer.close()


class Watch:
    """The monitor's loop in the test: collect one group, observe, evaluate."""

    def __init__(self, collector: LagCollector, rules: LagRules, group: str, **collect: Any):
        self.collector, self.book, self.group, self.collect = (
            collector,
            LagBook(rules),
            group,
            collect,
        )

    def poll(self) -> PartitionLag | None:
        now = time.time_ns()
        for (g, t, p), obs in self.collector.collect(
            now, groups=[self.group], **self.collect
        ).items():
            self.book.observe(g, t, p, obs)
        groups: list[GroupLag] = self.book.evaluate(now)
        return groups[0].partitions[0] if groups and groups[0].partitions else None


def test_a_group_that_stops_consuming_goes_stall_then_stop_within_the_window(
    settings: Settings, topic: str, producer: Producer, collector: LagCollector
) -> None:
    group = f"stopper-{uuid.uuid4().hex[:8]}"
    produce(producer, topic, 10)
    consumer = plain_consumer(settings, group)
    consumer.subscribe([topic])
    got = 0
    while got < 5:
        msg = consumer.poll(1.0)
        if msg is not None and msg.error() is None:
            got += 1
    consumer.commit(offsets=[TopicPartition(topic, 0, 5)], asynchronous=False)
    consumer.close()  # it stops: 5 records left, never read
    rules = LagRules(window=4, stop_after_ns=int(1.5 * NS_PER_S), minimum_complete=1.0)
    watch = Watch(collector, rules, group)
    seen: list[LagStatus] = []

    def stopped() -> bool:
        verdict = watch.poll()
        if verdict is not None:
            seen.append(verdict.status)
            assert verdict.lag == 5 and verdict.committed == 5 and verdict.end == 10
        return bool(seen) and seen[-1] == LagStatus.STOP

    started = time.monotonic()
    wait_for(stopped, timeout=10, every=0.2)
    assert LagStatus.STALL in seen  # window full of one offset, before the stop time
    assert seen.index(LagStatus.STALL) < seen.index(LagStatus.STOP)
    assert set(seen) <= {LagStatus.OK, LagStatus.STALL, LagStatus.STOP}
    assert time.monotonic() - started < 5


def test_a_group_that_keeps_up_stays_ok(
    settings: Settings, topic: str, producer: Producer, collector: LagCollector
) -> None:
    group = f"keeper-{uuid.uuid4().hex[:8]}"
    stop = threading.Event()
    consumer = plain_consumer(settings, group)
    consumer.subscribe([topic])

    def consume() -> None:
        while not stop.is_set():
            msg = consumer.poll(0.05)
            if msg is not None and msg.error() is None:
                consumer.commit(message=msg, asynchronous=False)

    def feed() -> None:
        while not stop.is_set():
            produce(producer, topic, 1)
            time.sleep(0.05)

    threads = [threading.Thread(target=consume), threading.Thread(target=feed)]
    for thread in threads:
        thread.start()
    try:
        commit_seen = wait_for(lambda: collector.committed([group]).get(group), timeout=20)
        assert (topic, 0) in commit_seen
        rules = LagRules(window=5, stop_after_ns=NS_PER_S, minimum_complete=1.0)
        watch = Watch(collector, rules, group)
        verdicts = []
        for _ in range(12):
            verdict = watch.poll()
            assert verdict is not None
            verdicts.append(verdict)
            time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        consumer.close()
    assert [v.status for v in verdicts] == [LagStatus.OK] * 12
    assert verdicts[-1].committed > verdicts[0].committed  # it really was consuming


def test_time_lag_from_the_record_timestamp_is_within_a_second_of_the_true_age(
    settings: Settings, topic: str, producer: Producer, collector: LagCollector
) -> None:
    group = f"aged-{uuid.uuid4().hex[:8]}"
    now_ms = time.time_ns() // 1_000_000
    stamps = [now_ms - 30_000, now_ms - 20_000, now_ms - 10_000]  # CreateTime, set by us
    for stamp in stamps:
        produce(producer, topic, 1, timestamp_ms=stamp)
    commit(settings, group, topic, 1)  # the next record to read is the one stamped -20 s
    watch = Watch(collector, LagRules(window=3), group)
    verdict = watch.poll()
    true_age = time.time_ns() / NS_PER_S - stamps[1] / 1000
    assert verdict is not None and verdict.lag == 2
    assert verdict.time_lag.method == "peek"
    assert abs(verdict.lag_seconds - true_age) < 1.0


def test_time_lag_interpolated_from_end_offsets_is_within_a_second_of_the_true_age(
    settings: Settings, topic: str, producer: Producer, collector: LagCollector
) -> None:
    group = f"interp-{uuid.uuid4().hex[:8]}"
    commit(settings, group, topic, 0)  # caught up on an empty topic
    watch = Watch(collector, LagRules(window=5), group, max_peeks=0)  # no reads: interpolate
    assert watch.poll() is not None  # end 0 seen
    time.sleep(0.2)
    assert watch.poll() is not None
    appended_s = time.time_ns() / NS_PER_S
    produce(producer, topic, 3)  # stamped with an old time: interpolation must not care
    produce(producer, topic, 1, timestamp_ms=1_000_000_000_000)
    for _ in range(5):
        time.sleep(0.2)
        verdict = watch.poll()
    assert verdict is not None and verdict.lag == 4
    true_age = time.time_ns() / NS_PER_S - appended_s
    assert verdict.time_lag.method == "interpolated"
    assert abs(verdict.lag_seconds - true_age) < 1.0


def test_someone_elses_group_and_ours_are_both_reported(
    settings: Settings, topic: str, producer: Producer, collector: LagCollector
) -> None:
    theirs = f"someone-else-{uuid.uuid4().hex[:8]}"
    ours = f"{settings.topic_prefix}signals"
    produce(producer, topic, 4)
    commit(settings, theirs, topic, 3)
    commit(settings, ours, topic, 4)
    wait_for(lambda: {theirs, ours} <= set(collector.groups()), timeout=10)
    observed = collector.collect(time.time_ns())  # every group on the cluster
    assert observed[(theirs, topic, 0)].committed == 3
    assert observed[(theirs, topic, 0)].end == 4 and observed[(theirs, topic, 0)].lag == 1
    assert observed[(ours, topic, 0)].lag == 0


def test_the_stage_publishes_a_record_per_partition_and_exports_gauges(
    settings: Settings, topic: str, producer: Producer
) -> None:
    ensure_topics(settings, TopicCatalog((spec(LAG_TOPIC),)))
    settings = settings.model_copy(
        update={"lag": LagSettings(window=3, poll_interval_s=0.3, stop_after_s=1.0)}
    )
    group = f"staged-{uuid.uuid4().hex[:8]}"
    produce(producer, topic, 6)
    commit(settings, group, topic, 2)
    monitor = LagMonitor(settings, "lag-monitor")
    stop = threading.Event()
    thread = threading.Thread(target=monitor.run, args=(stop,))
    thread.start()
    serde = AvroSerde.from_settings(settings)
    reader = plain_consumer(settings, f"reader-{uuid.uuid4().hex[:8]}")
    reader.subscribe([monitor.topic])
    records: list[ConsumerLag] = []

    def stopped_record() -> bool:
        msg = reader.poll(0.2)
        if msg is not None and msg.error() is None:
            record = serde.decode_as(msg.value(), ConsumerLag, topic=monitor.topic)
            if record.group == group:
                assert msg.key() == group.encode()
                records.append(record)
        return bool(records) and records[-1].status == LagStatus.STOP

    try:
        wait_for(stopped_record, timeout=20, every=0)
        labels = {"group": group, "topic": topic, "partition": "0"}
        assert REGISTRY.get_sample_value("kafka_consumergroup_lag", labels) == 4
        assert REGISTRY.get_sample_value("kafka_consumergroup_status", labels) == 3  # STOP
        assert REGISTRY.get_sample_value("kafka_consumergroup_lag_seconds", labels) > 0
        assert REGISTRY.get_sample_value("kafka_cluster_up") == 1
        assert REGISTRY.get_sample_value("kafka_brokers") == 1  # the session's one broker
    finally:
        stop.set()
        thread.join(10)
        reader.close()
    last = records[-1]
    assert (last.topic, last.partition, last.committed_offset, last.end_offset, last.lag) == (
        topic,
        0,
        2,
        6,
        4,
    )
    assert last.lag_seconds > 0 and last.ts_init >= last.ts_event
    assert not thread.is_alive()


def test_cluster_up_drops_to_zero_while_metadata_cannot_be_read_and_comes_back(
    settings: Settings,
) -> None:
    ensure_topics(settings, TopicCatalog((spec(LAG_TOPIC),)))
    monitor = LagMonitor(settings, "lag-monitor")
    reachable = monitor.collector
    unreachable = settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"bootstrap_servers": "127.0.0.1:9"})}
    )
    try:
        monitor.collector = LagCollector(unreachable, timeout=1.0)
        with pytest.raises(KafkaException):
            monitor.poll_once()
        assert REGISTRY.get_sample_value("kafka_cluster_up") == 0
        monitor.collector = reachable
        monitor.poll_once()
        assert REGISTRY.get_sample_value("kafka_cluster_up") == 1
        assert REGISTRY.get_sample_value("kafka_brokers") == 1
    finally:
        monitor.close()
