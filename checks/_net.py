"""The network toolkit every network check shares: addresses, name resolution with a time limit,
pinning a socket to a line (interface and source), TLS contexts and certificate facts, and the
mapping from socket errors to failure reasons.

Not a check: probes import this module and ``checks.core``, never each other.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import os
import socket
import ssl
import threading
import time
from typing import Annotated, Any, Literal

from pydantic import AfterValidator

from checks.core import ERROR, TIMEOUT

REFUSED = "refused"
UNREACHABLE = "unreachable"
RESOLVE_FAILED = "resolve_failed"
SOURCE_UNAVAILABLE = "source_unavailable"
# Not a tcp reason: the raw-socket line checks that pin() a socket may need it.
PERMISSION_DENIED = "permission_denied"
TLS_ERROR = "tls_error"
TLS_EXPIRED = "tls_expired"


Family = Literal["auto", "4", "6"]
_FAMILIES = {"auto": socket.AF_UNSPEC, "4": socket.AF_INET, "6": socket.AF_INET6}

# OpenSSL's X509_V_ERR_CERT_HAS_EXPIRED: the one verification failure with its own reason.
_X509_CERT_HAS_EXPIRED = 10

_UNREACHABLE_ERRNOS = frozenset(
    {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN}
)

# Longest network interface name Linux accepts (IFNAMSIZ less the terminating NUL).
MAX_INTERFACE_NAME = 15


def _interface_name(value: str) -> str:
    # The kernel's own rule (dev_valid_name), so a typo fails at config load, not at 3 a.m.
    if not 0 < len(value.encode()) <= MAX_INTERFACE_NAME:
        raise ValueError(f"interface {value!r}: must be 1 to {MAX_INTERFACE_NAME} bytes")
    if value in {".", ".."} or any(c in "/:" or c.isspace() for c in value):
        raise ValueError(f"interface {value!r}: not a network interface name")
    return value


Interface = Annotated[str, AfterValidator(_interface_name)]


def family_from_number(value: Any) -> Any:
    """YAML writes ``family: 4`` as an int; accept it as the word ``"4"``."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class ResolveError(Exception):
    pass


def parse_address(address: str, default_port: int | None = None) -> tuple[str, int]:
    """Split ``host:port`` / ``[v6]:port`` (or a bare host when ``default_port`` is given)."""
    text = address.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError(f"address {address!r}: missing ']' after the IPv6 literal")
        if not rest:
            port_text = None
        elif rest.startswith(":"):
            port_text = rest[1:]
        else:
            raise ValueError(f"address {address!r}: expected ':port' after ']'")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif text.count(":") > 1:
        raise ValueError(f"address {address!r}: write an IPv6 address as [addr]:port")
    else:
        host, port_text = text, None
    if not host:
        raise ValueError(f"address {address!r}: empty host")
    if port_text is None:
        if default_port is None:
            raise ValueError(f"address {address!r}: expected host:port")
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"address {address!r}: port must be 1..65535")
    return host, int(port_text)


def resolve(
    host: str,
    port: int,
    family: Family,
    timeout: float,
    socktype: int,
    source: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None,
) -> list[tuple[int, Any]]:
    """``getaddrinfo`` with a time limit, as ``[(family, sockaddr), ...]``; with ``source``,
    only the addresses of the source's family (a probe bound to it can reach no other).

    getaddrinfo itself cannot be cancelled, so a name lookup runs in a daemon thread that is
    abandoned when the time is up.
    """
    addrs = _lookup(host, port, _FAMILIES[family], timeout, socktype)
    if source is None:
        return addrs
    want = socket.AF_INET if source.version == 4 else socket.AF_INET6
    addrs = [a for a in addrs if a[0] == want]
    if not addrs:
        raise ResolveError(f"{host}: no IPv{source.version} address for the source")
    return addrs


