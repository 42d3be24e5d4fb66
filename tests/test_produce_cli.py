"""`omniquant produce`: a missing credential is a clear error naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CREDENTIAL_VARS = (
    "MASSIVE_API_KEY",
    "POLYGON_API_KEY",
    "APCA_API_KEY_ID",
    "APCA_API_SECRET_KEY",
    "KITE_API_KEY",
    "KITE_API_SECRET",
    "KITE_ACCESS_TOKEN",
)


@pytest.mark.parametrize(
    ("venue", "symbols", "named"),
    [
        ("polygon", "AAPL", "MASSIVE_API_KEY"),
        ("alpaca", "AAPL", "APCA_API_KEY_ID"),
        ("alpaca-trading", "AAPL", "APCA_API_SECRET_KEY"),
        ("kite", "NSE:INFY", "KITE_ACCESS_TOKEN"),
    ],
)
def test_missing_credentials_fail_at_start_naming_the_variable(
    venue: str, symbols: str, named: str, tmp_path
) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in CREDENTIAL_VARS and not k.startswith("OMNIQUANT_FEEDS")
    }
    out = subprocess.run(
        [sys.executable, "-m", "omniquant.cli", "produce", venue, "--symbols", symbols],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    assert named in " ".join(out.stderr.split())


def test_unknown_venue_is_refused(tmp_path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "omniquant.cli", "produce", "nasdaq", "--symbols", "AAPL"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    assert "nasdaq" in out.stderr
