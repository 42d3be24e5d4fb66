"""`omniquant lag` through typer's CliRunner, on a typer app of its own, against the real
broker (the command reads its settings from the environment, as the CLI does)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import typer
from confluent_kafka import Consumer, Producer, TopicPartition
from typer.testing import CliRunner

from core.config import Settings
from core.kafka import ensure_topics, producer_config
from core.topics import TopicCatalog, TopicSpec
from omniquant.lag_cli import lag

pytestmark = pytest.mark.integration

app = typer.Typer()
app.command("lag")(lag)
app.command("noop")(lambda: None)  # two commands: `lag` stays a subcommand, as in the CLI


@pytest.fixture
def lagging_group(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> tuple[str, str]:
    """(group, topic): 5 records, the group committed at 2; the env points at the broker."""
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", settings.kafka_bootstrap())
    monkeypatch.setenv("OMNIQUANT_TOPIC_PREFIX", settings.topic_prefix)
    ensure_topics(settings, TopicCatalog((TopicSpec("clidata", "k", None, "cli", partitions=1),)))
    topic = f"{settings.topic_prefix}clidata"
    producer = Producer(producer_config(settings))
    for i in range(5):
        producer.produce(topic, value=f"v{i}".encode())
    assert producer.flush(10) == 0
    group = f"cli-{uuid.uuid4().hex[:8]}"
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap(), "group.id": group})
    consumer.commit(offsets=[TopicPartition(topic, 0, 2)], asynchronous=False)
    consumer.close()
    return group, topic


def test_json_gives_each_partition_and_the_group_status(lagging_group: tuple[str, str]) -> None:
    group, topic = lagging_group
    args = ["lag", "--group", group, "--json", "--samples", "2", "--interval", "0.1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert set(doc["groups"]) == {group}
    entry = doc["groups"][group]
    part = entry["topics"][topic]["0"]
    assert (part["committed"], part["end"], part["lag"]) == (2, 5, 3)
    assert part["lag_seconds"] >= 0 and part["time_lag_method"] == "peek"
    # two polls, offset still, behind both times: the short window says STALL
    assert part["status"] == entry["status"] == "STALL"
    assert entry["lag"] == 3


def test_topic_filter_and_a_single_sample_that_is_not_judged(
    lagging_group: tuple[str, str],
) -> None:
    group, _ = lagging_group
    result = CliRunner().invoke(
        app, ["lag", "-g", group, "-t", "no-such-topic", "--json", "--samples", "1"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["groups"] == {}
    result = CliRunner().invoke(app, ["lag", "-g", group, "--json", "--samples", "1"])
    part = next(iter(json.loads(result.output)["groups"][group]["topics"].values()))["0"]
    assert part["status"] == "OK" and "not judged" in part["reason"]


def test_watch_draws_the_table_each_poll(lagging_group: tuple[str, str]) -> None:
    group, topic = lagging_group
    args = ["lag", "-g", group, "--watch", "--count", "2", "--interval", "0.1"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "consumer group lag" in result.output and group in result.output
    assert topic in result.output
    lines = CliRunner().invoke(app, [*args, "--json"]).output.strip().splitlines()
    assert len(lines) == 2 and all(group in json.loads(line)["groups"] for line in lines)
