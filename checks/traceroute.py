"""The route to a host, hop by hop (scapy), and a fingerprint of it to notice a path change.

Target address: an IPv4 address or a host name (resolved to IPv4 within the timeout).

Every probe of a run goes out in one batch: ``probes`` packets for each TTL from 1 to
``max_hops``; then the check waits ``timeout_seconds`` for the answers. A router answers a
probe whose TTL runs out at it with an ICMP time-exceeded; the target answers with an echo
reply (``mode: icmp``), a port-unreachable (``mode: udp``, to ``dport``, default 33434) or a
SYN-ACK or reset (``mode: tcp``, a SYN to ``dport``, default 443). Answers are matched to
their probe by the IP identification, which routers quote back, and RTTs come from kernel
receive timestamps.

Every probe of a run, and every run, carries the same flow identifiers (addresses, ports,
and for ICMP the checksum, which a payload word keeps constant), as Paris traceroute does:
routers that balance load per flow then send all of them down one path, so a changed
fingerprint means a changed path, not another draw of the balancer.

Metrics: ``path_hops`` (hops listed: up to the target when reached, else up to the last hop
that answered), ``reached`` (1/0), ``rtt_last_hop_seconds`` (mean RTT of the last listed hop,
when it answered), ``hops_silent`` (listed hops that never answered), ``probes_sent``,
``path_changed`` (1 when this run reached the target by another path than the previous run
of the same trace that reached it, in this agent process, else 0; absent on the first such
run and on runs that did not reach the target). The collector judges numbers only, so this
is how a profile can flag a path change: ``path_changed`` max over a window ``== 0``.

Info: ``address`` (the target's), ``hops`` (``1:10.0.0.1:0.41ms,2:*,3:10.0.2.1:1.20ms``:
TTL, the address(es) that answered joined by ``|``, mean RTT; ``*`` for a silent hop),
``path_fingerprint`` (the first 16 hex digits of the SHA-256 of the ordered hop addresses,
``*`` for silent hops; a hop that is silent in one run and not the next changes it too),
``previous_fingerprint`` (with ``path_changed`` 1), ``icmp_error``, ``error``.

Reasons: ``not_reached`` (no answer from the target within ``max_hops``), ``unreachable``
(a router answered destination-unreachable, or this host has no route), ``resolve_failed``,
``permission_denied`` (raw sockets need root or CAP_NET_RAW), ``source_unavailable``
(``source`` or ``interface`` is not on this host), ``timeout``.

``interface`` pins the probes to one network interface (SO_BINDTODEVICE) and ``source`` sets
their source address, so each WAN line can be traced on its own.

Privileges: root or CAP_NET_RAW (raw IP socket to send, packet socket to receive), which a
child process gets back from the interpreter's file capabilities or the agent's ambient set.

scapy is imported only when the check runs, and by default (``isolate: true``) in a child
process (``python -m checks.traceroute``) that exits after the run: scapy adds about 32 MB of
resident memory that a long-running agent would otherwise keep for good, for ~0.5 s more per
run. ``isolate: false`` runs it in the agent itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import hashlib
import ipaddress
import json
import os
import secrets
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from checks import _icmp, core
from checks._line import bare_host, parse_host
from checks._net import (
    PERMISSION_DENIED,
    RESOLVE_FAILED,
    SOURCE_UNAVAILABLE,
    UNREACHABLE,
    Interface,
    ResolveError,
    bind_device,
    oserror_reason,
    resolve,
)
from checks.core import ERROR, TIMEOUT, Outcome, Target

NOT_REACHED = "not_reached"

REASONS = frozenset(
    {NOT_REACHED, UNREACHABLE, RESOLVE_FAILED, PERMISSION_DENIED, SOURCE_UNAVAILABLE, TIMEOUT}
)

DEFAULT_DPORT = {"udp": 33434, "tcp": 443}
FINGERPRINT_HEX = 16
MAX_INFO = 1000
# Time kept back from the check timeout for building packets and reading the answers.
RESERVE_SECONDS = 0.5

# Destination-unreachable codes that mean the probe reached the target itself.
_ARRIVED_CODES = {"icmp": {2, 3}, "udp": {3}, "tcp": {2, 3}}

# Classic BPF for the receiving socket: only ICMP, or TCP from the target, reach Python.
# Offsets are from the network header (SKF_NET_OFF), whatever the link layer.
_SKF_NET_OFF = -0x100000
_SO_ATTACH_FILTER = 26


class Params(core.Params):
    mode: Literal["icmp", "udp", "tcp"] = "icmp"
    dport: int | None = Field(default=None, ge=1, le=65535)
    sport: int = Field(default=33433, ge=1, le=65535, description="source port (udp, tcp)")
    max_hops: int = Field(default=30, ge=1, le=64)
    probes: int = Field(default=3, ge=1, le=5, description="probes per hop")
    timeout_seconds: float = Field(default=2.0, gt=0.0, le=30.0)
    source: IPv4Address | None = None
    interface: Interface | None = None
    isolate: bool = True


@dataclass
class _Hop:
    addresses: list[str] = field(default_factory=list)
    rtts: list[float] = field(default_factory=list)
    arrived: bool = False
    unreachable: str = ""

    def heard(self, address: str, rtt: float) -> None:
        if address not in self.addresses:
            self.addresses.append(address)
        self.rtts.append(rtt)

    def key(self) -> str:
        return "|".join(sorted(self.addresses)) or "*"

    def text(self, ttl: int) -> str:
        if not self.addresses:
            return f"{ttl}:*"
        return f"{ttl}:{'|'.join(self.addresses)}:{statistics.fmean(self.rtts) * 1000:.2f}ms"


def fingerprint(hops: Iterable[str]) -> str:
    """The short, stable digest of an ordered list of hop keys (addresses or ``*``)."""
    return hashlib.sha256("\n".join(hops).encode()).hexdigest()[:FINGERPRINT_HEX]


def _route(dst: str, params: Params) -> str:
    """This host's source address towards ``dst``, per the kernel (raises OSError)."""
    port = params.dport or DEFAULT_DPORT.get(params.mode, 33434)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        if params.interface is not None:
            bind_device(sock, params.interface)
        if params.source is not None:
            sock.bind((str(params.source), 0))
        sock.connect((dst, port))  # no packet: only a route lookup
        return str(sock.getsockname()[0])


