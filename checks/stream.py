"""A call-like UDP stream to a TWAMP-light reflector: delay, jitter, loss, and the call's MOS.

Target address: ``host:port`` of a TWAMP-light reflector (RFC 5357 appendix I), the port
defaulting to 862; an IPv6 literal goes in brackets. ``wardready-collector reflector`` is one.

The check sends ``rate_pps`` unauthenticated TWAMP test packets a second for
``duration_seconds`` (default 50 a second for 5 s: the packet rate of a 20 ms G.711 call),
each ``payload_bytes`` long as a UDP payload (default 160, the 20 ms G.711 frame; at least 41,
so that the reflector's reply, as long as the request, fits its 41-octet header). Packets go
out at absolute times, so a slow loop never stretches the schedule; they carry the send time,
TTL 255 (RFC 5357) and the ``dscp`` mark (46 is EF, what phones mark voice with). After the
last send the check waits ``wait_seconds`` for stragglers; a reply later than that after its
request counts as lost. ``duration_seconds + wait_seconds`` is clamped to the check timeout
(the wait first, then the duration); ``info.clamped`` then says what was cut.

Four timestamps per packet: T1 sent (this host), T2 received and T3 sent back (the reflector's
clock), T4 received back (this host; kernel receive times where the kernel gives them).

Metrics:
- ``packets_sent``, ``packets_received`` (distinct replies), ``packets_duplicate``;
- ``loss_ratio``: 1 − received / sent, round trip: a stateless reflector echoes the sender's
  sequence number, so a packet lost on the way out cannot be told from one lost on the way
  back;
- ``burst_loss_max_packets`` (longest run of consecutive lost packets), ``loss_bursts`` (runs
  of lost packets), ``burst_loss_mean_packets`` (their mean length; 0 without loss);
- ``reorder_ratio``: the share of replies that arrived after a reply with a higher sequence
  number;
- ``rtt_min_seconds``, ``rtt_avg_seconds``, ``rtt_max_seconds``, ``rtt_p95_seconds``
  (nearest rank): (T4 − T1) − (T3 − T2), i.e. without the time the reflector held the packet;
- ``forward_delay_seconds`` (mean T2 − T1) and ``backward_delay_seconds`` (mean T4 − T3): one-way
  delays, only as good as the agreement of the two clocks. With unsynchronised clocks they
  carry the clock offset, one up and one down, and may be negative; they always add up to the
  mean round-trip time. ``info.clock_synced`` is ``yes`` when both ends set the S bit of the
  TWAMP error estimate (their clocks claim an external time source), ``no`` when one does not,
  ``unknown`` when this host cannot tell;
- ``jitter_seconds``: round-trip interarrival jitter as in RFC 3550 section 6.4.1: for
  consecutive replies in order of arrival, D = the difference of their round-trip times.
  ``forward_jitter_seconds``: the same on the way out, D(i,j) = (T2j − T2i) − (T1j − T1i) (the
  clock offset cancels), in the order the reflector received them. RFC 3550's running
  estimate J += (|D| − J) / 16 (appendix A.8) tends to the mean of |D|; the check reports that
  mean over the run: the last value of J weighs only the last few dozen packets and varies by
  about 14% (one standard deviation, independently jittered packets) from run to run on the
  same line, where the mean over 250 packets varies by about 5%;
- ``packets_late``: replies whose forward delay exceeded the run's smallest by more than
  ``jitter_buffer_seconds``: what a fixed jitter buffer of that depth would have discarded;
- ``r_factor`` and ``mos``: the ITU-T G.107 E-model (see ``checks.emodel``) for ``codec`` and
  ``plc``, with one-way delay Ta = mean RTT / 2 + ``jitter_buffer_seconds`` and packet loss
  Ppl = (lost + late) / sent with its burst ratio from the pattern of lost and late packets.
  Round-trip loss stands for one direction's: pessimistic by up to two times when both ways
  lose alike. R is held to G.107's scale, 0..100.

Delay and jitter metrics need one reply (jitter two); ``r_factor`` and ``mos`` need one.

Info: ``address`` (the reflector's IP and port), ``clock_synced``, ``forward_hops`` (255 less
the TTL the reflector saw, when it reports one), ``bad_replies`` (datagrams that were not
replies to this run), ``clamped``, ``send_error``, ``error``.

Reasons (success means at least one reply; the collector judges the figures): ``no_reply``,
``refused`` (ICMP port unreachable: the host is there, no reflector listens),
``unreachable`` (no route, or ICMP host/network unreachable), ``resolve_failed``,
``source_unavailable`` (``source`` is not an address here, or ``interface`` does not exist),
``permission_denied`` (``interface`` needs CAP_NET_RAW on kernels before 5.7), ``bad_reply``
(only datagrams that were not TWAMP replies to this run came back).

``source`` binds the sender to one local address and ``interface`` pins it to one network
interface (``SO_BINDTODEVICE``), so each WAN line of a ward gets its own stream.

Privileges: none.
"""

