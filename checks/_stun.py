"""What the stun and turn checks share: their params, a connected transport to a STUN/TURN
server with RFC 8489 retransmissions and response matching, and STUN message helpers.

Not a check: messages are encoded and parsed with aioice's ``stun`` module, imported only when
a check runs.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import Field

from checks import core
from checks._dial import (
    DIAL_METRICS,
    DIAL_REASONS,
    Link,
    TransportParams,
    host_port,
    open_link,
    peer_text,
)
from checks._net import oserror_reason
from checks.core import ERROR, TIMEOUT, CheckFailed

if TYPE_CHECKING:
    from aioice.stun import Message

BAD_RESPONSE = "bad_response"
ERROR_RESPONSE = "error_response"
# Reasons both checks may end with.
STUN_REASONS = DIAL_REASONS | {BAD_RESPONSE, ERROR_RESPONSE}

DEFAULT_PORTS: dict[str, int] = {"udp": 3478, "tcp": 3478, "tls": 5349}
MAGIC_COOKIE = b"\x21\x12\xa4\x42"
HEADER_BYTES = 20
# RFC 8489 section 6.2.1: Rc requests, and Rm × RTO of waiting after the last one.
RC = 7
RM = 16

# Metrics both checks report.
STUN_METRICS: Mapping[str, core.Metric] = {
    "rtt_seconds": core.seconds(
        "First transmission of the first request to its response, UDP retransmissions included."
    ),
    "retransmissions": core.gauge("Requests resent over UDP in this run.", 0),
    "error_code": core.gauge(
        "STUN error code of the error response that ended the run; 0 when it carried none.",
        0,
        699,
    ),
    **DIAL_METRICS,
}


class StunParams(TransportParams):
    rto_seconds: float = Field(default=0.5, ge=0.05, le=5.0)


@dataclass
class Reply:
    message: Message
    rtt_seconds: float
    retransmissions: int


def parse(raw: bytes) -> Message:
    """One STUN message; ValueError when it is not one (no cookie, bad length, bad FINGERPRINT)."""
    from aioice import stun

    if len(raw) < HEADER_BYTES or raw[0] & 0xC0 or raw[4:8] != MAGIC_COOKIE:
        raise ValueError("not a STUN message")
    try:
        return stun.parse_message(raw)
    except (ValueError, struct.error, IndexError) as exc:
        raise ValueError(f"malformed STUN message: {exc}") from None


def address_text(value: Any) -> str:
    host, port = value
    return host_port(str(host), int(port))


@dataclass
class Session:
    """A connected transport to a STUN/TURN server, and transactions over it."""

    link: Link
    rto_seconds: float
    deadline: float
    buffer: bytes = b""
    retransmissions: int = 0
    metrics: dict[str, float] = field(default_factory=dict)

    @classmethod
    def open(cls, address: str, params: StunParams, deadline: float) -> Session:
        """Connect per the check's params; raise CheckFailed."""
        link = open_link(address, params, DEFAULT_PORTS, deadline)
        return cls(link, params.rto_seconds, deadline)

    def close(self) -> None:
        self.link.close()

    def transact(self, request: Message) -> Reply:
        """Send ``request`` until the matching response comes; raise CheckFailed otherwise."""
        from aioice import stun

        data = bytes(request)
        sock = self.link.sock
        start = time.monotonic()
        t0 = time.perf_counter()
        if self.link.stream:
            sends_at = [start]
            give_up = self.deadline
        else:
            sends_at = [start + self.rto_seconds * (2**i - 1) for i in range(RC)]
            give_up = min(self.deadline, sends_at[-1] + RM * self.rto_seconds)
        sent = 0
        junk: str | None = None
        try:
            while True:
                now = time.monotonic()
                if now >= give_up:
                    break
                if sent < len(sends_at) and now >= sends_at[sent]:
                    sock.settimeout(max(self.deadline - now, 0.001))
                    sock.sendall(data)
                    sent += 1
                    continue
                until = min(give_up, sends_at[sent]) if sent < len(sends_at) else give_up
                raw = self._receive(until)
                if raw is None:
                    continue
                try:
                    message = parse(raw)
                except ValueError as exc:
                    if self.link.stream:
                        raise CheckFailed(BAD_RESPONSE, str(exc)) from None
                    junk = str(exc)
                    continue
                if message.transaction_id != request.transaction_id:
                    continue
                if message.message_class not in (stun.Class.RESPONSE, stun.Class.ERROR):
                    continue
                if message.message_method != request.message_method:
                    raise CheckFailed(BAD_RESPONSE, "response is for another method")
                self.retransmissions += sent - 1
                return Reply(message, time.perf_counter() - t0, sent - 1)
        except OSError as exc:
            self.retransmissions += max(sent - 1, 0)
            reason = oserror_reason(exc)
            if reason == ERROR and self.link.stream:
                reason = BAD_RESPONSE
            where = f"{self.link.address} port {self.link.port}"
            raise CheckFailed(reason, f"{where}: {exc.strerror or exc or 'timed out'}") from None
        self.retransmissions += max(sent - 1, 0)
        if junk is not None:
            raise CheckFailed(BAD_RESPONSE, junk)
        waited = time.monotonic() - start
        raise CheckFailed(TIMEOUT, f"no response within {waited:.3g} s ({sent} requests)")

    def _receive(self, until: float) -> bytes | None:
        """One message, or None when ``until`` passes first."""
        sock = self.link.sock
        if not self.link.stream:
            sock.settimeout(max(until - time.monotonic(), 0.001))
            try:
                return sock.recv(65536)
            except TimeoutError:
                return None
        while True:
            if len(self.buffer) >= HEADER_BYTES:
                if self.buffer[0] & 0xC0:
                    raise CheckFailed(BAD_RESPONSE, "not a STUN message on the stream")
                (length,) = struct.unpack("!H", self.buffer[2:4])
                total = HEADER_BYTES + length
                if len(self.buffer) >= total:
                    raw, self.buffer = self.buffer[:total], self.buffer[total:]
                    return raw
            remaining = until - time.monotonic()
            if remaining <= 0:
                return None
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return None
            if not chunk:
                raise CheckFailed(BAD_RESPONSE, "the server closed the connection")
            self.buffer += chunk


def error_of(message: Message) -> tuple[int, str]:
    """An error response's code and reason phrase; code 0 when it has no valid ERROR-CODE."""
    code, text = message.attributes.get("ERROR-CODE", (0, ""))
    # RFC 8489 section 14.8: class 3 to 6. aioice decodes whatever bytes came (up to 25755).
    if not 300 <= int(code) <= 699:
        return 0, peer_text(f"(code {int(code)}) {text}" if code else str(text))
    return int(code), peer_text(str(text))
