"""ICMP echo (ping): a train of echo requests on a fixed schedule.

Target address: a host name or an IP address (IPv6 link-local may carry ``%iface``). Names
are resolved with the system resolver within the timeout; ``family`` picks the address family
(``auto`` takes the first address getaddrinfo returns).

Packets go out at absolute times ``start + i * interval_seconds`` so a slow loop never
stretches the schedule. Receive times come from the kernel (``SO_TIMESTAMPNS``), send times
from the same clock read right before ``sendto``, so the RTT excludes scheduler latency on the
receive side. Replies are matched on sequence number and a random per-run payload token (and
on the identifier with raw sockets, which see every ICMP packet on the host); a reply later
than ``timeout_seconds`` after its request counts as lost. The run ends when every request
has been answered or ``timeout_seconds`` after the last send.

The whole run must fit the check timeout: ``(count - 1) * interval_seconds + timeout_seconds``
is clamped to it, first by shortening the final wait to the timeout, then by sending fewer
packets; ``info.clamped`` then says what was cut.

Metrics:
- ``packets_sent``, ``packets_received`` (distinct replies), ``packets_duplicate``;
- ``loss_ratio``: 1 - received / sent (1 when nothing could be sent);
- ``rtt_min_seconds``, ``rtt_avg_seconds``, ``rtt_max_seconds``, ``rtt_stddev_seconds``
  (population standard deviation), present when at least one reply came back;
- ``jitter_seconds``: mean absolute difference of consecutive RTTs, taken in send order over
  the packets that were answered; present with two replies or more.

Info: ``address``, ``socket`` (raw or dgram), ``clamped``, ``icmp_error`` (the last ICMP error
received), ``send_error``, ``error``.

Reasons (success means at least one reply; loss and latency are judged by the collector):
``no_reply``, ``unreachable`` (no reply and an ICMP destination-unreachable or time-exceeded
came back, or the kernel had no route), ``resolve_failed``, ``permission_denied``,
``source_unavailable`` (``source`` is not an address of this host, or ``interface`` is not an
interface of it).

``interface`` pins the echo requests to one network interface (``SO_BINDTODEVICE``, Linux), so
a ward's fibre and backup lines are probed separately towards the same address: one check per
line, told apart by a ``line`` label. A cut line then fails its own check (``unreachable`` or
``no_reply``) while the other line's check still succeeds.

Privileges: a raw socket (root or CAP_NET_RAW), or, without it, an ICMP datagram socket, which
needs the agent's group inside ``net.ipv4.ping_group_range`` (this covers IPv6 too).
``mode`` forces one kind. Intervals under 0.01 s need root. ``interface`` needs CAP_NET_RAW
on Linux before 5.7 (later kernels let any user pin a socket that is not pinned yet).
"""

from __future__ import annotations

import errno
import itertools
import math
import os
import secrets
import select
import socket
import statistics
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field, IPvAnyAddress, field_validator

from checks import core
from checks._net import (
    RESOLVE_FAILED,
    SOURCE_UNAVAILABLE,
    UNREACHABLE,
    Family,
    Interface,
    ResolveError,
    family_from_number,
    pin,
    resolve,
)
from checks.core import ERROR, TIMEOUT, Outcome, Target

NO_REPLY = "no_reply"
PERMISSION_DENIED = "permission_denied"

REASONS = frozenset(
    {NO_REPLY, UNREACHABLE, RESOLVE_FAILED, PERMISSION_DENIED, SOURCE_UNAVAILABLE, TIMEOUT}
)

TOKEN_BYTES = 8
MIN_UNPRIVILEGED_INTERVAL = 0.01

# Linux values that the socket module does not export.
SO_TIMESTAMPNS = 35
IP_RECVERR = 11
IPV6_RECVERR = 25
SOL_RAW = 255
ICMP_FILTER = 1
ICMP6_FILTER = 1
SO_EE_ORIGIN_LOCAL = 1

ECHO_REQUEST: dict[int, int] = {socket.AF_INET: 8, socket.AF_INET6: 128}
ECHO_REPLY: dict[int, int] = {socket.AF_INET: 0, socket.AF_INET6: 129}
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
# Most messages a single wake-up reads before the schedule is looked at again.
MAX_DRAIN = 256


