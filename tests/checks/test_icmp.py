"""ICMP echo against loopback, and inside network namespaces the tests build for the failures.

Loopback always answers, so no-reply, unreachable and loss are made in namespaces joined by
veth pairs (documentation prefixes only, no route out): see ``lab``.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from checks import _icmp, icmp
from checks.core import Result
from tests.helpers import need, need_program

RunCheck = Callable[..., Result]

ROOT = Path(__file__).resolve().parents[2]
FAST = {"count": 3, "interval_seconds": 0.02, "timeout_seconds": 0.5}
PING_GROUP_RANGE = Path("/proc/sys/net/ipv4/ping_group_range")

# Runs probes inside a namespace; prints {address: outcome}.
SCRIPT = """
import json, sys
from checks import _icmp, icmp
from checks.core import Target
out = {}
for address, params in json.loads(sys.argv[1]):
    o = icmp.probe(Target("t", address), icmp.Params.model_validate(params), 5.0)
    out[address] = {"success": o.success, "reason": o.reason, "metrics": o.metrics, "info": o.info}
print(json.dumps(out))
"""


def need_root() -> None:
    need(os.geteuid() == 0, "needs root (raw sockets, sysctl, network namespaces)")


@pytest.fixture
def ping_group() -> Iterator[Callable[[str], None]]:
    """Set net.ipv4.ping_group_range for this namespace; the old value comes back after."""
    need_root()
    old = PING_GROUP_RANGE.read_text()

    def set_range(value: str) -> None:
        PING_GROUP_RANGE.write_text(value)

    try:
        yield set_range
    finally:
        PING_GROUP_RANGE.write_text(old)


def check_healthy(r: Result, count: int) -> None:
    assert (r.success, r.reason) == (True, "ok"), r.info
    m = r.metrics
    assert m["packets_sent"] == m["packets_received"] == count
    assert m["packets_duplicate"] == 0
    assert m["loss_ratio"] == 0
    assert 0 < m["rtt_min_seconds"] <= m["rtt_avg_seconds"] <= m["rtt_max_seconds"] < 0.5
    assert 0 <= m["rtt_stddev_seconds"] <= m["rtt_max_seconds"] - m["rtt_min_seconds"]
    assert 0 <= m["jitter_seconds"] <= m["rtt_max_seconds"] - m["rtt_min_seconds"]


@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
def test_raw_socket_on_loopback(run: RunCheck, address: str, request: Any) -> None:
    need_root()
    if ":" in address:
        request.getfixturevalue("ipv6_loopback")
    r = run("icmp", address, count=5, interval_seconds=0.02, mode="raw")
    check_healthy(r, 5)
    assert r.info["socket"] == "raw"
    assert r.info["address"] == address


@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
def test_datagram_socket_on_loopback(
    run: RunCheck, address: str, ping_group: Callable[[str], None], request: Any
) -> None:
    if ":" in address:
        request.getfixturevalue("ipv6_loopback")
    ping_group("0 2147483647")
    r = run("icmp", address, count=5, interval_seconds=0.02, mode="dgram")
    check_healthy(r, 5)
    assert r.info["socket"] == "dgram"


def test_datagram_socket_refused_says_how_to_fix(
    run: RunCheck, ping_group: Callable[[str], None]
) -> None:
    ping_group("1 0")
    r = run("icmp", "127.0.0.1", mode="dgram", **FAST)
    assert (r.success, r.reason) == (False, "permission_denied")
    assert "ping_group_range" in r.info["error"]
    assert "CAP_NET_RAW" in r.info["error"]


def _without_cap_net_raw(addresses: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    setpriv = need_program("setpriv")
    done = subprocess.run(
        [
            setpriv,
            "--bounding-set",
            "-net_raw",
            sys.executable,
            "-c",
            SCRIPT,
            json.dumps(addresses),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_auto_falls_back_to_datagram_without_cap_net_raw(ping_group: Callable[[str], None]) -> None:
    ping_group("0 2147483647")
    out = _without_cap_net_raw([("127.0.0.1", FAST)])["127.0.0.1"]
    assert out["success"], out
    assert out["info"]["socket"] == "dgram"


def test_no_raw_and_no_datagram_is_permission_denied(ping_group: Callable[[str], None]) -> None:
    ping_group("1 0")
    out = _without_cap_net_raw([("127.0.0.1", FAST)])["127.0.0.1"]
    assert out["reason"] == "permission_denied"
    assert "CAP_NET_RAW" in out["info"]["error"] and "ping_group_range" in out["info"]["error"]


def test_run_is_clamped_to_the_timeout(run: RunCheck) -> None:
    need_root()
    r = run("icmp", "127.0.0.1", timeout=0.55, count=10, interval_seconds=0.1, timeout_seconds=0.2)
    assert r.success
    assert r.metrics["packets_sent"] == 4  # sends at 0, 0.1, 0.2, 0.3; the wait ends by 0.55
    assert r.info["clamped"].startswith("count 10 -> 4")
    assert r.duration_seconds < 1.5


def test_concurrent_raw_probes_keep_their_own_replies(run: RunCheck) -> None:
    # Raw sockets see every echo reply on the host: each run must pick only its own.
    need_root()
    results: list[Result] = []

    def one() -> None:
        results.append(run("icmp", "127.0.0.1", count=20, interval_seconds=0.005, mode="raw"))

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 3
    for r in results:
        check_healthy(r, 20)


def test_name_is_resolved(run: RunCheck) -> None:
    need_root()
    r = run("icmp", "localhost", **FAST)
    assert r.success, r.info
    assert r.info["address"] in {"127.0.0.1", "::1"}


def test_family_that_the_address_lacks(run: RunCheck) -> None:
    r = run("icmp", "127.0.0.1", family=6, **FAST)
    assert r.reason == "resolve_failed"


def test_source_address(run: RunCheck) -> None:
    need_root()
    assert run("icmp", "127.0.0.1", source="127.0.0.1", **FAST).success
    # Documentation address: bind() fails locally, nothing is sent.
    assert run("icmp", "127.0.0.1", source="192.0.2.123", **FAST).reason == "source_unavailable"
    assert run("icmp", "127.0.0.1", source="::1", **FAST).reason == "resolve_failed"


def test_checksum_of_a_known_packet() -> None:
    # Echo request id 0x1234 seq 1 payload "abcd": the words sum to 0xDEFB, complement 0x2104.
    packet = _icmp.echo_request(socket.AF_INET, 0x1234, 1, b"abcd", with_checksum=True)
    assert struct.unpack("!H", packet[2:4])[0] == 0x2104
    assert _icmp.checksum(packet) == 0


def _run_state(wait: float = 1.0) -> icmp._Run:
    return icmp._Run(
        family=socket.AF_INET,
        raw=True,
        ident=0x4242,
        seq_base=65534,
        token=b"T" * _icmp.TOKEN_BYTES,
        dst=socket.inet_aton("127.0.0.1"),
        wait=wait,
    )


def test_replies_are_matched_and_duplicates_counted() -> None:
    run = _run_state()
    for i in range(3):  # sequence numbers wrap: 65534, 65535, 0
        run.send_ns[i], run.send_mono[i] = 1_000_000_000, 100.0
        run.outstanding.add(i)
    ip_header = bytes([0x45]) + bytes(19)

    def reply(ident: int, seq: int, token: bytes) -> _icmp.Heard:
        data = ip_header + struct.pack("!BBHHH", 0, 0, 0, ident, seq) + token + b"pad"
        heard = _icmp.parse(socket.AF_INET, data, has_ip_header=True)
        assert heard is not None and heard.is_reply
        return heard

    icmp._note_reply(run, reply(0x4242, 0, run.token), 1_000_500_000, 100.0005)
    icmp._note_reply(run, reply(0x4242, 0, run.token), 1_000_600_000, 100.0006)
    icmp._note_reply(run, reply(0x4243, 65534, run.token), 1_000_500_000, 100.0005)
    icmp._note_reply(run, reply(0x4242, 65535, b"X" * _icmp.TOKEN_BYTES), 1_000_500_000, 100.0005)
    assert run.rtts == {2: pytest.approx(0.0005)}
    assert run.duplicates == 1
    assert run.outstanding == {0, 1}


def test_late_reply_is_lost_and_clock_steps_fall_back_to_monotonic() -> None:
    run = _run_state(wait=0.2)
    run.send_ns[0], run.send_mono[0] = 5_000_000_000, 10.0
    run.send_ns[1], run.send_mono[1] = 5_000_000_000, 10.0
    late = _icmp.Heard(True, run.ident, run.seq_base, run.token)
    icmp._note_reply(run, late, 5_300_000_000, 10.3)
    assert run.rtts == {}
    stepped = _icmp.Heard(True, run.ident, run.seq_base + 1, run.token)
    icmp._note_reply(run, stepped, 1_000_000_000, 10.001)  # wall clock went back 4 s
    assert run.rtts == {1: pytest.approx(0.001)}


def test_parse_destination_unreachable_quoting_our_request() -> None:
    request = _icmp.echo_request(socket.AF_INET, 0x4242, 7, b"T" * 8, with_checksum=True)
    quoted_ip = (
        bytes([0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0])
        + socket.inet_aton("198.51.100.1")
        + socket.inet_aton("203.0.113.5")
    )
    error = struct.pack("!BBHI", 3, 1, 0, 0) + quoted_ip + request
    heard = _icmp.parse(socket.AF_INET, bytes([0x45]) + bytes(19) + error, has_ip_header=True)
    assert heard is not None
    assert (heard.is_reply, heard.icmp_type, heard.icmp_code) == (False, 3, 1)
    assert (heard.ident, heard.seq) == (0x4242, 7)
    assert heard.quoted_dst == socket.inet_aton("203.0.113.5")
    assert heard.payload == b"T" * 8
    assert _icmp.parse(socket.AF_INET, bytes([0x45]) + bytes(19) + b"\x08\x00", True) is None


def test_params() -> None:
    p = icmp.Params()
    assert (p.count, p.interval_seconds, p.size, p.timeout_seconds) == (5, 0.2, 56, 1.0)
    assert icmp.Params.model_validate({"family": 6}).family == "6"
    for bad, field in [
        ({"count": 0}, "count"),
        ({"count": 1001}, "count"),
        ({"interval_seconds": 0.0001}, "interval_seconds"),
        ({"size": 4}, "size"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"mode": "scapy"}, "mode"),
        ({"source": "eth0"}, "source"),
        ({"ttl": 5}, "ttl"),
    ]:
        with pytest.raises(ValidationError, match=field):
            icmp.Params.model_validate(bad)


# ---- failures made in network namespaces ---------------------------------------------------


class Lab:
    """prober --veth-- router (ignores echo, forwards to nowhere) ; prober --veth-- lossy peer."""

    def __init__(self) -> None:
        self.ip = need_program("ip")
        self.tag = secrets.token_hex(3)
        self.prober, self.router, self.peer = (f"wr-{r}-{self.tag}" for r in ("pr", "rt", "pe"))
        self.lossy = False

    def sh(self, *argv: str, ns: str | None = None, stdin: str | None = None) -> None:
        cmd = [self.ip, "netns", "exec", ns, *argv] if ns else [self.ip, *argv]
        subprocess.run(cmd, input=stdin, text=True, check=True, capture_output=True, timeout=30)

    def build(self) -> None:
        for ns in (self.prober, self.router, self.peer):
            self.sh("netns", "add", ns)
            self.sh("-n", ns, "link", "set", "lo", "up")
        self._veth(self.prober, self.router, "198.51.100", "2001:db8:1::")
        self._veth(self.prober, self.peer, "198.51.101", None)
        self.sh("-n", self.prober, "route", "add", "203.0.113.0/24", "via", "198.51.100.2")
        self.sh("-n", self.prober, "route", "add", "2001:db8:2::/64", "via", "2001:db8:1::2")
        self.sh("sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647", ns=self.prober)
        self.sh(
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
            "net.ipv4.icmp_echo_ignore_all=1",
            "net.ipv6.icmp.echo_ignore_all=1",
            # Without this the router answers only the first couple of probes per second.
            "net.ipv4.icmp_ratelimit=0",
            "net.ipv6.icmp.ratelimit=0",
            ns=self.router,
        )
        try:
            nft = need_program("nft")
        except pytest.skip.Exception:
            return
        self.sh(
            nft,
            "-f",
            "-",
            ns=self.peer,
            stdin=(
                "table ip wr {\n  chain in {\n"
                "    type filter hook input priority 0; policy accept;\n"
                "    icmp type echo-request numgen inc mod 2 == 1 drop\n  }\n}\n"
            ),
        )
        self.lossy = True

    def _veth(self, a: str, b: str, net4: str, net6: str | None) -> None:
        dev_a, dev_b = f"wa{self.tag}{b[3:5]}", f"wb{self.tag}{b[3:5]}"
        self.sh("link", "add", dev_a, "type", "veth", "peer", "name", dev_b)
        for ns, dev, host in ((a, dev_a, 1), (b, dev_b, 2)):
            self.sh("link", "set", dev, "netns", ns)
            self.sh("-n", ns, "addr", "add", f"{net4}.{host}/24", "dev", dev)
            if net6:
                self.sh("-n", ns, "addr", "add", f"{net6}{host}/64", "dev", dev, "nodad")
            self.sh("-n", ns, "link", "set", dev, "up")

    def probe(self, cases: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
        done = subprocess.run(
            [
                self.ip,
                "netns",
                "exec",
                self.prober,
                sys.executable,
                "-c",
                SCRIPT,
                json.dumps(cases),
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def cleanup(self) -> None:
        for ns in (self.prober, self.router, self.peer):
            subprocess.run([self.ip, "netns", "del", ns], capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    need_root()
    made = Lab()
    try:
        made.build()
        yield made
    finally:
        made.cleanup()


@pytest.mark.netns
@pytest.mark.parametrize("mode", ["raw", "dgram"])
def test_failures_in_namespaces(lab: Lab, mode: str) -> None:
    quick = {**FAST, "count": 2, "timeout_seconds": 0.3, "mode": mode}
    out = lab.probe(
        [
            ("198.51.100.2", quick),  # answers ARP, ignores echo
            ("2001:db8:1::2", quick),
            ("203.0.113.5", quick),  # forwarded to no route: ICMP destination unreachable
            ("2001:db8:2::5", quick),
            ("192.0.2.1", quick),  # no route at all in the prober
        ]
    )
    for address in ("198.51.100.2", "2001:db8:1::2"):
        o = out[address]
        assert (o["success"], o["reason"]) == (False, "no_reply"), o
        assert o["metrics"]["packets_sent"] == 2
        assert o["metrics"]["loss_ratio"] == 1
        assert "rtt_avg_seconds" not in o["metrics"]
        assert o["info"]["socket"] == mode
    for address, router in (("203.0.113.5", "198.51.100.2"), ("2001:db8:2::5", "2001:db8:1::2")):
        o = out[address]
        assert o["reason"] == "unreachable", o
        assert o["info"]["icmp_error"].startswith("destination unreachable")
        assert o["info"]["icmp_error"].endswith(f"from {router}")
    o = out["192.0.2.1"]
    assert o["reason"] == "unreachable", o
    assert o["metrics"]["packets_sent"] == 0
    assert "unreachable" in o["info"]["send_error"].lower()


@pytest.mark.netns
@pytest.mark.parametrize("mode", ["raw", "dgram"])
def test_partial_loss(lab: Lab, mode: str) -> None:
    need(lab.lossy, "nft is not installed")
    o = lab.probe([("198.51.101.2", {"count": 6, "interval_seconds": 0.02, "mode": mode})])[
        "198.51.101.2"
    ]
    assert (o["success"], o["reason"]) == (True, "ok"), o
    m = o["metrics"]
    assert (m["packets_sent"], m["packets_received"], m["loss_ratio"]) == (6, 3, 0.5)
    assert "jitter_seconds" in m


# ---- interface: one check per WAN line (tests/e2e/test_line_checks_netns.py cuts a line) ----


def test_interface_pins_the_echo_requests(run: RunCheck) -> None:
    need_root()
    r = run("icmp", "127.0.0.1", interface="lo", **FAST)
    check_healthy(r, 3)  # FAST["count"]


def test_a_missing_interface_is_source_unavailable(run: RunCheck) -> None:
    need_root()
    r = run("icmp", "127.0.0.1", interface="wrnosuch0", **FAST)
    assert (r.success, r.reason) == (False, "source_unavailable")
    assert r.info["error"] == "interface wrnosuch0: no such network interface on this host"
    assert r.metrics == {}


def test_interface_param_is_checked() -> None:
    with pytest.raises(ValidationError, match="interface"):
        icmp.Params.model_validate({"interface": "x" * 16})
