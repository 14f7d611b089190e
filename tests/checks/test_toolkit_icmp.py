"""checks._icmp, the echo codec and socket set-up that icmp, pmtu and traceroute share."""

from __future__ import annotations

import errno
import os
import socket
import struct
import time

import pytest

from checks import _icmp
from checks.core import CheckFailed
from tests.helpers import need


def _need_root() -> None:
    need(os.geteuid() == 0, "needs root (raw ICMP sockets)")


def test_echo_request_with_a_summed_payload_matches_a_full_checksum() -> None:
    payload = bytes(range(251))  # odd length: the last byte is padded
    whole = _icmp.echo_request(socket.AF_INET, 7, 9, payload, with_checksum=True)
    presummed = _icmp.echo_request(
        socket.AF_INET, 7, 9, payload, with_checksum=True, payload_sum=_icmp.word_sum(payload)
    )
    assert whole == presummed
    assert _icmp.checksum(whole) == 0
    v6 = _icmp.echo_request(socket.AF_INET6, 7, 9, payload, with_checksum=False)
    assert v6[0] == 128 and v6[2:4] == b"\0\0"  # the kernel sums ICMPv6 over its pseudo-header


def test_describe_names_known_errors_and_numbers_the_rest() -> None:
    assert (
        _icmp.describe(socket.AF_INET, 3, 1, "192.0.2.1")
        == "destination unreachable (code 1) from 192.0.2.1"
    )
    assert _icmp.describe(socket.AF_INET6, 2, 0, "2001:db8::1").startswith("packet too big")
    assert (
        _icmp.describe(socket.AF_INET, 5, 1, "192.0.2.1") == "ICMP type 5 (code 1) from 192.0.2.1"
    )


def test_offender_reads_both_families_and_refuses_short_ones() -> None:
    v4 = struct.pack("=HH4s8x", socket.AF_INET, 0, socket.inet_aton("192.0.2.9"))
    v6 = struct.pack("=HHI16sI", socket.AF_INET6, 0, 0, socket.inet_pton(socket.AF_INET6, "::1"), 0)
    assert _icmp.offender(v4) == "192.0.2.9"
    assert _icmp.offender(v6) == "::1"
    assert _icmp.offender(v4[:6]) == "unknown"
    assert _icmp.offender(b"") == "unknown"


def test_error_queue_reads_a_real_port_unreachable() -> None:
    # A UDP socket with IP_RECVERR queues the ICMP error its datagram draws, as an ICMP
    # datagram socket does for its echo requests: the same sock_extended_err to decode.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IP, _icmp.IP_RECVERR, 1)
        sock.sendto(b"\x08\0\0\0\0\x01\0\x2awardready", ("127.0.0.1", port))
        queued: list[_icmp.Queued] = []
        for _ in range(50):  # bounded: loopback answers within microseconds
            queued = list(_icmp.error_queue(sock, 512, 8))
            if queued:
                break
            time.sleep(0.02)
    assert len(queued) == 1
    (q,) = queued
    assert (q.origin, q.icmp_type, q.icmp_code) == (_icmp.SO_EE_ORIGIN_ICMP, 3, 3)
    assert q.errno == errno.ECONNREFUSED
    assert q.offender == "127.0.0.1"
    assert q.seq == 0x2A
    assert q.data.endswith(b"wardready")


def test_error_queue_of_an_empty_queue_is_empty() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IP, _icmp.IP_RECVERR, 1)
        assert list(_icmp.error_queue(sock, 512, 8)) == []


def test_open_echo_on_loopback() -> None:
    _need_root()
    params = _icmp.EchoParams(mode="raw")
    with _icmp.open_echo("[127.0.0.1]", params, 2.0) as echo:
        assert echo.info == {"address": "127.0.0.1", "socket": "raw"}
        assert (echo.raw, echo.family) == (True, socket.AF_INET)
        echo.sock.sendto(_icmp.echo_request(socket.AF_INET, 1, 2, b"x" * 8, True), echo.sockaddr)
    assert echo.sock.fileno() == -1  # closed on leaving


def test_open_echo_failures_say_how_far_they_got() -> None:
    with pytest.raises(CheckFailed) as failed:
        _icmp.open_echo("wardready-no-such-host.invalid", _icmp.EchoParams(), 3.0)
    assert failed.value.reason == "resolve_failed"
    _need_root()
    params = _icmp.EchoParams.model_validate({"source": "192.0.2.123", "mode": "raw"})
    with pytest.raises(CheckFailed) as failed:
        _icmp.open_echo("127.0.0.1", params, 2.0)
    assert failed.value.reason == "source_unavailable"
    assert failed.value.info == {"address": "127.0.0.1", "socket": "raw"}