class Params(core.Params):
    count: int = Field(default=5, ge=1, le=1000)
    interval_seconds: float = Field(default=0.2, ge=0.001, le=60.0)
    size: int = Field(default=56, ge=TOKEN_BYTES, le=65000, description="payload bytes")
    timeout_seconds: float = Field(default=1.0, gt=0.0, le=60.0)
    source: IPvAnyAddress | None = None
    interface: Interface | None = None
    family: Family = "auto"
    mode: Literal["auto", "raw", "dgram"] = "auto"

    _family_number = field_validator("family", mode="before")(family_from_number)


@dataclass
class _Heard:
    """One parsed ICMP message that may concern us."""

    is_reply: bool
    ident: int
    seq: int
    payload: bytes
    icmp_type: int = 0
    icmp_code: int = 0
    quoted_dst: bytes = b""


@dataclass
class _Run:
    family: int
    raw: bool
    ident: int
    seq_base: int
    token: bytes
    dst: bytes
    wait: float
    send_ns: dict[int, int] = field(default_factory=dict)
    send_mono: dict[int, float] = field(default_factory=dict)
    rtts: dict[int, float] = field(default_factory=dict)
    outstanding: set[int] = field(default_factory=set)
    duplicates: int = 0
    unreachable: bool = False
    icmp_error: str = ""
    send_error: str = ""

    def index(self, seq: int) -> int | None:
        i = (seq - self.seq_base) & 0xFFFF
        return i if i in self.send_ns else None


def _word_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    return total


def checksum(data: bytes, partial: int = 0) -> int:
    """The Internet checksum (RFC 1071) of data, plus ``partial`` already summed words."""
    total = partial + _word_sum(data)
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
        partial = _word_sum(payload) if payload_sum is None else payload_sum
        header = struct.pack("!BBHHH", kind, 0, checksum(header, partial), ident, seq)
    return header + payload


def parse(family: int, data: bytes, has_ip_header: bool) -> _Heard | None:
    """Read an echo reply or an ICMP error quoting an echo request; None for anything else."""
    if has_ip_header:
        if len(data) < 20:
            return None
        data = data[(data[0] & 0x0F) * 4 :]
    if len(data) < 8:
        return None
    kind, code, _, ident, seq = struct.unpack("!BBHHH", data[:8])
    if kind == ECHO_REPLY[family]:
        return _Heard(True, ident, seq, data[8:], kind, code)
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
    return _Heard(False, q_ident, q_seq, quoted[8:], kind, code, dst)


def _open(family: int, mode: str) -> tuple[socket.socket, bool]:
    proto = socket.IPPROTO_ICMP if family == socket.AF_INET else socket.IPPROTO_ICMPV6
    kinds = {"raw": [True], "dgram": [False], "auto": [True, False]}[mode]
    for raw in kinds:
        try:
            sock = socket.socket(family, socket.SOCK_RAW if raw else socket.SOCK_DGRAM, proto)
        except PermissionError:
            continue
        return sock, raw
    raise PermissionError(_permission_help(mode))


def _permission_help(mode: str) -> str:
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


def _configure(sock: socket.socket, family: int, raw: bool) -> None:
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


