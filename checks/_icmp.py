"""ICMP echo for the line checks (icmp, pmtu, traceroute): the packet codec, the socket set-up,
and the ICMP errors a socket hears, from raw packets or from a datagram socket's error queue.

Two kinds of socket can send echo requests: a raw socket (root or CAP_NET_RAW), which sees
every ICMP packet on the host and gets the IPv4 header with each, and an ICMP datagram socket
(the agent's group inside ``net.ipv4.ping_group_range``), whose kernel sets the identifier and
the checksum and queues ICMP errors apart (IP_RECVERR).

Not a check: probes import this module and ``checks.core``, never each other.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

from checks import core
from checks._line import SO_TIMESTAMPNS, LineParams, bare_host
from checks._net import PERMISSION_DENIED, RESOLVE_FAILED, ResolveError, pin, resolve

# Bytes of a per-run random token that open every payload: replies are matched on it.
TOKEN_BYTES = 8

# Linux values that the socket module does not export.
IP_RECVERR = 11
IPV6_RECVERR = 25
SOL_RAW = 255
ICMP_FILTER = 1
ICMP6_FILTER = 1
SO_EE_ORIGIN_LOCAL = 1
SO_EE_ORIGIN_ICMP = 2
SO_EE_ORIGIN_ICMP6 = 3

ECHO_REQUEST: dict[int, int] = {socket.AF_INET: 8, socket.AF_INET6: 128}
ECHO_REPLY: dict[int, int] = {socket.AF_INET: 0, socket.AF_INET6: 129}
# IPv4 types by name, for the checks that read whole packets (traceroute).
V4_ECHO_REPLY = 0
V4_UNREACHABLE = 3
# Errors that quote our request back: v4 unreachable, time exceeded, parameter problem;
# v6 unreachable, packet too big, time exceeded, parameter problem.
ERROR_TYPES: dict[int, frozenset[int]] = {
    socket.AF_INET: frozenset({3, 11, 12}),
    socket.AF_INET6: frozenset({1, 2, 3, 4}),
}
ERROR_NAMES: dict[tuple[int, int], str] = {
    (socket.AF_INET, 3): "destination unreachable",
    (socket.AF_INET, 11): "time exceeded",
    (socket.AF_INET, 12): "parameter problem",
    (socket.AF_INET6, 1): "destination unreachable",
    (socket.AF_INET6, 2): "packet too big",
    (socket.AF_INET6, 3): "time exceeded",
    (socket.AF_INET6, 4): "parameter problem",
}
# What sendto or a receive reports when the way is closed (a datagram socket gets the ICMP
# error as an errno; a firewall's reject, EACCES or EPERM, counts as a closed way too).
UNREACHABLE_ERRNOS = frozenset(
    {
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
        errno.EACCES,
        errno.EPERM,
        errno.EADDRNOTAVAIL,
    }
)
_RECVERR = frozenset({(socket.IPPROTO_IP, IP_RECVERR), (socket.IPPROTO_IPV6, IPV6_RECVERR)})

Mode = Literal["auto", "raw", "dgram"]


class EchoParams(LineParams):
    """The line parameters plus ``mode``, which forces a raw or a datagram socket."""

    mode: Mode = "auto"


@dataclass
class Heard:
    """One parsed ICMP message that may concern us."""

    is_reply: bool
    ident: int
    seq: int
    payload: bytes
    icmp_type: int = 0
    icmp_code: int = 0
    quoted_dst: bytes = b""


def word_sum(data: bytes) -> int:
    """The sum of ``data`` as 16-bit words, the start of an Internet checksum."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    return total


def checksum(data: bytes, partial: int = 0) -> int:
    """The Internet checksum (RFC 1071) of data, plus ``partial`` already summed words."""
    total = partial + word_sum(data)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(
    family: int,
    ident: int,
    seq: int,
    payload: bytes,
    with_checksum: bool,
    payload_sum: int | None = None,
) -> bytes:
    """An echo request; ``payload_sum`` spares re-summing a large payload for every packet."""
    kind = ECHO_REQUEST[family]
    header = struct.pack("!BBHHH", kind, 0, 0, ident, seq)
    if with_checksum:
        partial = word_sum(payload) if payload_sum is None else payload_sum
        header = struct.pack("!BBHHH", kind, 0, checksum(header, partial), ident, seq)
    return header + payload


