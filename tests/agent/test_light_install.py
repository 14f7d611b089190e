"""`pip install wardready` is the agent alone: a wheel built from this tree, installed into a
clean venv from the agent's wheels only, runs a check and pulls in no collector dependency."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, need, need_root

COLLECTOR_ONLY = {"fastapi", "starlette", "uvicorn", "uvloop", "sqlalchemy", "alembic", "jinja2",
                  "babel", "pyicu-wheels", "httptools"}  # fmt: skip


def run(*argv: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                          timeout=timeout, cwd="/")  # fmt: skip


@pytest.fixture(scope="module")
def agent_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wheelhouse = os.environ.get("WARDREADY_AGENT_WHEELHOUSE", str(ROOT / ".cache/agent-wheelhouse"))
    need(Path(wheelhouse).is_dir(), f"no agent wheelhouse at {wheelhouse} (scripts/setup.sh)")
    work = tmp_path_factory.mktemp("light")
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                "-w", work / "dist", ROOT)  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (work / "dist").glob("wardready-*.whl")
    venv = work / "venv"
    assert run(sys.executable, "-m", "venv", venv).returncode == 0
    installed = run(venv / "bin/python", "-m", "pip", "install", "-q", "--no-index",
                    "--find-links", wheelhouse, wheel)  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-2000:]
    return venv


def test_the_agent_installs_without_any_collector_dependency(agent_venv: Path) -> None:
    listed = run(agent_venv / "bin/python", "-m", "pip", "list", "--format=json")
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "wardready" in names
    assert not names & COLLECTOR_ONLY, sorted(names & COLLECTOR_ONLY)
    assert {"httpx", "apscheduler", "prometheus_client", "psutil"} <= names


def test_the_installed_agent_runs_a_check(agent_venv: Path) -> None:
    need_root()  # icmp echo over a raw socket
    version = run(agent_venv / "bin/wardready-agent", "--version")
    assert version.returncode == 0 and "0." in version.stdout, version
    done = run(agent_venv / "bin/wardready-agent", "check", "icmp", "127.0.0.1", "--json",
               timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["success"] is True


def test_the_collector_says_which_extra_it_needs(agent_venv: Path) -> None:
    done = run(agent_venv / "bin/wardready-collector", "status")
    assert done.returncode != 0
    assert "pip install 'wardready[collector]'" in done.stderr
