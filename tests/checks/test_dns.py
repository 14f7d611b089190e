"""DNS check against a real dnsmasq on loopback (and sockets that misbehave on purpose)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from checks import dns
from checks.core import Result
from tests.helpers import need_program

RunCheck = Callable[..., Result]

WARD = "phường-bến-thành"
BIG_TXT = ["a" * 200, "b" * 200, "c" * 200]  # > 512 bytes: UDP answers come back truncated


def _free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (dnsmasq serves both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = int(u.getsockname()[1])
            with socket.socket() as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


def _ready(port: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.2)
            # A bare header with QDCOUNT 0: any reply means the server is up.
            s.sendto(b"\x12\x34\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00", ("127.0.0.1", port))
            try:
                s.recv(512)
                return True
            except OSError:
                time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """dnsmasq answering for ward.test only, from its command line; ``127.0.0.1:PORT``."""
    dnsmasq = need_program("dnsmasq")
    port = _free_port()
    ward_ascii = WARD.encode("idna").decode()
    log = Path(tmp_path_factory.mktemp("dnsmasq")) / "log"
    argv = [
        dnsmasq,
        "--no-daemon",
        f"--port={port}",
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        "--no-resolv",
        "--no-hosts",
        "--conf-file=/dev/null",
        "--local=/ward.test/",
        "--host-record=h.ward.test,127.0.0.10",
        f"--host-record={ward_ascii}.ward.test,127.0.0.11",
        "--cname=alias.ward.test,h.ward.test",
        "--mx-host=ward.test,mail.ward.test,10",
        "--txt-record=txt.ward.test,xin chào",
        f"--txt-record=big.ward.test,{','.join(BIG_TXT)}",
        "--srv-host=_sip._udp.ward.test,sip.ward.test,5060,0,5",
        f"--log-facility={log}",
    ]
    with open(log.with_suffix(".out"), "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        if not _ready(port, time.monotonic() + 5):
            pytest.fail(
                f"dnsmasq did not answer on port {port}: {log.with_suffix('.out').read_text()}"
            )
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def silent_udp() -> Iterator[int]:
    """A bound UDP socket that never replies."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


def test_a_record(run: RunCheck, server: str) -> None:
    r = run("dns", "h.ward.test", server=server, expected_answers=["127.0.0.10"])
    assert (r.success, r.reason) == (True, "ok"), r.info
    assert r.metrics["answers"] == 1
    assert r.metrics["rcode"] == 0
    assert 0 < r.metrics["resolve_seconds"] < 5
    assert r.info == {
        "server": server,
        "protocol": "udp",
        "rcode": "NOERROR",
        "answers": "127.0.0.10",
    }


def test_over_tcp(run: RunCheck, server: str) -> None:
    r = run("dns", "h.ward.test", server=server, protocol="tcp")
    assert r.success
    assert r.info["protocol"] == "tcp"


def test_expected_answer_missing(run: RunCheck, server: str) -> None:
    r = run("dns", "h.ward.test", server=server, expected_answers=["127.0.0.10", "127.0.0.99"])
    assert (r.success, r.reason) == (False, "answer_mismatch")
    assert r.info["missing"] == "127.0.0.99"


def test_nxdomain(run: RunCheck, server: str) -> None:
    r = run("dns", "nobody.ward.test", server=server)
    assert (r.success, r.reason) == (False, "nxdomain")
    assert r.metrics["rcode"] == 3
    assert r.info["rcode"] == "NXDOMAIN"


def test_expecting_nxdomain(run: RunCheck, server: str) -> None:
    assert run("dns", "nobody.ward.test", server=server, expect_rcode="NXDOMAIN").success
    r = run("dns", "h.ward.test", server=server, expect_rcode="NXDOMAIN")
    assert r.reason == "rcode_mismatch"


def test_refused_by_the_server_is_an_rcode_mismatch(run: RunCheck, server: str) -> None:
    # Outside ward.test this dnsmasq has no upstream: it answers REFUSED without forwarding.
    r = run("dns", "outside.invalid", server=server)
    assert r.reason == "rcode_mismatch"
    assert r.info["rcode"] == "REFUSED"
    assert r.metrics["rcode"] == 5


