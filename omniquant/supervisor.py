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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from core.config import KafkaSettings, Settings
from core.kafka import EXIT_TRANSACTION_STALLED, LagProbe, end_offsets
from core.topics import TopicNames
from omniquant.stages import CONSUMED, PRODUCED, STAGES, StageSpec

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_STAGE_FAILED = 1
EXIT_BROKER_LOST = 3


@dataclass
class Stage:
    """One supervised process: a registered stage and how this run started it."""

    spec: StageSpec
    args: list[str]  # after `omniquant stage`
    consumer_group: str | None
    inputs: list[str]  # topics whose lag this stage owns
    metrics_port: int
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    stopping: bool = False
    # live figures: the last scrape of the stage's /metrics
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)
    rate_in: float = 0.0
    rate_out: float = 0.0
    peak_in: float = 0.0
    peak_out: float = 0.0
    lag: int | None = None
    produced_override: float | None = None  # exact count for a source, set at its stop
    restarted_at: list[float] = field(default_factory=list)  # monotonic times, this run
    _last: tuple[float, float, float] | None = None  # (time, in, out)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def is_source(self) -> bool:
        return self.spec.is_source

    @property
    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    @property
    def consumed(self) -> float:
        return CONSUMED.read(self.samples)

    @property
    def produced(self) -> float:
        if self.produced_override is not None:
            return self.produced_override
        return PRODUCED.read(self.samples)

    def figure(self, label: str) -> float:
        """The value of one of the stage's registered live figures, by its label."""
        for item in self.spec.figures:
            if item.label == label:
                if item.metric is PRODUCED.metric and self.produced_override is not None:
                    return self.produced_override
                return item.read(self.samples)
        raise KeyError(f"stage {self.name} has no figure {label!r}")

    def detail(self) -> str:
        return "  ".join(
            f"{f.label} {f.format_value(self.figure(f.label))}" for f in self.spec.figures
        )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stage_args(spec: StageSpec, options: Mapping[str, Any]) -> list[str]:
    """`omniquant stage NAME --opt value ...` arguments for a registered stage."""
    args = [spec.name]
    for option in spec.options:
        value = options.get(option.name, option.default)
        if value is None:
            continue
        if isinstance(value, list | tuple):
            value = ",".join(str(v) for v in value)
        args += [option.flag, str(value)]
    return args


def pipeline_stages(
    settings: Settings,
    *,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    metrics_base_port: int = 0,
    stages: Sequence[StageSpec] = STAGES,
) -> list[Stage]:
    """Every registered stage, as this run starts it (``options`` per stage name)."""
    names = TopicNames(settings.topic_prefix)
    options = options or {}

    def port(i: int) -> int:
        return metrics_base_port + i if metrics_base_port else free_port()

    return [
        Stage(
            spec=spec,
            args=stage_args(spec, options.get(spec.name, {})),
            consumer_group=spec.consumer_group(settings.topic_prefix),
            inputs=spec.input_topics(names),
            metrics_port=port(i),
        )
        for i, spec in enumerate(stages)
    ]


def scrape(port: int, timeout: float = 0.5) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a stage's /metrics, summed per (name, labels) (best effort)."""
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            key = (sample.name, tuple(sorted(sample.labels.items())))
            out[key] = out.get(key, 0.0) + sample.value
    return out


def account_figures(stages: Sequence[Stage]) -> dict[str, dict[str, float]]:
    """account → {figure label: value}, over every stage's per-account figures."""
    out: dict[str, dict[str, float]] = {}
    for stage in stages:
        for item in stage.spec.account_figures:
            for account, value in item.read_by(stage.samples, "account").items():
                out.setdefault(account, {})[item.label] = value
    return out


_IDENTITY_FIELDS = (
    "security_protocol",
    "sasl_mechanism",
    "sasl_username",
    "sasl_password",
    "ssl_ca_location",
    "ssl_certificate_location",
    "ssl_key_location",
    "ssl_key_password",
    "client_id",
)


