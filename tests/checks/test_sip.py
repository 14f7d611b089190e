"""SIP OPTIONS against real SIP peers on loopback: sipp (scenarios answering 200, 404, 503 and
100-then-200) and kamailio (UDP, TCP and TLS with its tls module, stateless replies).

Retransmission, garbage and wrong-transaction answers cannot be asked of sipp or kamailio on
demand: those cases use a scripted UDP socket (``tests.peers.udp_responder``) and say so.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from checks import sip
from checks.core import Result
from tests.checks.conftest import Certs
from tests.helpers import need
from tests.peers import (
    Kamailio,
    Proto,
    free_port,
    kamailio,
    kamailio_tls_available,
    sipp_uas,
)
from tests.peers import udp_responder as scripted_udp

RunCheck = Callable[..., Result]

# sipp copies the request's Via, From, To, Call-ID and CSeq into its answer.
SIPP_ANSWER = """<?xml version="1.0" encoding="UTF-8"?>
<scenario name="options {code}">
  <recv request="OPTIONS"/>
  {before}
  <send><![CDATA[
SIP/2.0 {code} {phrase}
[last_Via:]
[last_From:]
[last_To:];tag=[pid]wr
[last_Call-ID:]
[last_CSeq:]
Server: sipp test peer
Content-Length: 0

]]></send>
</scenario>
"""

TRYING_THEN = """
  <send><![CDATA[
SIP/2.0 100 Trying
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]></send>
  <pause milliseconds="300"/>
"""

KAMAILIO_ROUTE = """
  if (is_method("OPTIONS")) {
    if ($rU == "busy") { sl_send_reply("503", "Service Unavailable"); exit; }
    sl_send_reply("200", "OK");
    exit;
  }
  sl_send_reply("405", "Method Not Allowed");
"""


def scenario(code: int, phrase: str, trying: bool = False) -> str:
    return SIPP_ANSWER.format(code=code, phrase=phrase, before=TRYING_THEN if trying else "")


@pytest.fixture(scope="module")
def kam(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[Kamailio]:
    tls = certs.valid if kamailio_tls_available() else None
    with kamailio(tmp_path_factory.mktemp("kamailio"), KAMAILIO_ROUTE, tls) as k:
        yield k


# ---- sipp ----------------------------------------------------------------------------------


@pytest.mark.peer
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_sipp_answers_200(run: RunCheck, tmp_path: Path, transport: Proto) -> None:
    with sipp_uas(tmp_path, scenario(200, "OK"), transport) as (_, port):
        r = run("sip", f"127.0.0.1:{port}", transport=transport)
    assert (r.success, r.reason) == (True, "ok"), r.info
    assert r.metrics["status_code"] == 200
    assert 0 < r.metrics["rtt_seconds"] < 5
    assert r.info["status_text"] == "OK"
    assert r.info["server"] == "sipp test peer"
    assert r.info["address"] == "127.0.0.1"
    if transport == "udp":
        assert r.metrics["retransmissions"] == 0
    else:
        assert r.metrics["connect_seconds"] > 0


@pytest.mark.peer
@pytest.mark.parametrize(
    ("code", "phrase", "reason"),
    [(404, "Not Found", "status_4xx"), (503, "Service Unavailable", "status_5xx"),
     (603, "Decline", "status_6xx"), (302, "Moved Temporarily", "status_3xx")],
)  # fmt: skip
def test_sipp_error_answers(
    run: RunCheck, tmp_path: Path, code: int, phrase: str, reason: str
) -> None:
    with sipp_uas(tmp_path, scenario(code, phrase)) as (_, port):
        r = run("sip", f"127.0.0.1:{port}")
    assert (r.success, r.reason) == (False, reason)
    assert r.metrics["status_code"] == code
    assert r.info["status_text"] == phrase
    assert r.info["error"] == f"answered {code} {phrase}"


@pytest.mark.peer
def test_expected_status_other_than_200(run: RunCheck, tmp_path: Path) -> None:
    with sipp_uas(tmp_path, scenario(404, "Not Found")) as (_, port):
        r = run("sip", f"127.0.0.1:{port}", expect_status=[200, 404])
    assert (r.success, r.metrics["status_code"]) == (True, 404)


@pytest.mark.peer
def test_unexpected_2xx(run: RunCheck, tmp_path: Path) -> None:
    with sipp_uas(tmp_path, scenario(202, "Accepted")) as (_, port):
        r = run("sip", f"127.0.0.1:{port}")
    assert (r.success, r.reason, r.metrics["status_code"]) == (False, "unexpected_status", 202)


@pytest.mark.peer
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_provisional_answer_is_skipped(run: RunCheck, tmp_path: Path, transport: Proto) -> None:
    with sipp_uas(tmp_path, scenario(200, "OK", trying=True), transport) as (_, port):
        r = run("sip", f"127.0.0.1:{port}", transport=transport)
    assert (r.success, r.metrics["status_code"]) == (True, 200), r.info
    # The final answer comes 300 ms after the 100 Trying: the check waited for it.
    assert r.metrics["rtt_seconds"] >= 0.3
    if transport == "udp":
        # A provisional answer stretches retransmissions to T2 (4 s): none within 300 ms.
        assert r.metrics["retransmissions"] == 0


# ---- kamailio ------------------------------------------------------------------------------


@pytest.mark.peer
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_kamailio_answers_200(run: RunCheck, kam: Kamailio, transport: str) -> None:
    r = run("sip", f"127.0.0.1:{kam.port}", transport=transport)
    assert (r.success, r.metrics["status_code"]) == (True, 200), r.info
    assert r.info["server"].startswith("kamailio")


@pytest.mark.peer
def test_kamailio_503_by_request_uri(run: RunCheck, kam: Kamailio) -> None:
    uri = f"sip:busy@127.0.0.1:{kam.port}"
    r = run("sip", f"127.0.0.1:{kam.port}", request_uri=uri)
    assert (r.success, r.reason, r.metrics["status_code"]) == (False, "status_5xx", 503)


@pytest.mark.peer
def test_kamailio_over_tls(run: RunCheck, kam: Kamailio, certs: Certs) -> None:
    need(kam.tls_port is not None, "kamailio's tls module (kamailio-tls-modules) is missing")
    assert kam.tls_port is not None
    r = run("sip", f"127.0.0.1:{kam.tls_port}", transport="tls", ca_file=str(certs.ca))
    assert (r.success, r.metrics["status_code"]) == (True, 200), r.info
    assert r.info["tls_version"].startswith("TLS")
    assert r.metrics["tls_handshake_seconds"] > 0
    assert 29 * 86400 < r.metrics["cert_expiry_seconds"] <= 30 * 86400


@pytest.mark.peer
def test_kamailio_tls_untrusted_certificate(run: RunCheck, kam: Kamailio) -> None:
    need(kam.tls_port is not None, "kamailio's tls module (kamailio-tls-modules) is missing")
    assert kam.tls_port is not None
    r = run("sip", f"127.0.0.1:{kam.tls_port}", transport="tls")
    assert (r.success, r.reason) == (False, "tls_error")
    assert "certificate verify failed" in r.info["error"]
    insecure = run("sip", f"127.0.0.1:{kam.tls_port}", transport="tls", verify=False)
    assert insecure.success, insecure.info


@pytest.mark.peer
def test_kamailio_tls_wrong_name(run: RunCheck, kam: Kamailio, certs: Certs) -> None:
    need(kam.tls_port is not None, "kamailio's tls module (kamailio-tls-modules) is missing")
    assert kam.tls_port is not None
    r = run(
        "sip",
        f"127.0.0.1:{kam.tls_port}",
        transport="tls",
        ca_file=str(certs.ca),
        server_name="mcu.example.org",
    )
    assert r.reason == "tls_error"


@pytest.mark.peer
def test_source_address(run: RunCheck, kam: Kamailio) -> None:
    assert run("sip", f"127.0.0.1:{kam.port}", source="127.0.0.1").success
    r = run("sip", f"127.0.0.1:{kam.port}", source="192.0.2.7")
    assert (r.reason, "192.0.2.7" in r.info["error"]) == ("source_unavailable", True)


# ---- no peer: closed and silent ports ------------------------------------------------------


def test_closed_udp_port_is_refused(run: RunCheck) -> None:
    r = run("sip", f"127.0.0.1:{free_port('udp')}")
    assert (r.success, r.reason) == (False, "refused")


def test_closed_tcp_port_is_refused(run: RunCheck, closed_port: int) -> None:
    r = run("sip", f"127.0.0.1:{closed_port}", transport="tcp")
    assert (r.success, r.reason) == (False, "refused")


def test_silent_udp_times_out_after_retransmitting(run: RunCheck) -> None:
    with scripted_udp(lambda data, i: None) as peer:
        r = run("sip", f"127.0.0.1:{peer.port}", timeout=1.0, t1_seconds=0.1)
    assert (r.success, r.reason) == (False, "timeout")
    # T1 = 100 ms doubling: sends at 0, 0.1, 0.3, 0.7 s within the 1 s budget.
    assert len(peer.received) == 4
    assert r.metrics["retransmissions"] == 3
    assert len(set(peer.received)) == 1, "a retransmission must repeat the request exactly"
    assert "status_code" not in r.metrics


def test_silent_tcp_server_times_out(run: RunCheck, silent_port: int) -> None:
    r = run("sip", f"127.0.0.1:{silent_port}", timeout=0.5, transport="tcp")
    assert (r.success, r.reason) == (False, "timeout")


def test_family_mismatch_cannot_resolve(run: RunCheck) -> None:
    r = run("sip", "127.0.0.1:5060", source="::1")
    assert r.reason == "resolve_failed"


# ---- scripted answers (no real peer does these on demand) ----------------------------------


def reply_to(request: bytes, status: str, call_id: str | None = None) -> bytes:
    """Answer a request the way a UAS does (RFC 3261 section 8.2.6.2), or with another
    Call-ID."""
    head = request.decode().split("\r\n\r\n")[0].split("\r\n")
    keep = [h for h in head[1:] if h.split(":")[0] in ("Via", "From", "To", "Call-ID", "CSeq")]
    if call_id is not None:
        keep = [f"Call-ID: {call_id}" if h.startswith("Call-ID") else h for h in keep]
    return ("\r\n".join([f"SIP/2.0 {status}", *keep, "Content-Length: 0", "", ""])).encode()


def test_lost_request_is_retransmitted(run: RunCheck) -> None:
    def drop_first(data: bytes, i: int) -> bytes | None:
        return None if i == 0 else reply_to(data, "200 OK")

    with scripted_udp(drop_first) as peer:
        r = run("sip", f"127.0.0.1:{peer.port}", t1_seconds=0.1)
    assert (r.success, r.metrics["retransmissions"]) == (True, 1), r.info
    assert len(peer.received) == 2 and peer.received[0] == peer.received[1]
    assert r.metrics["rtt_seconds"] >= 0.1


def test_answer_to_another_call_is_not_taken(run: RunCheck) -> None:
    with scripted_udp(lambda data, i: reply_to(data, "200 OK", call_id="someone-else")) as peer:
        r = run("sip", f"127.0.0.1:{peer.port}", timeout=0.6, t1_seconds=0.1)
    assert (r.success, r.reason) == (False, "bad_response")
    assert "another request" in r.info["error"]


def test_garbage_is_a_bad_response(run: RunCheck) -> None:
    with scripted_udp(lambda data, i: b"HTTP/1.1 400 Bad Request\r\n\r\n") as peer:
        r = run("sip", f"127.0.0.1:{peer.port}", timeout=0.5, t1_seconds=0.1)
    assert (r.success, r.reason) == (False, "bad_response")
    assert "not a SIP response" in r.info["error"]


def test_compact_headers_are_understood(run: RunCheck) -> None:
    def compact(data: bytes, i: int) -> bytes:
        full = reply_to(data, "200 OK").decode()
        for long, short in (("Via:", "v:"), ("Call-ID:", "i:"), ("Content-Length:", "l:")):
            full = full.replace(long, short)
        return full.encode()

    with scripted_udp(compact) as peer:
        r = run("sip", f"127.0.0.1:{peer.port}")
    assert r.success, r.info


def test_request_is_well_formed(run: RunCheck) -> None:
    with scripted_udp(lambda data, i: reply_to(data, "200 OK")) as peer:
        r = run(
            "sip",
            f"127.0.0.1:{peer.port}",
            from_uri="sip:phuong-ben-thanh@wardready.example",
            to_uri="sip:mcu@vc.example",
        )
    assert r.success
    text = peer.received[0].decode()
    head, _, body = text.partition("\r\n\r\n")
    lines = head.split("\r\n")
    assert lines[0] == f"OPTIONS sip:127.0.0.1:{peer.port} SIP/2.0"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert re.fullmatch(
        r"SIP/2\.0/UDP 127\.0\.0\.1:\d+;branch=z9hG4bK[0-9a-f]{20};rport", headers["Via"]
    )
    assert headers["Max-Forwards"] == "70"
    assert re.fullmatch(r"<sip:phuong-ben-thanh@wardready\.example>;tag=\w+", headers["From"])
    assert headers["To"] == "<sip:mcu@vc.example>"
    assert re.fullmatch(r"\d+ OPTIONS", headers["CSeq"])
    assert re.fullmatch(r"<sip:wardready@127\.0\.0\.1:\d+>", headers["Contact"])
    assert headers["Content-Length"] == "0" and body == ""


# ---- params and parsing --------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"transport": "sctp"},
        {"request_uri": "sip:x@y\r\nX-Injected: 1"},
        {"from_uri": "mailto:a@b"},
        {"expect_status": [180]},
        {"expect_status": []},
        {"ca_file": "/tmp/ca.pem"},
        {"verify": False, "transport": "udp"},
        {"t1_seconds": 0},
        {"colour": "red"},
    ],
)
def test_bad_params_are_rejected(params: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        sip.Params.model_validate(params)


def test_default_ports() -> None:
    assert sip.DEFAULT_PORTS == {"udp": 5060, "tcp": 5060, "tls": 5061}


def test_bad_target_names_itself(run: RunCheck) -> None:
    r = run("sip", "[::1:5060")
    assert r.reason == "error" and "'[::1:5060'" in r.info["error"]


def test_parse_response_folds_and_expands() -> None:
    raw = (
        b"SIP/2.0 200 OK\r\nv: SIP/2.0/UDP a;branch=z9hG4bKx\r\nSubject: one\r\n two\r\n"
        b"i: abc\r\n\r\n"
    )
    response = sip.parse_response(raw)
    assert (response.code, response.phrase) == (200, "OK")
    assert response.first("via") == "SIP/2.0/UDP a;branch=z9hG4bKx"
    assert response.first("subject") == "one two"
    assert response.first("call-id") == "abc"
    with pytest.raises(ValueError, match="not a SIP response"):
        sip.parse_response(b"SIP/2.0 99 Odd\r\n\r\n")
