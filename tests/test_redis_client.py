"""The stages' Redis client rides out a short outage of a real redis-server, and gives up
after ``OMNIQUANT_REDIS__OUTAGE_WAIT_S`` (core.redis_client); the gate's exposure book is
written back into a Redis that came back empty (streams.account_view)."""

from __future__ import annotations

import json
import logging
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest
import redis
from prometheus_client import REGISTRY

from core.config import Settings, load_settings
from core.errors import ConfigError
from core.redis_client import redis_client
from omniquant.stack.redis import LocalRedis
from schemas.fixedpoint import to_fixed
from streams.account_view import AccountFigures, ExposureBook
from streams.logic.account_checks import AccountContext

pytestmark = pytest.mark.integration


def _settings(own_redis: LocalRedis, tmp_path: Path, wait_s: float) -> Settings:
    return load_settings(
        redis={"url": own_redis.url, "outage_wait_s": wait_s},
        topic_prefix="t-redis-client.",
        state_dir=tmp_path / "state",
    )


def _retries(role: str) -> float:
    return REGISTRY.get_sample_value("omniquant_redis_retries_total", {"role": role}) or 0.0


def _start_later(own_redis: LocalRedis, delay_s: float) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(delay_s), own_redis.start()))
    thread.start()
    return thread


def test_a_command_issued_while_redis_is_down_succeeds_once_it_is_back(
    own_redis: LocalRedis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = redis_client(_settings(own_redis, tmp_path, 20.0), "execution", socket_timeout=2.0)
    assert client.set("k", b"before")
    before = _retries("execution")
    own_redis.stop()
    assert not own_redis.answers()
    restart = _start_later(own_redis, 1.5)
    try:
        with caplog.at_level(logging.WARNING, logger="core.redis_client"):
            # The server came back empty (no persistence): the key is gone, the command works.
            assert client.set("k", b"after", nx=True)
    finally:
        restart.join()  # before the fixture stops it, or it outlives the test
    assert client.get("k") == b"after"
    assert _retries("execution") > before
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("Redis does not answer; retrying") == 1, "one per outage, not per retry"
    assert messages.count("Redis answers again") == 1, messages
    client.close()


def test_the_gate_claims_an_order_id_through_a_redis_restart(
    own_redis: LocalRedis, tmp_path: Path
) -> None:
    book = ExposureBook(_settings(own_redis, tmp_path, 20.0))
    before = _retries("risk-gate")
    own_redis.stop()
    restart = _start_later(own_redis, 1.0)
    try:
        assert book.claim("coid-1", "orders.requests/0/7")
    finally:
        restart.join()
    assert not book.claim("coid-1", "orders.requests/0/8"), "the claim was stored"
    assert _retries("risk-gate") > before
    book.close()


def test_the_error_reaches_the_caller_after_the_configured_wait(
    own_redis: LocalRedis, tmp_path: Path
) -> None:
    client = redis_client(_settings(own_redis, tmp_path, 1.0), "risk-gate", socket_timeout=2.0)
    client.ping()
    own_redis.stop()
    before = _retries("risk-gate")
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        client.get("k")
    waited = time.monotonic() - started
    assert _retries("risk-gate") > before
    # it waited, and it gave up: bounded by the setting, not by a count of retries
    assert 0.5 <= waited < 10.0, waited
    # The wait is the outage's, not each command's: the next one in it tries once.
    after = _retries("risk-gate")
    with pytest.raises(redis.ConnectionError):
        client.get("k")
    assert _retries("risk-gate") == after
    # Back up, then down again: a new outage, with a wait of its own.
    own_redis.start()
    assert client.get("k") is None
    own_redis.stop()
    with pytest.raises(redis.ConnectionError):
        client.get("k")
    assert _retries("risk-gate") > after
    client.close()


def test_no_wait_means_the_first_error_reaches_the_caller(
    own_redis: LocalRedis, tmp_path: Path
) -> None:
    client = redis_client(_settings(own_redis, tmp_path, 0.0), "execution", socket_timeout=2.0)
    client.ping()
    own_redis.stop()
    before = _retries("execution")
    with pytest.raises(redis.ConnectionError):
        client.get("k")
    assert _retries("execution") == before
    client.close()


@pytest.mark.parametrize("value", [-1, 51, "soon"])
def test_an_invalid_outage_wait_fails_at_start_naming_the_setting(
    value: object, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="OMNIQUANT_REDIS__OUTAGE_WAIT_S"):
        load_settings(redis={"outage_wait_s": value}, state_dir=tmp_path)


def _gross(*entries: tuple[str, str]) -> Decimal:
    """Σ |worst × price| in currency units, by Decimal (not the gate's fixed point)."""
    return sum((abs(Decimal(w) * Decimal(p)) for w, p in entries), Decimal(0))


def test_the_gate_writes_its_book_back_into_a_redis_that_came_back_empty(
    own_redis: LocalRedis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(own_redis, tmp_path, 20.0)
    book, other = ExposureBook(settings), ExposureBook(settings)  # two gate processes
    rate = to_fixed("0.5")
    ts = 1_381_152_661_000_000_000
    figures = AccountFigures(equity=to_fixed("1000000"))

    def context(of: ExposureBook, coid: str = "c-new") -> AccountContext:
        got = of.context(
            account="acct", symbol="ZZZ", client_order_id=coid, ts_event=ts,
            figures=figures, starting_cash=0,
        )  # fmt: skip
        assert got.error is None, got.error
        return got

    book.record("acct", "AAA", to_fixed("200"), to_fixed("182.5"), rate)
    book.record("acct", "BBB", to_fixed("-100"), to_fixed("13.9"), rate)
    book.record("acct", "GONE", to_fixed("50"), to_fixed("10"), rate)
    book.record("acct", "GONE", 0, to_fixed("10"), rate)  # flat again: not written back
    book.mark([("acct", "BBB", to_fixed("-100"), to_fixed("14.1"), rate)])
    book.approved("acct", "c-1", ts - 10)
    assert book.claim("c-1", "orders.requests:0:7")
    with caplog.at_level(logging.WARNING, logger="streams.account_view"):
        before = context(book)  # its first decision: nothing was lost
    assert not any("wrote back" in r.getMessage() for r in caplog.records)
    write_backs = REGISTRY.get_sample_value("omniquant_risk_book_write_backs_total") or 0.0
    assert Decimal(before.others_gross) / 10**9 == _gross(("200", "182.5"), ("-100", "14.1"))
    assert before.recent_orders == 1

    own_redis.stop()
    own_redis.start()  # empty: no persistence
    assert context(other).others_gross == 0, "Redis came back empty"
    # another process writes AAA anew before this one notices: its value stays
    other.record("acct", "AAA", to_fixed("300"), to_fixed("183"), rate)
    book.committed()  # and this one commits its offsets first: its copy must survive that
    with caplog.at_level(logging.WARNING, logger="streams.account_view"):
        after = context(book)
    assert Decimal(after.others_gross) / 10**9 == _gross(("300", "183"), ("-100", "14.1"))
    assert after.recent_orders == 1
    assert not other.claim("c-1", "orders.requests:0:9"), "the claim was written back"
    assert book.claim("c-1", "orders.requests:0:7"), "and is still this request's"
    assert any("wrote back" in r.getMessage() for r in caplog.records)
    assert REGISTRY.get_sample_value("omniquant_risk_book_write_backs_total") == write_backs + 1
    # written back once: the next decision reads Redis as it is
    other.record("acct", "BBB", 0, None, rate)
    assert Decimal(context(book).others_gross) / 10**9 == _gross(("300", "183"))
    book.close()
    other.close()


def test_an_assignment_rolls_the_book_back_to_the_committed_offsets(
    own_redis: LocalRedis, tmp_path: Path
) -> None:
    """What a killed gate wrote for records beyond its commit is gone when the next one
    resumes there; it writes the same again as it replays them, once each."""
    settings = _settings(own_redis, tmp_path, 20.0)
    topics = ("t.orders.requests", "t.market.trades", "t.execution.reports")
    killed = ExposureBook(settings, topics=topics)
    rate, price = to_fixed("0.5"), to_fixed("10")
    killed.record("acct", "AAA", to_fixed("100"), price, rate, at=(topics[1], 0, 10))
    killed.record("acct", "AAA", to_fixed("300"), price, rate, at=(topics[0], 0, 4))  # beyond
    killed.mark([("acct", "AAA", to_fixed("300"), to_fixed("11"), rate)], at=(topics[1], 0, 12))
    killed.record("acct", "BBB", to_fixed("50"), price, rate, at=(topics[2], 1, 7))  # beyond
    killed.record("acct", "CCC", to_fixed("-20"), price, rate, at=(topics[1], 2, 99))  # not ours
    # written before the book kept versions: read as one, never rolled back
    killed.client.hset(
        f"{killed.prefix}exposure:acct", "OLD", f"[{to_fixed('5')}, {price}, {rate}]"
    )
    ts = 1_381_152_661_000_000_000
    killed.approved("acct", "c-1", ts - 5, at=(topics[0], 0, 3))
    killed.approved("acct", "c-2", ts - 2, at=(topics[0], 0, 4))  # beyond
    killed.approved("acct", "c-3", ts - 1, at=(topics[0], 1, 9))  # not ours
    figures = AccountFigures(equity=to_fixed("1000000"))

    def context(book: ExposureBook) -> AccountContext:
        got = book.context(
            account="acct", symbol="ZZZ", client_order_id="c-3", ts_event=ts,
            figures=figures, starting_cash=0,
        )  # fmt: skip
        assert got.error is None, got.error
        return got

    def gross(book: ExposureBook) -> Decimal:
        return Decimal(context(book).others_gross) / 10**9

    assert gross(killed) == _gross(("300", "11"), ("50", "10"), ("-20", "10"), ("5", "10"))
    assert context(killed).recent_orders == 2  # c-1 and c-2; c-3 is the order itself
    resumed = ExposureBook(settings, topics=topics)
    # committed: requests p0 at 4, trades p0 at 11, reports p1 at 7 (p2 is another member's)
    resumed.roll_back({(topics[0], 0): 4, (topics[1], 0): 11, (topics[2], 1): 7})
    assert gross(resumed) == _gross(("100", "10"), ("-20", "10"), ("5", "10"))
    assert context(resumed).recent_orders == 1  # c-2 is to be decided again
    # the replay writes the same again: as before the kill, each version once
    resumed.record("acct", "AAA", to_fixed("300"), price, rate, at=(topics[0], 0, 4))
    resumed.record("acct", "AAA", to_fixed("300"), price, rate, at=(topics[0], 0, 4))
    resumed.mark([("acct", "AAA", to_fixed("300"), to_fixed("11"), rate)], at=(topics[1], 0, 12))
    resumed.record("acct", "BBB", to_fixed("50"), price, rate, at=(topics[2], 1, 7))
    resumed.approved("acct", "c-2", ts - 2, at=(topics[0], 0, 4))
    assert gross(resumed) == gross(killed)
    assert context(resumed).recent_orders == 2
    history = killed.client.hget(f"{killed.prefix}history:acct", "AAA")
    assert history is not None and len(json.loads(history)) == 3, history
    current = killed.client.hget(f"{killed.prefix}exposure:acct", "AAA")
    assert current is not None and json.loads(current) == [to_fixed("300"), to_fixed("11"), rate]
    killed.close()
    resumed.close()


def test_a_roll_back_restores_the_book_at_the_last_commit_however_much_came_after(
    own_redis: LocalRedis, tmp_path: Path
) -> None:
    """A killed gate may run far past its last commit (a fast replay, a commit that
    stalls): its successor's roll-back must still find each symbol as it was at the
    commit. Before histories were trimmed at commits instead of kept to the last 32
    versions, 50 writes past the commit left nothing to roll back to, and the symbol was
    gone from the account until its owner wrote it again. A partition never committed is
    processed again from its start: all it wrote goes."""
    settings = _settings(own_redis, tmp_path, 20.0)
    topics = ("t.orders.requests", "t.market.trades", "t.execution.reports")
    killed = ExposureBook(settings, topics=topics)
    rate = to_fixed("0.5")
    for offset in range(40):  # committed below
        killed.record(
            "acct", "AAA", to_fixed(offset), to_fixed("10"), rate, at=(topics[0], 0, offset)
        )
    killed.committed()
    history = killed.client.hget(f"{killed.prefix}history:acct", "AAA")
    assert history is not None and len(json.loads(history)) == 1  # trimmed to the last
    for offset in range(40, 90):  # beyond the commit at 40
        killed.record(
            "acct", "AAA", to_fixed(offset), to_fixed("12"), rate, at=(topics[0], 0, offset)
        )
    for offset in range(5):  # trades p1: never committed
        killed.mark(
            [("acct", "BBB", to_fixed("7"), to_fixed("3"), rate)], at=(topics[1], 1, offset)
        )

    def gross(book: ExposureBook) -> Decimal:
        got = book.context(
            account="acct", symbol="ZZZ", client_order_id="c", ts_event=1,
            figures=AccountFigures(equity=to_fixed("1000000")), starting_cash=0,
        )  # fmt: skip
        assert got.error is None, got.error
        return Decimal(got.others_gross) / 10**9

    assert gross(killed) == _gross(("89", "12"), ("7", "3"))
    resumed = ExposureBook(settings, topics=topics)
    resumed.roll_back({(topics[0], 0): 40, (topics[1], 1): -1001})  # -1001: no commit
    assert gross(resumed) == _gross(("39", "10"))
    assert resumed.client.hget(f"{resumed.prefix}history:acct", "BBB") is None
    killed.close()
    resumed.close()


def test_a_commit_trims_only_what_no_other_process_wrote_since(
    own_redis: LocalRedis, tmp_path: Path
) -> None:
    """After a rebalance the symbol's new owner writes it; the old owner's trim at its
    next commit must not put its own (stale) history back over the new owner's."""
    settings = _settings(own_redis, tmp_path, 20.0)
    topics = ("t.orders.requests", "t.market.trades", "t.execution.reports")
    old, new = ExposureBook(settings, topics=topics), ExposureBook(settings, topics=topics)
    rate, price = to_fixed("0.5"), to_fixed("10")
    old.record("acct", "AAA", to_fixed("1"), price, rate, at=(topics[0], 0, 1))
    old.record("acct", "AAA", to_fixed("2"), price, rate, at=(topics[0], 0, 2))
    new.roll_back({(topics[0], 0): 1})  # the new owner resumes at 1: drops offset 2
    new.record("acct", "AAA", to_fixed("5"), price, rate, at=(topics[0], 0, 1))
    new.record("acct", "AAA", to_fixed("6"), price, rate, at=(topics[0], 0, 2))
    written = old.client.hget(f"{old.prefix}history:acct", "AAA")
    old.committed()
    assert old.client.hget(f"{old.prefix}history:acct", "AAA") == written
    new.committed()
    history = new.client.hget(f"{new.prefix}history:acct", "AAA")
    assert history is not None and json.loads(history) == [[0, 0, 2, to_fixed("6"), price, rate]]
    old.close()
    new.close()


@pytest.mark.parametrize("garbage", ["not json", '{"worst": 1}', "[[1, 2]]", '["a", "b", "c"]'])
def test_an_unreadable_book_entry_refuses_the_order_and_its_owner_rewrites_it(
    own_redis: LocalRedis, tmp_path: Path, garbage: str
) -> None:
    """Something else wrote into the gate's hash: an order that needs the account's gross
    exposure is refused with the key named (fail closed) instead of ending the stage, and
    the gate that owns the symbol replaces the entry at its next write."""
    book = ExposureBook(_settings(own_redis, tmp_path, 20.0))
    price, rate = to_fixed("10"), to_fixed("0.5")
    book.record("acct", "AAA", to_fixed("100"), price, rate)
    book.client.hset(f"{book.prefix}exposure:acct", "BAD", garbage)
    book.client.zadd(f"{book.prefix}rate:acct", {"someone|else:x:y": 1})  # not one of ours

    def context() -> AccountContext:
        return book.context(
            account="acct", symbol="ZZZ", client_order_id="c-1", ts_event=2,
            figures=AccountFigures(equity=to_fixed("1000000")), starting_cash=0,
        )  # fmt: skip

    refused = context()
    assert refused.error is not None and "exposure:acct field 'BAD'" in refused.error
    book.roll_back({("t.orders.requests", 0): 0})  # neither the entry nor the member stop it
    owner = ExposureBook(_settings(own_redis, tmp_path, 20.0))
    owner.record("acct", "BAD", to_fixed("-20"), price, rate)
    assert context().error is None
    assert Decimal(context().others_gross) / 10**9 == _gross(("100", "10"), ("-20", "10"))


def test_a_history_at_its_bound_keeps_the_newest_and_warns_once_not_per_write(
    own_redis: LocalRedis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """Commits that stall let a history grow to its bound; each write past it drops the
    oldest version. That is worth a warning, not one per write (before: 15 of them here)."""
    from streams import account_view

    monkeypatch.setattr(account_view, "_VERSIONS_KEPT", 5)
    monkeypatch.setattr(account_view, "_BOUND_WARNING", account_view._ThrottledWarning())
    settings = _settings(own_redis, tmp_path, 20.0)
    topics = ("t.orders.requests", "t.market.trades", "t.execution.reports")
    book = ExposureBook(settings, topics=topics)
    rate = to_fixed("0.5")
    with caplog.at_level(logging.WARNING, logger="streams.account_view"):
        for offset in range(20):  # never committed: the history only grows
            book.record(
                "acct", "AAA", to_fixed(offset), to_fixed("10"), rate, at=(topics[0], 0, offset)
            )
    history = json.loads(book.client.hget(f"{book.prefix}history:acct", "AAA") or "[]")
    assert [v[2] for v in history] == [15, 16, 17, 18, 19]  # the newest five offsets
    warnings = [r for r in caplog.records if "at its bound" in r.getMessage()]
    assert len(warnings) == 1
    book.close()