def _attach_filter(sock: socket.socket, dst: str) -> None:
    """Let only ICMP, or TCP from ``dst``, through to this packet socket (best effort)."""
    dst_word = struct.unpack("!I", socket.inet_aton(dst))[0]
    program = [
        (0x30, 0, 0, (_SKF_NET_OFF + 9) & 0xFFFFFFFF),  # ldb protocol
        (0x15, 3, 0, socket.IPPROTO_ICMP),  # icmp: accept
        (0x15, 0, 3, socket.IPPROTO_TCP),  # not tcp: drop
        (0x20, 0, 0, (_SKF_NET_OFF + 12) & 0xFFFFFFFF),  # ld source address
        (0x15, 0, 1, dst_word),  # from the target: accept
        (0x06, 0, 0, 0xFFFF),  # accept
        (0x06, 0, 0, 0),  # drop
    ]
    code = b"".join(struct.pack("HBBI", *insn) for insn in program)
    buffer = ctypes.create_string_buffer(code)
    fprog = struct.pack("HL", len(program), ctypes.addressof(buffer))
    # Without the filter every IP packet is read, just more slowly.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)


def _probes(dst: str, src: str, params: Params, dport: int) -> list[Any]:
    from scapy.layers.inet import ICMP, IP, TCP, UDP

    ip_base = secrets.randbits(16)
    seq_base = secrets.randbits(32)
    icmp_ident = secrets.randbits(16)
    packets = []
    for ttl in range(1, params.max_hops + 1):
        for k in range(params.probes):
            n = (ttl - 1) * params.probes + k
            ip = IP(src=src, dst=dst, ttl=ttl, id=(ip_base + n) & 0xFFFF)
            layer: Any
            if params.mode == "icmp":
                layer = ICMP(type=8, id=icmp_ident, seq=n) / _icmp.paris_word(icmp_ident, n)
            elif params.mode == "udp":
                layer = UDP(sport=params.sport, dport=dport) / b"wardready"
            else:
                # Sequence numbers 16 apart let each SYN-ACK or reset name its probe.
                layer = TCP(
                    sport=params.sport, dport=dport, flags="S", seq=(seq_base + 16 * n) % 2**32
                )
            packets.append(ip / layer)
    return packets


