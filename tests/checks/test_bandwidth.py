"""The bandwidth check against a real iperf3 server on loopback.

Shaped lines (tbf in network namespaces) are measured in tests/e2e/test_line_checks_netns.py.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from checks import bandwidth
from checks.core import Result
from tests.helpers import need_program

pytestmark = pytest.mark.peer

RunCheck = Callable[..., Result]
FAST = {"duration_seconds": 1}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(iperf3: str, address: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    """An iperf3 server, returned once its log says it listens (within 10 s)."""
    server = subprocess.Popen(
        [iperf3, "-s", "-B", address, "-p", str(port), "--forceflush", "--logfile", str(log)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        if log.exists() and "Server listening" in log.read_text(errors="replace"):
            return server
        if server.poll() is not None:
            break
        time.sleep(0.05)
    server.kill()
    server.wait(10)
    seen = log.read_text(errors="replace") if log.exists() else ""
    raise AssertionError(f"iperf3 server did not start: {seen!r}")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """``127.0.0.1:PORT`` of an iperf3 server of this test's own."""
    iperf3 = need_program("iperf3")
    port = free_port()
    process = start_server(iperf3, "127.0.0.1", port, tmp_path / "iperf3.log")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop(process)


def test_both_directions_on_loopback(run: RunCheck, server: str) -> None:
    r = run("bandwidth", server, timeout=15, **FAST)
    assert (r.success, r.reason) == (True, "ok"), r.info
    m = r.metrics
    # Loopback moves gigabits; anything above 100 Mbit/s shows the figure came from iperf3.
    assert m["upload_bytes_per_second"] > 1e8 / 8
    assert m["download_bytes_per_second"] > 1e8 / 8
    assert m["upload_retransmits"] >= 0 and m["download_retransmits"] >= 0
    assert r.info["address"] == "127.0.0.1"
    assert "clamped" not in r.info


def test_one_direction_reports_only_its_metrics(run: RunCheck, server: str) -> None:
    r = run("bandwidth", server, timeout=10, directions=["down"], **FAST)
    assert r.success, r.info
    assert set(r.metrics) == {"download_bytes_per_second", "download_retransmits"}


def test_default_port_is_5201() -> None:
    argv = bandwidth._command(
        "iperf3", "10.0.0.1", bandwidth.DEFAULT_PORT, "down", 3, bandwidth.Params()
    )
    assert argv[argv.index("-p") + 1] == "5201"
    assert argv[argv.index("-t") + 1] == "3"
    assert "-R" in argv and "-J" in argv
    assert argv[argv.index("--connect-timeout") + 1] == "3000"


def test_interface_and_source_bind_the_runs(run: RunCheck, server: str) -> None:
    r = run("bandwidth", server, timeout=10, source="127.0.0.1", interface="lo", **FAST)
    assert r.success, r.info
    argv = bandwidth._command(
        "iperf3",
        "127.0.0.1",
        5201,
        "up",
        1,
        bandwidth.Params(source="127.0.0.1", interface="lo"),
    )
    assert argv[argv.index("-B") + 1] == "127.0.0.1"
    assert argv[argv.index("--bind-dev") + 1] == "lo"


def test_missing_interface_is_source_unavailable(run: RunCheck, server: str) -> None:
    r = run("bandwidth", server, timeout=10, interface="wrnosuch0", **FAST)
    assert (r.success, r.reason) == (False, "source_unavailable"), r.info
    assert "No such device" in r.info["error"]


def test_closed_port_is_refused(run: RunCheck, closed_port: int) -> None:
    need_program("iperf3")
    r = run("bandwidth", f"127.0.0.1:{closed_port}", timeout=10, **FAST)
    assert (r.success, r.reason) == (False, "refused"), r.info
    assert r.info["error"].startswith("upload: ")
    assert r.metrics == {}


