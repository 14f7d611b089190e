"""TCP connect, with an optional TLS handshake.

Target address: ``host:port``; an IPv6 literal goes in brackets, ``[2001:db8::1]:443``. The host
may be a name (resolved with the system resolver, bounded by the timeout). When a name has
several addresses they are tried in order until one connects.

Metrics:
- ``connect_seconds``: time of the TCP three-way handshake to the address that answered.
- ``tls_handshake_seconds``: time of the TLS handshake (``tls: true``).
- ``cert_expiry_seconds``: seconds until the server certificate's notAfter (negative when
  expired). Always reported when verification is on; with ``verify: false`` it needs the
  optional ``cryptography`` package to read the unverified certificate.

Info: ``address`` (the IP that answered), ``tls_version``, ``error``.

Reasons: ``refused``, ``timeout``, ``unreachable``, ``resolve_failed``, ``source_unavailable``
(the ``source`` address or the ``interface`` is not on this host, e.g. its WAN link is down),
``tls_error``, ``tls_expired`` (verification failed because the certificate has expired). With
``verify: false`` nothing about the certificate is judged: the collector reads
``cert_expiry_seconds``.

``interface`` pins the connection to one network interface (``SO_BINDTODEVICE``, Linux), so
that a ward's fibre and backup lines are probed separately whatever the routing table prefers:
the same target, one check per line, told apart by a ``line`` label. With ``source`` too, the
connection leaves from that address on that interface.

Privileges: none; ``interface`` needs CAP_NET_RAW on Linux before 5.7 (later kernels let any
user pin a socket that is not pinned yet).

"""

from __future__ import annotations

import time

from checks import core
from checks._dial import (
    DIAL_METRICS,
    DIAL_REASONS,
    TlsParams,
    context_for,
    reach,
    target_address,
)
from checks._net import Interface, parse_address
from checks.core import Outcome, Target

REASONS = DIAL_REASONS


class Params(TlsParams):
    tls: bool = False
    interface: Interface | None = None


def probe(target: Target, params: Params, timeout: float) -> Outcome:
    deadline = time.monotonic() + timeout
    host, port = target_address(target.address)
    return reach(
        host,
        port,
        params,
        deadline,
        interface=params.interface,
        tls=context_for(params.verify, params.ca_file) if params.tls else None,
        server_name=params.server_name,
    )


CHECK = core.CheckType(
    params=Params,
    probe=probe,
    reasons=REASONS,
    metrics=DIAL_METRICS,
    doc=__doc__ or "",
    parse_target=parse_address,
)