def _classify(hops: dict[int, _Hop], answers: Any, dst: str, mode: str) -> None:
    from scapy.layers.inet import ICMP, TCP

    for sent, received in answers:
        hop = hops.setdefault(int(sent.ttl), _Hop())
        rtt = max(float(received.time) - float(sent.sent_time), 0.0)
        sender = str(received.src)
        hop.heard(sender, rtt)
        if received.haslayer(ICMP):
            kind, code = int(received[ICMP].type), int(received[ICMP].code)
            if kind == _icmp.V4_ECHO_REPLY and sender == dst:
                hop.arrived = True
            elif kind == _icmp.V4_UNREACHABLE:
                if sender == dst and code in _ARRIVED_CODES[mode]:
                    hop.arrived = True
                else:
                    hop.unreachable = f"destination unreachable (code {code}) from {sender}"
        elif received.haslayer(TCP) and sender == dst:
            hop.arrived = True


def probe(target: Target, params: Params, timeout: float) -> Outcome:
    if params.isolate:
        outcome = _in_child(target.address, params, timeout)
    else:
        outcome = _trace(target.address, params, timeout)
    if outcome.metrics.get("reached") == 1 and "path_fingerprint" in outcome.info:
        trace = (target.address, params.mode, params.dport, params.interface, params.source)
        before = note_path(trace, outcome.info["path_fingerprint"])
        if before is not None:
            changed = before != outcome.info["path_fingerprint"]
            outcome.metrics["path_changed"] = 1.0 if changed else 0.0
            if changed:
                outcome.info["previous_fingerprint"] = before
    return outcome


# The fingerprint of the last run that reached the target, per trace, kept in the agent (the
# parent process, even when the trace itself runs in a child).
_last_path: dict[tuple[Any, ...], str] = {}
_last_path_lock = threading.Lock()


def note_path(trace: tuple[Any, ...], fingerprint: str) -> str | None:
    """Remember ``fingerprint`` for ``trace``; return the one remembered before, if any."""
    with _last_path_lock:
        before = _last_path.get(trace)
        _last_path[trace] = fingerprint
    return before


# The child gets past its own deadline this long before the parent stops waiting for it
# (the runner abandons the check GRACE_SECONDS after its timeout).
CHILD_GRACE_SECONDS = 0.5


def _in_child(address: str, params: Params, timeout: float) -> Outcome:
    """Run the trace in ``python -m checks.traceroute``: scapy's memory leaves with it."""
    package_root = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
    argv = [sys.executable, "-m", "checks.traceroute", address, params.model_dump_json()]
    argv.append(repr(timeout))
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout + CHILD_GRACE_SECONDS,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": path},
        )
    except subprocess.TimeoutExpired:
        return Outcome(False, TIMEOUT, info={"error": f"no result within {timeout:g} s"})
    try:
        found = json.loads(done.stdout.strip().splitlines()[-1])
        return Outcome(
            bool(found["success"]),
            str(found["reason"]),
            {str(k): float(v) for k, v in found["metrics"].items()},
            {str(k): str(v) for k, v in found["info"].items()},
        )
    except (ValueError, IndexError, KeyError, TypeError, AttributeError):
        tail = (done.stderr or done.stdout).strip()[-500:]
        return Outcome(False, ERROR, info={"error": f"traceroute child failed: {tail}"})


