"""README command one, as a new user runs it: one ward ready, one not ready, within a minute."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.e2e


def test_demo_shows_one_ward_ready_and_one_not_ready(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--once", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "1/" in out and "ready" in out
    assert "ward-binh-thoi" in out or "Binh Thoi" in out
    assert "/api/v1/wards" in out and "/metrics" in out