def _lookup(host: str, port: int, fam: int, timeout: float, socktype: int) -> list[tuple[int, Any]]:
    try:
        ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        literal = False
    else:
        literal = True
    if literal:
        try:
            infos = socket.getaddrinfo(host, port, fam, socktype, 0, socket.AI_NUMERICHOST)
        except socket.gaierror as exc:
            raise ResolveError(f"{host}: {exc.strerror}") from exc
        return [(info[0], info[4]) for info in infos]

    box: dict[str, Any] = {}

    def lookup() -> None:
        try:
            box["infos"] = socket.getaddrinfo(host, port, fam, socktype)
        except OSError as exc:
            box["error"] = exc

    worker = threading.Thread(target=lookup, name=f"resolve-{host}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise ResolveError(f"{host}: no answer from the resolver within {timeout:.3g} s")
    if "error" in box:
        err = box["error"]
        raise ResolveError(f"{host}: {getattr(err, 'strerror', None) or err}")
    seen: list[tuple[int, Any]] = []
    for info in box["infos"]:
        item = (info[0], info[4])
        if item not in seen:
            seen.append(item)
    if not seen:
        raise ResolveError(f"{host}: no address")
    return seen


def oserror_reason(exc: BaseException) -> str:
    """The failure reason for a socket error from connect/send."""
    if isinstance(exc, TimeoutError | socket.timeout):
        return TIMEOUT
    if isinstance(exc, ConnectionRefusedError):
        return REFUSED
    if isinstance(exc, OSError):
        if exc.errno in _UNREACHABLE_ERRNOS:
            return UNREACHABLE
        if exc.errno in {errno.EADDRNOTAVAIL, errno.ENODEV}:
            return SOURCE_UNAVAILABLE
    return ERROR


def bind_device(sock: socket.socket, interface: str) -> None:
    """Pin ``sock`` to one network interface; call it before bind and connect.

    Raises OSError with a message that names the interface: ENODEV when there is no such
    interface, EPERM when the kernel wants CAP_NET_RAW for it.
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
    except OSError as exc:
        if exc.errno == errno.ENODEV:
            why = "no such network interface on this host"
        elif exc.errno in {errno.EPERM, errno.EACCES}:
            why = "pinning a socket to an interface needs CAP_NET_RAW on this kernel"
        else:
            why = exc.strerror or str(exc)
        raise OSError(exc.errno, f"interface {interface}: {why}") from exc


def pin(
    sock: socket.socket,
    interface: str | None,
    source: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
) -> tuple[str, str] | None:
    """Pin ``sock`` to a line (interface, then source address) before it sends anything.

    Returns None, or the failure as (reason, message) for the check's Outcome.
    """
    if interface is not None:
        try:
            bind_device(sock, interface)
        except OSError as exc:
            reason = {
                errno.ENODEV: SOURCE_UNAVAILABLE,
                errno.EPERM: PERMISSION_DENIED,
                errno.EACCES: PERMISSION_DENIED,
            }.get(exc.errno or 0, ERROR)
            return reason, str(exc.strerror)
    if source is not None:
        try:
            sock.bind((str(source), 0))
        except OSError as exc:
            reason = SOURCE_UNAVAILABLE if exc.errno == errno.EADDRNOTAVAIL else ERROR
            return reason, f"bind {source}: {exc}"
    return None


def ssl_reason(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_code == _X509_CERT_HAS_EXPIRED:
        return TLS_EXPIRED
    return TLS_ERROR


def cert_not_after(ssl_object: Any) -> float | None:
    """The peer certificate's notAfter as epoch seconds, or None when it can't be read."""
    verified = ssl_object.getpeercert()
    if verified and "notAfter" in verified:
        return float(ssl.cert_time_to_seconds(str(verified["notAfter"])))
    # Positional: httpcore hands out the C-level _ssl._SSLSocket, which takes no keywords.
    der = ssl_object.getpeercert(True)
    if not der:
        return None
    try:
        from cryptography import x509
    except ImportError:
        return None
    return x509.load_der_x509_certificate(der).not_valid_after_utc.timestamp()


def expiry_metrics(not_after: float | None) -> dict[str, float]:
    if not_after is None:
        return {}
    left = not_after - time.time()
    return {"cert_expiry_seconds": left}


def tls_context(verify: bool, ca_file: str | None) -> ssl.SSLContext:
    # Loading the CA store costs ~20 ms of CPU, more than the rest of an HTTPS check: build
    # each context once and share it (client contexts are not mutated after this point). The
    # CA file's mtime is part of the key so a replaced bundle is picked up.
    mtime = os.stat(ca_file).st_mtime_ns if ca_file else 0
    return _tls_context(verify, ca_file, mtime)


@functools.lru_cache(maxsize=32)
def _tls_context(verify: bool, ca_file: str | None, _mtime: int) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca_file) if verify else ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
