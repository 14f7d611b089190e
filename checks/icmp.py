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

import itertools
import math
import os
import secrets
import select
import socket
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from pydantic import Field

from checks import _icmp, core
from checks._icmp import TOKEN_BYTES, UNREACHABLE_ERRNOS, Heard
from checks._line import NO_REPLY, kernel_time_ns, parse_host, train_metrics
from checks._net import PERMISSION_DENIED, RESOLVE_FAILED, SOURCE_UNAVAILABLE, UNREACHABLE
from checks.core import ERROR, TIMEOUT, Outcome, Target

REASONS = frozenset(
    {NO_REPLY, UNREACHABLE, RESOLVE_FAILED, PERMISSION_DENIED, SOURCE_UNAVAILABLE, TIMEOUT}
)

MIN_UNPRIVILEGED_INTERVAL = 0.01
# Most messages a single wake-up reads before the schedule is looked at again.
MAX_DRAIN = 256


class Params(_icmp.EchoParams):
    count: int = Field(default=5, ge=1, le=1000)
    interval_seconds: float = Field(default=0.2, ge=0.001, le=60.0)
    size: int = Field(default=56, ge=TOKEN_BYTES, le=65000, description="payload bytes")
    timeout_seconds: float = Field(default=1.0, gt=0.0, le=60.0)


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


def _note_reply(run: _Run, heard: Heard, recv_ns: int | None, recv_mono: float) -> None:
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


def _note_error(run: _Run, heard: Heard, sender: str) -> None:
    if heard.ident != run.ident or heard.quoted_dst != run.dst:
        return
    i = run.index(heard.seq)
    # Routers may quote only the first 8 bytes of our request: match what they kept.
    if i is None or not run.token.startswith(heard.payload[:TOKEN_BYTES]):
        return
    run.outstanding.discard(i)
    run.unreachable = True
    run.icmp_error = _icmp.describe(run.family, heard.icmp_type, heard.icmp_code, sender)


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
        heard = _icmp.parse(run.family, data, run.raw and run.family == socket.AF_INET)
        if heard is None:
            continue
        if heard.is_reply:
            _note_reply(run, heard, kernel_time_ns(ancdata), recv_mono)
        elif run.raw:
            _note_error(run, heard, str(sender[0]))


def _receive_errors(sock: socket.socket, run: _Run, bufsize: int) -> None:
    """Read ICMP errors that a datagram socket queues on its error queue (IP_RECVERR)."""
    for queued in _icmp.error_queue(sock, bufsize, MAX_DRAIN):
        i = None if queued.seq is None else run.index(queued.seq)
        if i is not None and run.token.startswith(queued.data[8 : 8 + TOKEN_BYTES]):
            run.outstanding.discard(i)
        if queued.origin == _icmp.SO_EE_ORIGIN_LOCAL:
            run.send_error = os.strerror(queued.errno)
        else:
            run.unreachable = True
            run.icmp_error = _icmp.describe(
                run.family, queued.icmp_type, queued.icmp_code, queued.offender
            )


def _schedule(count: int, interval: float, start: float) -> Iterator[tuple[int, float]]:
    for i in range(count):
        yield i, start + i * interval


def probe(target: Target, params: Params, timeout: float) -> Outcome:
    deadline = time.monotonic() + timeout
    try:
        echo = _icmp.open_echo(target.address, params, timeout)
    except core.CheckFailed as failed:
        # An Outcome, not a raise: the probe is run directly too (without CAP_NET_RAW, say).
        return failed.outcome()
    with echo:
        return _ping(echo, params, deadline, timeout)


def _ping(echo: _icmp.Echo, params: Params, deadline: float, timeout: float) -> Outcome:
    sock, raw, family, sockaddr, info = echo.sock, echo.raw, echo.family, echo.sockaddr, echo.info
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
    payload_sum = _icmp.word_sum(payload) if with_checksum else 0
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
            packet = _icmp.echo_request(family, run.ident, seq, payload, with_checksum, payload_sum)
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


CHECK = core.CheckType(
    params=Params,
    probe=probe,
    reasons=REASONS,
    metrics={
        **train_metrics("Echo request"),
        "rtt_stddev_seconds": core.seconds(
            "Population standard deviation of the run's round-trip times."
        ),
    },
    doc=__doc__ or "",
    parse_target=parse_host,
)
