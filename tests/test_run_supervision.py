"""`omniquant run` reports a lost broker or a dead stage and exits non-zero instead of hanging."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.config import load_settings
from core.kafka import EXIT_TRANSACTION_STALLED, LagProbe, end_offsets
from omniquant.stack.kafka import LocalKafka
from omniquant.supervisor import free_port

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def _wait_for_line(
    proc: subprocess.Popen[str], needle: str, timeout: float, seen: list[str]
) -> None:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line:
            seen.append(line)
            if needle in line:
                return
        elif proc.poll() is not None:
            break
        else:
            time.sleep(0.1)
    raise AssertionError(f"{needle!r} not seen; output:\n{''.join(seen)[-3000:]}")


def _run_env(bootstrap: str, redis_url: str, state_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIQUANT_")}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        REDIS_URL=redis_url,
        OMNIQUANT_STATE_DIR=str(state_dir),
        OMNIQUANT_TOPIC_PREFIX="sup.",
    )
    return env


def test_killing_the_broker_mid_run_makes_run_exit_non_zero(redis_url: str, tmp_path: Path) -> None:
    # A broker of its own: this test kills it.
    kafka = LocalKafka(
        state_dir=tmp_path / "stack",
        port=free_port(),
        controller_port=free_port(),
        heap="384m",
        start_timeout_s=90,
    )
    kafka.start()
    bootstrap = f"127.0.0.1:{kafka.port}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "omniquant.cli",
            "run",
            "--duration",
            "300",
            "--rate",
            "200",
            "--no-live",
        ],
        env=_run_env(bootstrap, redis_url, tmp_path / "state"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen: list[str] = []
    try:
        _wait_for_line(proc, "logs:", 120, seen)  # stages are being started
        # A run in progress, not a start-up: wait until the signals app has committed
        # processed trades (its lag is below what the feed has written).
        settings = load_settings(kafka={"bootstrap_servers": bootstrap}, topic_prefix="sup.")
        probe = LagProbe(settings)
        deadline = time.monotonic() + 90
        try:
            while True:
                written = sum(end_offsets(settings, "sup.market.trades").values())
                lag = probe.lag("sup.signals", ["sup.market.trades"])
                if written > 100 and lag < written:
                    break
                assert time.monotonic() < deadline, "the pipeline never started processing"
                time.sleep(0.2)
        finally:
            probe.close()
        pid = int((tmp_path / "stack" / "kafka" / "kafka.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        code = proc.wait(timeout=120)
        took = time.monotonic() - killed_at
        output = "".join(seen) + (proc.stdout.read() if proc.stdout else "")
    finally:
        if proc.poll() is None:
            proc.kill()
        kafka.stop()
    assert code == 3, output[-3000:]
    assert "Kafka broker" in output and "has not answered" in output
    assert took < 90


# Loaded by every interpreter of the run (PYTHONPATH): in the risk gate, the first Kafka
# transaction call made once the marker file exists blocks for good, as librdkafka's
# send_offsets_to_transaction does after a coordinator's broker dies (librdkafka#5511).
STALL_ONCE = """
import os, sys, time
if "risk-gate" in sys.argv:
    from quixstreams.kafka import producer as _quix

    def _stall_once(original):
        def call(*args, **kwargs):
            marker = os.environ["OQ_TEST_STALL_MARKER"]
            if os.path.exists(marker):
                os.unlink(marker)
                print("test: this transaction call blocks for good", flush=True)
                time.sleep(3600)
            return original(*args, **kwargs)
        return call

    for _name in ("send_offsets_to_transaction", "commit_transaction"):
        setattr(_quix.Producer, _name, _stall_once(getattr(_quix.Producer, _name)))
"""


def test_a_stage_that_dies_is_reported_with_its_exit_code(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    env = _run_env(kafka_bootstrap, redis_url, tmp_path / "state")
    env["OMNIQUANT_TOPIC_PREFIX"] = f"die{os.getpid()}."
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(STALL_ONCE)
    marker = tmp_path / "stall-risk-gate"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(hooks), env.get("PYTHONPATH")) if p)
    env["OQ_TEST_STALL_MARKER"] = str(marker)
    env["OMNIQUANT_KAFKA__TRANSACTION_STALL_S"] = "3"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "omniquant.cli",
            "run",
            "--duration",
            "300",
            "--rate",
            "50",
            "--no-live",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen: list[str] = []
    try:
        _wait_for_line(proc, "risk-gate", 120, seen)
        _wait_for_line(proc, "logs:", 60, seen)
        # The lag monitor holds nothing of record: killed (as librdkafka's abort would,
        # librdkafka#4605), it is started again and the run goes on.
        monitor = _child_stage(proc.pid, "lag-monitor")
        os.kill(monitor, signal.SIGABRT)
        _wait_for_line(proc, "stage 'lag-monitor' exited with code -6; starting it again", 30, seen)
        again = _child_stage(proc.pid, "lag-monitor")
        assert again != monitor and proc.poll() is None
        # The risk gate's transaction commit never returns: its watchdog ends it with 75,
        # a transactional stage's "start me again", and the supervisor does.
        stalled = _child_stage(proc.pid, "risk-gate")
        marker.touch()
        _wait_for_line(
            proc,
            f"stage 'risk-gate' exited with code {EXIT_TRANSACTION_STALLED}; starting it again",
            90,
            seen,
        )
        assert not marker.exists(), "the gate's transaction call never ran"
        restarted = _child_stage(proc.pid, "risk-gate")
        assert restarted != stalled and proc.poll() is None
        # A stage of record killed as an OOM killer would: the run stops and says which.
        os.kill(restarted, signal.SIGKILL)
        code = proc.wait(timeout=60)
        output = "".join(seen) + (proc.stdout.read() if proc.stdout else "")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 1, output[-3000:]
    assert "stage 'risk-gate' exited with code -9" in output


def _child_stage(parent: int, stage: str, timeout: float = 60.0) -> int:
    """The pid of the supervisor's live child process running ``stage``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["pgrep", "-f", f"omniquant.cli stage {stage}"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        mine = [int(p) for p in out if _is_child_of(int(p), parent)]
        if mine:
            return mine[0]
        time.sleep(0.2)
    raise AssertionError(f"no {stage} stage under the supervisor")


def _is_child_of(pid: int, parent: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return int(stat.rsplit(")", 1)[1].split()[1]) == parent
