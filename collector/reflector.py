"""A stateless TWAMP-light reflector for the agents' ``stream`` check.

``wardready-collector reflector --listen 127.0.0.1:862`` answers each unauthenticated TWAMP
test packet (RFC 5357 section 4.2.1, appendix I) with the receive time (the kernel's, so the
reflector's own scheduling delay is not charged to the line), the send time, the sender's
sequence number, timestamp, error estimate and TTL. It keeps no session: its sequence number
is the sender's.

It cannot be turned into an amplifier or a flood source:
- a reply is exactly as long as its request (the padding shrinks by the 27 octets the header
  grows by); requests shorter than the 41-octet reply header, or longer than
  ``max_packet_bytes``, are dropped;
- each source address has a token bucket of ``per_source_pps`` (one second of burst), and all
  sources together one of ``global_pps``; excess is dropped and counted;
- at most ``max_sources`` buckets are kept, the least recently heard forgotten first.

Every ``log_every`` seconds, when anything happened, one summary line is logged: received,
reflected, and drops by cause.

Port 862 (the TWAMP port) is privileged: run as root, with CAP_NET_BIND_SERVICE, or on a port
above 1023. Listen on one address rather than 0.0.0.0 where possible; on a wildcard address the
reply leaves from the address the request came to (IP_PKTINFO).
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from checks import twamp

log = logging.getLogger("collector.reflector")

# Linux socket options the socket module does not export.
SO_TIMESTAMPNS = 35
IP_PKTINFO = 8
IP_RECVTTL = 12
MAX_DRAIN = 512
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class Limits:
    per_source_pps: float = 1000.0
    global_pps: float = 20000.0
    max_packet_bytes: int = 1500
    max_sources: int = 65536


@dataclass
class Counters:
    received: int = 0
    reflected: int = 0
    dropped_rate: int = 0
    dropped_global: int = 0
    dropped_size: int = 0
    dropped_malformed: int = 0
    send_errors: int = 0

    def summary(self, sources: int) -> str:
        return (
            f"reflector: {self.received} received, {self.reflected} reflected; dropped "
            f"{self.dropped_rate} over the per-source rate, {self.dropped_global} over the "
            f"global rate, {self.dropped_size} by size, {self.dropped_malformed} malformed; "
            f"{self.send_errors} send errors; {sources} sources"
        )


@dataclass
class TokenBucket:
    rate: float
    tokens: float
    last: float

    def take(self, now: float) -> bool:
        # A full bucket holds one second of the rate.
        self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class Reflector:
    sock: socket.socket
    limits: Limits = field(default_factory=Limits)
    counters: Counters = field(default_factory=Counters)
    log_every: float = 60.0

    def __post_init__(self) -> None:
        now = time.monotonic()
        self._global = TokenBucket(self.limits.global_pps, self.limits.global_pps, now)
        self._sources: OrderedDict[str, TokenBucket] = OrderedDict()
        self._wildcard = self.sock.getsockname()[0] in ("0.0.0.0", "::")
        self._v6 = self.sock.family == socket.AF_INET6
        self._error_estimate = 0
        self._refresh_clock()

    @classmethod
    def bind(cls, host: str, port: int, limits: Limits | None = None) -> Reflector:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((host, port))
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            if family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
                sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return cls(sock, limits or Limits())

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    def _refresh_clock(self) -> None:
        synced, error = twamp.clock_state()
        self._error_estimate = twamp.error_estimate(bool(synced), error)

    def _admit(self, source: str, now: float) -> bool:
        bucket = self._sources.pop(source, None)
        if bucket is None:
            rate = self.limits.per_source_pps
            bucket = TokenBucket(rate, rate, now)
            if len(self._sources) >= self.limits.max_sources:
                self._sources.popitem(last=False)
        self._sources[source] = bucket
        if not bucket.take(now):
            self.counters.dropped_rate += 1
            return False
        if not self._global.take(now):
            self.counters.dropped_global += 1
            return False
        return True

    def handle(
        self, data: bytes, ancdata: list[tuple[int, int, bytes]], peer: tuple[str, int]
    ) -> None:
        """Answer one datagram, or count why not."""
        c = self.counters
        c.received += 1
        if not twamp.REFLECTOR_HEADER <= len(data) <= self.limits.max_packet_bytes:
            c.dropped_size += 1
            return
        if not self._admit(peer[0], time.monotonic()):
            return
        received_ns, ttl, pktinfo = None, 0, None
        for level, kind, cdata in ancdata:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(cdata) >= 16:
                sec, nsec = struct.unpack("@ll", cdata[:16])
                received_ns = sec * 1_000_000_000 + nsec
            elif (level, kind) in {
                (socket.IPPROTO_IP, socket.IP_TTL),
                (socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT),
            } and len(cdata) >= 4:
                ttl = struct.unpack("@i", cdata[:4])[0]
            elif (level, kind) in {
                (socket.IPPROTO_IP, IP_PKTINFO),
                (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO),
            }:
                pktinfo = (level, kind, cdata)
        if received_ns is None:
            received_ns = time.time_ns()
        try:
            reply = twamp.reflect(
                data,
                twamp.ntp_from_ns(received_ns),
                twamp.ntp_from_ns(time.time_ns()),
                self._error_estimate,
                ttl,
            )
        except twamp.PacketError:
            c.dropped_malformed += 1
            return
        try:
            if self._wildcard and pktinfo is not None:
                self.sock.sendmsg([reply], [_reply_pktinfo(*pktinfo)], 0, peer)
            else:
                self.sock.sendto(reply, peer)
        except OSError:
            c.send_errors += 1
            return
        c.reflected += 1

    def serve(self, stop: threading.Event) -> None:
        """Answer until ``stop`` is set; log a summary every ``log_every`` seconds."""
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        bufsize = self.limits.max_packet_bytes + 1
        cmsg = socket.CMSG_SPACE(16) + socket.CMSG_SPACE(4) + socket.CMSG_SPACE(20)
        next_log = time.monotonic() + self.log_every
        logged = Counters()
        while not stop.is_set():
            if poller.poll(POLL_SECONDS * 1000):
                for _ in range(MAX_DRAIN):
                    try:
                        data, ancdata, _, peer = self.sock.recvmsg(bufsize, cmsg)
                    except BlockingIOError:
                        break
                    except OSError:  # e.g. a queued ICMP error from an earlier reply
                        continue
                    self.handle(data, ancdata, peer)
            if time.monotonic() >= next_log:
                next_log = time.monotonic() + self.log_every
                self._refresh_clock()
                if self.counters != logged:
                    log.info(self.counters.summary(len(self._sources)))
                    logged = Counters(**vars(self.counters))
        log.info(self.counters.summary(len(self._sources)))

    def close(self) -> None:
        self.sock.close()


def _reply_pktinfo(level: int, kind: int, cdata: bytes) -> tuple[int, int, bytes]:
    """Ancillary data that sends the reply from the address the request came to."""
    if level == socket.IPPROTO_IP:
        # struct in_pktinfo {int ifindex; in_addr spec_dst; in_addr addr}: reply from addr.
        return level, kind, struct.pack("@i", 0) + cdata[8:12] + bytes(4)
    return level, kind, cdata[:20]