from __future__ import annotations

import errno
import itertools
import math
import os
import select
import socket
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from checks import core, emodel, twamp
from checks._line import NO_REPLY, SO_TIMESTAMPNS, LineParams, kernel_time_ns, train_metrics
from checks._net import (
    PERMISSION_DENIED,
    REFUSED,
    RESOLVE_FAILED,
    SOURCE_UNAVAILABLE,
    UNREACHABLE,
    ResolveError,
    parse_address,
    pin,
    resolve,
)
from checks.core import ERROR, TIMEOUT, Outcome, Target

BAD_REPLY = "bad_reply"

REASONS = frozenset(
    {
        NO_REPLY,
        REFUSED,
        UNREACHABLE,
        RESOLVE_FAILED,
        SOURCE_UNAVAILABLE,
        PERMISSION_DENIED,
        BAD_REPLY,
        TIMEOUT,
    }
)

Codec = Literal["g711", "g729a", "g722", "opus"]

# Time kept back from the budget for turning the replies into figures.
ANALYSIS_SECONDS = 0.05
# Most datagrams one wake-up reads before the send schedule is looked at again.
MAX_DRAIN = 256
UNREACHABLE_ERRNOS = frozenset(
    {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN}
)


class Params(LineParams):
    rate_pps: int = Field(default=50, ge=1, le=1000, description="packets per second")
    duration_seconds: float = Field(default=5.0, gt=0.0, le=600.0)
    payload_bytes: int = Field(
        default=160, ge=twamp.REFLECTOR_HEADER, le=1472, description="UDP payload per packet"
    )
    wait_seconds: float = Field(default=1.0, gt=0.0, le=10.0)
    codec: Codec = "g711"
    plc: bool = True
    jitter_buffer_seconds: float = Field(default=0.040, ge=0.0, le=1.0)
    dscp: int = Field(default=0, ge=0, le=63)


@dataclass(frozen=True)
class Reply:
    """One packet that came back; times in ns, T1/T4 ours, T2/T3 the reflector's."""

    seq: int
    t1: int
    t2: int
    t3: int
    t4: int
    rtt: float  # seconds, without the reflector's holding time
    ttl: int
    synchronized: bool


@dataclass
class _Run:
    wait: float
    padding: bytes
    send_ns: list[int] = field(default_factory=list)
    send_mono: list[float] = field(default_factory=list)
    send_ntp: list[int] = field(default_factory=list)
    replies: dict[int, Reply] = field(default_factory=dict)
    arrival: list[int] = field(default_factory=list)
    duplicates: int = 0
    reordered: int = 0
    highest: int = -1
    bad: int = 0
    refused: bool = False
    unreachable: bool = False
    send_error: str = ""
    sent: int = 0