def kafka_identity_env(kafka: KafkaSettings) -> dict[str, str]:
    """OMNIQUANT_KAFKA__* variables that give a child process this identity (secrets
    revealed: only for a child's environment)."""
    env = {}
    for name in _IDENTITY_FIELDS:
        value = getattr(kafka, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        env[f"OMNIQUANT_KAFKA__{name.upper()}"] = str(value)
    return env


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
        stage_kafka: Callable[[str], KafkaSettings] | None = None,
    ) -> None:
        """``stage_kafka``: the Kafka client settings (identity) of each stage by name; by
        default every stage gets the supervisor's own."""
        self.settings = settings
        self.stage_kafka = stage_kafka or (lambda _name: settings.kafka)
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
        # one client kept connected: a new one per check pays a TLS + SCRAM handshake
        # (quiet: a lost broker is reported by the supervisor, not by librdkafka's log lines)
        self._admin = AdminClient(
            {**settings.kafka_client_config(), "log_level": 0, "error_cb": lambda _err: None}
        )

    def _broker_answers(self, timeout: float) -> bool:
        try:
            self._admin.list_topics(timeout=timeout)
        except KafkaException:
            return False
        return True

    # ---- process control -------------------------------------------------------------
    def _spawn(self, stage: Stage) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        stage.log_path = self.log_dir / f"{stage.name}.log"
        env = dict(os.environ)
        env["OMNIQUANT_METRICS_PORT"] = str(stage.metrics_port)
        env.update(self._settings_env(stage.name))
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

    def _settings_env(self, stage: str) -> dict[str, str]:
        """Make children see exactly the supervisor's effective settings (a stage's Kafka
        credentials its own: the environment is where a component's secrets come from)."""
        s = self.settings
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap(),
            "REDIS_URL": s.redis_url(),
            "OMNIQUANT_TOPIC_PREFIX": s.topic_prefix,
            "OMNIQUANT_STATE_DIR": str(s.state_dir.resolve()),
            "OMNIQUANT_CLICKHOUSE__CHDB_PATH": str(s.chdb_path.resolve()),
        }
        env.update(kafka_identity_env(self.stage_kafka(stage)))
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
            stage.samples = scrape(stage.metrics_port) or stage.samples
            total_in, total_out = stage.consumed, stage.produced
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

    def _outputs_end(self) -> int:
        """Sum of the end offsets of every topic the sources write."""
        names = TopicNames(self.settings.topic_prefix)
        topics = {names.name(t) for s in self.stages if s.is_source for t in s.spec.outputs}
        try:
            return sum(sum(end_offsets(self.settings, t).values()) for t in sorted(topics))
        except Exception:  # informative only
            return 0

    def _on_interrupt(self, _signum: int, _frame: object) -> None:
        self._interrupted = True

    def _run(self) -> int:
        self.started_at = time.monotonic()
        self._outputs_at_start = self._outputs_end()
        # Consumers first so they are assigned before the feed's first record.
        for stage in reversed(self.stages):
            self._spawn(stage)
        self._wait_until_up()
        # The duration counts from here: on a loaded machine nine interpreters take a
        # while to start, and a short run would otherwise stop stages still starting.
        self.started_at = time.monotonic()
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
                if self._restart(stage, code, now):
                    continue
                self.outcome = f"stage {stage.name} exited with code {code}"
                self._print(
                    f"ERROR: stage '{stage.name}' exited with code {code}; log: {stage.log_path}"
                )
                self._print_log_tail(stage)
                # A stage that dies because Kafka went away: name the root cause. The
                # watchdog's history counts too: one probe at this instant can be fooled.
                broker_lost = broker_failing or not self._broker_answers(timeout=2.0)
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
                broker_failing = not self._broker_answers(timeout=1.5)
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

    def _wait_until_up(self, timeout_s: float = 120.0) -> None:
        """Until every stage serves its metrics (it has started) or has exited (the main
        loop reports that), at most ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        waiting = list(self.stages)
        while waiting and time.monotonic() < deadline and not self._interrupted:
            waiting = [s for s in waiting if s.exit_code is None and not scrape(s.metrics_port)]
            if waiting:
                time.sleep(0.2)

    # a stage that holds nothing of record, or one whose Kafka transaction stalled, is
    # started again at most this often
    RESTARTS_PER_WINDOW = 5
    RESTART_WINDOW_S = 600.0

    def _restart(self, stage: Stage, code: int, now: float, *, draining: bool = False) -> bool:
        """Start ``stage`` again if its exit allows it; say so."""
        if not self._may_restart(stage, code, now, draining=draining):
            return False
        self._print(
            f"WARNING: stage '{stage.name}' exited with code {code}; starting it again "
            f"(restart {len(stage.restarted_at)} in {self.RESTART_WINDOW_S:.0f} s); "
            f"log: {stage.log_path}"
        )
        self._print_log_tail(stage, lines=5)
        self._spawn(stage)
        return True

    def _may_restart(self, stage: Stage, code: int, now: float, *, draining: bool = False) -> bool:
        # EXIT_TRANSACTION_STALLED: a transactional stage's own "start me again"; its work
        # is committed in Kafka transactions, so a new instance resumes it exactly. While
        # the run drains it is started again too: what it has not committed is still to do.
        stalled = code == EXIT_TRANSACTION_STALLED
        if not (stage.spec.restart_on_failure or stalled):
            return False
        if self._interrupted and not (draining and stalled):
            return False
        stage.restarted_at = [t for t in stage.restarted_at if now - t < self.RESTART_WINDOW_S]
        if len(stage.restarted_at) >= self.RESTARTS_PER_WINDOW:
            return False  # dying over and over: a real fault, stop and say so
        stage.restarted_at.append(now)
        return True

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
                # Exact: what the sources added to their topics during this run.
                stage.produced_override = self._outputs_end() - self._outputs_at_start
                if code not in (0, -signal.SIGTERM, None):
                    self._print(f"ERROR: {stage.name} exited with code {code} on stop")
                    self._kill_all()
                    return EXIT_STAGE_FAILED
        deadline = time.monotonic() + self.drain_timeout
        for stage in self.stages:
            if stage.is_source:
                continue
            while time.monotonic() < deadline:
                code = stage.exit_code
                if code is not None:
                    if self._restart(stage, code, time.monotonic(), draining=True):
                        continue
                    break
                try:
                    lag = self._lag.lag(stage.consumer_group or "", stage.inputs, timeout=2.0)
                except Exception:
                    lag = -1
                stage.lag = lag
                if lag == 0:
                    break
                if not self._broker_answers(timeout=2.0):
                    self._print("ERROR: Kafka broker stopped answering during shutdown")
                    self._kill_all()
                    return EXIT_BROKER_LOST
                if self.on_tick:
                    self.refresh()
                    self.on_tick(self)
                time.sleep(0.25)
            else:
                self._print(
                    f"WARNING: {stage.name} still lagging at the drain timeout: "
                    f"{self._lag_detail(stage)}"
                )
            # Nothing left to process: this scrape holds the stage's final figures.
            stage.samples = scrape(stage.metrics_port) or stage.samples
            early = stage.exit_code
            code = self._stop(stage)
            if early is not None or code not in (0, None):
                self._print(f"ERROR: stage '{stage.name}' exited with code {code}")
                self._print_log_tail(stage)
                self._kill_all()
                return EXIT_STAGE_FAILED
        self.refresh_final()
        return EXIT_OK

    def _lag_detail(self, stage: Stage) -> str:
        try:
            behind = self._lag.behind(stage.consumer_group or "", stage.inputs, timeout=2.0)
        except Exception as exc:  # a diagnostic: never the reason a shutdown fails
            return f"(lag unknown: {exc})"
        parts = [f"{topic}[{p}] {n}" for (topic, p), n in sorted(behind.items())]
        return ", ".join(parts[:8]) + (f" and {len(parts) - 8} more" if len(parts) > 8 else "")

    def refresh_final(self) -> None:
        """Keep the last scraped figures (the processes are gone now)."""
        for stage in self.stages:
            stage.rate_in = stage.rate_out = 0.0
