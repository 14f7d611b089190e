"""Tests of the monitoring kit: prometheus/ (scrape config, rules, Alertmanager) and grafana/.

Shared helpers live here: where the files are, and how a real server (Prometheus,
Alertmanager, the collector) is started on loopback, waited for, and stopped by its PID.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tests.helpers import ROOT

PROMETHEUS_DIR = ROOT / "prometheus"
RULES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
ALERTMANAGER_YML = PROMETHEUS_DIR / "alertmanager.yml"
ROUTE_CASES = PROMETHEUS_DIR / "alertmanager-routes.test.yml"
GRAFANA_DIR = ROOT / "grafana"
DASHBOARDS = sorted((GRAFANA_DIR / "dashboards").glob("*.json"))
DATASOURCE_UID = "wardready-prometheus"

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, step: float = 0.2) -> T:
    """``probe()`` until it returns something truthy; errors count as not yet."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            result = probe()
        except Exception as exc:  # a server still starting refuses or answers 503
            last = exc
        else:
            if result:
                return result
            last = result
        time.sleep(step)
    raise AssertionError(f"{what}: not within {timeout:g} s (last: {last!r})")


def run(argv: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False
    )


@contextlib.contextmanager
def process(argv: Sequence[str], log: Path, **popen: Any) -> Iterator[subprocess.Popen[bytes]]:
    """A program running for the duration of the block, stopped by its own PID."""
    with log.open("wb") as out:
        proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, **popen)
    try:
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)


def tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""