def _trace(address: str, params: Params, timeout: float) -> Outcome:
    deadline = time.monotonic() + timeout
    host = bare_host(address)
    try:
        if ipaddress.ip_address(host).version == 6:
            return Outcome(False, ERROR, info={"error": f"{host}: only IPv4 can be traced"})
    except ValueError:
        pass  # a name
    try:
        dst = str(resolve(host, 0, "4", timeout, socket.SOCK_DGRAM)[0][1][0])
    except ResolveError as exc:
        return Outcome(False, RESOLVE_FAILED, info={"error": str(exc)})
    info = {"address": dst}
    try:
        src = _route(dst, params)
    except OSError as exc:
        raise _os_failure(exc, f"no route to {dst}", dst) from exc
    wait = min(params.timeout_seconds, deadline - time.monotonic() - RESERVE_SECONDS)
    if wait <= 0:
        return Outcome(False, TIMEOUT, info={**info, "error": "no time left to wait for answers"})

    try:
        from scapy.config import conf
        from scapy.sendrecv import sndrcv
        from scapy.supersocket import L3RawSocket
    except ImportError as exc:
        return Outcome(False, ERROR, info={**info, "error": f"scapy is not installed: {exc}"})
    conf.verb = 0
    # Routers quote the IP header of the probe they drop: match answers to probes by its id.
    conf.checkIPID = True

    dport = params.dport or DEFAULT_DPORT.get(params.mode, 0)
    packets = _probes(dst, src, params, dport)
    try:
        sock = L3RawSocket(iface=params.interface)
    except PermissionError as exc:
        return Outcome(
            False,
            PERMISSION_DENIED,
            info={**info, "error": f"raw sockets need root or CAP_NET_RAW: {exc}"},
        )
    except OSError as exc:
        reason = SOURCE_UNAVAILABLE if exc.errno == errno.ENODEV else ERROR
        return Outcome(False, reason, info={**info, "error": f"receive socket: {exc}"})
    try:
        if params.interface is not None and sock.outs is not None:
            bind_device(sock.outs, params.interface)
        _attach_filter(sock.ins, dst)
        answers, _ = sndrcv(sock, packets, timeout=wait, verbose=0)
    except OSError as exc:
        raise _os_failure(exc, "sending probes", dst) from exc
    finally:
        sock.close()

    hops: dict[int, _Hop] = {}
    _classify(hops, answers, dst, params.mode)
    return _outcome(hops, params, len(packets), info)


def _os_failure(exc: OSError, doing: str, address: str) -> core.CheckFailed:
    reason = oserror_reason(exc)
    return core.CheckFailed(
        reason if reason in REASONS else ERROR, f"{doing}: {exc.strerror or exc}", address=address
    )


def _outcome(hops: dict[int, _Hop], params: Params, sent: int, info: dict[str, str]) -> Outcome:
    reached = min((ttl for ttl, hop in hops.items() if hop.arrived), default=None)
    blocked = min((ttl for ttl, hop in hops.items() if hop.unreachable), default=None)
    heard = [ttl for ttl, hop in hops.items() if hop.addresses]
    last = reached or blocked or max(heard, default=0)
    listed = [hops.get(ttl, _Hop()) for ttl in range(1, last + 1)]

    metrics: dict[str, float] = {
        "path_hops": float(last),
        "reached": 1.0 if reached else 0.0,
        "hops_silent": float(sum(1 for hop in listed if not hop.addresses)),
        "probes_sent": float(sent),
    }
    if listed and listed[-1].rtts:
        metrics["rtt_last_hop_seconds"] = statistics.fmean(listed[-1].rtts)
    text = ",".join(hop.text(ttl) for ttl, hop in enumerate(listed, start=1))
    info["hops"] = text if len(text) <= MAX_INFO else text[: MAX_INFO - 3] + "..."
    info["path_fingerprint"] = fingerprint(hop.key() for hop in listed)

    if reached:
        return Outcome(True, metrics=metrics, info=info)
    if blocked:
        info["icmp_error"] = hops[blocked].unreachable
        return Outcome(False, UNREACHABLE, metrics, info)
    info["error"] = f"no answer from the target within {params.max_hops} hops"
    return Outcome(False, NOT_REACHED, metrics, info)


def parse_target(address: str) -> str:
    """A host name or an IPv4 address: only IPv4 can be traced."""
    host = parse_host(address)
    if ":" in host:
        raise ValueError(f"address {address!r}: only IPv4 can be traced")
    return host


CHECK = core.CheckType(
    params=Params,
    probe=probe,
    reasons=REASONS,
    metrics={
        "path_hops": core.gauge(
            "Hops listed: up to the target when reached, else up to the last that answered.", 0
        ),
        "reached": core.gauge("1 when the target answered within max_hops, else 0.", 0, 1),
        "rtt_last_hop_seconds": core.seconds("Mean round-trip time of the last listed hop."),
        "hops_silent": core.gauge("Listed hops that never answered.", 0),
        "probes_sent": core.gauge("Probes sent in the run.", 0),
        "path_changed": core.gauge(
            "1 when the target was reached by another path than the previous run that reached "
            "it, else 0.",
            0,
            1,
        ),
    },
    doc=__doc__ or "",
    parse_target=parse_target,
)


def _main(argv: list[str]) -> int:
    address, params_json, timeout = argv
    try:
        outcome = _trace(address, Params.model_validate_json(params_json), float(timeout))
    except core.CheckFailed as failed:
        outcome = failed.outcome()
    print(json.dumps(dataclasses.asdict(outcome)))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
