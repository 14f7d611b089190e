from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from checks import tcp
from checks.core import Result

RunCheck = Callable[..., Result]


@pytest.fixture
def v6_port(ipv6_loopback: None) -> Iterator[int]:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.bind(("::1", 0))
        s.listen(8)
        yield int(s.getsockname()[1])


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_connect_measures_the_handshake(run: RunCheck, http_url: str) -> None:
    r = run("tcp", f"127.0.0.1:{port_of(http_url)}")
    assert (r.success, r.reason) == (True, "ok")
    assert 0 < r.metrics["connect_seconds"] < 5
    assert r.info["address"] == "127.0.0.1"
    assert "tls_handshake_seconds" not in r.metrics


def test_connect_ipv6_literal_in_brackets(run: RunCheck, v6_port: int) -> None:
    r = run("tcp", f"[::1]:{v6_port}")
    assert r.success, r.info
    assert r.info["address"] == "::1"


def test_closed_port_is_refused(run: RunCheck, closed_port: int) -> None:
    r = run("tcp", f"127.0.0.1:{closed_port}")
    assert (r.success, r.reason) == (False, "refused")
    assert "refused" in r.info["error"].lower()


def test_wrong_family_cannot_resolve(run: RunCheck, closed_port: int) -> None:
    r = run("tcp", f"127.0.0.1:{closed_port}", family=6)
    assert r.reason == "resolve_failed"


def test_source_address_is_bound(run: RunCheck, http_url: str) -> None:
    assert run("tcp", f"127.0.0.1:{port_of(http_url)}", source="127.0.0.1").success


def test_source_address_not_on_this_host(run: RunCheck, http_url: str) -> None:
    # 192.0.2.0/24 is documentation space: bind() fails locally, nothing is sent.
    r = run("tcp", f"127.0.0.1:{port_of(http_url)}", source="192.0.2.123")
    assert r.reason == "source_unavailable"
    assert "192.0.2.123" in r.info["error"]


def test_source_family_must_match_target(run: RunCheck, http_url: str) -> None:
    r = run("tcp", f"127.0.0.1:{port_of(http_url)}", source="::1")
    assert r.reason == "resolve_failed"


@pytest.mark.parametrize("address", ["127.0.0.1", "::1:80", "[::1:80", "127.0.0.1:0", ":80"])
def test_bad_address_is_an_error_naming_it(run: RunCheck, address: str) -> None:
    r = run("tcp", address)
    assert r.reason == "error"
    assert repr(address) in r.info["error"]


def test_parse_address() -> None:
    assert tcp.parse_address("example.org:443") == ("example.org", 443)
    assert tcp.parse_address("[2001:db8::1]:53") == ("2001:db8::1", 53)
    assert tcp.parse_address("10.0.0.1", default_port=53) == ("10.0.0.1", 53)
    assert tcp.parse_address("[::1]", default_port=53) == ("::1", 53)
    with pytest.raises(ValueError, match="port must be"):
        tcp.parse_address("host:99999")


def test_tls_handshake_and_certificate_expiry(
    run: RunCheck, https_url: Callable[[str], str], certs: Any
) -> None:
    port = port_of(https_url("valid"))
    r = run("tcp", f"127.0.0.1:{port}", tls=True, ca_file=str(certs.ca), server_name="localhost")
    assert r.success, r.info
    assert r.metrics["tls_handshake_seconds"] > 0
    assert 29 * 86400 < r.metrics["cert_expiry_seconds"] < 31 * 86400
    assert r.info["tls_version"].startswith("TLS")


def test_tls_by_ip_matches_the_ip_san(
    run: RunCheck, https_url: Callable[[str], str], certs: Any
) -> None:
    r = run("tcp", f"127.0.0.1:{port_of(https_url('valid'))}", tls=True, ca_file=str(certs.ca))
    assert r.success, r.info


def test_expired_certificate(run: RunCheck, https_url: Callable[[str], str], certs: Any) -> None:
    r = run("tcp", f"127.0.0.1:{port_of(https_url('expired'))}", tls=True, ca_file=str(certs.ca))
    assert (r.success, r.reason) == (False, "tls_expired")
    assert "expired" in r.info["error"]


