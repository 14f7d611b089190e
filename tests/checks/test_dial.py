"""The connection toolkit (checks/_dial.py) and the network checks' declarations.

Real sockets on loopback only; the TLS peers are the shared fixtures' HTTPS servers.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError

from checks import _dial, core
from checks._net import TLS_EXPIRED, parse_address
from checks.core import CheckFailed
from checks.registry import REGISTRY
from tests.checks.conftest import Certs


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def soon(seconds: float = 3.0) -> float:
    return time.monotonic() + seconds


def failure(call: Callable[[], object]) -> CheckFailed:
    with pytest.raises(CheckFailed) as caught:
        call()
    return caught.value


# ---- dial ----------------------------------------------------------------------------------


def test_dial_connects_and_reports_the_address(http_url: str) -> None:
    link = _dial.dial(
        "127.0.0.1", port_of(http_url), stream=True, family="auto", source=None, deadline=soon()
    )
    try:
        assert link.info == {"address": "127.0.0.1"}
        assert link.metrics["connect_seconds"] > 0
        assert link.sock.getpeername()[1] == port_of(http_url)
    finally:
        link.close()


def test_dial_refused_names_the_address(closed_port: int) -> None:
    exc = failure(
        lambda: _dial.dial(
            "127.0.0.1", closed_port, stream=True, family="auto", source=None, deadline=soon()
        )
    )
    assert exc.reason == "refused"
    assert exc.info == {"address": "127.0.0.1"}
    assert exc.message.startswith(f"connect 127.0.0.1 port {closed_port}:")


def test_dial_with_no_time_left_tries_nothing(closed_port: int) -> None:
    exc = failure(
        lambda: _dial.dial(
            "127.0.0.1",
            closed_port,
            stream=True,
            family="auto",
            source=None,
            deadline=time.monotonic() - 1,
        )
    )
    assert (exc.reason, exc.message) == ("timeout", "no address of 127.0.0.1 tried in time")


def test_dial_missing_interface_is_source_unavailable(http_url: str) -> None:
    exc = failure(
        lambda: _dial.dial(
            "127.0.0.1",
            port_of(http_url),
            stream=True,
            family="auto",
            source=None,
            deadline=soon(),
            interface="wrnosuch0",
        )
    )
    assert exc.reason == "source_unavailable"
    assert exc.message == "interface wrnosuch0: no such network interface on this host"


def test_dial_datagram_is_connected_to_the_first_address() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        port = peer.getsockname()[1]
        link = _dial.dial("127.0.0.1", port, stream=False, family="4", source=None, deadline=soon())
        try:
            link.sock.send(b"hello")
            assert peer.recv(16) == b"hello"
            # A datagram connect measures nothing.
            assert link.metrics == {}
        finally:
            link.close()


def test_tls_failure_carries_the_connect_facts(
    https_url: Callable[[str], str], certs: Certs
) -> None:
    ctx = _dial.context_for(True, str(certs.ca))
    exc = failure(
        lambda: _dial.dial(
            "127.0.0.1",
            port_of(https_url("expired")),
            stream=True,
            family="auto",
            source=None,
            deadline=soon(),
            tls=ctx,
        )
    )
    assert exc.reason == TLS_EXPIRED
    assert exc.info["address"] == "127.0.0.1"
    assert exc.metrics["connect_seconds"] > 0


def test_context_for_an_unreadable_ca_file_is_an_error() -> None:
    exc = failure(lambda: _dial.context_for(True, "/nonexistent/ca.pem"))
    assert exc.reason == "error"
    assert exc.message.startswith("ca_file /nonexistent/ca.pem:")


def test_target_address_errors_name_the_address() -> None:
    assert _dial.target_address("[::1]", 5060) == ("::1", 5060)
    exc = failure(lambda: _dial.target_address("127.0.0.1"))
    assert (exc.reason, exc.message) == ("error", "address '127.0.0.1': expected host:port")


# ---- failures ------------------------------------------------------------------------------


def test_carrying_adds_what_was_measured_by_the_end() -> None:
    metrics: dict[str, float] = {"rtt_seconds": 0.5}
    info = {"address": "192.0.2.1"}
    with pytest.raises(CheckFailed) as caught, _dial.carrying(metrics, info):
        try:
            raise CheckFailed("bad_response", "junk", {"rtt_seconds": 0.25}, software="x")
        finally:
            metrics["retransmissions"] = 2.0
    exc = caught.value
    # The failure's own values win over the ones carried.
    assert exc.metrics == {"rtt_seconds": 0.25, "retransmissions": 2.0}
    assert exc.info == {"address": "192.0.2.1", "software": "x"}


def test_cause_reason_finds_a_dial_failure_in_the_context() -> None:
    try:
        try:
            raise CheckFailed("source_unavailable", "interface x: no such interface")
        except CheckFailed:
            raise RuntimeError("wrapped") from None
    except RuntimeError as exc:
        # ``from None`` keeps __context__: httpcore's wrapping does the same.
        assert _dial.cause_reason(exc) == ("source_unavailable", "interface x: no such interface")


def test_cause_reason_maps_socket_errors_and_falls_back_to_error() -> None:
    refused = ValueError("outer")
    refused.__cause__ = ConnectionRefusedError(111, "Connection refused")
    assert _dial.cause_reason(refused) == ("refused", "Connection refused")
    lookup = ValueError("outer")
    lookup.__cause__ = socket.gaierror(-2, "Name or service not known")
    assert _dial.cause_reason(lookup) == ("resolve_failed", "Name or service not known")
    assert _dial.cause_reason(ValueError("plain")) == ("error", "plain")


# ---- params --------------------------------------------------------------------------------


def test_transport_params_keep_tls_options_to_tls() -> None:
    with pytest.raises(ValidationError, match="apply to transport: tls only"):
        _dial.TransportParams.model_validate({"transport": "udp", "verify": False})
    params = _dial.TransportParams.model_validate({"transport": "tls", "family": 6})
    assert (params.family, params.verify) == ("6", True)


@pytest.mark.parametrize("check", ["sip", "stun", "turn"])
def test_transport_checks_share_the_tls_rule(check: str) -> None:
    extra: dict[str, Any] = {"username": "u", "password": "p"} if check == "turn" else {}
    with pytest.raises(ValidationError, match="apply to transport: tls only"):
        REGISTRY[check].params.model_validate({"server_name": "x", **extra})


def test_parse_url() -> None:
    assert _dial.parse_url("https://[::1]:8443/x").port == 8443
    for bad, why in (
        ("ftp://host/", "scheme"),
        ("http:///path", "no host"),
        ("http://host:99999/", "port must be 1..65535"),
        ("http://host:0/", "port must be 1..65535"),
        ("http://host:http/", "port must be 1..65535"),
    ):
        with pytest.raises(ValueError, match=why):
            _dial.parse_url(bad)


# ---- declarations --------------------------------------------------------------------------




@pytest.mark.parametrize(
    ("check", "address", "parsed"),
    [
        ("tcp", "127.0.0.1:80", ("127.0.0.1", 80)),
        ("h323", "192.0.2.1", ("192.0.2.1", 1720)),
        ("sip", "[2001:db8::1]", ("2001:db8::1", 5060)),
        ("stun", "stun.ward.test", ("stun.ward.test", 3478)),
        ("bandwidth", "iperf.ward.test", ("iperf.ward.test", 5201)),
        ("ssh", "switch1", ("switch1", 22)),
    ],
)
def test_host_port_targets_parse_with_the_default_port(
    check: str, address: str, parsed: tuple[str, int]
) -> None:
    parse = REGISTRY[check].parse_target
    assert parse is not None
    assert parse(address) == parsed


@pytest.mark.parametrize(
    ("check", "address", "why"),
    [
        ("tcp", "127.0.0.1", "expected host:port"),
        ("h323", "::1", r"\[addr\]:port"),
        ("http", "ftp://printer/", "scheme"),
        ("scanner_escl", "http://", "no host"),
    ],
)
def test_bad_targets_are_refused_at_config_load(check: str, address: str, why: str) -> None:
    parse = REGISTRY[check].parse_target
    assert parse is not None
    with pytest.raises(ValueError, match=why):
        parse(address)


def test_an_undeclared_metric_from_a_dial_check_is_refused() -> None:
    def probe(target: core.Target, params: core.Params, timeout: float) -> core.Outcome:
        return core.Outcome(True, metrics={"connect_seconds": 0.1, "conect_seconds": 0.1})

    kind = core.CheckType(core.Params, probe, frozenset(), _dial.CONNECT_METRICS)
    r = core.run_check("tcp", kind, core.Target("t", "x"), core.Params(), 1.0)
    assert (r.success, r.reason) == (False, "error")
    assert "conect_seconds" in r.info["error"]


def test_parse_address_stays_the_toolkit_s() -> None:
    # H2's checks import it from checks._net: the name and the signature are stable.
    assert parse_address("[::1]:53") == ("::1", 53)
    assert isinstance(_dial.context_for(False, None), ssl.SSLContext)
