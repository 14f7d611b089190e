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
- ``cert_days_left``: the same in days.

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

import socket
import ssl
import time

from pydantic import Field, IPvAnyAddress, field_validator

from checks import core
from checks._net import (
    REFUSED,
    RESOLVE_FAILED,
    SOURCE_UNAVAILABLE,
    TLS_ERROR,
    TLS_EXPIRED,
    UNREACHABLE,
    Family,
    Interface,
    ResolveError,
    bind_device,
    cert_not_after,
    expiry_metrics,
    family_from_number,
    oserror_reason,
    parse_address,
    resolve,
    ssl_reason,
    tls_context,
)
from checks.core import ERROR, TIMEOUT, Outcome, Target

REASONS = frozenset(
    {REFUSED, TIMEOUT, UNREACHABLE, RESOLVE_FAILED, SOURCE_UNAVAILABLE, TLS_ERROR, TLS_EXPIRED}
)


class Params(core.Params):
    tls: bool = False
    server_name: str | None = Field(default=None, min_length=1, max_length=253)
    verify: bool = True
    ca_file: str | None = Field(default=None, min_length=1)
    source: IPvAnyAddress | None = None
    interface: Interface | None = None
    family: Family = "auto"

    _family_number = field_validator("family", mode="before")(family_from_number)


def _fail(reason: str, message: str, **info: str) -> Outcome:
    return Outcome(False, reason, info={**info, "error": message})


def probe(target: Target, params: Params, timeout: float) -> Outcome:
    deadline = time.monotonic() + timeout
    try:
        host, port = parse_address(target.address)
    except ValueError as exc:
        return _fail(ERROR, str(exc))
    try:
        addrs = resolve(host, port, params.family, timeout, socket.SOCK_STREAM, params.source)
    except ResolveError as exc:
        return _fail(RESOLVE_FAILED, str(exc))

    failure = _fail(TIMEOUT, f"no address of {host} tried within {timeout:g} s")
    for fam, sockaddr in addrs:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock = socket.socket(fam, socket.SOCK_STREAM)
        try:
            sock.settimeout(remaining)
            if params.interface is not None:
                try:
                    bind_device(sock, params.interface)
                except OSError as exc:
                    return _fail(oserror_reason(exc), str(exc.strerror))
            if params.source is not None:
                try:
                    sock.bind((str(params.source), 0))
                except OSError as exc:
                    return _fail(oserror_reason(exc), f"bind {params.source}: {exc.strerror}")
            t0 = time.perf_counter()
            try:
                sock.connect(sockaddr)
            except OSError as exc:
                failure = _fail(
                    oserror_reason(exc),
                    f"connect {sockaddr[0]} port {port}: {exc.strerror or 'timed out'}",
                    address=sockaddr[0],
                )
                continue
            metrics = {"connect_seconds": time.perf_counter() - t0}
            info = {"address": sockaddr[0]}
            if not params.tls:
                return Outcome(True, metrics=metrics, info=info)
            return _handshake(sock, params, params.server_name or host, deadline, metrics, info)
        finally:
            sock.close()
    return failure


def _handshake(
    sock: socket.socket,
    params: Params,
    server_name: str,
    deadline: float,
    metrics: dict[str, float],
    info: dict[str, str],
) -> Outcome:
    try:
        ctx = tls_context(params.verify, params.ca_file)
    except (OSError, ssl.SSLError) as exc:
        return Outcome(False, ERROR, metrics, {**info, "error": f"ca_file {params.ca_file}: {exc}"})
    sock.settimeout(max(deadline - time.monotonic(), 0.001))
    t0 = time.perf_counter()
    try:
        with ctx.wrap_socket(
            sock, server_hostname=server_name, do_handshake_on_connect=False
        ) as tls:
            tls.do_handshake()
            metrics["tls_handshake_seconds"] = time.perf_counter() - t0
            metrics.update(expiry_metrics(cert_not_after(tls)))
            info["tls_version"] = tls.version() or ""
    except ssl.SSLError as exc:
        return Outcome(False, ssl_reason(exc), metrics, {**info, "error": f"tls: {exc}"})
    except OSError as exc:
        reason = oserror_reason(exc)
        return Outcome(
            False,
            TIMEOUT if reason == TIMEOUT else TLS_ERROR,
            metrics,
            {**info, "error": f"tls: {exc.strerror or exc or 'timed out'}"},
        )
    return Outcome(True, metrics=metrics, info=info)