def note_reply(run: _Run, data: bytes, recv_ns: int, recv_mono: float) -> None:
    """Match one datagram to the packet it answers and record it."""
    try:
        pkt = twamp.ReflectorPacket.decode(data)
    except twamp.PacketError:
        run.bad += 1
        return
    i = pkt.sender_seq
    # The sender timestamp echoed back proves the reply answers this run's packet.
    if i >= len(run.send_ns) or pkt.sender_timestamp != run.send_ntp[i]:
        run.bad += 1
        return
    if i in run.replies:
        run.duplicates += 1
        return
    t1 = run.send_ns[i]
    mono_rtt = recv_mono - run.send_mono[i]
    raw = (recv_ns - t1) / 1e9
    # The kernel stamp precedes our own clock read, so a wall-clock RTT above the monotonic
    # one (or below zero) means the wall clock stepped during the run.
    if raw < 0 or raw > mono_rtt + 0.001:
        raw = mono_rtt
        recv_ns = t1 + round(mono_rtt * 1e9)
    if raw > run.wait:
        return
    t2, t3 = twamp.ns_from_ntp(pkt.receive_timestamp), twamp.ns_from_ntp(pkt.timestamp)
    held = (t3 - t2) / 1e9
    rtt = raw - held if 0 <= held <= raw else raw
    run.replies[i] = Reply(
        i, t1, t2, t3, recv_ns, rtt, pkt.sender_ttl, twamp.is_synchronized(pkt.error_estimate)
    )
    run.arrival.append(i)
    if i < run.highest:
        run.reordered += 1
    run.highest = max(run.highest, i)


def _receive(sock: socket.socket, run: _Run, bufsize: int) -> None:
    for _ in range(MAX_DRAIN):
        try:
            data, ancdata, _, _ = sock.recvmsg(bufsize, socket.CMSG_SPACE(16))
        except BlockingIOError:
            return
        except ConnectionRefusedError:
            run.refused = True
            continue
        except OSError as exc:
            if exc.errno in UNREACHABLE_ERRNOS:
                run.unreachable = True
                continue
            raise
        recv_mono = time.monotonic()
        recv_ns = kernel_time_ns(ancdata) or time.time_ns()
        note_reply(run, data, recv_ns, recv_mono)


def _send(sock: socket.socket, run: _Run, seq: int, error_estimate: int) -> None:
    mono = time.monotonic()
    now = time.time_ns()
    ntp = twamp.ntp_from_ns(now)
    packet = twamp.SenderPacket(seq, ntp, error_estimate, run.padding).encode()
    try:
        sock.send(packet)
    except ConnectionRefusedError:
        run.refused = True  # an earlier packet drew a port unreachable; this one was not sent
    except OSError as exc:
        run.send_error = f"send: {exc.strerror}"
        if exc.errno in UNREACHABLE_ERRNOS:
            run.unreachable = True
    else:
        run.send_ns.append(now)
        run.send_mono.append(mono)
        run.send_ntp.append(ntp)
        run.sent += 1
        return
    # Unsent packets keep their place in the sequence but are not counted as sent.
    run.send_ns.append(-1)
    run.send_mono.append(mono)
    run.send_ntp.append(-1)


def _open(family: int, sockaddr: Any, params: Params) -> socket.socket | Outcome:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        failed = pin(sock, params.interface, params.source)
        if failed is not None:
            return Outcome(False, failed[0], info={"error": failed[1]})
        if family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, twamp.SENDER_TTL)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, params.dscp << 2)
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, twamp.SENDER_TTL)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, params.dscp << 2)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        try:
            # Connected: the kernel passes only the reflector's datagrams, and reports its
            # ICMP errors (port unreachable) on this socket.
            sock.connect(sockaddr)
        except OSError as exc:
            reason = UNREACHABLE if exc.errno in UNREACHABLE_ERRNOS else ERROR
            return Outcome(False, reason, info={"error": f"connect: {exc.strerror}"})
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def probe(target: Target, params: Params, timeout: float) -> Outcome:
    deadline = time.monotonic() + timeout
    try:
        host, port = parse_target(target.address)
    except ValueError as exc:
        return Outcome(False, ERROR, info={"error": str(exc)})
    try:
        addrs = resolve(host, port, params.family, timeout, socket.SOCK_DGRAM, params.source)
    except ResolveError as exc:
        return Outcome(False, RESOLVE_FAILED, info={"error": str(exc)})
    family, sockaddr = addrs[0]
    shown = f"[{sockaddr[0]}]" if family == socket.AF_INET6 else str(sockaddr[0])
    info = {"address": f"{shown}:{port}"}

    opened = _open(family, sockaddr, params)
    if isinstance(opened, Outcome):
        opened.info = {**info, **opened.info}
        return opened
    with opened as sock:
        budget = deadline - time.monotonic() - ANALYSIS_SECONDS
        if budget <= 0:
            return Outcome(False, TIMEOUT, info={**info, "error": "no time left after resolving"})
        duration, wait = params.duration_seconds, params.wait_seconds
        if duration + wait > budget:
            wait = min(wait, budget / 2)
            duration = budget - wait
            info["clamped"] = (
                f"duration {params.duration_seconds:g} -> {duration:.3g} s, wait "
                f"{params.wait_seconds:g} -> {wait:.3g} s to fit the {timeout:g} s check timeout"
            )
        count = max(1, math.floor(duration * params.rate_pps + 1e-9))
        synced, error = twamp.clock_state()
        run = _Run(
            wait=wait,
            padding=os.urandom(params.payload_bytes - twamp.SENDER_HEADER),
        )
        _stream(sock, run, count, params.rate_pps, twamp.error_estimate(bool(synced), error))
    return _outcome(run, params, info, synced)


