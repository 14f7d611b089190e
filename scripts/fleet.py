"""Start a collector and agents as real processes on this machine: for the demo and the tests.

Every process is started by us, tracked by PID and stopped by that PID; nothing here binds
anything but loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(predicate: Any, timeout: float, step: float = 0.2, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            last = predicate()
            if last:
                return last
        time.sleep(step)
    raise TimeoutError(f"{what} not met within {timeout:g} s (last: {last!r})")


@dataclass
class Proc:
    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = self.log.open("ab")
        self.popen = subprocess.Popen(
            self.argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            cwd=ROOT,
        )
        out.close()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        return self.popen.returncode

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def _cli(module: str) -> list[str]:
    return [sys.executable, "-m", module]


@dataclass
class Collector:
    workdir: Path
    profile: Path
    port: int = 0
    wards_csv: Path = ROOT / "data" / "hcmc_pilot_units.csv"
    serve_args: Sequence[str] = ()
    proc: Proc | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()

    @property
    def db(self) -> str:
        return f"sqlite:///{self.workdir / 'collector.db'}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [*_cli("collector"), "--db", self.db, "--profile", str(self.profile), *args]
        return subprocess.run(
            argv, capture_output=True, text=True, check=check, cwd=ROOT, timeout=60
        )

    @property
    def viewer_token_file(self) -> Path:
        """A viewer token (made by setup): reads need one, as does /metrics."""
        return self.workdir / "viewer.token"

    def setup(self) -> None:
        self.cli("wards", "import", str(self.wards_csv))
        out = self.cli("token", "create", "--role", "viewer", "--name", "fleet").stdout
        self.viewer_token_file.write_text(out.strip().splitlines()[-1] + "\n")
        self.viewer_token_file.chmod(0o600)

    def token(self, ward: str, agent: str) -> str:
        out = self.cli("token", "create", "--ward", ward, "--agent", agent).stdout
        return [line for line in out.splitlines() if line.strip()][-1].strip()

    def start(self) -> Collector:
        argv = [
            *_cli("collector"),
            "--db", self.db,
            "--profile", str(self.profile),
            "serve", "--listen", f"127.0.0.1:{self.port}", *self.serve_args,
        ]  # fmt: skip
        self.proc = Proc("collector", argv, self.workdir / "collector.log").start()
        wait_until(self.healthy, 30, what="collector /healthz")
        return self

    def healthy(self) -> bool:
        return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()

    def get(self, path: str) -> Any:
        token = self.viewer_token_file.read_text().strip()
        r = httpx.get(f"{self.url}{path}", timeout=5, headers={"Authorization": f"Bearer {token}"})
        r.raise_for_status()
        return r.json() if "json" in r.headers.get("content-type", "") else r.text

    def ward(self, ward_id: str) -> dict[str, Any]:
        data: dict[str, Any] = self.get(f"/api/v1/wards/{ward_id}")
        return data


@dataclass
class Agent:
    workdir: Path
    ward: str
    name: str
    collector: Collector
    checks: Sequence[dict[str, Any]]
    interval: str = "5s"
    timeout: str = "4s"
    push_interval: str = "1s"
    metrics_port: int = 0
    # Extra environment for the agent, e.g. libfaketime's for a PC whose clock is wrong.
    env: dict[str, str] = field(default_factory=dict)
    proc: Proc | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.metrics_port = self.metrics_port or free_port()

    @property
    def config_path(self) -> Path:
        return self.workdir / f"{self.ward}.{self.name}.yaml"

    def write_config(self, token: str) -> Path:
        token_file = self.workdir / f"{self.ward}.{self.name}.token"
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        config = {
            "ward": self.ward,
            "agent": self.name,
            "collector": {
                "url": self.collector.url,
                "token_file": str(token_file),
                "push_interval": self.push_interval,
                "timeout": "3s",
            },
            "spool": {"path": str(self.workdir / f"{self.ward}.{self.name}.spool.db")},
            "metrics": {"listen": f"127.0.0.1:{self.metrics_port}"},
            "defaults": {"interval": self.interval, "timeout": self.timeout},
            "checks": list(self.checks),
        }
        self.config_path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False))
        return self.config_path

    def start(self, token: str | None = None) -> Agent:
        if token is not None or not self.config_path.exists():
            self.write_config(token or self.collector.token(self.ward, self.name))
        argv = [*_cli("agent"), "run", "-c", str(self.config_path)]
        log = self.workdir / f"{self.ward}.{self.name}.log"
        self.proc = Proc(f"agent {self.ward}", argv, log, self.env).start()
        return self

    def stop(self) -> int | None:
        return self.proc.stop() if self.proc else None

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2).text


@contextlib.contextmanager
def stopping(*things: Collector | Agent | Proc) -> Iterator[None]:
    try:
        yield
    finally:
        for thing in reversed(things):
            with contextlib.suppress(Exception):
                thing.stop()


def http_server(directory: Path, port: int, log: Path) -> Proc:
    """A real local web server (Python's own http.server) standing in for a shared system."""
    argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
            "--directory", str(directory)]  # fmt: skip
    proc = Proc("http.server", argv, log).start()
    wait_until(
        lambda: httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200,
        15,
        what="http.server",
    )
    return proc


def dump(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, indent=2)
