"""SIP OPTIONS ping (RFC 3261 section 11) over UDP, TCP or TLS: does the MCU or SIP server answer?

Target address: ``host[:port]``; an IPv6 literal goes in brackets. The port defaults to 5060
(``udp``, ``tcp``) or 5061 (``tls``). The request goes to the first address of the name (for
``udp``) or to each address in turn until one connects (``tcp``, ``tls``).

One OPTIONS request, written by hand: a Via with a fresh ``z9hG4bK`` branch and ``rport``, a
From tag, a random Call-ID and CSeq, Max-Forwards 70, Contact and Content-Length 0. A response
counts only when its Call-ID, CSeq and top Via branch are ours; provisional (1xx) responses are
skipped and the final one is judged. Over UDP the request is retransmitted as RFC 3261 section
17.1.2.2 says (timer E from ``t1_seconds``, doubling up to T2 = 4 s, every T2 once a provisional
response came), all within the check timeout. The response must come back from the address the
request went to.

Parameters: ``transport`` (udp, tcp, tls), ``request_uri`` (default ``sip:HOST:PORT``, with
``;transport=tcp|tls`` over a stream), ``from_uri`` (default ``sip:wardready@LOCAL-ADDRESS``),
``to_uri`` (default the request URI), ``expect_status`` (final codes that count as success,
default ``[200]``), ``t1_seconds``, ``source`` (local address to send from), ``family``, and
for TLS ``verify``, ``ca_file``, ``server_name``.

Metrics:
- ``rtt_seconds``: first transmission of the request to the final response (UDP
  retransmissions included: it is how long a caller would wait);
- ``status_code``: the final response's code, present whenever one came back;
- ``retransmissions``: requests resent over UDP;
- ``connect_seconds`` (tcp, tls), ``tls_handshake_seconds`` and ``cert_expiry_seconds``
  (tls; as in the tcp check).

Info: ``address`` (the IP that answered), ``status_text`` (the reason phrase), ``server`` (the
Server or User-Agent header), ``tls_version``, ``error``. Text from the peer is cut to 128
printable characters.

Reasons: ``timeout``, ``refused`` (TCP refused, or ICMP port unreachable over UDP),
``unreachable``, ``resolve_failed``, ``source_unavailable``, ``tls_error``, ``tls_expired``,
``status_3xx``, ``status_4xx``, ``status_5xx``, ``status_6xx`` (a final response of that class
not in ``expect_status``), ``unexpected_status`` (a 2xx not in ``expect_status``),
``bad_response`` (something came back that is not a SIP response to this request; over UDP
this is only reported when nothing valid arrived before the deadline).

Privileges: none.
"""

from __future__ import annotations

import functools
import re
import secrets
import socket
import time
from dataclasses import dataclass

from pydantic import Field, field_validator

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
from checks._net import oserror_reason, parse_address
from checks.core import ERROR, TIMEOUT, Outcome, Target

BAD_RESPONSE = "bad_response"
UNEXPECTED_STATUS = "unexpected_status"
STATUS_REASONS = {3: "status_3xx", 4: "status_4xx", 5: "status_5xx", 6: "status_6xx"}

REASONS = DIAL_REASONS | {BAD_RESPONSE, UNEXPECTED_STATUS, *STATUS_REASONS.values()}

DEFAULT_PORTS: dict[str, int] = {"udp": 5060, "tcp": 5060, "tls": 5061}
T2_SECONDS = 4.0
# Far above any OPTIONS answer; a peer that streams more without a blank line is not SIP.
MAX_MESSAGE_BYTES = 65536

# RFC 3261 section 7.3.3.
_COMPACT = {
    "i": "call-id",
    "v": "via",
    "f": "from",
    "t": "to",
    "l": "content-length",
    "m": "contact",
    "c": "content-type",
}
_STATUS_LINE = re.compile(rb"SIP/2\.0 ([1-6][0-9][0-9])(?: (.*))?")
_BRANCH = re.compile(r";\s*branch\s*=\s*([^;,\s]+)", re.IGNORECASE)
# Printable ASCII but space, quote and angle brackets: nothing that could end the header.
_URI = re.compile(r"sips?:[\x21\x23-\x3b\x3d\x3f-\x7e]+", re.IGNORECASE)


def _uri(value: str | None) -> str | None:
    if value is not None and not _URI.fullmatch(value):
        raise ValueError(
            "must be a sip: or sips: URI of printable ASCII (percent-encode the rest), "
            "without spaces, quotes or angle brackets"
        )
    return value


