"""The command line: `check` on the spot, and `run` as a real process that stops cleanly."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.cli import _param_pairs, build_parser, cmd_check, humanize, main
from checks.registry import REGISTRY
from shared.wire import Batch
from tests.gadget import GADGET

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "agent-token-7c1d0e"


def agent_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent", *args]


def run_agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(agent_cmd(*args), capture_output=True, text=True, cwd=ROOT, timeout=60)


@pytest.fixture
def listening() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield s.getsockname()[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Site:
    """A local web server with one page, for the http check; it records ingest batches too."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.auth: set[str] = set()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._answer(200, b"<h1>Xin ch\xc3\xa0o, Hello</h1>", "text/html; charset=utf-8")

            def do_POST(self) -> None:
                batch = Batch.model_validate_json(
                    self.rfile.read(int(self.headers["Content-Length"]))
                )
                owner.batches.append(batch)
                owner.auth.add(self.headers.get("Authorization", ""))
                last = batch.results[-1].seq if batch.results else None
                body = {"accepted": len(batch.results), "duplicates": 0, "last_seq": last}
                self._answer(200, json.dumps(body).encode(), "application/json")

            def _answer(self, code: int, body: bytes, kind: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def delivered(self) -> list[int]:
        return [r.seq for b in list(self.batches) for r in b.results]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def site() -> Iterator[Site]:
    s = Site()
    yield s
    s.close()


# -- check -----------------------------------------------------------------------------------


def test_check_tcp_json_success(listening: int) -> None:
    done = run_agent("check", "tcp", f"127.0.0.1:{listening}", "--json", "--timeout", "2s")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["success"] is True and out["reason"] == "ok"
    assert out["check"] == "tcp" and out["target"] == f"127.0.0.1:{listening}"
    assert 0 < out["metrics"]["connect_seconds"] < 2
    assert out["info"]["address"] == "127.0.0.1"
    assert 0 < out["duration_seconds"] < 3


def test_check_tcp_refused_exits_1() -> None:
    done = run_agent("check", "tcp", f"127.0.0.1:{free_port()}", "--json", "--timeout", "2")
    assert done.returncode == 1, done.stderr
    out = json.loads(done.stdout)
    assert (out["success"], out["reason"]) == (False, "refused")


def test_check_http_with_yaml_params_and_table(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"{site.url}/"
    code = main(
        [
            "check",
            "http",
            url,
            "--param",
            "valid_status=[200,301]",
            "--param",
            "body_regex=[Hh]ello",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].split() == ["check", "http"]
    assert lines[1].split() == ["target", url]
    assert lines[2].split() == ["success", "yes"]
    assert lines[3].split() == ["reason", "ok"]
    assert lines[4].startswith("duration") and lines[4].endswith(" ms")
    assert "metrics" in lines and "info" in lines
    metric_rows = lines[lines.index("metrics") + 1 : lines.index("info")]
    names = [row.split()[0] for row in metric_rows]
    assert names == sorted(names) and names

    assert main(["check", "http", url, "--param", "valid_status=[404]"]) == 1
    assert "NO" in capsys.readouterr().out


BAD_INPUT = [
    (["check", "tcpp", "x:1"], f"unknown check type 'tcpp' (known: {', '.join(sorted(REGISTRY))})"),
    (["check", "tcp", "x:1", "--param", "tls=maybe"], "--param tls: Input should be a valid bool"),
    (["check", "tcp", "x:1", "--param", "bogus=1"], "--param bogus: unknown key (allowed: "),
    (["check", "tcp", "x:1", "--param", "tls"], "--param 'tls': expected KEY=VALUE"),
    (["check", "icmp", "x", "--param", "count=0"], "--param count: Input should be greater than"),
    (["check", "tcp", "x:1", "--timeout", "soon"], "--timeout: invalid duration 'soon'"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_INPUT)
def test_check_bad_input_exits_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(message)


def test_param_values_are_yaml() -> None:
    assert _param_pairs(
        [
            "count=20",
            "valid_status=[200,301]",
            "verify=false",
            "server=10.0.0.53",
            "body_regex=[a-z]+",
            "name=Phường",
        ]
    ) == {
        "count": 20,
        "valid_status": [200, 301],
        "verify": False,
        "server": "10.0.0.53",
        "body_regex": "[a-z]+",
        "name": "Phường",
    }


@pytest.mark.parametrize(
    ("metric", "value", "shown"),
    [
        ("rtt_avg_seconds", 0.01234, "12.3 ms"),
        ("rtt_min_seconds", 0.0000411, "41.1 µs"),
        ("jitter_seconds", 0.0, "0 ms"),
        ("connect_seconds", 2.5, "2.5 s"),
        ("cert_expiry_seconds", 90 * 86400, "90.0 d"),
        ("bytes_free", 3 * 1024**3, "3 GiB"),
        ("memory_bytes", 512, "512 B"),
        ("loss_ratio", 0.1, "10 %"),
        ("packets_sent", 10.0, "10"),
        ("boot_time_seconds", 1_700_000_000, "2023-11-14 22:13:20 UTC"),
        ("link_speed_bits_per_second", 1e9, "1 Gbit/s"),
        ("download_bytes_per_second", 1.25e6, "10 Mbit/s"),
        ("temperature_celsius", 61.5, "61.5 °C"),
    ],
)
def test_humanize(metric: str, value: float, shown: str) -> None:
    assert humanize(metric, value) == shown


# -- run -------------------------------------------------------------------------------------


def write_config(tmp_path: Path, collector_url: str, target_port: int) -> Path:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"""\
ward: ward-minh-phung
agent: pc-01
collector:
  url: {collector_url}
  token_file: token
  push_interval: 300ms
  timeout: 1s
spool:
  path: spool.db
metrics:
  listen: 127.0.0.1:0
defaults:
  interval: 1s
  timeout: 500ms
checks:
  - name: port
    type: tcp
    target: 127.0.0.1:{target_port}
    labels: {{role: svc, site: "Phường Minh Phụng"}}
""",
        encoding="utf-8",
    )
    return config


def wait_for(predicate: Callable[[], Any], seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {seconds} s")


class Daemon:
    def __init__(self, config: Path, log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                agent_cmd("run", "-c", str(config)), stdout=out, stderr=out, cwd=ROOT
            )

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def metrics_port(self) -> int:
        found = wait_for(
            lambda: re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", self.text()),
            15,
            "metrics endpoint logged",
        )
        return int(found.group(1))

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                return self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
                raise
        return self.proc.returncode


def spool_rows(path: Path) -> list[int]:
    with sqlite3.connect(path) as db:
        return [row[0] for row in db.execute("SELECT seq FROM results ORDER BY seq")]


def spooled(path: Path) -> int:
    """Rows in a spool another process may still be creating."""
    try:
        return len(spool_rows(path)) if path.exists() else 0
    except sqlite3.OperationalError:
        return 0


def test_run_ships_serves_metrics_and_stops_on_sigterm(
    tmp_path: Path, site: Site, listening: int
) -> None:
    config = write_config(tmp_path, site.url, listening)
    daemon = Daemon(config, tmp_path / "agent.log")
    try:
        port = daemon.metrics_port()
        wait_for(lambda: len(site.delivered()) >= 3, 20, "three results delivered")
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    finally:
        code = daemon.stop()
    assert code == 0, daemon.text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    check_labels = {
        "check": "tcp",
        "name": "port",
        "target": "port",
        "role": "svc",
        "site": "Phường Minh Phụng",
        "ward": "ward-minh-phung",
    }
    assert samples[("wardready_check_success", tuple(sorted(check_labels.items())))] == 1.0
    info = {"agent": "pc-01", "version": "0.1.0", "ward": "ward-minh-phung"}
    assert samples[("wardready_agent_info", tuple(sorted(info.items())))] == 1.0
    delivered = site.delivered()
    assert delivered == list(range(1, len(delivered) + 1))
    assert spool_rows(tmp_path / "spool.db") == []  # the final drain took the last ones
    assert site.auth == {f"Bearer {TOKEN}"}
    log = daemon.text()
    assert "agent stopped" in log and "SIGTERM received" in log
    assert TOKEN not in log


def test_results_wait_in_the_spool_across_a_restart(tmp_path: Path, listening: int) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    config = write_config(tmp_path, down, listening)
    spool = tmp_path / "spool.db"
    daemon = Daemon(config, tmp_path / "agent.log")
    try:
        wait_for(lambda: spooled(spool) >= 2, 20, "results spooled")
    finally:
        assert daemon.stop() == 0, daemon.text()
    kept = spool_rows(spool)
    assert kept == list(range(1, len(kept) + 1))
    assert "final push failed" in daemon.text()

    site = Site()
    try:
        write_config(tmp_path, site.url, listening)
        again = Daemon(config, tmp_path / "agent2.log")
        try:
            wait_for(lambda: len(site.delivered()) > len(kept), 20, "kept results delivered")
        finally:
            assert again.stop() == 0, again.text()
    finally:
        site.close()
    delivered = site.delivered()
    assert delivered[: len(kept)] == kept  # the old ones first, under the same numbers
    assert delivered == list(range(1, len(delivered) + 1))
    assert len({b.stream for b in site.batches}) == 1


def test_version_is_the_installed_one(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out == f"wardready-agent {version('wardready')}\n"
    done = run_agent("--version")
    assert (done.returncode, done.stdout) == (0, f"wardready-agent {version('wardready')}\n")


def test_check_refuses_a_target_its_type_cannot_parse(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["check", "gadget", "127.0.0.1"])
    assert cmd_check(args, {"gadget": GADGET}) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", "target: '127.0.0.1' has no port: write host:port\n")
    args = build_parser().parse_args(["check", "gadget", "127.0.0.1:9", "--json"])
    assert cmd_check(args, {"gadget": GADGET}) == 0
    assert json.loads(capsys.readouterr().out)["metrics"] == {"loss_ratio": 0.0}


def test_check_tcp_without_a_port_exits_2_naming_the_target(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["check", "tcp", "127.0.0.1"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("target: ") and "port" in err
