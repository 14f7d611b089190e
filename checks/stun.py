"""STUN Binding request (RFC 8489, which replaced RFC 5389): does the STUN server answer, and
what address does it see us from?

Target address: ``host[:port]``, port 3478 by default (5349 with ``transport: tls``); an IPv6
literal goes in brackets.

Over UDP the request is retransmitted as RFC 8489 section 6.2.1 says: first after
``rto_seconds`` (default 500 ms), doubling each time, at most 7 requests, then a final wait of
16 × RTO; the check timeout cuts this short. Over TCP and TLS it is sent once (section 6.2.2).
A response counts only when it carries the magic cookie and our transaction id; a FINGERPRINT,
when present, must be right. Messages are encoded and parsed with aioice's ``stun`` module.

Metrics:
- ``rtt_seconds``: first transmission to the response (retransmissions included);
- ``retransmissions``: requests resent (UDP);
- ``error_code``: the STUN error code of an error response;
- ``connect_seconds``, ``tls_handshake_seconds``, ``cert_expiry_seconds``, ``cert_days_left``
  over TCP/TLS, as in the tcp check.

Info: ``mapped_address`` (``ip:port`` from XOR-MAPPED-ADDRESS, or MAPPED-ADDRESS from an old
RFC 3489 server), ``address`` (the server IP), ``software`` (its SOFTWARE attribute),
``error_text``, ``tls_version``, ``error``.

Reasons: ``timeout``, ``bad_response`` (something came back that is not a STUN response to
this request; over UDP only reported when nothing valid came before the deadline),
``error_response`` (the server answered with an error), ``refused`` (TCP refused, or ICMP port
unreachable over UDP), ``unreachable``, ``resolve_failed``, ``source_unavailable``,
``tls_error``, ``tls_expired``.

Privileges: none. Needs the ``aioice`` package (imported only when the check runs).

``Session`` (a connected transport with RFC 8489 retransmissions and response matching) is
shared with the turn check.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import Field, IPvAnyAddress, field_validator, model_validator

from checks import core
from checks._net import (
    REFUSED,
    RESOLVE_FAILED,
    SOURCE_UNAVAILABLE,
    TLS_ERROR,
    TLS_EXPIRED,
    UNREACHABLE,
    Family,
    family_from_number,
    oserror_reason,
    parse_address,
)
from checks.core import ERROR, TIMEOUT, Outcome, Target
from checks.sip import DialError, Link, context_for, dial, host_port, peer_text

if TYPE_CHECKING:
    from aioice.stun import Message

BAD_RESPONSE = "bad_response"
ERROR_RESPONSE = "error_response"

REASONS = frozenset(
    {
        TIMEOUT,
        BAD_RESPONSE,
        ERROR_RESPONSE,
        REFUSED,
        UNREACHABLE,
        RESOLVE_FAILED,
        SOURCE_UNAVAILABLE,
        TLS_ERROR,
        TLS_EXPIRED,
    }
)

Transport = Literal["udp", "tcp", "tls"]
DEFAULT_PORTS: dict[str, int] = {"udp": 3478, "tcp": 3478, "tls": 5349}
MAGIC_COOKIE = b"\x21\x12\xa4\x42"
HEADER_BYTES = 20
# RFC 8489 section 6.2.1: Rc requests, and Rm × RTO of waiting after the last one.
RC = 7
RM = 16


class Params(core.Params):
    transport: Transport = "udp"
    rto_seconds: float = Field(default=0.5, ge=0.05, le=5.0)
    source: IPvAnyAddress | None = None
    family: Family = "auto"
    verify: bool = True
    ca_file: str | None = Field(default=None, min_length=1)
    server_name: str | None = Field(default=None, min_length=1, max_length=253)

    _family_number = field_validator("family", mode="before")(family_from_number)

    @model_validator(mode="after")
    def _tls_options(self) -> Params:
        check_tls_options(self.transport, self.verify, self.ca_file, self.server_name)
        return self


def check_tls_options(
    transport: str, verify: bool, ca_file: str | None, server_name: str | None
) -> None:
    if transport != "tls" and (ca_file is not None or server_name is not None or not verify):
        raise ValueError("verify, ca_file and server_name apply to transport: tls only")


class DialParams(Protocol):
    """The params of a check that talks STUN (stun, turn)."""

    @property
    def rto_seconds(self) -> float: ...
    @property
    def source(self) -> IPvAnyAddress | None: ...
    @property
    def family(self) -> Family: ...
    @property
    def verify(self) -> bool: ...
    @property
    def ca_file(self) -> str | None: ...
    @property
    def server_name(self) -> str | None: ...


class StunError(Exception):
    """The exchange ended without a response: ``reason`` says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


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
    def open(
        cls,
        address: str,
        transport: str,
        params: DialParams,
        deadline: float,
    ) -> Session:
        """Connect per the check's params; raise DialError or ValueError (bad address)."""
        host, port = parse_address(address, DEFAULT_PORTS[transport])
        ctx = context_for(params.verify, params.ca_file) if transport == "tls" else None
        link = dial(
            host,
            port,
            stream=transport != "udp",
            family=params.family,
            source=params.source,
            deadline=deadline,
            tls=ctx,
            server_name=params.server_name,
        )
        return cls(link, params.rto_seconds, deadline)

    def close(self) -> None:
        self.link.close()

    def transact(self, request: Message) -> Reply:
        """Send ``request`` until the matching response comes; raise StunError otherwise."""
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
                        raise StunError(BAD_RESPONSE, str(exc)) from None
                    junk = str(exc)
                    continue
                if message.transaction_id != request.transaction_id:
                    continue
                if message.message_class not in (stun.Class.RESPONSE, stun.Class.ERROR):
                    continue
                if message.message_method != request.message_method:
                    raise StunError(BAD_RESPONSE, "response is for another method")
                self.retransmissions += sent - 1
                return Reply(message, time.perf_counter() - t0, sent - 1)
        except OSError as exc:
            self.retransmissions += max(sent - 1, 0)
            reason = oserror_reason(exc)
            if reason == ERROR and self.link.stream:
                reason = BAD_RESPONSE
            where = f"{self.link.address} port {self.link.port}"
            raise StunError(reason, f"{where}: {exc.strerror or exc or 'timed out'}") from None
        self.retransmissions += max(sent - 1, 0)
        if junk is not None:
            raise StunError(BAD_RESPONSE, junk)
        waited = time.monotonic() - start
        raise StunError(TIMEOUT, f"no response within {waited:.3g} s ({sent} requests)")

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
                    raise StunError(BAD_RESPONSE, "not a STUN message on the stream")
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
                raise StunError(BAD_RESPONSE, "the server closed the connection")
            self.buffer += chunk


