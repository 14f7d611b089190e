"""Path MTU towards a host: the largest packet that crosses the path whole.

Target address: a host name or an IP address (v4 or v6); names are resolved within the
timeout, ``family`` picks the address family.

The check sends ICMP echo requests with the don't-fragment bit (IPv6 never fragments on the
way) and searches the packet size between ``min_bytes`` and ``max_bytes`` (whole IP packets,
headers included): first the smallest, then the largest, then by halving. A size fits when its
echo reply comes back. It does not fit when a router answers fragmentation-needed (IPv4) or
packet-too-big (IPv6), when this host's own interface is smaller (``EMSGSIZE``), or when no
reply comes within ``timeout_seconds`` in ``attempts`` tries (a path that silently drops big
packets, a "black hole", is found that way too). A router's reported MTU is tried next, which
usually ends the search at once. Sockets use ``IP_PMTUDISC_PROBE``: every size is tested on the
wire, not against what the kernel remembers of the path.

Only the way to the target is measured: the target's echo replies may be fragmented on the way
back. A lossy line can make a size that fits look too big; ``attempts`` bounds that.

Metrics: ``path_mtu_bytes`` (largest size that fit), ``probes_sent`` (echo requests sent).

Info: ``address``, ``socket`` (raw or dgram), ``frag_needed`` (the MTU a router reported and
who reported it), ``searched`` (the range still open when the check ran out of time),
``error``.

Reasons: ``mtu_low`` (the path MTU is below ``threshold_bytes``, default 1400: a tunnel or a
misconfigured link), ``no_reply`` (not even ``min_bytes`` came back), ``unreachable`` (an ICMP
destination-unreachable other than fragmentation-needed, or no route), ``resolve_failed``,
``permission_denied``, ``source_unavailable`` (``source`` or ``interface`` is not on this
host), ``timeout`` (the search did not end within the check timeout).

Privileges: as the icmp check: a raw socket (root or CAP_NET_RAW), or an ICMP datagram socket
with the agent's group inside ``net.ipv4.ping_group_range``; ``interface`` needs CAP_NET_RAW on
Linux before 5.7.
"""

from __future__ import annotations

import errno
import secrets
import select
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

from pydantic import Field, model_validator

from checks import _icmp, core
from checks._icmp import TOKEN_BYTES, UNREACHABLE_ERRNOS
from checks._line import NO_REPLY, parse_host
from checks._net import PERMISSION_DENIED, RESOLVE_FAILED, SOURCE_UNAVAILABLE, UNREACHABLE
from checks.core import TIMEOUT, Outcome, Target

MTU_LOW = "mtu_low"

REASONS = frozenset(
    {MTU_LOW, NO_REPLY, UNREACHABLE, RESOLVE_FAILED, PERMISSION_DENIED, SOURCE_UNAVAILABLE, TIMEOUT}
)

# Linux values that the socket module does not export.
IP_MTU_DISCOVER = 10
IPV6_MTU_DISCOVER = 23
PMTUDISC_PROBE = 3  # IP_PMTUDISC_PROBE and IPV6_PMTUDISC_PROBE: DF set, the path cache ignored

HEADER_BYTES: dict[int, int] = {socket.AF_INET: 20 + 8, socket.AF_INET6: 40 + 8}
IPV6_MIN_MTU = 1280
MAX_IP_PACKET = 65535
# (family, ICMP type, code) of "too big for the next link", whose header carries the MTU.
_TOO_BIG = {(socket.AF_INET, 3, 4), (socket.AF_INET6, 2, 0)}


class Params(_icmp.EchoParams):
    min_bytes: int = Field(default=576, ge=68, le=65535)
    max_bytes: int = Field(default=1500, ge=68, le=65535)
    threshold_bytes: int = Field(default=1400, ge=0, le=65535)
    timeout_seconds: float = Field(default=1.0, gt=0.0, le=30.0, description="per probe")
    attempts: int = Field(default=2, ge=1, le=5, description="tries before a size is too big")

    @model_validator(mode="after")
    def _ordered(self) -> Params:
        if self.min_bytes > self.max_bytes:
            raise ValueError(f"min_bytes {self.min_bytes} is above max_bytes {self.max_bytes}")
        return self