def paris_word(ident: int, seq: int) -> bytes:
    """A payload word that keeps an echo request's checksum the same whatever ident and seq
    are: load balancers that hash the checksum then keep every probe on one path."""
    total = ident + seq
    total = (total & 0xFFFF) + (total >> 16)
    return struct.pack("!H", 0xFFFF - total)


def parse(family: int, data: bytes, has_ip_header: bool) -> Heard | None:
    """Read an echo reply or an ICMP error quoting an echo request; None for anything else."""
    if has_ip_header:
        if len(data) < 20:
            return None
        data = data[(data[0] & 0x0F) * 4 :]
    if len(data) < 8:
        return None
    kind, code, _, ident, seq = struct.unpack("!BBHHH", data[:8])
    if kind == ECHO_REPLY[family]:
        return Heard(True, ident, seq, data[8:], kind, code)
    if kind not in ERROR_TYPES[family]:
        return None
    inner = data[8:]
    if family == socket.AF_INET:
        if len(inner) < 20 or inner[9] != socket.IPPROTO_ICMP:
            return None
        dst, quoted = inner[16:20], inner[(inner[0] & 0x0F) * 4 :]
    else:
        if len(inner) < 40 or inner[6] != socket.IPPROTO_ICMPV6:
            return None
        dst, quoted = inner[24:40], inner[40:]
    if len(quoted) < 8 or quoted[0] != ECHO_REQUEST[family]:
        return None
    q_ident, q_seq = struct.unpack("!HH", quoted[4:8])
    return Heard(False, q_ident, q_seq, quoted[8:], kind, code, dst)


def describe(family: int, icmp_type: int, code: int, sender: str) -> str:
    """``destination unreachable (code 1) from 192.0.2.1``."""
    name = ERROR_NAMES.get((family, icmp_type), f"ICMP type {icmp_type}")
    return f"{name} (code {code}) from {sender}"


def open_socket(family: int, mode: Mode) -> tuple[socket.socket, bool]:
    """A raw (True) or datagram (False) ICMP socket as ``mode`` allows, raw first;
    PermissionError saying how to grant either when neither can be had."""
    proto = socket.IPPROTO_ICMP if family == socket.AF_INET else socket.IPPROTO_ICMPV6
    kinds = {"raw": [True], "dgram": [False], "auto": [True, False]}[mode]
    for raw in kinds:
        try:
            sock = socket.socket(family, socket.SOCK_RAW if raw else socket.SOCK_DGRAM, proto)
        except PermissionError:
            continue
        return sock, raw
    raise PermissionError(_permission_help(mode))


def _permission_help(mode: Mode) -> str:
    try:
        with open("/proc/sys/net/ipv4/ping_group_range") as f:
            current = " ".join(f.read().split())
    except OSError:
        current = "unknown"
    parts = []
    if mode != "dgram":
        parts.append("no raw ICMP socket (needs root or CAP_NET_RAW)")
    if mode != "raw":
        parts.append(
            f"no ICMP datagram socket (group {os.getegid()} is outside "
            f"net.ipv4.ping_group_range = {current!r})"
        )
    return (
        "; ".join(parts) + ": grant the agent CAP_NET_RAW (setcap cap_net_raw+ep) or run "
        "sysctl -w net.ipv4.ping_group_range='0 2147483647'"
    )