def error_of(message: Message) -> tuple[int, str]:
    code, text = message.attributes.get("ERROR-CODE", (0, ""))
    return int(code), peer_text(str(text))


def fail(reason: str, message: str, metrics: dict[str, float], info: dict[str, str]) -> Outcome:
    return Outcome(False, reason, metrics, {**info, "error": message})


def probe(target: Target, params: Params, timeout: float) -> Outcome:
    from aioice import stun

    deadline = time.monotonic() + timeout
    try:
        session = Session.open(target.address, params.transport, params, deadline)
    except ValueError as exc:
        return Outcome(False, ERROR, info={"error": str(exc)})
    except DialError as exc:
        info = {"error": exc.message}
        if exc.address:
            info["address"] = exc.address
        return Outcome(False, exc.reason, info=info)

    metrics = dict(session.link.metrics)
    info = {**session.link.info, "address": session.link.address}
    request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    request.add_fingerprint()
    try:
        reply = session.transact(request)
    except StunError as exc:
        return fail(exc.reason, exc.message, metrics, info)
    finally:
        session.close()
        if not session.link.stream:
            metrics["retransmissions"] = float(session.retransmissions)
    metrics["rtt_seconds"] = reply.rtt_seconds
    message = reply.message
    if "SOFTWARE" in message.attributes:
        info["software"] = peer_text(str(message.attributes["SOFTWARE"]))
    if message.message_class == stun.Class.ERROR:
        code, text = error_of(message)
        metrics["error_code"] = float(code)
        info["error_text"] = text
        return fail(ERROR_RESPONSE, f"error response {code} {text}".rstrip(), metrics, info)
    mapped = message.attributes.get("XOR-MAPPED-ADDRESS") or message.attributes.get(
        "MAPPED-ADDRESS"
    )
    if mapped is None:
        return fail(BAD_RESPONSE, "success response without a mapped address", metrics, info)
    info["mapped_address"] = address_text(mapped)
    return Outcome(True, metrics=metrics, info=info)
