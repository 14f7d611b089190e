"""Shared fixtures for the check tests: certificates, HTTP(S) servers, silent and closed ports.

Every server listens on loopback only and is stopped by the fixture that started it.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from checks.core import Result, Target, run_check
from checks.registry import REGISTRY
from tests.helpers import need

PAGE = "<html><body>Phường Bến Thành: sẵn sàng (ready)</body></html>".encode()


@pytest.fixture(scope="session")
def ipv6_loopback() -> None:
    """Skip when this host has no ::1."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("this host has no IPv6 loopback")


RunCheck = Callable[..., Result]


@pytest.fixture
def run() -> RunCheck:
    """Run a check the way the agent does: validated params, the registry entry, the runner."""

    def go(check: str, address: str, timeout: float = 5.0, **params: Any) -> Result:
        kind = REGISTRY[check]
        return run_check(
            check, kind, Target("t", address), kind.params.model_validate(params), timeout
        )

    return go


# ---- certificates --------------------------------------------------------------------------


@dataclass(frozen=True)
class Certs:
    ca: Path
    valid: tuple[Path, Path]
    expired: tuple[Path, Path]
    self_signed: tuple[Path, Path]


def _write_pair(directory: Path, name: str, cert: Any, key: Any) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization

    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _make_certs(directory: Path) -> Certs:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    day = datetime.timedelta(days=1)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("wardready test CA"))
        .issuer_name(name("wardready test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - day)
        .not_valid_after(now + 365 * day)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = directory / "ca.pem"
    _write_pair(directory, "ca", ca_cert, ca_key)

    def leaf(
        start: datetime.datetime, end: datetime.datetime, self_signed: bool
    ) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        issuer_key = key if self_signed else ca_key
        issuer = name("localhost") if self_signed else ca_cert.subject
        builder = (
            x509.CertificateBuilder()
            .subject_name(name("localhost"))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                        x509.IPAddress(ipaddress.ip_address("::1")),
                    ]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
            )
        )
        return builder.sign(issuer_key, hashes.SHA256()), key

    return Certs(
        ca=ca_path,
        valid=_write_pair(directory, "valid", *leaf(now - day, now + 30 * day, False)),
        expired=_write_pair(directory, "expired", *leaf(now - 60 * day, now - 2 * day, False)),
        self_signed=_write_pair(directory, "self", *leaf(now - day, now + 30 * day, True)),
    )


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    try:
        import cryptography  # noqa: F401
    except ImportError:
        need(False, "the cryptography package is not installed (needed to make test certificates)")
    return _make_certs(tmp_path_factory.mktemp("certs"))


# ---- HTTP servers --------------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path = self.path.partition("?")[0]
        if path == "/":
            self._send(200, PAGE)
        elif path == "/missing":
            self._send(404, b"not here")
        elif path == "/redirect":
            self._send(302, b"", {"Location": "/"})
        elif path == "/loop":
            self._send(302, b"", {"Location": "/loop"})
        elif path == "/echo":
            self._send(200, f"x-ward={self.headers.get('X-Ward', '')}".encode())
        elif path == "/trickle":
            # 40 bytes, one every 50 ms: each read is quick, the whole body is slow.
            self.send_response(200)
            self.send_header("Content-Length", "40")
            self.end_headers()
            for _ in range(40):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.05)
        elif path == "/garbage":
            self.wfile.write(b"THIS IS NOT HTTP\r\n\r\n")
            self.close_connection = True
        else:
            self._send(404, b"unknown")


class TLSServer(ThreadingHTTPServer):
    """Handshakes in the request thread, so a client that gives up never stalls accept()."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext) -> None:
        self.context = context
        super().__init__(address, Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(5)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        super().finish_request(tls, client_address)


class PlainServer(ThreadingHTTPServer):
    daemon_threads = True


def _serve(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    return thread


def _stop(server: ThreadingHTTPServer, thread: threading.Thread) -> None:
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture(scope="session")
def http_url() -> Iterator[str]:
    """Base URL of a plain HTTP server on 127.0.0.1."""
    server = PlainServer(("127.0.0.1", 0), Handler)
    thread = _serve(server)
    yield f"http://127.0.0.1:{server.server_address[1]}"
    _stop(server, thread)


@pytest.fixture(scope="session")
def https_url(certs: Certs) -> Iterator[Callable[[str], str]]:
    """``https_url("valid" | "expired" | "self_signed")``: base URL of an HTTPS server."""
    running: dict[str, tuple[TLSServer, threading.Thread]] = {}

    def start(kind: str) -> str:
        if kind not in running:
            cert, key = getattr(certs, kind)
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(cert, key)
            server = TLSServer(("127.0.0.1", 0), ctx)
            running[kind] = (server, _serve(server))
        return f"https://127.0.0.1:{running[kind][0].server_address[1]}"

    yield start
    for server, thread in running.values():
        _stop(server, thread)


# ---- ports that misbehave ------------------------------------------------------------------


@pytest.fixture
def closed_port() -> int:
    """A loopback TCP port that was free a moment ago: connecting to it is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback TCP port whose listener never accepts: connects succeed, nothing answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield int(s.getsockname()[1])
