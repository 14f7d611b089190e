"""H.323 call signalling reachability: a TCP connect to the H.225 port (1720).

Target address: ``host[:port]``, port 1720 by default; an IPv6 literal goes in brackets.

The check connects and closes, sending nothing: an H.323 MCU or gateway that accepts the
connection on its call-signalling port is listening; whether it would accept a call is not
judged (that needs a Q.931 SETUP with ASN.1 PER-encoded H.225 content, and a peer to test it
against: Debian 12 ships no H.323 gatekeeper or endpoint, GnuGk left it years ago). It is the
tcp check with H.323's default port.

Metrics: ``connect_seconds`` (the TCP three-way handshake).

Info: ``address`` (the IP that answered), ``error``.

Reasons: ``refused``, ``timeout``, ``unreachable``, ``resolve_failed``, ``source_unavailable``.

Privileges: none.
"""

from __future__ import annotations

from pydantic import IPvAnyAddress, field_validator

from checks import core, tcp
from checks._net import (
    REFUSED,
    RESOLVE_FAILED,
    SOURCE_UNAVAILABLE,
    UNREACHABLE,
    Family,
    family_from_number,
    parse_address,
)
from checks.core import ERROR, TIMEOUT, Outcome, Target
from checks.sip import host_port

REASONS = frozenset({REFUSED, TIMEOUT, UNREACHABLE, RESOLVE_FAILED, SOURCE_UNAVAILABLE})

DEFAULT_PORT = 1720


class Params(core.Params):
    source: IPvAnyAddress | None = None
    family: Family = "auto"

    _family_number = field_validator("family", mode="before")(family_from_number)


def probe(target: Target, params: Params, timeout: float) -> Outcome:
    try:
        host, port = parse_address(target.address, DEFAULT_PORT)
    except ValueError as exc:
        return Outcome(False, ERROR, info={"error": str(exc)})
    address = host_port(host, port)
    connect = tcp.Params(source=params.source, family=params.family)
    return tcp.probe(Target(target.name, address, target.labels), connect, timeout)