def _kernel_time_ns(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = struct.unpack("@ll", data[:16])
            return int(sec) * 1_000_000_000 + int(nsec)
    return None


def _note_reply(run: _Run, heard: _Heard, recv_ns: int | None, recv_mono: float) -> None:
    if run.raw and heard.ident != run.ident:
        return
    i = run.index(heard.seq)
    if i is None or heard.payload[:TOKEN_BYTES] != run.token:
        return
    if i in run.rtts:
        run.duplicates += 1
        return
    mono_rtt = recv_mono - run.send_mono[i]
    rtt = mono_rtt if recv_ns is None else (recv_ns - run.send_ns[i]) / 1e9
    # The kernel stamp precedes our own clock read, so a kernel RTT above the monotonic one
    # (or below zero) means the wall clock stepped between send and receive.
    if rtt < 0 or rtt > mono_rtt + 0.001:
        rtt = mono_rtt
    if rtt > run.wait:
        return
    run.rtts[i] = rtt
    run.outstanding.discard(i)


def _note_error(run: _Run, heard: _Heard, sender: str) -> None:
    if heard.ident != run.ident or heard.quoted_dst != run.dst:
        return
    i = run.index(heard.seq)
    # Routers may quote only the first 8 bytes of our request: match what they kept.
    if i is None or not run.token.startswith(heard.payload[:TOKEN_BYTES]):
        return
    run.outstanding.discard(i)
    run.unreachable = True
    name = ERROR_NAMES.get((run.family, heard.icmp_type), f"type {heard.icmp_type}")
    run.icmp_error = f"{name} (code {heard.icmp_code}) from {sender}"


def _receive(sock: socket.socket, run: _Run, bufsize: int) -> None:
    for _ in range(MAX_DRAIN):
        try:
            data, ancdata, _, sender = sock.recvmsg(bufsize, socket.CMSG_SPACE(16))
        except BlockingIOError:
            return
        except OSError as exc:
            # A datagram socket reports a queued ICMP error on the next plain receive.
            if exc.errno in UNREACHABLE_ERRNOS:
                run.unreachable = True
                run.icmp_error = run.icmp_error or os.strerror(exc.errno or 0)
            return
        recv_mono = time.monotonic()
        heard = parse(run.family, data, run.raw and run.family == socket.AF_INET)
        if heard is None:
            continue
        if heard.is_reply:
            _note_reply(run, heard, _kernel_time_ns(ancdata), recv_mono)
        elif run.raw:
            _note_error(run, heard, str(sender[0]))


def _receive_errors(sock: socket.socket, run: _Run, bufsize: int) -> None:
    """Read ICMP errors that a datagram socket queues on its error queue (IP_RECVERR)."""
    for _ in range(MAX_DRAIN):
        try:
            data, ancdata, _, _ = sock.recvmsg(bufsize, 512, socket.MSG_ERRQUEUE)
        except OSError:  # BlockingIOError included: the queue is empty
            return
        for level, kind, cdata in ancdata:
            if (level, kind) not in {
                (socket.IPPROTO_IP, IP_RECVERR),
                (socket.IPPROTO_IPV6, IPV6_RECVERR),
            }:
                continue
            ee_errno, origin, icmp_type, code = struct.unpack("=IBBB", cdata[:7])
            offender = _offender(cdata[16:])
            if len(data) >= 8:
                i = run.index(struct.unpack("!H", data[6:8])[0])
                if i is not None and run.token.startswith(data[8 : 8 + TOKEN_BYTES]):
                    run.outstanding.discard(i)
            if origin == SO_EE_ORIGIN_LOCAL:
                run.send_error = os.strerror(ee_errno)
            else:
                run.unreachable = True
                name = ERROR_NAMES.get((run.family, icmp_type), f"type {icmp_type}")
                run.icmp_error = f"{name} (code {code}) from {offender}"


def _offender(sockaddr: bytes) -> str:
    if len(sockaddr) >= 8 and struct.unpack("=H", sockaddr[:2])[0] == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, sockaddr[4:8])
    if len(sockaddr) >= 24 and struct.unpack("=H", sockaddr[:2])[0] == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, sockaddr[8:24])
    return "unknown"


def _schedule(count: int, interval: float, start: float) -> Iterator[tuple[int, float]]:
    for i in range(count):
        yield i, start + i * interval


def probe(target: Target, params: Params, timeout: float) -> Outcome:
    deadline = time.monotonic() + timeout
    host = target.address.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        addrs = resolve(host, 0, params.family, timeout, socket.SOCK_DGRAM, params.source)
    except ResolveError as exc:
        return Outcome(False, RESOLVE_FAILED, info={"error": str(exc)})
    family, sockaddr = addrs[0]
    info = {"address": str(sockaddr[0])}

    try:
        sock, raw = _open(family, params.mode)
    except PermissionError as exc:
        return Outcome(False, PERMISSION_DENIED, info={**info, "error": str(exc)})
    with sock:
        info["socket"] = "raw" if raw else "dgram"
        _configure(sock, family, raw)
        failed = pin(sock, params.interface, params.source)
        if failed is not None:
            return Outcome(False, failed[0], info={**info, "error": failed[1]})
        return _ping(sock, raw, family, sockaddr, params, deadline, timeout, info)