@dataclass
class _Answer:
    """What one probe learned: it fit, or it did not (with a router's MTU), or neither."""

    fit: bool = False
    too_big: bool = False
    mtu_hint: int | None = None
    unreachable: str = ""
    lost: bool = False


class _Prober:
    def __init__(
        self,
        sock: socket.socket,
        raw: bool,
        family: int,
        sockaddr: Any,
        params: Params,
        deadline: float,
    ) -> None:
        self.sock, self.raw, self.family, self.sockaddr = sock, raw, family, sockaddr
        self.params, self.deadline = params, deadline
        self.ident = secrets.randbits(16)
        self.seq = secrets.randbits(16)
        self.token = secrets.token_bytes(TOKEN_BYTES)
        self.sent = 0
        self.frag_needed = ""
        self.poller = select.poll()
        self.poller.register(sock, select.POLLIN | select.POLLERR)

    def fits(self, size: int) -> _Answer:
        """Try one size up to ``attempts`` times; lost only when every try went unanswered."""
        answer = _Answer(lost=True)
        for _ in range(self.params.attempts):
            if time.monotonic() >= self.deadline:
                raise TimeoutError
            answer = self._once(size)
            if not answer.lost:
                return answer
        return answer

    def _once(self, size: int) -> _Answer:
        self.seq = (self.seq + 1) & 0xFFFF
        payload = self.token + bytes(size - HEADER_BYTES[self.family] - TOKEN_BYTES)
        with_checksum = self.raw and self.family == socket.AF_INET
        packet = _icmp.echo_request(self.family, self.ident, self.seq, payload, with_checksum)
        try:
            self.sock.sendto(packet, self.sockaddr)
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:
                return _Answer(too_big=True)  # bigger than this host's own interface
            if exc.errno in UNREACHABLE_ERRNOS:
                return _Answer(unreachable=f"sendto: {exc.strerror}")
            raise
        self.sent += 1
        until = min(time.monotonic() + self.params.timeout_seconds, self.deadline)
        while (left := until - time.monotonic()) > 0:
            for _, events in self.poller.poll(max(1, int(left * 1000))):
                answer = self._read(events, size)
                if answer is not None:
                    return answer
        return _Answer(lost=True)

    def _read(self, events: int, size: int) -> _Answer | None:
        bufsize = size + 1024
        if events & select.POLLERR and not self.raw:
            answer = self._read_errors(bufsize)
            if answer is not None:
                return answer
        for _ in range(64):
            try:
                data, sender = self.sock.recvfrom(bufsize)
            except BlockingIOError:
                return None
            except OSError as exc:
                if exc.errno == errno.EMSGSIZE:
                    return _Answer(too_big=True)
                if exc.errno in UNREACHABLE_ERRNOS:
                    return _Answer(unreachable=exc.strerror or "unreachable")
                return None
            answer = self._match(data, str(sender[0]))
            if answer is not None:
                return answer
        return None

    def _match(self, data: bytes, sender: str) -> _Answer | None:
        has_ip_header = self.raw and self.family == socket.AF_INET
        heard = _icmp.parse(self.family, data, has_ip_header)
        if heard is None or heard.seq != self.seq:
            return None
        if self.raw and heard.ident != self.ident:
            return None
        if heard.is_reply:
            return _Answer(fit=True) if heard.payload[:TOKEN_BYTES] == self.token else None
        # Routers may quote only the first 8 bytes of our request: match what they kept.
        if not self.token.startswith(heard.payload[:TOKEN_BYTES]):
            return None
        if (self.family, heard.icmp_type, heard.icmp_code) in _TOO_BIG:
            header = data[(data[0] & 0x0F) * 4 :] if has_ip_header else data
            mtu = (
                struct.unpack("!H", header[6:8])[0]
                if self.family == socket.AF_INET
                else struct.unpack("!I", header[4:8])[0]
            )
            return self._too_big(mtu, sender)
        return _Answer(
            unreachable=_icmp.describe(self.family, heard.icmp_type, heard.icmp_code, sender)
        )

    def _read_errors(self, bufsize: int) -> _Answer | None:
        """A datagram socket's ICMP errors arrive on its error queue (IP_RECVERR)."""
        for queued in _icmp.error_queue(self.sock, bufsize, 64):
            if queued.seq != self.seq:
                continue
            if queued.origin not in {_icmp.SO_EE_ORIGIN_ICMP, _icmp.SO_EE_ORIGIN_ICMP6}:
                if queued.errno == errno.EMSGSIZE:
                    return _Answer(too_big=True)
                continue
            if (self.family, queued.icmp_type, queued.icmp_code) in _TOO_BIG:
                return self._too_big(queued.info, queued.offender)
            return _Answer(
                unreachable=_icmp.describe(
                    self.family, queued.icmp_type, queued.icmp_code, queued.offender
                )
            )
        return None

    def _too_big(self, mtu: int, sender: str) -> _Answer:
        self.frag_needed = f"{mtu} from {sender}"
        return _Answer(too_big=True, mtu_hint=mtu or None)