def test_expired_certificate_unverified_is_measured_not_judged(
    run: RunCheck, https_url: Callable[[str], str]
) -> None:
    r = run("tcp", f"127.0.0.1:{port_of(https_url('expired'))}", tls=True, verify=False)
    assert r.success, r.info
    assert r.metrics["cert_expiry_seconds"] < -86400
    assert r.metrics["cert_expiry_seconds"] < -86400


def test_self_signed_certificate_fails_verification(
    run: RunCheck, https_url: Callable[[str], str]
) -> None:
    r = run("tcp", f"127.0.0.1:{port_of(https_url('self_signed'))}", tls=True)
    assert (r.success, r.reason) == (False, "tls_error")
    assert "certificate" in r.info["error"]


def test_wrong_server_name(run: RunCheck, https_url: Callable[[str], str], certs: Any) -> None:
    port = port_of(https_url("valid"))
    r = run(
        "tcp", f"127.0.0.1:{port}", tls=True, ca_file=str(certs.ca), server_name="other.ward.test"
    )
    assert r.reason == "tls_error"


def test_tls_against_plain_http_is_a_tls_error(run: RunCheck, http_url: str) -> None:
    r = run("tcp", f"127.0.0.1:{port_of(http_url)}", tls=True)
    assert r.reason == "tls_error"
    assert r.metrics["connect_seconds"] > 0


def test_tls_handshake_with_a_silent_server_times_out(run: RunCheck, silent_port: int) -> None:
    r = run("tcp", f"127.0.0.1:{silent_port}", timeout=0.5, tls=True)
    assert r.reason == "timeout"
    assert r.duration_seconds < 1.5


def test_missing_ca_file_is_an_error(run: RunCheck, http_url: str) -> None:
    r = run("tcp", f"127.0.0.1:{port_of(http_url)}", tls=True, ca_file="/nonexistent/ca.pem")
    assert r.reason == "error"
    assert "/nonexistent/ca.pem" in r.info["error"]


def test_params() -> None:
    assert tcp.Params.model_validate({"family": 4}).family == "4"
    with pytest.raises(ValidationError, match="tsl"):
        tcp.Params.model_validate({"tsl": True})
    with pytest.raises(ValidationError, match="source"):
        tcp.Params.model_validate({"source": "not-an-ip"})
    with pytest.raises(ValidationError, match="family"):
        tcp.Params.model_validate({"family": 5})


# ---- interface: one check per WAN line (tests/e2e/test_line_checks_netns.py cuts a line) ----


def test_interface_pins_the_connection(run: RunCheck, http_url: str) -> None:
    r = run("tcp", f"127.0.0.1:{port_of(http_url)}", interface="lo", source="127.0.0.1")
    assert (r.success, r.reason) == (True, "ok"), r.info


def test_a_missing_interface_is_source_unavailable(run: RunCheck, http_url: str) -> None:
    r = run("tcp", f"127.0.0.1:{port_of(http_url)}", interface="wrnosuch0")
    assert (r.success, r.reason) == (False, "source_unavailable")
    assert r.info["error"] == "interface wrnosuch0: no such network interface on this host"


def test_interface_needs_no_cap_net_raw_on_current_kernels(http_url: str) -> None:
    import os
    import shutil
    import subprocess
    import sys

    from tests.helpers import ROOT, need

    need(os.geteuid() == 0, "needs root to drop a capability")
    major, minor = (int(part) for part in os.uname().release.split(".")[:2])
    need((major, minor) >= (5, 7), "kernels before 5.7 want CAP_NET_RAW for SO_BINDTODEVICE")
    setpriv = shutil.which("setpriv")
    need(setpriv is not None, "setpriv (util-linux) is not installed")
    assert setpriv is not None
    argv = [setpriv, "--bounding-set", "-net_raw", sys.executable, "-m", "agent", "check"]
    argv += ["tcp", f"127.0.0.1:{port_of(http_url)}", "--param", "interface=lo"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", ["", "x" * 16, "eth 0", "a/b", "eth0:1", ".", ".."])
def test_interface_names_the_kernel_refuses_are_rejected(name: str) -> None:
    with pytest.raises(ValidationError, match="interface"):
        tcp.Params.model_validate({"interface": name})
    assert tcp.Params.model_validate({"interface": "enp3s0"}).interface == "enp3s0"