class Params(TransportParams):
    request_uri: str | None = Field(default=None, max_length=256)
    from_uri: str | None = Field(default=None, max_length=256)
    to_uri: str | None = Field(default=None, max_length=256)
    expect_status: list[int] = Field(default_factory=lambda: [200], min_length=1, max_length=20)
    t1_seconds: float = Field(default=0.5, ge=0.05, le=5.0)

    _uris = field_validator("request_uri", "from_uri", "to_uri")(_uri)

    @field_validator("expect_status")
    @classmethod
    def _final_codes(cls, value: list[int]) -> list[int]:
        for code in value:
            if not 200 <= code <= 699:
                raise ValueError(f"{code} is not a final SIP status (200-699)")
        return value


# ---- SIP messages --------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    call_id: str
    cseq: int
    branch: str
    text: bytes


@dataclass(frozen=True)
class Response:
    code: int
    phrase: str
    headers: dict[str, list[str]]

    def first(self, name: str) -> str | None:
        values = self.headers.get(name)
        return values[0] if values else None


def build_options(params: Params, link: Link) -> Request:
    local_host, local_port = link.sock.getsockname()[:2]
    local = host_port(local_host, local_port)
    target = host_port(link.host, link.port)
    suffix = "" if params.transport == "udp" else f";transport={params.transport}"
    request_uri = params.request_uri or f"sip:{target}{suffix}"
    from_uri = params.from_uri or f"sip:wardready@{local}"
    to_uri = params.to_uri or request_uri
    call_id = secrets.token_hex(16)
    cseq = 1 + secrets.randbelow(2**31 - 2)
    branch = "z9hG4bK" + secrets.token_hex(10)
    lines = [
        f"OPTIONS {request_uri} SIP/2.0",
        f"Via: SIP/2.0/{params.transport.upper()} {local};branch={branch};rport",
        "Max-Forwards: 70",
        f"From: <{from_uri}>;tag={secrets.token_hex(6)}",
        f"To: <{to_uri}>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} OPTIONS",
        f"Contact: <sip:wardready@{local}{suffix}>",
        "Accept: application/sdp",
        "User-Agent: wardready",
        "Content-Length: 0",
        "",
        "",
    ]
    return Request(call_id, cseq, branch, "\r\n".join(lines).encode())


def parse_response(raw: bytes) -> Response:
    """A SIP response's status line and headers; ValueError for anything else."""
    head, sep, _ = raw.partition(b"\r\n\r\n")
    if not sep:
        head, sep, _ = raw.partition(b"\n\n")
    lines = head.decode("utf-8", "replace").replace("\r\n", "\n").split("\n")
    status = _STATUS_LINE.fullmatch(lines[0].encode("utf-8", "replace"))
    if status is None:
        raise ValueError(f"not a SIP response: {peer_text(lines[0][:60])!r}")
    headers: dict[str, list[str]] = {}
    last: str | None = None
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and last is not None:
            headers[last][-1] += " " + line.strip()
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise ValueError(f"bad header line {peer_text(line[:60])!r}")
        key = name.strip().lower()
        key = _COMPACT.get(key, key)
        headers.setdefault(key, []).append(value.strip())
        last = key
    phrase = (status.group(2) or b"").decode("utf-8", "replace")
    return Response(int(status.group(1)), phrase, headers)


def answers(request: Request, response: Response) -> bool:
    """RFC 3261 section 17.1.3: the top Via branch and the CSeq method match; Call-ID too."""
    if response.first("call-id") != request.call_id:
        return False
    cseq = (response.first("cseq") or "").split()
    if cseq != [str(request.cseq), "OPTIONS"]:
        return False
    via = (response.first("via") or "").split(",")[0]
    branch = _BRANCH.search(via)
    return branch is not None and branch.group(1) == request.branch


# ---- the exchange --------------------------------------------------------------------------


