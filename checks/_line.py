"""What the line checks (icmp, pmtu, traceroute, stream) share: the parameters that put a probe
on one WAN line, the target host, kernel receive times, and the figures of a packet train.

Not a check: probes import this module and ``checks.core``, never each other.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

from pydantic import IPvAnyAddress, field_validator

from checks import core
from checks._net import Family, Interface, family_from_number

NO_REPLY = "no_reply"

# Linux's SO_TIMESTAMPNS, which the socket module does not export.
SO_TIMESTAMPNS = 35


class LineParams(core.Params):
    """``source`` binds the probe to one local address and ``interface`` pins it to one network
    interface (SO_BINDTODEVICE), so each line of a ward is probed on its own; ``family`` picks
    the address family of a name."""

    source: IPvAnyAddress | None = None
    interface: Interface | None = None
    family: Family = "auto"

    _family_number = field_validator("family", mode="before")(family_from_number)


def bare_host(address: str) -> str:
    """The host of a target written as a name, an address or a bracketed IPv6 address."""
    host = address.strip()
    if host.startswith("[") and host.endswith("]"):
        return host[1:-1]
    return host


def parse_host(address: str) -> str:
    """``bare_host``, refusing what no lookup can turn into an address (a port, a blank)."""
    host = bare_host(address)
    if not host or any(c.isspace() or c in "/[]" for c in host):
        raise ValueError(f"address {address!r}: expected a host name or an IP address")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host.partition("%")[0])
        except ValueError:
            raise ValueError(
                f"address {address!r}: a host name or an IP address, without a port"
            ) from None
    return host


def kernel_time_ns(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    """The kernel's receive time (SO_TIMESTAMPNS) of a datagram, in ns since the epoch."""
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = struct.unpack("@ll", data[:16])
            return int(sec) * 1_000_000_000 + int(nsec)
    return None


def train_metrics(packet: str) -> dict[str, core.Metric]:
    """The figures of a train of ``packet``s and their replies, as icmp and stream report them."""
    return {
        "packets_sent": core.gauge(f"{packet}s sent in the run.", 0.0),
        "packets_received": core.gauge(f"Distinct replies to the run's {packet}s.", 0.0),
        "packets_duplicate": core.gauge("Replies received again after the first.", 0.0),
        "loss_ratio": core.ratio("1 - received / sent: the share of packets with no reply."),
        "rtt_min_seconds": core.seconds("Shortest round-trip time of the run."),
        "rtt_avg_seconds": core.seconds("Mean round-trip time of the run."),
        "rtt_max_seconds": core.seconds("Longest round-trip time of the run."),
        "jitter_seconds": core.seconds(
            "Mean absolute difference of the round-trip times of consecutive replies."
        ),
    }
