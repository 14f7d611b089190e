"""scanner_escl against a local HTTP(S) server serving eSCL documents.

No real eSCL server can be installed here (no Debian package or PyPI program emulates an
AirScan scanner), so the server is a small stand-in that serves the documents in
tests/data/escl: a ScannerCapabilities and ScannerStatus documents in several states, written
after the structure of the examples in the Mopria eSCL Scan Technical Specification. The
check's HTTP, TLS and XML handling all run for real against it; the first path segment picks
the scanner state (``/adf-jam/eSCL/ScannerStatus`` serves ScannerStatus-adf-jam.xml).
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from checks.scanner_escl import escl_root
from tests.checks.conftest import Certs, RunCheck, TLSServer
from tests.helpers import ROOT

DOCS = ROOT / "tests" / "data" / "escl"


class Escl(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, kind: str = "text/xml") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        parts = self.path.strip("/").split("/")
        state = "idle" if parts[0].lower() == "escl" else parts[0]
        document = parts[-1]
        if state == "missing":
            self._send(404, b"not found", "text/plain")
        elif state == "html":
            self._send(200, b"<html><body>Printer home page</body></html>", "text/html")
        elif state == "garbage":
            self._send(200, b"State: Idle\n", "text/plain")
        elif state == "huge":
            self._send(200, b"<a>" + b" " * (300 * 1024) + b"</a>")
        elif document == "ScannerCapabilities":
            self._send(200, (DOCS / "ScannerCapabilities.xml").read_bytes())
        elif document == "ScannerStatus" and (DOCS / f"ScannerStatus-{state}.xml").exists():
            self._send(200, (DOCS / f"ScannerStatus-{state}.xml").read_bytes())
        else:
            self._send(404, b"unknown", "text/plain")


def _serve(server: ThreadingHTTPServer) -> Callable[[], None]:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop


@pytest.fixture(scope="module")
def scanner() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Escl)
    server.daemon_threads = True
    stop = _serve(server)
    yield f"http://127.0.0.1:{server.server_address[1]}"
    stop()


@pytest.fixture(scope="module")
def tls_scanner(certs: Certs) -> Iterator[str]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*certs.valid)
    server = TLSServer(("127.0.0.1", 0), ctx)
    server.RequestHandlerClass = Escl
    stop = _serve(server)
    yield f"https://localhost:{server.server_address[1]}"
    stop()


def test_idle_with_a_loaded_feeder(run: RunCheck, scanner: str) -> None:
    r = run("scanner_escl", scanner)
    assert (r.success, r.reason) == (True, "ok"), r.info
    m = r.metrics
    assert (m["scanner_state"], m["adf_present"], m["adf_loaded"]) == (3, 1, 1)
    assert m["request_seconds"] > 0
    assert r.info == {
        "state": "Idle",
        "adf_state": "ScannerAdfLoaded",
        "make_and_model": "Canon iR-ADV C3530",
        "serial_number": "QUAY1-0042",
        "escl_version": "2.63",
    }


@pytest.mark.parametrize(
    ("state", "success", "reason", "scanner_state"),
    [
        ("processing", True, "ok", 4),
        ("adf-empty", True, "ok", 3),
        ("stopped", False, "stopped", 5),
        ("down", False, "down", 7),
        ("adf-jam", False, "adf_jam", 3),
        ("adf-mispick", False, "adf_jam", 3),
        ("adf-hatch-open", False, "adf_door_open", 3),
    ],
)
def test_states(
    run: RunCheck, scanner: str, state: str, success: bool, reason: str, scanner_state: int
) -> None:
    r = run("scanner_escl", f"{scanner}/{state}/eSCL")
    assert (r.success, r.reason) == (success, reason), r.info
    assert r.metrics["scanner_state"] == scanner_state


def test_adf_state_is_optional(run: RunCheck, scanner: str) -> None:
    r = run("scanner_escl", f"{scanner}/down/eSCL")
    assert "adf_loaded" not in r.metrics and "adf_state" not in r.info


def test_entities_are_refused_before_expansion(run: RunCheck, scanner: str) -> None:
    r = run("scanner_escl", f"{scanner}/entities/eSCL")
    assert (r.success, r.reason) == (False, "bad_response"), r.info
    assert "DTDForbidden" in r.info["error"]
    assert "lollol" not in repr(r.as_dict())


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("missing", "HTTP 404"),
        ("html", "the document is a html"),
        ("garbage", "not XML"),
        ("huge", "more than 262144 bytes"),
        ("nosuchstate", "HTTP 404"),
    ],
)
def test_bad_responses(run: RunCheck, scanner: str, path: str, says: str) -> None:
    r = run("scanner_escl", f"{scanner}/{path}/eSCL")
    assert (r.success, r.reason) == (False, "bad_response"), r.info
    assert says in r.info["error"]


def test_https(run: RunCheck, tls_scanner: str, certs: Certs) -> None:
    r = run("scanner_escl", tls_scanner, ca_file=str(certs.ca))
    assert (r.success, r.reason) == (True, "ok"), r.info
    r = run("scanner_escl", tls_scanner)  # the test CA is not trusted by the system
    assert (r.success, r.reason) == (False, "tls_error"), r.info
    assert run("scanner_escl", tls_scanner, verify=False).success


def test_refused_and_timeout(run: RunCheck, closed_port: int, silent_port: int) -> None:
    r = run("scanner_escl", f"http://127.0.0.1:{closed_port}")
    assert (r.success, r.reason) == (False, "refused")
    r = run("scanner_escl", f"http://127.0.0.1:{silent_port}", timeout=1.0)
    assert (r.success, r.reason) == (False, "timeout")


def test_plain_http_to_a_tls_port(run: RunCheck, tls_scanner: str) -> None:
    # The server drops the connection when the handshake fails: the answer is not HTTP.
    r = run("scanner_escl", tls_scanner.replace("https://", "http://"), timeout=2.0)
    assert (r.success, r.reason) == (False, "bad_response"), r.info


def test_escl_root() -> None:
    assert escl_root("http://10.0.0.5:8080") == "http://10.0.0.5:8080/eSCL"
    assert escl_root("https://scanner.local/escl/") == "https://scanner.local/escl"
    assert escl_root("http://[::1]:8080/") == "http://[::1]:8080/eSCL"
    for bad, says in (("ftp://x/", "scheme"), ("http:///eSCL", "no host")):
        with pytest.raises(ValueError, match=says):
            escl_root(bad)
