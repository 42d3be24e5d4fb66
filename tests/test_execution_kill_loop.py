"""The kill loop: the execution stage trading on Alpaca (a loopback Alpaca in this process)
is SIGKILLed at random moments and started again while approved orders keep coming. At the
end the venue has seen every order exactly once, and each has exactly one NEW report."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer
from conftest import shared_file
from loopback.alpaca import ORDER_PAYLOADS, STREAM_EXAMPLES, AlpacaLoopback
from stage_proc import stage_namespace

from core.kafka import consumer_config
from core.topics import TopicNames
from producers.kafka_producer import RecordProducer
from schemas.fixedpoint import to_fixed
from schemas.models import ExecType, ExecutionReport, Fill, OrderRequest, Side
from schemas.serde import AvroSerde

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

ORDERS = 60
KILLS = 20
SEED = 20_240_611
FILLED_EVERY = 4  # the test fills every 4th order at the venue, whenever it gets there
T0 = 1_700_000_000_000_000_000
_SERDE = AvroSerde()


@pytest.fixture
def alpaca(shared_data: Path) -> Iterator[AlpacaLoopback]:
    shared_file(shared_data, ORDER_PAYLOADS)
    shared_file(shared_data, STREAM_EXAMPLES)
    with AlpacaLoopback(shared_data) as server:
        yield server


def _spawn(env: dict[str, str], log: Path) -> subprocess.Popen:
    """`omniquant stage execution` in its own process group, its JSON log to ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "omniquant.cli", "stage", "execution"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


class Reports:
    """execution.reports and fills as read_committed consumers see them, read as they come."""

    def __init__(self, settings: Any, names: TopicNames) -> None:
        self.consumer = Consumer(consumer_config(settings, f"reader-{uuid.uuid4().hex}"))
        self.consumer.subscribe([names.execution_reports, names.fills])
        self.reports: list[ExecutionReport] = []
        self.fills: list[Fill] = []

    def poll(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            msg = self.consumer.poll(0.1)
            if msg is None or msg.error() is not None:
                continue
            record = _SERDE.decode(msg.value())
            (self.reports if isinstance(record, ExecutionReport) else self.fills).append(record)

    def types(self) -> dict[str, list[ExecType]]:
        out: dict[str, list[ExecType]] = defaultdict(list)
        for report in self.reports:
            out[report.client_order_id].append(report.exec_type)
        return out


def test_kill_loop_loses_no_order_and_submits_none_twice(
    alpaca: AlpacaLoopback, kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    settings, env = stage_namespace(kafka_bootstrap, redis_url, tmp_path, "kill")
    env.update(alpaca.env())
    names = TopicNames(settings.topic_prefix)
    rng = random.Random(SEED)
    coids = [f"k-{i:02d}" for i in range(ORDERS)]
    to_fill = set(coids[::FILLED_EVERY])
    filled: set[str] = set()
    producing_done = threading.Event()
    gaps = [rng.uniform(0.0, 1.6) for _ in coids]  # ~48 s of orders, bursts and lulls

    def fill_what_arrived() -> None:
        for coid in sorted(to_fill - filled):
            if alpaca.submissions(coid):
                alpaca.fill(coid, "3", "187.25")
                filled.add(coid)

    def produce() -> None:
        producer = RecordProducer(settings, "test")
        for i, (coid, gap) in enumerate(zip(coids, gaps, strict=True)):
            time.sleep(gap)
            ts = T0 + i * 1_000_000_000
            order = OrderRequest(client_order_id=coid, strategy_id="test", symbol="SPY",
                                 side=Side.BUY, quantity=to_fixed(3), ts_event=ts,
                                 ts_init=ts)  # fmt: skip
            producer.send(names.approved_orders, order, key="SPY")
            producer.flush()
            fill_what_arrived()
        producing_done.set()

    producing = threading.Thread(target=produce, daemon=True)
    reports = Reports(settings, names)
    started = time.monotonic()
    logs = [tmp_path / "execution-0.log"]
    stage = _spawn(env, logs[-1])
    kills = 0
    try:
        producing.start()
        while kills < KILLS:
            reports.poll(rng.uniform(0.3, 4.5))  # a random moment of its life
            os.killpg(stage.pid, signal.SIGKILL)
            stage.wait(10)
            kills += 1
            logs.append(tmp_path / f"execution-{kills}.log")
            stage = _spawn(env, logs[-1])
        producing.join(120)
        assert producing_done.is_set()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            fill_what_arrived()  # orders that reached the venue only after the last order
            reports.poll(0.5)
            types = reports.types()
            if all(ExecType.NEW in types[c] for c in coids) and all(
                ExecType.FILL in types[c] for c in to_fill
            ):
                break
        reports.poll(2.0)  # anything more (a duplicate) would show now
        assert stage.poll() is None, "the last instance must still be running"
    finally:
        stage.terminate()
        stage.wait(30)
        reports.consumer.close()
    took = time.monotonic() - started

    submissions = alpaca.submission_counts()
    duplicates = {c: n for c, n in submissions.items() if n > 1}
    lost = [c for c in coids if c not in submissions]
    types = reports.types()
    text = "".join(log.read_text(errors="replace") for log in logs)
    print(
        f"\nkill loop: {kills} kills in {took:.0f} s, {sum(submissions.values())} submissions "
        f"of {ORDERS} orders, duplicates {len(duplicates)}, lost {len(lost)}, "
        f"reports {len(reports.reports)}, fills {len(reports.fills)}; after a kill: "
        f"{text.count('adopting an order the venue already has')} adopted from the venue, "
        f"{text.count('reserved but unknown to the venue')} reserved but never sent, "
        f"{text.count('refused by the order state machine')} venue events refused"
    )
    assert kills >= KILLS
    assert duplicates == {}  # zero submitted twice
    assert lost == []  # every approved order reached the venue
    assert set(submissions) == set(coids)
    for coid in coids:
        # one NEW each (the loopback accepts every order), nothing rejected
        assert Counter(types[coid])[ExecType.NEW] == 1, (coid, types[coid])
        assert ExecType.REJECTED not in types[coid], (coid, types[coid])
    ids = Counter(r.report_id for r in reports.reports)
    assert [r for r, n in ids.items() if n > 1] == []
    # the orders filled at the venue (live or while the stage was down) have one fill each
    for coid in to_fill:
        assert Counter(types[coid])[ExecType.FILL] == 1, (coid, types[coid])
    booked = Counter(f.client_order_id for f in reports.fills)
    assert booked == dict.fromkeys(to_fill, 1)
    assert all(f.quantity == to_fixed(3) and f.price == to_fixed("187.25") for f in reports.fills)
