"""STUN Binding against coturn on loopback (UDP, TCP, TLS), closed and silent ports, and a
scripted UDP socket for what coturn will not do on demand (drop a request, answer garbage, an
error response, a response to another transaction)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from checks import stun
from checks.core import Result
from tests.checks.conftest import Certs
from tests.peers import Coturn, coturn, free_port
from tests.peers import udp_responder as scripted_udp

RunCheck = Callable[..., Result]


@pytest.fixture(scope="module")
def turnserver(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[Coturn]:
    with coturn(tmp_path_factory.mktemp("coturn"), "test", "secret", tls=certs.valid) as c:
        yield c


def binding_answer(
    code: int | None = None, other_transaction: bool = False
) -> Callable[[bytes, int], bytes | None]:
    """Answer a Binding request with a success (or an error ``code``), built with aioice."""
    from aioice import stun as wire

    def answer(data: bytes, i: int) -> bytes:
        request = wire.parse_message(data)
        tid = os.urandom(12) if other_transaction else request.transaction_id
        if code is None:
            reply = wire.Message(wire.Method.BINDING, wire.Class.RESPONSE, tid)
            reply.attributes["XOR-MAPPED-ADDRESS"] = ("203.0.113.9", 40000)
        else:
            reply = wire.Message(wire.Method.BINDING, wire.Class.ERROR, tid)
            reply.attributes["ERROR-CODE"] = (code, "Bad Request")
        reply.add_fingerprint()
        return bytes(reply)

    return answer


@pytest.mark.peer
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_coturn_binding(run: RunCheck, turnserver: Coturn, transport: str) -> None:
    r = run("stun", f"127.0.0.1:{turnserver.port}", transport=transport)
    assert (r.success, r.reason) == (True, "ok"), r.info
    host, _, port = r.info["mapped_address"].rpartition(":")
    assert host == "127.0.0.1" and 1024 <= int(port) <= 65535
    assert 0 < r.metrics["rtt_seconds"] < 5
    assert r.info["software"].startswith("Coturn")
    assert r.info["address"] == "127.0.0.1"
    if transport == "udp":
        assert r.metrics["retransmissions"] == 0
    else:
        assert r.metrics["connect_seconds"] > 0


@pytest.mark.peer
def test_coturn_binding_over_tls(run: RunCheck, turnserver: Coturn, certs: Certs) -> None:
    assert turnserver.tls_port is not None
    r = run("stun", f"127.0.0.1:{turnserver.tls_port}", transport="tls", ca_file=str(certs.ca))
    assert r.success, r.info
    assert r.info["mapped_address"].startswith("127.0.0.1:")
    assert r.info["tls_version"].startswith("TLS")
    untrusted = run("stun", f"127.0.0.1:{turnserver.tls_port}", transport="tls")
    assert untrusted.reason == "tls_error"


def test_closed_udp_port_is_refused(run: RunCheck) -> None:
    r = run("stun", f"127.0.0.1:{free_port('udp')}")
    assert (r.success, r.reason) == (False, "refused")


def test_closed_tcp_port_is_refused(run: RunCheck, closed_port: int) -> None:
    assert run("stun", f"127.0.0.1:{closed_port}", transport="tcp").reason == "refused"


def test_silent_server_times_out_after_retransmitting(run: RunCheck) -> None:
    with scripted_udp(lambda data, i: None) as peer:
        r = run("stun", f"127.0.0.1:{peer.port}", timeout=1.0, rto_seconds=0.1)
    assert (r.success, r.reason) == (False, "timeout")
    # RTO 100 ms doubling: requests at 0, 0.1, 0.3, 0.7 s within 1 s.
    assert len(peer.received) == 4
    assert r.metrics["retransmissions"] == 3
    assert len(set(peer.received)) == 1, "retransmissions repeat the request byte for byte"


def test_retransmissions_stop_after_seven_requests(run: RunCheck) -> None:
    # RFC 8489: 7 requests at 0, 1, 3, 7, 15, 31, 63 × RTO, then 16 × RTO of waiting: 79 × RTO.
    with scripted_udp(lambda data, i: None) as peer:
        r = run("stun", f"127.0.0.1:{peer.port}", timeout=5.0, rto_seconds=0.05)
    assert (r.reason, len(peer.received)) == ("timeout", 7)
    assert r.duration_seconds < 5.0, "gave up on RFC 8489's schedule, not the check timeout"


def test_lost_request_is_retransmitted(run: RunCheck) -> None:
    answer = binding_answer()
    with scripted_udp(lambda data, i: None if i == 0 else answer(data, i)) as peer:
        r = run("stun", f"127.0.0.1:{peer.port}", rto_seconds=0.1)
    assert (r.success, r.metrics["retransmissions"]) == (True, 1), r.info
    assert r.info["mapped_address"] == "203.0.113.9:40000"
    assert len(peer.received) == 2


def test_error_response(run: RunCheck) -> None:
    with scripted_udp(binding_answer(code=400)) as peer:
        r = run("stun", f"127.0.0.1:{peer.port}")
    assert (r.success, r.reason) == (False, "error_response")
    assert r.metrics["error_code"] == 400
    assert r.info["error_text"] == "Bad Request"


def test_error_code_outside_rfc_classes_is_reported_as_none(run: RunCheck) -> None:
    # Class byte 25: no STUN error class; the check must still say error_response.
    with scripted_udp(binding_answer(code=2599)) as peer:
        r = run("stun", f"127.0.0.1:{peer.port}")
    assert (r.success, r.reason) == (False, "error_response"), r.info
    assert r.metrics["error_code"] == 0
    assert r.info["error_text"] == "(code 2599) Bad Request"


def test_other_transaction_is_ignored(run: RunCheck) -> None:
    with scripted_udp(binding_answer(other_transaction=True)) as peer:
        r = run("stun", f"127.0.0.1:{peer.port}", timeout=0.5, rto_seconds=0.1)
    assert (r.success, r.reason) == (False, "timeout")


def test_garbage_is_a_bad_response(run: RunCheck) -> None:
    with scripted_udp(lambda data, i: b"SIP/2.0 200 OK\r\n\r\n") as peer:
        r = run("stun", f"127.0.0.1:{peer.port}", timeout=0.5, rto_seconds=0.1)
    assert (r.success, r.reason) == (False, "bad_response")
    assert "not a STUN message" in r.info["error"]


def test_bad_fingerprint_is_a_bad_response(run: RunCheck) -> None:
    answer = binding_answer()

    def spoil(data: bytes, i: int) -> bytes | None:
        good = answer(data, i)
        assert good is not None
        return good[:-1] + bytes([good[-1] ^ 0xFF])

    with scripted_udp(spoil) as peer:
        r = run("stun", f"127.0.0.1:{peer.port}", timeout=0.5, rto_seconds=0.1)
    assert r.reason == "bad_response"
    assert "fingerprint" in r.info["error"]


@pytest.mark.parametrize(
    "params",
    [{"transport": "dtls"}, {"rto_seconds": 0}, {"ca_file": "x.pem"}, {"server_name": "a"},
     {"verify": False}, {"username": "x"}],
)  # fmt: skip
def test_bad_params_are_rejected(params: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        stun.Params.model_validate(params)


def test_bad_target_names_itself(run: RunCheck) -> None:
    r = run("stun", "stun.example.org:99999")
    assert r.reason == "error" and "'stun.example.org:99999'" in r.info["error"]


def test_imports_aioice_only_when_probing(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = "import sys, checks.registry; print(any(m.startswith('aioice') for m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
        check=True,
    )
    assert out.stdout.strip() == "False"
