"""A stage's start rides out a cluster between controllers: the topic reads Quix makes at
start (describe configs) retry transient admin errors for a bounded time, on a real broker.

In the broker-kill CI run of f0a6574 a stage ended by its transaction watchdog after the
active controller's kill was started again at once, and its start failed with
``KafkaError{code=_TIMED_OUT, str="Timed out waiting for controller"}`` from
``inspect_topics``. Here that answer is injected in front of the real admin client.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic
from quixstreams.models.topics import TopicAdmin

from streams import runtime

pytestmark = pytest.mark.integration


class _Flaky:
    """The real admin's inspect_topics, answering ``error`` the first ``fails`` times."""

    def __init__(self, admin: TopicAdmin, error: int, fails: int) -> None:
        self.admin, self.error, self.fails, self.calls = admin, error, fails, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls <= self.fails:
            raise KafkaException(KafkaError(self.error, "Timed out waiting for controller"))
        return self.admin.__class__.inspect_topics(self.admin, *args, **kwargs)


def _manager(bootstrap: str, error: int, fails: int) -> tuple[Any, _Flaky]:
    admin = TopicAdmin(broker_address=bootstrap)
    flaky = _Flaky(admin, error, fails)
    admin.inspect_topics = flaky  # type: ignore[method-assign]
    manager = runtime._VisibleTopicManager(
        topic_admin=admin, consumer_group="failover", timeout=10, create_timeout=10,
        auto_create_topics=False,
    )  # fmt: skip
    return manager, flaky


@pytest.fixture
def topic(kafka_bootstrap: str, topic_prefix: str) -> str:
    name = f"{topic_prefix}failover"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for future in admin.create_topics([NewTopic(name, 1, 1)]).values():
        future.result(30)
    return name


def test_a_start_while_the_cluster_has_no_controller_waits_for_one(
    kafka_bootstrap: str, topic: str
) -> None:
    manager, flaky = _manager(kafka_bootstrap, KafkaError._TIMED_OUT, fails=3)
    assert manager.topic(topic).name == topic
    assert flaky.calls == 4


def test_other_errors_and_a_controller_that_never_comes_still_fail_the_start(
    kafka_bootstrap: str, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager, flaky = _manager(kafka_bootstrap, KafkaError.TOPIC_AUTHORIZATION_FAILED, fails=1)
    with pytest.raises(KafkaException, match="Timed out waiting"):
        manager.topic(topic)
    assert flaky.calls == 1  # not retried: an ACL does not fix itself
    monkeypatch.setattr(runtime, "_CONTROLLER_WAIT_S", 1.5)
    manager, flaky = _manager(kafka_bootstrap, KafkaError._TIMED_OUT, fails=10**6)
    started = time.monotonic()
    with pytest.raises(KafkaException):
        manager.topic(topic)
    assert 1.5 <= time.monotonic() - started < 10
