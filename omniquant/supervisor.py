"""`omniquant run`: start each pipeline stage as its own process and watch over them.

The supervisor only supervises: it starts the stages, shows what they do (scraping their
Prometheus endpoints and the consumer groups' lag), and stops them. It never touches the
data. Shutdown is ordered so nothing is lost: the feed stops first (its producer flushes),
then each consumer keeps going until its group has no lag, then it is asked to stop (Quix
commits and flushes its sinks on SIGTERM).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from prometheus_client.parser import text_string_to_metric_families

from omniquant.config import Settings
from omniquant.kafka import LagProbe, broker_answers, end_offsets
from omniquant.topics import TopicNames

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_STAGE_FAILED = 1
EXIT_BROKER_LOST = 3


@dataclass
class Stage:
    """One supervised process."""

    name: str
    args: list[str]  # after `omniquant stage`
    consumer_group: str | None
    inputs: list[str]  # topics whose lag this stage owns
    metrics_port: int
    is_source: bool = False
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    stopping: bool = False
    # live figures
    counters: dict[str, float] = field(default_factory=dict)
    rate_in: float = 0.0
    rate_out: float = 0.0
    peak_in: float = 0.0
    peak_out: float = 0.0
    lag: int | None = None
    _last: tuple[float, float, float] | None = None  # (time, in, out)

    @property
    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pipeline_stages(
    settings: Settings,
    *,
    symbols: Sequence[str],
    rate: float,
    ticks: int | None,
    seed: int,
    metrics_base_port: int = 0,
) -> list[Stage]:
    """The walking skeleton: feed → signals → risk gate → execution → ClickHouse sink."""
    names = TopicNames(settings.topic_prefix)
    prefix = settings.topic_prefix

    def port(i: int) -> int:
        return metrics_base_port + i if metrics_base_port else free_port()

    feed_args = ["feed", "--symbols", ",".join(symbols), "--rate", str(rate), "--seed", str(seed)]
    if ticks is not None:
        feed_args += ["--ticks", str(ticks)]
    record_topics = [
        names.trades,
        names.signals,
        names.order_requests,
        names.risk_decisions,
        names.approved_orders,
        names.execution_reports,
        names.fills,
        names.positions,
    ]
    return [
        Stage("feed", feed_args, None, [], port(0), is_source=True),
        Stage("signals", ["signals"], f"{prefix}signals", [names.trades], port(1)),
        Stage("risk-gate", ["risk-gate"], f"{prefix}risk-gate", [names.order_requests], port(2)),
        Stage(
            "execution",
            ["execution"],
            f"{prefix}execution",
            [names.approved_orders, names.trades],
            port(3),
        ),
        Stage(
            "sink-clickhouse",
            ["sink-clickhouse"],
            f"{prefix}sink-clickhouse",
            record_topics,
            port(4),
        ),
    ]


def scrape(port: int, timeout: float = 0.5) -> dict[str, float]:
    """Sum each metric sample of a stage's /metrics by name+selected label (best effort)."""
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            label = sample.labels.get("decision") or sample.labels.get("kind") or ""
            key = f"{sample.name}:{label}" if label else sample.name
            out[key] = out.get(key, 0.0) + sample.value
    return out


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        stages: list[Stage],
        *,
        duration: float | None,
        log_dir: Path,
        drain_timeout: float = 120.0,
        broker_lost_after: float = 10.0,
        on_tick: Callable[[Supervisor], None] | None = None,
        out: TextIO = sys.stdout,
    ) -> None:
        self.settings = settings
        self.stages = stages
        self.duration = duration
        self.log_dir = log_dir
        self.drain_timeout = drain_timeout
        self.broker_lost_after = broker_lost_after
        self.on_tick = on_tick
        self.out = out
        self.started_at = 0.0
        self.outcome = "running"
        self._interrupted = False
        self._lag = LagProbe(settings)

    # ---- process control -------------------------------------------------------------
    def _spawn(self, stage: Stage) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        stage.log_path = self.log_dir / f"{stage.name}.log"
        env = dict(os.environ)
        env["OMNIQUANT_METRICS_PORT"] = str(stage.metrics_port)
        env.update(self._settings_env())
        logfile = stage.log_path.open("ab")
        stage.process = subprocess.Popen(
            [sys.executable, "-m", "omniquant.cli", "stage", *stage.args],
            stdout=logfile,
            stderr=subprocess.STDOUT,
            env=env,
            # Own process group: Ctrl-C reaches only the supervisor, which stops the
            # stages in order instead of all at once.
            start_new_session=True,
        )
        logfile.close()

    def _settings_env(self) -> dict[str, str]:
        """Make children see exactly the supervisor's effective settings."""
        s = self.settings
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap(),
            "REDIS_URL": s.redis_url(),
            "OMNIQUANT_TOPIC_PREFIX": s.topic_prefix,
            "OMNIQUANT_STATE_DIR": str(s.state_dir.resolve()),
            "OMNIQUANT_CLICKHOUSE__CHDB_PATH": str(s.chdb_path.resolve()),
        }
        return env

    def _signal(self, stage: Stage, sig: int) -> None:
        if stage.process is not None and stage.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(stage.process.pid, sig)

    def _stop(self, stage: Stage, timeout: float = 30.0) -> int | None:
        stage.stopping = True
        self._signal(stage, signal.SIGTERM)
        if stage.process is None:
            return None
        try:
            return stage.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._print(f"{stage.name} did not stop within {timeout:.0f} s; killing it")
            self._signal(stage, signal.SIGKILL)
            return stage.process.wait(10)

    def _kill_all(self) -> None:
        for stage in self.stages:
            stage.stopping = True
            self._signal(stage, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for stage in self.stages:
            if stage.process is None:
                continue
            try:
                stage.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._signal(stage, signal.SIGKILL)
                stage.process.wait(5)

    def _print(self, message: str) -> None:
        print(message, file=self.out, flush=True)

    # ---- observation -----------------------------------------------------------------
    def refresh(self) -> None:
        now = time.monotonic()
        for stage in self.stages:
            stage.counters = scrape(stage.metrics_port) or stage.counters
            total_in = stage.counters.get("omniquant_messages_in_total", 0.0)
            total_out = stage.counters.get("omniquant_messages_out_total", 0.0)
            # Rates over >= 2 s windows: per-tick deltas of a 0.5 s loop are too noisy.
            if stage._last is None:
                stage._last = (now, total_in, total_out)
            elif now - stage._last[0] >= 2.0:
                dt = now - stage._last[0]
                stage.rate_in = (total_in - stage._last[1]) / dt
                stage.rate_out = (total_out - stage._last[2]) / dt
                stage.peak_in = max(stage.peak_in, stage.rate_in)
                stage.peak_out = max(stage.peak_out, stage.rate_out)
                stage._last = (now, total_in, total_out)
            if stage.consumer_group:
                try:
                    stage.lag = self._lag.lag(stage.consumer_group, stage.inputs, timeout=1.0)
                except Exception:  # lag is informative only; the broker watchdog decides
                    stage.lag = None

    # ---- main loop -------------------------------------------------------------------
    def run(self) -> int:
        previous = signal.signal(signal.SIGINT, self._on_interrupt)
        previous_term = signal.signal(signal.SIGTERM, self._on_interrupt)
        try:
            return self._run()
        finally:
            signal.signal(signal.SIGINT, previous)
            signal.signal(signal.SIGTERM, previous_term)
            self._lag.close()

    def _trades_end(self) -> int:
        try:
            return sum(
                end_offsets(self.settings, TopicNames(self.settings.topic_prefix).trades).values()
            )
        except Exception:  # informative only
            return 0

    def _on_interrupt(self, _signum: int, _frame: object) -> None:
        self._interrupted = True

    def _run(self) -> int:
        self.started_at = time.monotonic()
        self._trades_at_start = self._trades_end()
        # Consumers first so they are assigned before the feed's first record.
        for stage in reversed(self.stages):
            self._spawn(stage)
        broker_ok_at = time.monotonic()
        broker_failing = False  # the last periodic check got no answer
        next_broker_check = 0.0
        while True:
            now = time.monotonic()
            for stage in self.stages:
                code = stage.exit_code
                if code is None or stage.stopping:
                    continue
                if stage.is_source and code == 0:
                    self._print(f"{stage.name} finished its ticks")
                    stage.stopping = True
                    return self._shutdown("feed finished")
                self.outcome = f"stage {stage.name} exited with code {code}"
                self._print(
                    f"ERROR: stage '{stage.name}' exited with code {code}; log: {stage.log_path}"
                )
                self._print_log_tail(stage)
                # A stage that dies because Kafka went away: name the root cause. The
                # watchdog's history counts too: one probe at this instant can be fooled.
                broker_lost = broker_failing or not broker_answers(self.settings, timeout=2.0)
                self._kill_all()
                if broker_lost:
                    self.outcome = "Kafka broker lost"
                    self._print(
                        f"ERROR: Kafka broker at {self.settings.kafka_bootstrap()} has not "
                        "answered since before the stage died; stopping all stages"
                    )
                    return EXIT_BROKER_LOST
                return EXIT_STAGE_FAILED
            if now >= next_broker_check:
                next_broker_check = now + 2.0
                broker_failing = not broker_answers(self.settings, timeout=1.5)
                if not broker_failing:
                    broker_ok_at = now
                elif now - broker_ok_at > self.broker_lost_after:
                    self.outcome = "Kafka broker lost"
                    self._print(
                        f"ERROR: Kafka broker at {self.settings.kafka_bootstrap()} has not "
                        f"answered for {now - broker_ok_at:.0f} s; stopping all stages"
                    )
                    self._kill_all()
                    return EXIT_BROKER_LOST
            if self._interrupted:
                return self._shutdown("interrupted")
            if self.duration is not None and now - self.started_at >= self.duration:
                return self._shutdown("duration reached")
            self.refresh()
            if self.on_tick:
                self.on_tick(self)
            time.sleep(0.5)

    def _print_log_tail(self, stage: Stage, lines: int = 15) -> None:
        if stage.log_path and stage.log_path.exists():
            tail = stage.log_path.read_text(errors="replace").splitlines()[-lines:]
            for line in tail:
                self._print(f"  {stage.name}| {line}")

    def _shutdown(self, reason: str) -> int:
        self.outcome = reason
        self._print(f"stopping ({reason}): feed first, then each consumer once it has caught up")
        for stage in self.stages:
            if stage.is_source:
                code = self._stop(stage)
                # Exact: what the feed added to the trades topic during this run.
                produced = self._trades_end() - self._trades_at_start
                stage.counters = {**stage.counters, "omniquant_messages_out_total": produced}
                if code not in (0, -signal.SIGTERM, None):
                    self._print(f"ERROR: {stage.name} exited with code {code} on stop")
                    self._kill_all()
                    return EXIT_STAGE_FAILED
        deadline = time.monotonic() + self.drain_timeout
        for stage in self.stages:
            if stage.is_source:
                continue
            while time.monotonic() < deadline:
                if stage.exit_code is not None:
                    break
                try:
                    lag = self._lag.lag(stage.consumer_group or "", stage.inputs, timeout=2.0)
                except Exception:
                    lag = -1
                stage.lag = lag
                if lag == 0:
                    break
                if not broker_answers(self.settings, timeout=2.0):
                    self._print("ERROR: Kafka broker stopped answering during shutdown")
                    self._kill_all()
                    return EXIT_BROKER_LOST
                if self.on_tick:
                    self.refresh()
                    self.on_tick(self)
                time.sleep(0.25)
            else:
                self._print(f"WARNING: {stage.name} still lagging at the drain timeout")
            # Nothing left to process: this scrape holds the stage's final figures.
            stage.counters = scrape(stage.metrics_port) or stage.counters
            early = stage.exit_code
            code = self._stop(stage)
            if early is not None or code not in (0, None):
                self._print(f"ERROR: stage '{stage.name}' exited with code {code}")
                self._print_log_tail(stage)
                self._kill_all()
                return EXIT_STAGE_FAILED
        self.refresh_final()
        return EXIT_OK

    def refresh_final(self) -> None:
        """Keep the last scraped figures (the processes are gone now)."""
        for stage in self.stages:
            stage.rate_in = stage.rate_out = 0.0