def _stream(sock: socket.socket, run: _Run, count: int, rate: int, error_estimate: int) -> None:
    bufsize = len(run.padding) + twamp.SENDER_HEADER + 64
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLERR)
    interval = 1.0 / rate
    start = time.monotonic()
    i = 0
    while True:
        now = time.monotonic()
        if i < count and now >= start + i * interval:
            _send(sock, run, i, error_estimate)
            i += 1
            continue
        if i < count:
            wake = start + i * interval
        elif len(run.replies) < run.sent and now < run.send_mono[-1] + run.wait:
            wake = run.send_mono[-1] + run.wait
        else:
            break
        for _, events in poller.poll(math.ceil(max(wake - now, 0.0) * 1000)):
            if events & (select.POLLIN | select.POLLERR):
                _receive(sock, run, bufsize)


def interarrival_jitter(transits: Sequence[float]) -> float | None:
    """Mean |D| of RFC 3550 for transit times given in order of arrival (None under two)."""
    if len(transits) < 2:
        return None
    return statistics.fmean(abs(b - a) for a, b in itertools.pairwise(transits))


def bursts(lost: Sequence[bool]) -> list[int]:
    """Lengths of the runs of consecutive True values."""
    return [sum(1 for _ in group) for is_lost, group in itertools.groupby(lost) if is_lost]


def percentile(values: Sequence[float], rank: float) -> float:
    ordered = sorted(values)
    return ordered[max(math.ceil(rank * len(ordered)), 1) - 1]


def _outcome(run: _Run, params: Params, info: dict[str, str], synced: bool | None) -> Outcome:
    sent_seqs = [i for i, ns in enumerate(run.send_ns) if ns >= 0]
    sent, received = len(sent_seqs), len(run.replies)
    lost = [i not in run.replies for i in sent_seqs]
    runs = bursts(lost)
    metrics: dict[str, float] = {
        "packets_sent": float(sent),
        "packets_received": float(received),
        "packets_duplicate": float(run.duplicates),
        "loss_ratio": 1.0 - received / sent if sent else 1.0,
        "burst_loss_max_packets": float(max(runs, default=0)),
        "loss_bursts": float(len(runs)),
        "burst_loss_mean_packets": statistics.fmean(runs) if runs else 0.0,
        "reorder_ratio": run.reordered / received if received else 0.0,
    }
    if run.bad:
        info["bad_replies"] = str(run.bad)
    if run.send_error:
        info["send_error"] = run.send_error
    replies = list(run.replies.values())
    if replies:
        metrics.update(_delays(replies, run, params, sent_seqs))
        both = synced is True and all(r.synchronized for r in replies)
        info["clock_synced"] = "unknown" if synced is None else "yes" if both else "no"
        ttl = min(r.ttl for r in replies)
        if 0 < ttl <= twamp.SENDER_TTL:
            info["forward_hops"] = str(twamp.SENDER_TTL - ttl)
        return Outcome(True, metrics=metrics, info=info)
    if run.refused:
        return Outcome(False, REFUSED, metrics, {**info, "error": "port unreachable"})
    if run.unreachable:
        return Outcome(False, UNREACHABLE, metrics, info)
    if not sent:
        return Outcome(False, ERROR, metrics, {**info, "error": "no packet could be sent"})
    if run.bad:
        return Outcome(False, BAD_REPLY, metrics, info)
    return Outcome(False, NO_REPLY, metrics, info)


