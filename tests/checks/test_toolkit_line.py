"""checks._line and checks._items: what the line checks and the per-item checks share."""

from __future__ import annotations

import socket
import struct
import time

import pytest
from pydantic import ValidationError

from checks import _items, _line


@pytest.mark.parametrize(
    ("address", "host"),
    [
        ("192.0.2.1", "192.0.2.1"),
        (" gw.example.vn ", "gw.example.vn"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("2001:db8::1", "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1%eth0"),
    ],
)
def test_parse_host_accepts_names_and_addresses(address: str, host: str) -> None:
    assert _line.parse_host(address) == host
    assert _line.bare_host(address) == host


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("", "expected a host name"),
        ("   ", "expected a host name"),
        ("gw example", "expected a host name"),
        ("10.0.0.1:80", "without a port"),
        ("[2001:db8::1]:80", "expected a host name"),
        ("http://gw/", "expected a host name"),
        ("gw:161", "without a port"),
    ],
)
def test_parse_host_refuses_what_no_lookup_can_use(address: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as raised:
        _line.parse_host(address)
    assert repr(address) in str(raised.value)


def test_line_params_read_a_yaml_family_number() -> None:
    assert _line.LineParams.model_validate({"family": 4}).family == "4"
    assert _line.LineParams.model_validate({"source": "192.0.2.7"}).source is not None
    for bad in ({"family": 5}, {"interface": "x" * 16}, {"source": "gw"}, {"famly": "4"}):
        with pytest.raises(ValidationError):
            _line.LineParams.model_validate(bad)


def test_kernel_time_comes_from_a_real_datagram() -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx,
    ):
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(5)
        rx.setsockopt(socket.SOL_SOCKET, _line.SO_TIMESTAMPNS, 1)
        sent_ns = time.time_ns()
        tx.sendto(b"x", rx.getsockname())
        _, ancdata, _, _ = rx.recvmsg(16, socket.CMSG_SPACE(16))
    stamp = _line.kernel_time_ns(ancdata)
    assert stamp is not None
    assert abs(stamp - sent_ns) < 60 * 1_000_000_000  # the same clock, not a garbled value


def test_kernel_time_absent_without_the_stamp() -> None:
    assert _line.kernel_time_ns([]) is None
    other = (socket.SOL_SOCKET, _line.SO_TIMESTAMPNS + 1, struct.pack("@ll", 1, 2))
    assert _line.kernel_time_ns([other]) is None
    stamp = (socket.SOL_SOCKET, _line.SO_TIMESTAMPNS, struct.pack("@ll", 3, 4))
    assert _line.kernel_time_ns([stamp]) == 3_000_000_004


def test_train_metrics_name_the_packet_in_their_help() -> None:
    metrics = _line.train_metrics("Echo request")
    assert "Echo requests sent" in metrics["packets_sent"].help
    assert metrics["loss_ratio"].admits(1.0) and not metrics["loss_ratio"].admits(1.5)
    assert not metrics["rtt_avg_seconds"].admits(-0.001)


def test_suffixes() -> None:
    assert _items.suffix("/") == ""
    assert _items.suffix("/var/lib") == "var_lib"
    assert _items.suffix("Wi-Fi 2") == "wi_fi_2"
    names = ["/", "/var/lib"]
    assert _items.unique_suffixes(names, "mount") is names


@pytest.mark.parametrize(
    ("names", "why"),
    [
        (["/var-lib", "/var_lib"], "mounts '/var-lib' and '/var_lib' give the same metric name"),
        (["/" + "d" * 33], r"mount '/d+': name too long for a metric \(max 32\)"),
    ],
)
def test_suffix_clashes_are_refused(names: list[str], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        _items.unique_suffixes(names, "mount")