def probe(target: Target, params: Params, timeout: float) -> Outcome:
    deadline = time.monotonic() + timeout
    with _icmp.open_echo(target.address, params, timeout) as echo:
        if echo.family == socket.AF_INET:
            echo.sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, PMTUDISC_PROBE)
        else:
            echo.sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, PMTUDISC_PROBE)
        prober = _Prober(echo.sock, echo.raw, echo.family, echo.sockaddr, params, deadline)
        return _search(prober, params, echo.family, echo.info)


def _search(prober: _Prober, params: Params, family: int, info: dict[str, str]) -> Outcome:
    low_end = HEADER_BYTES[family] + TOKEN_BYTES
    lo = max(params.min_bytes, low_end, IPV6_MIN_MTU if family == socket.AF_INET6 else 0)
    hi_bad = max(params.max_bytes, lo) + 1  # smallest size known not to fit
    metrics: dict[str, float] = {}
    try:
        first = prober.fits(lo)
        if not first.fit:
            metrics["probes_sent"] = float(prober.sent)
            if first.unreachable:
                return Outcome(
                    False, UNREACHABLE, metrics, {**info, "icmp_error": first.unreachable}
                )
            if first.too_big:
                info["error"] = f"even {lo} bytes is too big for the path"
                return Outcome(False, MTU_LOW, {**metrics, "path_mtu_bytes": 0.0}, info)
            info["error"] = f"no echo reply to {lo}-byte packets"
            return Outcome(False, NO_REPLY, metrics, info)
        size = hi_bad - 1
        while hi_bad - lo > 1:
            answer = prober.fits(size)
            if answer.fit:
                lo = size
            else:
                hi_bad = size
                # A router said what its next link takes: nothing bigger crosses it, and
                # that size itself usually fits, which ends the search.
                if answer.mtu_hint is not None and lo < answer.mtu_hint < hi_bad:
                    hi_bad = answer.mtu_hint + 1
                    size = answer.mtu_hint
                    continue
            size = (lo + hi_bad) // 2
    except TimeoutError:
        info["searched"] = f"{lo}..{hi_bad - 1} bytes"
        info["error"] = "the search did not end within the check timeout"
        return Outcome(False, TIMEOUT, {"probes_sent": float(prober.sent)}, info)

    if prober.frag_needed:
        info["frag_needed"] = prober.frag_needed
    metrics = {"path_mtu_bytes": float(lo), "probes_sent": float(prober.sent)}
    if lo < params.threshold_bytes:
        info["error"] = f"path MTU {lo} bytes is below {params.threshold_bytes}"
        return Outcome(False, MTU_LOW, metrics, info)
    return Outcome(True, metrics=metrics, info=info)


CHECK = core.CheckType(
    params=Params,
    probe=probe,
    reasons=REASONS,
    metrics={
        "path_mtu_bytes": core.gauge(
            "Largest IP packet, headers included, that crossed the path whole (0: not even "
            "min_bytes did).",
            0,
            MAX_IP_PACKET,
        ),
        "probes_sent": core.gauge("Echo requests sent by the search.", 0.0),
    },
    doc=__doc__ or "",
    parse_target=parse_host,
)