def _delays(
    replies: list[Reply], run: _Run, params: Params, sent_seqs: list[int]
) -> dict[str, float]:
    rtts = [r.rtt for r in replies]
    forward = [(r.t2 - r.t1) / 1e9 for r in replies]
    out = {
        "rtt_min_seconds": min(rtts),
        "rtt_avg_seconds": statistics.fmean(rtts),
        "rtt_max_seconds": max(rtts),
        "rtt_p95_seconds": percentile(rtts, 0.95),
        "forward_delay_seconds": statistics.fmean(forward),
        "backward_delay_seconds": statistics.fmean((r.t4 - r.t3) / 1e9 for r in replies),
    }
    by_arrival = [run.replies[i].rtt for i in run.arrival]
    by_reflector = sorted(replies, key=lambda r: (r.t2, r.seq))
    for name, transits in (
        ("jitter_seconds", by_arrival),
        ("forward_jitter_seconds", [(r.t2 - r.t1) / 1e9 for r in by_reflector]),
    ):
        value = interarrival_jitter(transits)
        if value is not None:
            out[name] = value

    # A fixed jitter buffer plays out at the smallest delay plus its depth: later is lost.
    floor = min(forward)
    late = {r.seq for r, d in zip(replies, forward, strict=True)
            if d - floor > params.jitter_buffer_seconds}  # fmt: skip
    out["packets_late"] = float(len(late))
    unplayed = [i not in run.replies or i in late for i in sent_seqs]
    ppl = sum(unplayed) / len(sent_seqs)
    runs = bursts(unplayed)
    burst = emodel.burst_ratio(ppl, statistics.fmean(runs) if runs else 0.0)
    ta = out["rtt_avg_seconds"] / 2 + params.jitter_buffer_seconds
    # G.107's scale is 0..100: a call that loses nearly everything would model below 0.
    r = min(max(emodel.r_factor(ta, ppl * 100.0, params.codec, params.plc, burst), 0.0), 100.0)
    out["r_factor"] = r
    out["mos"] = emodel.mos(r)
    return out


def parse_target(address: str) -> tuple[str, int]:
    """``host[:port]`` of the reflector, the port defaulting to TWAMP's."""
    return parse_address(address, twamp.DEFAULT_PORT)


CHECK = core.CheckType(
    params=Params,
    probe=probe,
    reasons=REASONS,
    metrics={
        **train_metrics("TWAMP test packet"),
        "burst_loss_max_packets": core.gauge("Longest run of consecutive lost packets.", 0),
        "loss_bursts": core.gauge("Runs of consecutive lost packets.", 0),
        "burst_loss_mean_packets": core.gauge("Mean length of the runs of lost packets.", 0),
        "reorder_ratio": core.ratio(
            "Share of replies that arrived after a reply with a higher sequence number."
        ),
        "rtt_p95_seconds": core.seconds("95th percentile (nearest rank) of the round-trip times."),
        "forward_delay_seconds": core.gauge(
            "Mean one-way delay out (T2 - T1); carries the clocks' offset, may be negative."
        ),
        "backward_delay_seconds": core.gauge(
            "Mean one-way delay back (T4 - T3); carries the clocks' offset, may be negative."
        ),
        "forward_jitter_seconds": core.seconds(
            "Mean absolute difference of consecutive one-way delays out (RFC 3550)."
        ),
        "packets_late": core.gauge(
            "Replies a fixed jitter buffer of jitter_buffer_seconds would have discarded.", 0
        ),
        "r_factor": core.gauge("ITU-T G.107 E-model transmission rating R of the call.", 0, 100),
        "mos": core.gauge("Estimated conversational MOS of the call (G.107 Annex B).", 1, 5),
    },
    doc=__doc__ or "",
    parse_target=parse_target,
)