def test_busy_server_is_server_busy(run: RunCheck, server: str) -> None:
    iperf3 = need_program("iperf3")
    host, port = server.split(":")
    other = subprocess.Popen(
        [iperf3, "-c", host, "-p", port, "-t", "20"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # The other client holds the server once its test has started; give it a moment.
        r = None
        for _ in range(20):
            time.sleep(0.25)
            r = run("bandwidth", server, timeout=10, busy_retries=0, **FAST)
            if r.reason == "server_busy":
                break
        assert r is not None
        assert (r.success, r.reason) == (False, "server_busy"), r.info
        assert "busy" in r.info["error"]
    finally:
        other.terminate()
        other.wait(10)


def test_busy_server_is_retried_within_the_timeout(run: RunCheck, server: str) -> None:
    iperf3 = need_program("iperf3")
    host, port = server.split(":")
    # Another ward's 2 s test is running: one retry a moment later gets the server.
    other = subprocess.Popen(
        [iperf3, "-c", host, "-p", port, "-t", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        r = run("bandwidth", server, timeout=20, busy_retries=5, directions=["up"], **FAST)
        assert (r.success, r.reason) == (True, "ok"), r.info
        assert r.metrics["upload_bytes_per_second"] > 0
    finally:
        other.wait(15)


def test_missing_iperf3_is_reported(
    run: RunCheck, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    r = run("bandwidth", "127.0.0.1", timeout=5)
    assert (r.success, r.reason) == (False, "iperf3_missing")
    assert "apt-get install iperf3" in r.info["error"]


def test_a_short_timeout_shortens_the_runs(run: RunCheck, server: str) -> None:
    r = run("bandwidth", server, timeout=6, duration_seconds=5)
    assert r.success, r.info
    assert "shortened" in r.info["clamped"]
    assert r.duration_seconds < 6 + 1


def test_a_timeout_too_short_for_any_run_fails_clearly(run: RunCheck, server: str) -> None:
    r = run("bandwidth", server, timeout=2, duration_seconds=5)
    assert (r.success, r.reason) == (False, "timeout")
    assert "at least 16 s" in r.info["error"]


def test_unresolvable_name_is_resolve_failed(run: RunCheck) -> None:
    need_program("iperf3")
    r = run("bandwidth", "wardready-no-such-host.invalid", timeout=3)
    assert (r.success, r.reason) == (False, "resolve_failed"), r.info


def test_server_killed_mid_run_fails_without_hanging(run: RunCheck, tmp_path: Path) -> None:
    iperf3 = need_program("iperf3")
    port = free_port()
    process = start_server(iperf3, "127.0.0.1", port, tmp_path / "iperf3.log")
    box: dict[str, Result] = {}
    worker = threading.Thread(
        target=lambda: box.update(
            r=run("bandwidth", f"127.0.0.1:{port}", timeout=15, duration_seconds=4)
        )
    )
    worker.start()
    try:
        time.sleep(1.5)
        process.kill()
        process.wait(10)
    finally:
        worker.join(20)
        if process.poll() is None:
            stop(process)
    r = box["r"]
    assert (r.success, r.reason) == (False, "error"), r.info
    assert r.info["error"].startswith("upload: iperf3: ")
    assert r.duration_seconds < 10


def test_error_texts_map_to_reasons() -> None:
    assert bandwidth._reason_of("the server is busy running a test. try again later") == (
        "server_busy"
    )
    assert bandwidth._reason_of("unable to connect to server: No route to host") == "unreachable"
    assert bandwidth._reason_of("unable to connect to server: Connection timed out") == "timeout"
    assert bandwidth._reason_of("control socket has closed unexpectedly") == "error"


@pytest.mark.parametrize(
    "params",
    [
        {"directions": ["up", "up"]},
        {"directions": []},
        {"directions": ["sideways"]},
        {"duration_seconds": 0},
        {"duration_seconds": 61},
        {"interface": "eth0/1"},
        {"interface": "x" * 16},
        {"nonsense": 1},
    ],
)
def test_bad_params_are_rejected(params: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        bandwidth.Params.model_validate(params)
