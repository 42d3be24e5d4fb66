"""A synchronous offset commit rides out a coordinator failover; other failures still fail.

The broker side of this (a group coordinator's node SIGKILLed mid-run) is exercised by
tests/test_cluster_pipeline.py; here the wrapper's decisions, one answer at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from streams.runtime import commit_through_failover


class ScriptedCommit:
    """A consumer's ``commit`` answering from a script: an exception or a result each call."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[list[TopicPartition] | None, bool]] = []

    def __call__(self, message: Any = None, offsets: Any = None, asynchronous: bool = True) -> Any:
        self.calls.append((offsets, asynchronous))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


@dataclass
class Answered:
    """What commit() returns per partition (confluent's TopicPartition.error is read-only)."""

    offset: int
    error: KafkaError | None = None


def _tp(offset: int, error: int | None = None) -> Answered:
    return Answered(offset, None if error is None else KafkaError(error))


OFFSETS = [TopicPartition("t", 0, 42)]


def test_not_coordinator_is_committed_again_with_the_same_offsets() -> None:
    done = [_tp(42)]
    commit = ScriptedCommit(
        KafkaException(KafkaError(KafkaError.NOT_COORDINATOR)),
        KafkaException(KafkaError(KafkaError.COORDINATOR_NOT_AVAILABLE)),
        done,
    )
    slept: list[float] = []
    wrapped = commit_through_failover(commit, timeout_s=30, sleep=slept.append)
    assert wrapped(offsets=OFFSETS, asynchronous=False) is done
    assert [c[0] for c in commit.calls] == [OFFSETS] * 3
    assert slept == [0.1, 0.2]  # backing off


def test_a_partition_answering_not_coordinator_is_retried_too() -> None:
    commit = ScriptedCommit([_tp(42, KafkaError.NOT_COORDINATOR)], [_tp(42)])
    result = commit_through_failover(commit, sleep=lambda _s: None)(
        offsets=OFFSETS, asynchronous=False
    )
    assert result is not None and result[0].error is None
    assert len(commit.calls) == 2


def test_a_fenced_member_is_not_retried() -> None:
    # ILLEGAL_GENERATION: the group moved on without us; Quix must see it and rebalance
    fenced = KafkaException(KafkaError(KafkaError.ILLEGAL_GENERATION))
    commit = ScriptedCommit(fenced)
    with pytest.raises(KafkaException) as raised:
        commit_through_failover(commit, sleep=lambda _s: None)(offsets=OFFSETS, asynchronous=False)
    assert raised.value is fenced and len(commit.calls) == 1
    partition_fenced = [_tp(42, KafkaError.UNKNOWN_MEMBER_ID)]
    commit = ScriptedCommit(partition_fenced)
    result = commit_through_failover(commit, sleep=lambda _s: None)(
        offsets=OFFSETS, asynchronous=False
    )
    assert result is partition_fenced and len(commit.calls) == 1


def test_it_gives_up_after_its_budget_and_leaves_async_commits_alone() -> None:
    down = KafkaException(KafkaError(KafkaError.NOT_COORDINATOR))
    commit = ScriptedCommit(*[down] * 50)
    with pytest.raises(KafkaException):
        commit_through_failover(commit, timeout_s=0.0, sleep=lambda _s: None)(
            offsets=OFFSETS, asynchronous=False
        )
    assert len(commit.calls) == 1
    commit = ScriptedCommit(None)
    assert commit_through_failover(commit)(offsets=OFFSETS) is None
    assert commit.calls == [(OFFSETS, True)]
