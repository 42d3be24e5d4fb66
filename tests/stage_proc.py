"""Running registered stages as their own processes against the session's services, for
integration tests: a namespace of their own, the environment `omniquant run` would give."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from core.config import Settings, load_settings
from core.kafka import ensure_topics
from omniquant.stages import topic_catalog


def stage_namespace(
    kafka_bootstrap: str, redis_url: str, state_dir: Path, label: str
) -> tuple[Settings, dict[str, str]]:
    """Settings for a fresh topic namespace (its topics created) and the matching
    environment for stage processes (caller adds OMNIQUANT_* overrides to it)."""
    prefix = f"{label}{uuid.uuid4().hex[:8]}."
    settings = load_settings(
        kafka={"bootstrap_servers": kafka_bootstrap},
        redis={"url": redis_url},
        topic_prefix=prefix,
        state_dir=state_dir,
    )
    ensure_topics(settings, topic_catalog())
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIQUANT_")}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        REDIS_URL=redis_url,
        OMNIQUANT_TOPIC_PREFIX=prefix,
        OMNIQUANT_STATE_DIR=str(state_dir),
    )
    return settings, env


def spawn_stage(stage: str, env: dict[str, str], *, output: bool = False) -> subprocess.Popen:
    """`omniquant stage <stage>` in its own process group (so a test can SIGKILL it whole);
    stdout+stderr piped when ``output``, else discarded."""
    sink = subprocess.PIPE if output else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, "-m", "omniquant.cli", "stage", stage],
        env=env,
        stdout=sink,
        stderr=subprocess.STDOUT if output else subprocess.DEVNULL,
        start_new_session=True,
    )
