"""Real SPY prices through the portfolio and risk-metrics stages (real broker), checked
against an independent numpy computation written here; each stage is SIGKILLed mid-stream
and restarted, and the outputs still equal the reference.

Input: 1,000 SPY daily closes (Lean) as trades at 16:00 New York, and one fill on the
``fills`` topic from "another producer": 1,000 shares bought at the first close. The risk
cadence is one day, so each observation is a daily close and the VaR is a one-day VaR.
"""

from __future__ import annotations

import csv
import io
import math
import os
import signal
import zipfile
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from conftest import shared_file
from kafka_read import read_until
from stage_proc import spawn_stage, stage_namespace

from core.topics import TopicNames
from producers.kafka_producer import RecordProducer
from schemas.fixedpoint import FACTOR, to_fixed
from schemas.models import Fill, RiskMetric, Side, Trade
from schemas.serde import AvroSerde

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

NY = ZoneInfo("America/New_York")
SEC = 1_000_000_000
DAYS = 1_000
SHARES = 1_000
START_CASH = 1_000_000
WINDOW = 250
MIN_RETURNS = 30
REL = 1e-9


def _spy_closes(shared_data: Path) -> tuple[list[int], list[int]]:
    """(ts ns at 16:00 New York, close raw) of the first DAYS daily bars."""
    path = shared_file(shared_data, "Lean/Data/equity/usa/daily/spy.zip")
    with zipfile.ZipFile(path) as archive:
        (name,) = archive.namelist()
        rows = list(csv.reader(io.StringIO(archive.read(name).decode())))[:DAYS]
    ts = [
        int(datetime.strptime(r[0], "%Y%m%d %H:%M").replace(hour=16, tzinfo=NY).timestamp()) * SEC
        for r in rows
    ]
    return ts, [int(r[4]) * 10**5 for r in rows]  # deci-cents → raw 1e-9


def _reference(closes: list[int]) -> dict[int, dict[str, float]]:
    """Observation index → expected figures, computed with numpy from the closes alone."""
    p = np.array(closes, dtype=np.float64) / FACTOR
    equity = START_CASH + SHARES * (p - p[0])  # bought at the first close
    returns = equity[1:] / equity[:-1] - 1.0
    peak = np.maximum.accumulate(equity)
    drawdown = (peak - equity) / peak
    out: dict[int, dict[str, float]] = {}
    for i in range(len(equity)):
        row = {
            "EQUITY": equity[i],
            "DRAWDOWN": drawdown[i],
            "MAX_DRAWDOWN": drawdown[: i + 1].max(),
            "DAILY_PNL": equity[i] - equity[i - 1] if i else 0.0,
        }
        window = returns[max(0, i - WINDOW) : i]
        if len(window) >= MIN_RETURNS:
            var99 = -np.quantile(window, 0.01, method="inverted_cdf")
            k = math.ceil(len(window) * 0.025)
            es975 = -np.sort(window)[:k].mean()
            sigma = window.std(ddof=1)
            row.update(
                VAR_99_HISTORICAL=var99 * equity[i],
                ES_975_HISTORICAL=es975 * equity[i],
                VOLATILITY=sigma,
                VAR_99_NORMAL=(2.3263478740408408 * sigma - window.mean()) * equity[i],
            )
        out[i] = row
    return out


