"""H.323 call-signalling reachability (TCP 1720) against local listeners and closed ports.

No H.323 gatekeeper or endpoint installs on Debian 12 (GnuGk is gone from the archive), so the
peer is a plain TCP listener: the check only connects, which is all a listener has to accept.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest
from pydantic import ValidationError

from checks import h323
from checks.core import Result
from checks.registry import REGISTRY

RunCheck = Callable[..., Result]


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s


def test_listener_answers(run: RunCheck, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    r = run("h323", f"127.0.0.1:{port}")
    assert (r.success, r.reason) == (True, "ok")
    assert 0 < r.metrics["connect_seconds"] < 5
    assert r.info["address"] == "127.0.0.1"
    # Nothing is sent: the connection the listener accepts carries no data, then closes.
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(5)
        assert conn.recv(100) == b""


def test_closed_port_is_refused(run: RunCheck, closed_port: int) -> None:
    r = run("h323", f"127.0.0.1:{closed_port}")
    assert (r.success, r.reason) == (False, "refused")
    assert f"port {closed_port}" in r.info["error"]


def test_default_port_is_1720(run: RunCheck) -> None:
    try:
        s = socket.socket()
        s.bind(("127.0.0.1", 1720))
    except OSError:
        s.close()
        pytest.skip("127.0.0.1:1720 is in use on this machine")
    with s:
        s.listen(8)
        assert run("h323", "127.0.0.1").success
    r = run("h323", "127.0.0.1")
    assert (r.reason, "port 1720" in r.info["error"]) == ("refused", True)


def test_ipv6_literal(run: RunCheck, ipv6_loopback: None) -> None:
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        s.listen(8)
        r = run("h323", f"[::1]:{s.getsockname()[1]}")
    assert r.success and r.info["address"] == "::1"


def test_source_address(run: RunCheck, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    assert run("h323", f"127.0.0.1:{port}", source="127.0.0.1").success
    assert run("h323", f"127.0.0.1:{port}", source="192.0.2.9").reason == "source_unavailable"


def test_bad_address_is_an_error(run: RunCheck) -> None:
    r = run("h323", "mcu.example.org:70000")
    assert r.reason == "error" and "'mcu.example.org:70000'" in r.info["error"]


def test_params_and_registry() -> None:
    with pytest.raises(ValidationError):
        h323.Params.model_validate({"tls": True})
    assert h323.Params.model_validate({"family": 6}).family == "6"
    assert REGISTRY["h323"].reasons == h323.REASONS
    assert "``connect_seconds``" in REGISTRY["h323"].doc
