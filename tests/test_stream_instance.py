"""An exactly-once stream app's transactional id is stable per instance and unique across
instances: a restart fences (and aborts the open transaction of) the instance it replaces."""

from __future__ import annotations

from pathlib import Path

from core.config import load_settings
from streams.runtime import StreamApp, instance_id


def test_the_id_is_kept_in_the_state_directory(tmp_path: Path) -> None:
    first = instance_id(tmp_path / "a")
    assert instance_id(tmp_path / "a") == first  # a restart on the same state
    assert instance_id(tmp_path / "b") != first  # another instance's state
    assert (tmp_path / "a" / "instance-id").read_text().strip() == first
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["instance-id"]  # no scratch left


def _transactional_id(app: StreamApp) -> str:
    return str(app.app._producer._producer._producer_config["transactional.id"])


def test_a_restarted_stage_reuses_its_transactional_id(tmp_path: Path) -> None:
    settings = load_settings(
        kafka={"bootstrap_servers": "127.0.0.1:1"},
        state_dir=tmp_path,
        topic_prefix="t.",
    )
    first = StreamApp(settings, "bars")
    assert first.processing_guarantee == "exactly-once"  # the default
    plain = load_settings(
        kafka={"bootstrap_servers": "127.0.0.1:1"},
        state_dir=tmp_path,
        streams={"exactly_once": False},
    )
    assert StreamApp(plain, "bars").processing_guarantee == "at-least-once"
    again = StreamApp(settings, "bars")
    elsewhere = StreamApp(settings.model_copy(update={"state_dir": tmp_path / "b"}), "bars")
    assert _transactional_id(first) == _transactional_id(again)
    assert _transactional_id(first).startswith("t.bars-")  # the ACL prefix: the group
    assert _transactional_id(elsewhere) != _transactional_id(first)