def test_risk_metrics_of_real_prices_equal_numpy_through_kills_and_restarts(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path, shared_data: Path
) -> None:
    ts, closes = _spy_closes(shared_data)
    settings, env = stage_namespace(kafka_bootstrap, redis_url, tmp_path, "risk")
    names = TopicNames(settings.topic_prefix)
    producer = RecordProducer(settings, "test")
    producer.send(
        names.fills,
        Fill(
            fill_id="ext-1",
            client_order_id="ext-1",
            venue_order_id="ext-1",
            account="desk",
            symbol="SPY",
            side=Side.BUY,
            quantity=to_fixed(SHARES),
            price=closes[0],
            venue="EXT",
            ts_event=ts[0],
            ts_init=ts[0],
        ),
        key="SPY",
    )

    def produce_days(first: int, end: int) -> None:
        for t, price in zip(ts[first:end], closes[first:end], strict=True):
            trade = Trade(
                symbol="SPY", venue="ARCA", price=price, size=to_fixed(100), source="lean",
                ts_event=t, ts_init=t,
            )  # fmt: skip
            producer.send(names.trades, trade, key="SPY")
        producer.flush()

    produce_days(0, 300)

    env.update(
        OMNIQUANT_PORTFOLIO__ACCOUNT_CASH=f'{{"desk": "{START_CASH}"}}',
        OMNIQUANT_RISK_METRICS__CADENCE_MS=str(86_400_000),
        OMNIQUANT_RISK_METRICS__WINDOW=str(WINDOW),
        OMNIQUANT_RISK_METRICS__MIN_RETURNS=str(MIN_RETURNS),
    )
    serde = AvroSerde()
    metrics_topic = names.risk_metrics
    closes_seen = _ClosesSeen(serde)
    apps = {stage: spawn_stage(stage, env) for stage in ("portfolio", "risk-metrics")}
    try:
        # Kill each stage once mid-stream (its last checkpoint is up to a second old), feed
        # more days while it is down, restart it: it restores its state and goes on.
        for stage, after, more in (
            ("portfolio", 200, (300, 650)),
            ("risk-metrics", 500, (650, DAYS)),
        ):
            seen = _ClosesSeen(serde)
            read_until(kafka_bootstrap, metrics_topic, lambda ms, s=seen, n=after: s(ms) >= n, 180)
            os.killpg(apps[stage].pid, signal.SIGKILL)
            apps[stage].wait(10)
            produce_days(*more)
            apps[stage] = spawn_stage(stage, env)
        messages = read_until(
            kafka_bootstrap,
            metrics_topic,
            lambda ms: closes_seen(ms) >= DAYS - 1,
            300,
        )
    finally:
        for app in apps.values():
            app.terminate()
        for app in apps.values():
            app.wait(30)

    # At-least-once after a SIGKILL may repeat records: keep one per (metric, close time),
    # and a repeat must carry the same value.
    observed: dict[tuple[str, int], int] = {}
    for m in messages:
        record = serde.decode_as(m.value(), RiskMetric, topic=metrics_topic)
        key = (record.metric, record.ts_event)
        assert observed.setdefault(key, record.value) == record.value, f"{key} changed value"
        assert record.scope == "desk"
    day_of_close = {_close_ts(t): i for i, t in enumerate(ts)}
    reference = _reference(closes)
    checked = 0
    for (metric, close_ts), value in observed.items():
        i = day_of_close.get(close_ts)
        assert i is not None, f"{metric} at {close_ts} is not a daily close"
        expected = reference[i].get(metric)
        if expected is None:
            continue
        assert math.isclose(value / FACTOR, expected, rel_tol=REL, abs_tol=1e-9), (
            metric,
            i,
            value / FACTOR,
            expected,
        )
        checked += 1
    assert len({k[1] for k in observed}) == DAYS - 1  # every close but the last, once
    assert checked > (DAYS - 1) * 4


def _close_ts(t: int) -> int:
    """The daily bar close (next UTC midnight) of an observation at ``t``."""
    day = 86_400 * SEC
    return t - t % day + day


class _ClosesSeen:
    """Counts the distinct closes with an EQUITY metric among the messages read so far
    (incrementally: it is called after every message)."""

    def __init__(self, serde: AvroSerde) -> None:
        self.serde = serde
        self.read = 0
        self.closes: set[int] = set()

    def __call__(self, messages: list) -> int:
        for m in messages[self.read :]:
            record = self.serde.decode_as(m.value(), RiskMetric)
            if record.metric == "EQUITY":
                self.closes.add(record.ts_event)
        self.read = len(messages)
        return len(self.closes)
