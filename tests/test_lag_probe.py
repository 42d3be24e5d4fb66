"""LagProbe against a real broker: transaction markers and aborted records are not lag."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import NewTopic

from core.config import load_settings
from core.kafka import LagProbe, admin_client

pytestmark = pytest.mark.integration


def _commit(bootstrap: str, group: str, topic: str, offset: int) -> None:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        consumer.commit(offsets=[TopicPartition(topic, 0, offset)], asynchronous=False)
    finally:
        consumer.close()


def test_a_group_past_the_last_record_of_transactions_has_no_lag(kafka_bootstrap: str) -> None:
    settings = load_settings(kafka={"bootstrap_servers": kafka_bootstrap})
    topic = f"lag-tx-{uuid.uuid4().hex[:8]}"
    admin = admin_client(settings)
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result()
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": f"tx-{topic}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(3):
        producer.produce(topic, f"r{i}".encode())
    producer.commit_transaction(30)  # offsets 0-2 records, 3 the commit marker
    producer.begin_transaction()
    producer.produce(topic, b"aborted")
    producer.flush(30)  # on the broker before the abort (else the abort purges it)
    producer.abort_transaction(30)  # offset 4 a record never delivered, 5 the abort marker

    probe = LagProbe(settings)
    try:
        done, halfway, fresh = (f"g-{uuid.uuid4().hex[:6]}" for _ in range(3))
        _commit(kafka_bootstrap, done, topic, 3)  # after the last record, as Quix commits
        _commit(kafka_bootstrap, halfway, topic, 1)
        # the end offset counts 6, the group at 3 has read everything it will be given
        assert probe.lag(done, [topic]) == 0
        # two records (1 and 2) are still to be read: the group is behind
        assert probe.lag(halfway, [topic]) == 6 - 1
        # a group that never committed starts at the beginning: 3 records to read
        assert probe.lag(fresh, [topic]) == 6
    finally:
        probe.close()


def test_an_open_transaction_on_the_groups_repartition_topic_is_lag(kafka_bootstrap: str) -> None:
    settings = load_settings(kafka={"bootstrap_servers": kafka_bootstrap})
    group = f"g-{uuid.uuid4().hex[:6]}"
    source = f"lag-src-{uuid.uuid4().hex[:8]}"
    internal = f"repartition__{group}--{source}--by-account"  # as Quix names its own
    admin = admin_client(settings)
    for name in (source, internal):
        admin.create_topics([NewTopic(name, 1, 1)])[name].result()
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": f"tx-{group}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(4):
        producer.produce(internal, f"re-keyed {i}".encode())
    producer.flush(30)  # on the broker, past the stable offset: the transaction is open

    probe = LagProbe(settings)  # a fresh probe: nothing looked up yet
    try:
        behind = probe.behind(group, [source])
        assert behind == {(internal, 0): 4}, behind
        assert probe.lag(group, [source]) == 4
        producer.commit_transaction(30)  # the 4 records are readable now, not yet read
        # counted in offsets: the 4 records and the commit marker after them
        assert probe.behind(group, [source]) == {(internal, 0): 5}
        _commit(kafka_bootstrap, group, internal, 5)  # read them and the commit marker
        assert probe.behind(group, [source]) == {}
        assert probe.lag(group, [source]) == 0
    finally:
        probe.close()