def _ping(
    sock: socket.socket,
    raw: bool,
    family: int,
    sockaddr: tuple[str, int] | tuple[str, int, int, int],
    params: Params,
    deadline: float,
    timeout: float,
    info: dict[str, str],
) -> Outcome:
    interval = params.interval_seconds
    if interval < MIN_UNPRIVILEGED_INTERVAL and os.geteuid() != 0:
        interval = MIN_UNPRIVILEGED_INTERVAL
        info["clamped"] = f"interval raised to {interval:g} s (shorter needs root)"
    count, wait = params.count, params.timeout_seconds
    budget = deadline - time.monotonic()
    if budget <= 0:
        return Outcome(False, TIMEOUT, info={**info, "error": "no time left after resolving"})
    if (count - 1) * interval + wait > budget:
        wait = min(wait, budget)
        count = max(1, min(count, int((budget - wait) / interval + 1e-9) + 1))
        info["clamped"] = (
            f"count {params.count} -> {count}, wait {params.timeout_seconds:g} -> {wait:.3g} s "
            f"to fit the {timeout:g} s check timeout"
        )

    run = _Run(
        family=family,
        raw=raw,
        ident=secrets.randbits(16),
        seq_base=secrets.randbits(16),
        token=secrets.token_bytes(TOKEN_BYTES),
        dst=socket.inet_pton(family, str(sockaddr[0]).partition("%")[0]),
        wait=wait,
    )
    filler = bytes(i & 0xFF for i in range(params.size - TOKEN_BYTES))
    payload = run.token + filler
    with_checksum = raw and family == socket.AF_INET
    payload_sum = _word_sum(payload) if with_checksum else 0
    bufsize = min(params.size + 1024, 65535)
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLERR)

    start = time.monotonic()
    schedule = _schedule(count, interval, start)
    pending = next(schedule, None)
    last_send = start
    while True:
        now = time.monotonic()
        if pending is not None and now >= pending[1]:
            i = pending[0]
            seq = (run.seq_base + i) & 0xFFFF
            packet = echo_request(family, run.ident, seq, payload, with_checksum, payload_sum)
            last_send = time.monotonic()
            sent_ns = time.time_ns()
            try:
                sock.sendto(packet, sockaddr)
            except OSError as exc:
                run.send_error = f"sendto: {exc.strerror}"
                if exc.errno in UNREACHABLE_ERRNOS:
                    run.unreachable = True
            else:
                run.send_ns[i] = sent_ns
                run.send_mono[i] = last_send
                run.outstanding.add(i)
            pending = next(schedule, None)
            continue
        if pending is not None:
            wake = pending[1]
        elif run.outstanding and now < last_send + wait:
            wake = last_send + wait
        else:
            break
        for _, events in poller.poll(math.ceil(max(wake - now, 0.0) * 1000)):
            if events & select.POLLERR and not raw:
                _receive_errors(sock, run, bufsize)
            if events & (select.POLLIN | select.POLLERR):
                _receive(sock, run, bufsize)
    return _outcome(run, info)


def _outcome(run: _Run, info: dict[str, str]) -> Outcome:
    sent, received = len(run.send_ns), len(run.rtts)
    metrics: dict[str, float] = {
        "packets_sent": float(sent),
        "packets_received": float(received),
        "packets_duplicate": float(run.duplicates),
        "loss_ratio": 1.0 - received / sent if sent else 1.0,
    }
    if run.rtts:
        ordered = [run.rtts[i] for i in sorted(run.rtts)]
        metrics["rtt_min_seconds"] = min(ordered)
        metrics["rtt_avg_seconds"] = statistics.fmean(ordered)
        metrics["rtt_max_seconds"] = max(ordered)
        metrics["rtt_stddev_seconds"] = statistics.pstdev(ordered)
        if len(ordered) > 1:
            metrics["jitter_seconds"] = statistics.fmean(
                abs(b - a) for a, b in itertools.pairwise(ordered)
            )
    if run.icmp_error:
        info["icmp_error"] = run.icmp_error
    if run.send_error:
        info["send_error"] = run.send_error
    if received:
        return Outcome(True, metrics=metrics, info=info)
    if run.unreachable:
        return Outcome(False, UNREACHABLE, metrics, info)
    if not sent:
        return Outcome(False, ERROR, metrics, {**info, "error": "no packet could be sent"})
    return Outcome(False, NO_REPLY, metrics, info)
