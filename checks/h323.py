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

import functools
import time

from checks import core
from checks._dial import CONNECT_METRICS, CONNECT_REASONS, SourceParams, reach, target_address
from checks._net import parse_address
from checks.core import Outcome, Target

REASONS = CONNECT_REASONS

DEFAULT_PORT = 1720


class Params(SourceParams):
    pass


def probe(target: Target, params: Params, timeout: float) -> Outcome:
    host, port = target_address(target.address, DEFAULT_PORT)
    return reach(host, port, params, time.monotonic() + timeout)


CHECK = core.CheckType(
    params=Params,
    probe=probe,
    reasons=REASONS,
    metrics=CONNECT_METRICS,
    doc=__doc__ or "",
    parse_target=functools.partial(parse_address, default_port=DEFAULT_PORT),
)
