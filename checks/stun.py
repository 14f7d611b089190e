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
- ``connect_seconds``, ``tls_handshake_seconds``, ``cert_expiry_seconds`` over
  TCP/TLS, as in the tcp check.

Info: ``mapped_address`` (``ip:port`` from XOR-MAPPED-ADDRESS, or MAPPED-ADDRESS from an old
RFC 3489 server), ``address`` (the server IP), ``software`` (its SOFTWARE attribute),
``error_text``, ``tls_version``, ``error``.

Reasons: ``timeout``, ``bad_response`` (something came back that is not a STUN response to
this request; over UDP only reported when nothing valid came before the deadline),
``error_response`` (the server answered with an error), ``refused`` (TCP refused, or ICMP port
unreachable over UDP), ``unreachable``, ``resolve_failed``, ``source_unavailable``,
``tls_error``, ``tls_expired``.

Privileges: none. Needs the ``aioice`` package (imported only when the check runs).
"""

from __future__ import annotations

import functools
import time

from checks import core
from checks._dial import carrying, peer_text
from checks._net import parse_address
from checks._stun import (
    BAD_RESPONSE,
    DEFAULT_PORTS,
    ERROR_RESPONSE,
    STUN_METRICS,
    STUN_REASONS,
    Session,
    StunParams,
    address_text,
    error_of,
)
from checks.core import CheckFailed, Outcome, Target

REASONS = STUN_REASONS


class Params(StunParams):
    pass


def probe(target: Target, params: Params, timeout: float) -> Outcome:
    from aioice import stun

    deadline = time.monotonic() + timeout
    session = Session.open(target.address, params, deadline)
    metrics = dict(session.link.metrics)
    info = dict(session.link.info)
    request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    request.add_fingerprint()
    with carrying(metrics, info):
        try:
            reply = session.transact(request)
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
        message_text = f"error response {code} {text}".rstrip()
        raise CheckFailed(ERROR_RESPONSE, message_text, metrics, **info)
    mapped = message.attributes.get("XOR-MAPPED-ADDRESS") or message.attributes.get(
        "MAPPED-ADDRESS"
    )
    if mapped is None:
        raise CheckFailed(
            BAD_RESPONSE, "success response without a mapped address", metrics, **info
        )
    info["mapped_address"] = address_text(mapped)
    return Outcome(True, metrics=metrics, info=info)


CHECK = core.CheckType(
    params=Params,
    probe=probe,
    reasons=REASONS,
    metrics=STUN_METRICS,
    doc=__doc__ or "",
    parse_target=functools.partial(parse_address, default_port=DEFAULT_PORTS["udp"]),
)
