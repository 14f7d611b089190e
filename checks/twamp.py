"""TWAMP-light test packets (RFC 5357, unauthenticated mode), shared by sender and reflector.

Only the test packets are here: TWAMP-light (RFC 5357 appendix I) has no control session, the
sender simply sends to a reflector that answers each packet.

Session-Sender test packet (RFC 5357 section 4.1.2), 14 octets then padding::

    0      4          12     14
    | seq | timestamp | err | padding ...

Session-Reflector test packet (section 4.2.1), 41 octets then padding::

    0      4          12     14     16                 24           28                 36
    | seq | timestamp | err | MBZ | receive timestamp | sender seq | sender timestamp |
    36            38     40           41
    | sender err | MBZ | sender TTL | padding ...

All fields are big-endian. Timestamps are NTP format (RFC 5905): 32 bits of seconds since
1900-01-01 and 32 bits of fraction. The error estimate (RFC 4656 section 4.1.2) is S (clock
synchronised to an external source), Z (0: NTP format), 6 bits of scale and 8 of multiplier;
the error is multiplier × 2^(scale − 32) seconds.

The reflector's padding is the sender's minus 27 octets (RFC 5357 section 4.2.1), so a reply
is exactly as long as its request: a sender pads to at least 41 octets, and a reflector never
answers with more than it was sent.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

DEFAULT_PORT = 862
SENDER_HEADER = 14
REFLECTOR_HEADER = 41
# RFC 5357 section 4.1.2: a Session-Sender sends with TTL 255, so Sender TTL tells the hops.
SENDER_TTL = 255

NTP_UNIX_OFFSET = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01
_NS = 1_000_000_000

_SENDER = struct.Struct("!IQH")
_REFLECTOR = struct.Struct("!IQHHQIQHHB")


class PacketError(ValueError):
    """A datagram that is not a TWAMP test packet of the expected kind."""


def ntp_from_ns(unix_ns: int) -> int:
    """Unix time in nanoseconds as a 64-bit NTP timestamp (truncated to 2^-32 s)."""
    seconds, ns = divmod(unix_ns, _NS)
    return ((seconds + NTP_UNIX_OFFSET) & 0xFFFFFFFF) << 32 | (ns << 32) // _NS


def ns_from_ntp(ntp: int) -> int:
    """A 64-bit NTP timestamp as Unix time in nanoseconds (NTP era 0: 1900 to 2036)."""
    seconds, fraction = ntp >> 32, ntp & 0xFFFFFFFF
    return (seconds - NTP_UNIX_OFFSET) * _NS + (fraction * _NS + (1 << 31)) // (1 << 32)


def error_estimate(synchronized: bool, error_seconds: float) -> int:
    """The 16-bit error estimate for a clock that is within ``error_seconds`` of true time."""
    # The smallest scale whose 8-bit multiplier can hold the error; multiplier 0 is forbidden.
    units = max(error_seconds, 2.0**-32) * 2.0**32
    scale = 0
    while units > 255 and scale < 63:
        units /= 2
        scale += 1
    multiplier = min(255, max(1, round(units)))
    return (0x8000 if synchronized else 0) | scale << 8 | multiplier


def error_seconds(estimate: int) -> float:
    scale, multiplier = (estimate >> 8) & 0x3F, estimate & 0xFF
    return float(multiplier * 2.0 ** (scale - 32))


def is_synchronized(estimate: int) -> bool:
    return bool(estimate & 0x8000)


@dataclass(frozen=True)
class SenderPacket:
    seq: int
    timestamp: int  # NTP format
    error_estimate: int
    padding: bytes = b""

    def encode(self) -> bytes:
        return _SENDER.pack(self.seq, self.timestamp, self.error_estimate) + self.padding

    @classmethod
    def decode(cls, data: bytes) -> SenderPacket:
        if len(data) < SENDER_HEADER:
            raise PacketError(f"{len(data)} octets, a sender test packet has at least 14")
        seq, timestamp, err = _SENDER.unpack_from(data)
        return cls(seq, timestamp, err, bytes(data[SENDER_HEADER:]))


@dataclass(frozen=True)
class ReflectorPacket:
    seq: int
    timestamp: int  # NTP, when the reflector sent this reply
    error_estimate: int
    receive_timestamp: int  # NTP, when the reflector received the request
    sender_seq: int
    sender_timestamp: int
    sender_error_estimate: int
    sender_ttl: int
    padding: bytes = b""

    def encode(self) -> bytes:
        return (
            _REFLECTOR.pack(
                self.seq,
                self.timestamp,
                self.error_estimate,
                0,
                self.receive_timestamp,
                self.sender_seq,
                self.sender_timestamp,
                self.sender_error_estimate,
                0,
                self.sender_ttl,
            )
            + self.padding
        )

    @classmethod
    def decode(cls, data: bytes) -> ReflectorPacket:
        if len(data) < REFLECTOR_HEADER:
            raise PacketError(f"{len(data)} octets, a reflector test packet has at least 41")
        seq, ts, err, _, rx, s_seq, s_ts, s_err, _, ttl = _REFLECTOR.unpack_from(data)
        return cls(seq, ts, err, rx, s_seq, s_ts, s_err, ttl, bytes(data[REFLECTOR_HEADER:]))


def reflect(
    request: bytes,
    receive_timestamp: int,
    send_timestamp: int,
    error_estimate: int,
    ttl: int,
    seq: int | None = None,
) -> bytes:
    """The reply to one sender test packet, as long as the request.

    ``seq`` is the reflector's own sequence number; a stateless reflector passes None and
    echoes the sender's (RFC 5357 appendix I leaves this to the implementation).
    """
    if len(request) < REFLECTOR_HEADER:
        raise PacketError(
            f"{len(request)} octets: a reply carries 41, so answering would amplify; "
            "a sender must pad its test packets to at least 41 octets"
        )
    sent = SenderPacket.decode(request)
    reply = ReflectorPacket(
        seq=sent.seq if seq is None else seq & 0xFFFFFFFF,
        timestamp=send_timestamp,
        error_estimate=error_estimate,
        receive_timestamp=receive_timestamp,
        sender_seq=sent.seq,
        sender_timestamp=sent.timestamp,
        sender_error_estimate=sent.error_estimate,
        sender_ttl=ttl & 0xFF,
        # The sender's padding minus the 27 octets the reply's header grew by.
        padding=sent.padding[REFLECTOR_HEADER - SENDER_HEADER :],
    )
    return reply.encode()


def clock_state() -> tuple[bool | None, float]:
    """Whether this host's clock is synchronised (adjtimex), and its estimated error in s.

    (None, 1.0) when the kernel cannot be asked (not Linux).
    """
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        adjtimex = libc.adjtimex
    except (OSError, AttributeError):
        return None, 1.0
    # struct timex is 208 octets on 64-bit Linux; modes = 0 only reads.
    buf = ctypes.create_string_buffer(256)
    state = adjtimex(buf)
    if state < 0:
        return None, 1.0
    esterror_us = struct.unpack_from("l", buf.raw, 8 + 3 * struct.calcsize("l"))[0]
    time_error = 5  # TIME_ERROR: the clock is not synchronised
    synced = state != time_error
    return synced, max(esterror_us, 1) / 1e6 if synced else 1.0
