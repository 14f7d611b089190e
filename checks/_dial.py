"""One way to open a connection for every check that talks to a server: resolve, pin to a line,
connect, TLS handshake, each failure raised as :class:`~checks.core.CheckFailed` with its reason.

Also what those checks share around it: the params of where a connection leaves from and how
its TLS is judged, the connect and certificate metrics, the failure reason under an httpx
error, and text from a peer made safe to show.

Not a check: probes import this module, ``checks._net`` and ``checks.core``, never each other.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal, Self
from urllib.parse import SplitResult, urlsplit

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
from checks.core import ERROR, TIMEOUT, CheckFailed

MAX_PEER_TEXT = 128
_UNPRINTABLE = re.compile(r"[^\x20-\x7e\u00a0-\uffff]")

Transport = Literal["udp", "tcp", "tls"]

# What a dial can end with: without TLS, and with it.
CONNECT_REASONS = frozenset({REFUSED, TIMEOUT, UNREACHABLE, RESOLVE_FAILED, SOURCE_UNAVAILABLE})
DIAL_REASONS = CONNECT_REASONS | {TLS_ERROR, TLS_EXPIRED}


# ---- params --------------------------------------------------------------------------------


class SourceParams(core.Params):
    """Where a connection leaves from: a local address, and which address family to use."""

    source: IPvAnyAddress | None = None
    family: Family = "auto"

    _family_number = field_validator("family", mode="before")(family_from_number)


class TlsParams(SourceParams):
    """How a TLS peer is judged: ``verify`` against ``ca_file`` (or the system store), as
    ``server_name`` (or the target's host)."""

    verify: bool = True
    ca_file: str | None = Field(default=None, min_length=1)
    server_name: str | None = Field(default=None, min_length=1, max_length=253)


class TransportParams(TlsParams):
    """A check that speaks over UDP, TCP or TLS (sip, stun, turn)."""

    transport: Transport = "udp"

    @model_validator(mode="after")
    def _tls_options(self) -> Self:
        if self.transport != "tls" and (
            self.ca_file is not None or self.server_name is not None or not self.verify
        ):
            raise ValueError("verify, ca_file and server_name apply to transport: tls only")
        return self


# ---- metrics -------------------------------------------------------------------------------

CONNECT_METRICS: Mapping[str, core.Metric] = {
    "connect_seconds": core.seconds(
        "Time of the TCP three-way handshake to the server address that answered."
    ),
}

CERT_METRICS: Mapping[str, core.Metric] = {
    "cert_expiry_seconds": core.gauge(
        "Seconds until the server certificate's notAfter; negative once it has expired."
    ),
}

DIAL_METRICS: Mapping[str, core.Metric] = {
    **CONNECT_METRICS,
    "tls_handshake_seconds": core.seconds("Time of the TLS handshake after the TCP connect."),
    **CERT_METRICS,
}


# ---- dialling ------------------------------------------------------------------------------


@dataclass
class Link:
    """A connected socket (a datagram socket is connected too, to hear ICMP errors).

    ``metrics`` holds ``connect_seconds`` (streams) and the TLS facts; ``info`` the address
    that answered and the TLS version.
    """

    sock: socket.socket
    host: str
    port: int
    address: str
    stream: bool
    metrics: dict[str, float] = field(default_factory=dict)
    info: dict[str, str] = field(default_factory=dict)

    def close(self) -> None:
        self.sock.close()


def target_address(address: str, default_port: int | None = None) -> tuple[str, int]:
    """``parse_address`` for a probe: a bad target is the check's ``error``."""
    try:
        return parse_address(address, default_port)
    except ValueError as exc:
        raise CheckFailed(ERROR, str(exc)) from None


def parse_url(address: str) -> SplitResult:
    """An ``http://`` or ``https://`` URL with a host; ValueError says what is wrong."""
    parts = urlsplit(address.strip())
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"address {address!r}: the scheme must be http or https")
    if not parts.hostname:
        raise ValueError(f"address {address!r}: no host")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError(f"address {address!r}: port must be 1..65535")
    return parts


