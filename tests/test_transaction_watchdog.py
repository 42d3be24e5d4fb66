"""The transaction watchdog ends a process stuck in a Kafka transaction call, and only then.

librdkafka can block in ``send_offsets_to_transaction`` for good after the group
coordinator's broker dies (confluentinc/librdkafka#5511); the watchdog turns that into exit
code 75, which the supervisor answers by starting the stage again.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

from core.kafka import EXIT_TRANSACTION_STALLED, TransactionWatchdog


class _Stalls:
    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []
        self.seen = threading.Event()

    def __call__(self, call: str, stall_s: float) -> None:
        self.calls.append((call, stall_s))
        self.seen.set()


def test_calls_that_return_in_time_never_trip_it() -> None:
    stalls = _Stalls()
    watchdog = TransactionWatchdog(0.3, on_stall=stalls)
    for _ in range(200):
        with watchdog.guard("commit_transaction"):
            pass
    # well past the stall time with nothing guarded: still nothing
    assert not stalls.seen.wait(0.6)
    assert stalls.calls == []


def test_a_call_past_its_time_trips_it_once_and_it_rearms() -> None:
    stalls = _Stalls()
    watchdog = TransactionWatchdog(0.2, on_stall=stalls)
    with watchdog.guard("send_offsets_to_transaction"):
        assert stalls.seen.wait(5), "a call blocked past stall_s must trip the watchdog"
        time.sleep(0.5)  # still blocked: it trips once per call, not every stall_s
    assert stalls.calls == [("send_offsets_to_transaction", 0.2)]
    stalls.seen.clear()
    wrapped = watchdog.wrap("abort_transaction", lambda seconds: time.sleep(seconds) or "done")
    assert wrapped(0.5) == "done"  # the wrapped call's own result comes back
    assert stalls.seen.wait(5)
    assert [c for c, _ in stalls.calls] == ["send_offsets_to_transaction", "abort_transaction"]


def test_each_call_gets_its_own_full_time() -> None:
    stalls = _Stalls()
    watchdog = TransactionWatchdog(0.4, on_stall=stalls)
    # back-to-back calls of 0.25 s each: 1 s in all, each under its 0.4 s
    for _ in range(4):
        with watchdog.guard("commit_transaction"):
            time.sleep(0.25)
    assert stalls.calls == []


def test_a_stalled_process_exits_75_and_says_where_it_was_stuck() -> None:
    script = textwrap.dedent(
        """
        import time
        from core.kafka import TransactionWatchdog

        def blocked_in_librdkafka():
            time.sleep(60)

        with TransactionWatchdog(1.0).guard("send_offsets_to_transaction"):
            blocked_in_librdkafka()
        print("unreachable")
        """
    )
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=50
    )
    took = time.monotonic() - started
    assert proc.returncode == EXIT_TRANSACTION_STALLED == 75, proc.stderr
    assert took < 30, "it must not wait for the blocked call to end"
    assert "unreachable" not in proc.stdout
    assert "Kafka transaction call stalled" in proc.stderr
    # every thread's stack is dumped: the stuck frame is named
    assert "blocked_in_librdkafka" in proc.stderr
    assert "transaction-watchdog" in proc.stderr or "Thread 0x" in proc.stderr
