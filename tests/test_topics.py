"""The topic catalog: every topic the platform needs, with explicit keeping rules."""

from __future__ import annotations

import pytest

from core.topics import RECORD_TOPICS, TopicNames, dead_letter_spec, spec
from omniquant.stages import STAGES, topic_catalog

REQUIRED = {
    "market.trades",
    "market.quotes",
    "market.bars",
    "market.trades.late",
    "signals",
    "orders.requests",
    "risk.decisions",
    "orders.approved",
    "execution.reports",
    "fills",
    "positions",
    "portfolio",
    "risk.metrics",
    "alerts",
    "control",
    "execution.orders",
    "monitoring.consumer_lag",
}
# Read back only by the app that writes them (JSON): no Avro schema, not sunk.
INTERNAL = {"execution.orders"}


def test_catalog_has_every_required_topic_and_a_dead_letter_topic_per_consuming_app() -> None:
    catalog = topic_catalog().specs
    names = {t.logical_name for t in catalog}
    assert names >= REQUIRED
    consuming = [s for s in STAGES if not s.is_source]
    assert consuming and all(s.dead_letter for s in consuming)
    assert {f"dlq.{s.dead_letter}" for s in STAGES if s.dead_letter} <= names
    assert "dlq.feeds" in names  # vendor feeds and replay share it
    assert len(names) == len(catalog), "duplicate topic names"


def test_positions_control_and_the_execution_book_are_compacted_the_rest_are_not() -> None:
    compacted = {t.logical_name for t in topic_catalog().specs if t.compacted}
    assert compacted == {"positions", "control", "execution.orders"}
    assert spec("control").broker_config()["cleanup.policy"] == "compact"
    assert "retention.ms" not in spec("positions").broker_config()
    assert spec("market.trades").broker_config()["cleanup.policy"] == "delete"
    # event-time stamped records (replays of old data) are kept by size, not by time
    trades = spec("market.trades").broker_config(retention_bytes=123)
    assert trades["retention.ms"] == "-1" and trades["retention.bytes"] == "123"
    assert int(dead_letter_spec("signals").broker_config()["retention.ms"]) > 0


def test_record_topics_name_a_value_schema_dead_letters_and_internal_topics_raw_bytes() -> None:
    for item in topic_catalog().specs:
        if item.logical_name.startswith("dlq.") or item.logical_name in INTERNAL:
            assert item.value_schema is None
        else:
            assert item.value_schema and item.value_schema.startswith("io.omniquant.")
    # so the sink, which reads every record topic, leaves internal topics alone
    record_topics = {t.logical_name for t in topic_catalog().record_topics()}
    assert record_topics.isdisjoint(INTERNAL)


def test_prefix_gives_a_separate_namespace() -> None:
    live, backtest = TopicNames("omniquant."), TopicNames("bt-42.")
    assert live.trades == "omniquant.market.trades"
    assert backtest.trades == "bt-42.market.trades"
    assert backtest.dead_letter("risk-gate") == "bt-42.dlq.risk-gate"
    catalog = topic_catalog()
    assert {n for n, _ in catalog.physical(live.prefix)}.isdisjoint(
        {n for n, _ in catalog.physical(backtest.prefix)}
    )


def test_unknown_topic_fails_fast() -> None:
    with pytest.raises(KeyError):
        TopicNames("x.").name("market.tradez")
    with pytest.raises(KeyError):
        spec("dlq.signals")  # dead letters are not record topics
    assert len(RECORD_TOPICS) == len(REQUIRED)


@pytest.mark.integration
def test_created_topics_carry_the_catalog_configs(settings) -> None:
    from confluent_kafka.admin import ConfigResource

    from core.kafka import admin_client, ensure_topics

    created = ensure_topics(settings, topic_catalog())
    names = TopicNames(settings.topic_prefix)
    assert names.trades in created and names.dead_letter("risk-gate") in created
    assert ensure_topics(settings, topic_catalog()) == []  # idempotent
    admin = admin_client(settings)
    resources = [ConfigResource("topic", names.trades), ConfigResource("topic", names.positions)]
    configs = {r.name: f.result(30) for r, f in admin.describe_configs(resources).items()}
    trades = configs[names.trades]
    assert trades["retention.ms"].value == "-1"  # event-time stamps: never expire by time
    assert trades["retention.bytes"].value == str(settings.kafka.retention_bytes)
    assert trades["message.timestamp.type"].value == "CreateTime"
    assert configs[names.positions]["cleanup.policy"].value == "compact"