def configure(sock: socket.socket, family: int, raw: bool) -> None:
    """Non-blocking, with kernel receive times, hearing only echo replies and the errors."""
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.setblocking(False)
    if raw and family == socket.AF_INET:
        # Raw v4 sockets see every ICMP packet on the host: let only replies and errors in.
        allowed = sum(1 << t for t in (ECHO_REPLY[family], *ERROR_TYPES[family]))
        sock.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("I", ~allowed & 0xFFFFFFFF))
    elif raw:
        words = [0xFFFFFFFF] * 8
        for t in (ECHO_REPLY[family], *ERROR_TYPES[family]):
            words[t >> 5] &= ~(1 << (t & 31))
        sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("8I", *words))
    elif family == socket.AF_INET:
        sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)


@dataclass(frozen=True)
class Queued:
    """One error from a datagram socket's error queue (Linux ``sock_extended_err``)."""

    data: bytes  # the request it concerns, from its ICMP header on
    errno: int
    origin: int  # SO_EE_ORIGIN_LOCAL (this host) or _ICMP / _ICMP6 (a router or the target)
    icmp_type: int
    icmp_code: int
    info: int  # the MTU, for "fragmentation needed" and "packet too big"
    offender: str  # who sent the ICMP error

    @property
    def seq(self) -> int | None:
        return struct.unpack("!H", self.data[6:8])[0] if len(self.data) >= 8 else None


def error_queue(sock: socket.socket, bufsize: int, limit: int) -> Iterator[Queued]:
    """Read at most ``limit`` messages from the error queue (IP_RECVERR), until it is empty."""
    for _ in range(limit):
        try:
            data, ancdata, _, _ = sock.recvmsg(bufsize, 512, socket.MSG_ERRQUEUE)
        except OSError:  # BlockingIOError included: the queue is empty
            return
        for level, kind, cdata in ancdata:
            if (level, kind) not in _RECVERR or len(cdata) < 16:
                continue
            ee_errno, origin, icmp_type, code, _, ee_info = struct.unpack("=IBBBBI", cdata[:12])
            yield Queued(data, ee_errno, origin, icmp_type, code, ee_info, offender(cdata[16:]))


def offender(sockaddr: bytes) -> str:
    """The address in a raw ``sockaddr_in``/``sockaddr_in6``, as text."""
    family = struct.unpack("=H", sockaddr[:2])[0] if len(sockaddr) >= 2 else 0
    if family == socket.AF_INET and len(sockaddr) >= 8:
        return socket.inet_ntop(socket.AF_INET, sockaddr[4:8])
    if family == socket.AF_INET6 and len(sockaddr) >= 24:
        return socket.inet_ntop(socket.AF_INET6, sockaddr[8:24])
    return "unknown"


@dataclass
class Echo:
    """An ICMP socket set up towards one target and pinned to its line; closes on exit."""

    sock: socket.socket
    raw: bool
    family: int
    sockaddr: Any
    info: dict[str, str]

    def __enter__(self) -> Echo:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.sock.close()


def open_echo(address: str, params: EchoParams, timeout: float) -> Echo:
    """Resolve ``address`` within ``timeout``, open an ICMP socket as ``params.mode`` allows,
    set it up and pin it to the line; raises CheckFailed (resolve_failed, permission_denied,
    source_unavailable...) with ``address`` and ``socket`` info as far as it got."""
    host = bare_host(address)
    try:
        addrs = resolve(host, 0, params.family, timeout, socket.SOCK_DGRAM, params.source)
    except ResolveError as exc:
        raise core.CheckFailed(RESOLVE_FAILED, str(exc)) from exc
    family, sockaddr = addrs[0]
    shown = str(sockaddr[0])
    try:
        sock, raw = open_socket(family, params.mode)
    except PermissionError as exc:
        raise core.CheckFailed(PERMISSION_DENIED, str(exc), address=shown) from exc
    kind = "raw" if raw else "dgram"
    try:
        configure(sock, family, raw)
        failed = pin(sock, params.interface, params.source)
        if failed is not None:
            raise core.CheckFailed(failed[0], failed[1], address=shown, socket=kind)
    except BaseException:
        sock.close()
        raise
    return Echo(sock, raw, family, sockaddr, {"address": shown, "socket": kind})