def test_no_record_of_the_type(run: RunCheck, server: str) -> None:
    r = run("dns", "h.ward.test", server=server, record_type="AAAA")
    assert (r.success, r.reason) == (False, "no_answer")
    assert r.metrics["answers"] == 0


def test_cname_chain_counts_final_records(run: RunCheck, server: str) -> None:
    r = run("dns", "alias.ward.test", server=server, expected_answers=["127.0.0.10"])
    assert r.success, r.info
    cname = run("dns", "alias.ward.test", server=server, record_type="CNAME")
    assert cname.info["answers"] == "h.ward.test"


def test_mx_compares_names_loosely(run: RunCheck, server: str) -> None:
    r = run(
        "dns", "ward.test", server=server, record_type="mx", expected_answers=["10 MAIL.ward.test."]
    )
    assert r.success, r.info


def test_srv(run: RunCheck, server: str) -> None:
    r = run(
        "dns",
        "_sip._udp.ward.test",
        server=server,
        record_type="SRV",
        expected_answers=["0 5 5060 sip.ward.test"],
    )
    assert r.success, r.info


def test_txt_unicode(run: RunCheck, server: str) -> None:
    r = run("dns", "txt.ward.test", server=server, record_type="TXT", expected_answers=["xin chào"])
    assert r.success, r.info


def test_truncated_udp_answer_is_retried_over_tcp(run: RunCheck, server: str) -> None:
    r = run("dns", "big.ward.test", server=server, record_type="TXT")
    assert r.success, r.info
    assert r.info["protocol"] == "tcp"
    assert r.info["answers"] == "".join(BIG_TXT)


def test_unicode_name_is_idna_encoded(run: RunCheck, server: str) -> None:
    r = run("dns", f"{WARD}.ward.test", server=server, expected_answers=["127.0.0.11"])
    assert r.success, r.info


def test_ptr_from_an_ip(run: RunCheck, server: str) -> None:
    r = run("dns", "127.0.0.10", server=server, record_type="PTR", expected_answers=["h.ward.test"])
    assert r.success, r.info


def test_silent_server_times_out(run: RunCheck, silent_udp: int) -> None:
    r = run("dns", "h.ward.test", timeout=0.5, server=f"127.0.0.1:{silent_udp}")
    assert (r.success, r.reason) == (False, "timeout")
    assert r.duration_seconds < 1.5


def test_nothing_listening_is_refused(run: RunCheck, closed_port: int) -> None:
    # On loopback the ICMP port-unreachable comes back at once.
    assert run("dns", "h.ward.test", server=f"127.0.0.1:{closed_port}").reason == "refused"
    tcp = run("dns", "h.ward.test", server=f"127.0.0.1:{closed_port}", protocol="tcp")
    assert tcp.reason == "refused"


def test_bad_name_is_an_error(run: RunCheck) -> None:
    r = run("dns", "a" * 70 + ".ward.test", server="127.0.0.1:53")
    assert r.reason == "error"
    assert "name" in r.info["error"]


def test_normalize() -> None:
    assert dns.normalize("10 Mail.Ward.Test.", "MX") == "10 mail.ward.test"
    assert dns.normalize("2001:DB8:0::1", "AAAA") == "2001:db8::1"
    assert dns.normalize("Hello World", "TXT") == "Hello World"


def test_params() -> None:
    assert dns.Params.model_validate({"server": "[::1]:5353"}).server == "[::1]:5353"
    assert dns.Params.model_validate({"record_type": "aaaa"}).record_type == "AAAA"
    for bad, field in [
        ({"server": "dns.example"}, "server"),
        ({"server": "127.0.0.1:99999"}, "server"),
        ({"record_type": "ANY"}, "record_type"),
        ({"protocol": "doh"}, "protocol"),
        ({"expected_answers": ["1.2.3.4"], "expect_rcode": "NXDOMAIN"}, "expect_rcode"),
        ({"servers": ["127.0.0.1"]}, "servers"),
    ]:
        with pytest.raises(ValidationError, match=field):
            dns.Params.model_validate(bad)