def context_for(verify: bool, ca_file: str | None) -> ssl.SSLContext:
    """``tls_context``, with an unreadable ``ca_file`` raised as the check's ``error``."""
    try:
        return tls_context(verify, ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise CheckFailed(ERROR, f"ca_file {ca_file}: {exc}") from None


def dial(
    host: str,
    port: int,
    *,
    stream: bool,
    family: Family,
    source: IPvAnyAddress | None,
    deadline: float,
    interface: str | None = None,
    tls: ssl.SSLContext | None = None,
    server_name: str | None = None,
) -> Link:
    """Resolve ``host``, pin, connect and (with ``tls``) handshake, all by ``deadline``.

    Stream addresses are tried in turn until one connects; a datagram "connect" tells nothing
    about the peer, so only the first address is used. Raises CheckFailed with the reason.
    """
    kind = socket.SOCK_STREAM if stream else socket.SOCK_DGRAM
    try:
        addrs = resolve(host, port, family, max(deadline - time.monotonic(), 0.001), kind, source)
    except ResolveError as exc:
        raise CheckFailed(RESOLVE_FAILED, str(exc)) from None
    if not stream:
        addrs = addrs[:1]

    failure = CheckFailed(TIMEOUT, f"no address of {host} tried in time")
    for fam, sockaddr in addrs:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock = socket.socket(fam, kind)
        keep = False
        try:
            sock.settimeout(remaining)
            _pin(sock, interface, source)
            t0 = time.perf_counter()
            try:
                sock.connect(sockaddr)
            except OSError as exc:
                failure = CheckFailed(
                    oserror_reason(exc),
                    f"connect {sockaddr[0]} port {port}: {exc.strerror or 'timed out'}",
                    address=sockaddr[0],
                )
                continue
            link = Link(sock, host, port, sockaddr[0], stream, info={"address": sockaddr[0]})
            if stream:
                link.metrics["connect_seconds"] = time.perf_counter() - t0
            if tls is not None:
                link.sock = _handshake(link, tls, server_name or host, deadline)
            keep = True
            return link
        finally:
            if not keep:
                sock.close()
    raise failure


def open_link(
    address: str, params: TransportParams, default_ports: Mapping[str, int], deadline: float
) -> Link:
    """Dial a target over the check's ``transport``, with its port defaulting per transport."""
    host, port = target_address(address, default_ports[params.transport])
    tls = params.transport == "tls"
    return dial(
        host,
        port,
        stream=params.transport != "udp",
        family=params.family,
        source=params.source,
        deadline=deadline,
        tls=context_for(params.verify, params.ca_file) if tls else None,
        server_name=params.server_name,
    )


def reach(
    host: str,
    port: int,
    params: SourceParams,
    deadline: float,
    *,
    interface: str | None = None,
    tls: ssl.SSLContext | None = None,
    server_name: str | None = None,
) -> core.Outcome:
    """Connect (and handshake), then close: the whole work of a reachability check."""
    link = dial(
        host,
        port,
        stream=True,
        family=params.family,
        source=params.source,
        deadline=deadline,
        interface=interface,
        tls=tls,
        server_name=server_name,
    )
    link.close()
    return core.Outcome(True, metrics=link.metrics, info=link.info)


def _pin(sock: socket.socket, interface: str | None, source: IPvAnyAddress | None) -> None:
    # Failing to pin fails every address alike: raised at once, not tried again.
    if interface is not None:
        try:
            bind_device(sock, interface)
        except OSError as exc:
            raise CheckFailed(oserror_reason(exc), str(exc.strerror)) from None
    if source is not None:
        try:
            sock.bind((str(source), 0))
        except OSError as exc:
            raise CheckFailed(
                oserror_reason(exc), f"bind {source}: {exc.strerror or exc}"
            ) from None


def _handshake(link: Link, ctx: ssl.SSLContext, server_name: str, deadline: float) -> ssl.SSLSocket:
    link.sock.settimeout(max(deadline - time.monotonic(), 0.001))
    t0 = time.perf_counter()
    tls = ctx.wrap_socket(link.sock, server_hostname=server_name, do_handshake_on_connect=False)
    try:
        tls.do_handshake()
    except ssl.SSLError as exc:
        tls.close()
        raise CheckFailed(ssl_reason(exc), f"tls: {exc}", link.metrics, **link.info) from None
    except OSError as exc:
        tls.close()
        reason = TIMEOUT if oserror_reason(exc) == TIMEOUT else TLS_ERROR
        message = f"tls: {exc.strerror or exc or 'timed out'}"
        raise CheckFailed(reason, message, link.metrics, **link.info) from None
    link.metrics["tls_handshake_seconds"] = time.perf_counter() - t0
    link.metrics.update(expiry_metrics(cert_not_after(tls)))
    link.info["tls_version"] = tls.version() or ""
    return tls


# ---- failures ------------------------------------------------------------------------------


@contextmanager
def carrying(metrics: Mapping[str, float], info: Mapping[str, str]) -> Iterator[None]:
    """A CheckFailed raised inside also carries what was measured so far (read at the end,
    so values set in an inner ``finally`` come along)."""
    try:
        yield
    except CheckFailed as exc:
        exc.metrics = {**metrics, **exc.metrics}
        exc.info = {**info, **exc.info}
        raise


def cause_reason(exc: BaseException) -> tuple[str, str]:
    """Walk the exception chain (of an httpx error, say) to the dial, socket or TLS failure
    under it: its reason and message, or ``error`` and the exception's own text."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            break
        if isinstance(seen, CheckFailed):
            return seen.reason, seen.message
        if isinstance(seen, ssl.SSLError):
            return ssl_reason(seen), f"tls: {seen}"
        if isinstance(seen, socket.gaierror):
            return RESOLVE_FAILED, str(seen.strerror or seen)
        if isinstance(seen, OSError):
            reason = oserror_reason(seen)
            if reason != ERROR:
                return reason, str(seen.strerror or seen)
        seen = seen.__cause__ or seen.__context__
    return ERROR, str(exc) or type(exc).__name__


# ---- text ----------------------------------------------------------------------------------


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def peer_text(value: str) -> str:
    """Text a peer sent, safe to store and show: printable, bounded."""
    return _UNPRINTABLE.sub("?", value.strip())[:MAX_PEER_TEXT]