class _Stream:
    """SIP messages framed by Content-Length over a byte stream (RFC 3261 section 18.3)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def next_message(self, deadline: float) -> bytes:
        while True:
            # Keep-alive CRLFs (RFC 5626) may sit between messages.
            self.buffer = self.buffer.lstrip(b"\r\n")
            end = self.buffer.find(b"\r\n\r\n")
            if end >= 0:
                head = self.buffer[:end]
                length = _content_length(head)
                total = end + 4 + length
                if len(self.buffer) >= total:
                    message, self.buffer = self.buffer[:total], self.buffer[total:]
                    return message
            if len(self.buffer) > MAX_MESSAGE_BYTES:
                raise ValueError(f"no complete SIP message in {MAX_MESSAGE_BYTES} bytes")
            self._fill(deadline)

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self.sock.settimeout(remaining)
        chunk = self.sock.recv(16384)
        if not chunk:
            raise ConnectionResetError("the server closed the connection")
        self.buffer += chunk


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() in (b"content-length", b"l"):
            text = value.strip()
            if not text.isdigit() or int(text) > MAX_MESSAGE_BYTES:
                raise ValueError(f"bad Content-Length {peer_text(text.decode('latin-1'))!r}")
            return int(text)
    # Mandatory over streams; a peer that leaves it out most likely sends no body.
    return 0


@dataclass
class _Exchange:
    final: Response | None = None
    rtt_seconds: float = 0.0
    retransmissions: int = 0
    junk: str | None = None


def _exchange_udp(link: Link, request: Request, t1: float, deadline: float) -> _Exchange:
    out = _Exchange()
    t0 = time.perf_counter()
    interval = t1
    link.sock.send(request.text)
    next_send = time.monotonic() + interval
    provisional = False
    while True:
        now = time.monotonic()
        if now >= deadline:
            return out
        if now >= next_send:
            link.sock.send(request.text)
            out.retransmissions += 1
            interval = T2_SECONDS if provisional else min(interval * 2, T2_SECONDS)
            next_send = now + interval
            continue
        link.sock.settimeout(max(min(deadline, next_send) - now, 0.001))
        try:
            raw = link.sock.recv(MAX_MESSAGE_BYTES)
        except TimeoutError:
            continue
        try:
            response = parse_response(raw)
        except ValueError as exc:
            out.junk = str(exc)
            continue
        if not answers(request, response):
            out.junk = f"a response to another request (status {response.code})"
            continue
        if response.code < 200:
            if not provisional:
                provisional = True
                next_send = max(next_send, time.monotonic() + T2_SECONDS)
            continue
        out.final = response
        out.rtt_seconds = time.perf_counter() - t0
        return out


def _exchange_stream(link: Link, request: Request, deadline: float) -> _Exchange:
    out = _Exchange()
    stream = _Stream(link.sock)
    t0 = time.perf_counter()
    link.sock.settimeout(max(deadline - time.monotonic(), 0.001))
    link.sock.sendall(request.text)
    while True:
        raw = stream.next_message(deadline)
        try:
            response = parse_response(raw)
        except ValueError as exc:
            # The connection is ours alone: a peer that sends anything else is broken.
            out.junk = str(exc)
            return out
        if not answers(request, response):
            out.junk = f"a response to another request (status {response.code})"
            continue
        if response.code >= 200:
            out.final = response
            out.rtt_seconds = time.perf_counter() - t0
            return out


def probe(target: Target, params: Params, timeout: float) -> Outcome:
    deadline = time.monotonic() + timeout
    link = open_link(target.address, params, DEFAULT_PORTS, deadline)
    metrics, info = link.metrics, dict(link.info)
    try:
        request = build_options(params, link)
        try:
            if link.stream:
                out = _exchange_stream(link, request, deadline)
            else:
                out = _exchange_udp(link, request, params.t1_seconds, deadline)
        except ValueError as exc:
            return Outcome(False, BAD_RESPONSE, metrics, {**info, "error": str(exc)})
        except OSError as exc:
            reason = oserror_reason(exc)
            if reason == ERROR and link.stream:
                # Reset or closed mid-exchange: the server took the connection, then dropped it.
                reason = BAD_RESPONSE
            what = f"{link.address} port {link.port}: {exc.strerror or exc or 'timed out'}"
            message = f"no final response within {timeout:g} s" if reason == TIMEOUT else what
            return Outcome(False, reason, metrics, {**info, "error": message})
    finally:
        link.close()
    if not link.stream:
        metrics["retransmissions"] = float(out.retransmissions)
    return _judge(params, out, metrics, info, timeout)


def _judge(
    params: Params,
    out: _Exchange,
    metrics: dict[str, float],
    info: dict[str, str],
    timeout: float,
) -> Outcome:
    if out.final is None:
        if out.junk is not None:
            return Outcome(False, BAD_RESPONSE, metrics, {**info, "error": out.junk})
        message = f"no final response within {timeout:g} s"
        return Outcome(False, TIMEOUT, metrics, {**info, "error": message})
    final = out.final
    metrics["rtt_seconds"] = out.rtt_seconds
    metrics["status_code"] = float(final.code)
    info["status_text"] = peer_text(final.phrase)
    server = final.first("server") or final.first("user-agent")
    if server:
        info["server"] = peer_text(server)
    if final.code in params.expect_status:
        return Outcome(True, metrics=metrics, info=info)
    reason = STATUS_REASONS.get(final.code // 100, UNEXPECTED_STATUS)
    info["error"] = f"answered {final.code} {info['status_text']}".rstrip()
    return Outcome(False, reason, metrics, info)


CHECK = core.CheckType(
    params=Params,
    probe=probe,
    reasons=REASONS,
    metrics={
        "rtt_seconds": core.seconds(
            "First transmission of the OPTIONS request to its final response, UDP "
            "retransmissions included."
        ),
        "status_code": core.gauge("The final SIP response's status code.", 200, 699),
        "retransmissions": core.gauge("OPTIONS requests resent over UDP in this run.", 0),
        **DIAL_METRICS,
    },
    doc=__doc__ or "",
    parse_target=functools.partial(parse_address, default_port=DEFAULT_PORTS["udp"]),
)
