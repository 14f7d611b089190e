"""HTTPS with a CA made here: the agent's shipper against a real ``serve --tls-cert`` process.

A server certificate from another CA is refused; with ``--tls-client-ca`` a client without a
certificate is refused; a renewed certificate is served after SIGHUP, or after the files
change, without a restart; a broken renewal keeps the old one.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from agent.shipper import Shipper
from agent.spool import Spool
from checks.core import Result, Target
from collector import tokens, wards
from collector.tls import WATCH_SECONDS
from tests.pki import Ca, issue, make_ca

from .conftest import READY
from .test_api import ROOT, read_line

pytestmark = pytest.mark.sqlite_only(
    "TLS and certificates are under test, not the database (test_api's real server process"
    " ingests on both)"
)


class Server:
    """Starts ``serve`` processes; ``pids`` maps each one's URL to its process id."""

    def __init__(self, start: Callable[..., str]) -> None:
        self.start = start
        self.pids: dict[str, int] = {}

    def __call__(self, *extra: str) -> str:
        return self.start(self, *extra)


@dataclass(frozen=True)
class Pki:
    dir: Path
    city: Ca  # signed the server's certificate
    other: Ca  # signed nothing the server shows
    clients: Ca  # signed the agent's client certificate

    def serving(self) -> tuple[str, ...]:
        return (
            "--tls-cert",
            str(self.dir / "server.pem"),
            "--tls-key",
            str(self.dir / "server.key"),
        )


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    d = tmp_path / "pki"
    d.mkdir()
    found = Pki(d, make_ca(d, "city-ca"), make_ca(d, "other-ca"), make_ca(d, "agents-ca"))
    issue(found.city, d / "server.pem", d / "server.key")
    issue(found.clients, d / "agent.pem", d / "agent.key", "ward-ben-thanh/pc-01", client=True)
    issue(found.other, d / "stranger.pem", d / "stranger.key", "stranger", client=True)
    return found


@pytest.fixture
def serve(db_url: str, profile_path: Path, units_csv: Path, tmp_path: Path) -> Iterator[Server]:
    """Start ``serve`` with the given extra arguments; yields its https:// base URL."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(server: Server, *extra: str) -> str:
        argv = [sys.executable, "-m", "collector", "--db", db_url, "--profile", str(profile_path)]
        argv += ["serve", "--listen", "127.0.0.1:0", "--wards", str(units_csv), *extra]
        log = tmp_path / f"serve{len(procs)}.log"
        with log.open("wb") as err:
            proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=err)
        procs.append(proc)
        line = read_line(proc, 30)
        assert line.startswith("wardready-collector listening on https://127.0.0.1:"), (
            line,
            log.read_text(),
        )
        url = line.rsplit(" ", 1)[-1]
        server.pids[url] = proc.pid
        return url

    yield Server(start)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _shipper(tmp_path: Path, url: str, token: str, **tls: Path) -> Shipper:
    spool = Spool(tmp_path / f"spool-{len(list(tmp_path.glob('spool-*')))}.db", 1000)
    target = Target("gw", "127.0.0.1", {"ward": READY, "role": "wan"})
    spool.append(Result("tcp", "gw", target, time.time(), 0.01, True, "ok", {}), interval=30.0)
    return Shipper(spool, url=url, token=token, ward=READY, agent="pc-01", timeout=5.0, **tls)


def _served_serial(url: str, ca: Path) -> int:
    host, port = url.removeprefix("https://").rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _wait_for_serial(url: str, ca: Path, serial: int, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    seen = _served_serial(url, ca)
    while seen != serial and time.monotonic() < deadline:
        time.sleep(0.2)
        seen = _served_serial(url, ca)
    return seen


def _agent_token(db_url: str, units_csv: Path) -> str:
    from collector import db

    engine = db.make_engine(db_url)
    db.upgrade(engine)
    wards.import_csv(engine, units_csv)
    token = tokens.create(engine, READY, "pc-01")
    engine.dispose()
    return token


def test_agent_ships_over_https_and_refuses_a_stranger_ca(
    serve: Server, pki: Pki, db_url: str, units_csv: Path, tmp_path: Path
) -> None:
    city, other = pki.city, pki.other
    token = _agent_token(db_url, units_csv)
    url = serve(*pki.serving(), "--ingest-rate", "0.001", "--ingest-burst", "2")

    good = _shipper(tmp_path, url, token, ca_file=city.pem)
    outcome = good.push_once()
    assert outcome.ok and outcome.sent == 1, outcome
    assert good.spool.depth() == 0

    # A certificate the agent's CA did not sign: refused before any byte of the batch.
    stranger = _shipper(tmp_path, url, token, ca_file=other.pem)
    outcome = stranger.push_once()
    assert not outcome.ok and "CERTIFICATE_VERIFY_FAILED" in outcome.problem
    assert stranger.spool.depth() == 1
    # Without a CA file the system's CAs are used, and they did not sign it either.
    assert not _shipper(tmp_path, url, token).push_once().ok

    # The rate limit reaches the agent as 429 with Retry-After, which it honours.
    assert good.push_once().ok  # the second of a burst of 2
    limited = good.push_once()
    assert not limited.ok and limited.transient and "429" in limited.problem
    assert limited.retry_after is not None and limited.retry_after >= 1
    for s in (good, stranger):
        s.close()


def test_mtls_refuses_a_client_without_a_certificate(
    serve: Server, pki: Pki, db_url: str, units_csv: Path, tmp_path: Path
) -> None:
    d, city = pki.dir, pki.city
    token = _agent_token(db_url, units_csv)
    url = serve(*pki.serving(), "--tls-client-ca", str(pki.clients.pem))

    bare = _shipper(tmp_path, url, token, ca_file=city.pem)
    outcome = bare.push_once()
    assert not outcome.ok and "unreachable" in outcome.problem, outcome
    assert bare.spool.depth() == 1

    wrong = _shipper(
        tmp_path, url, token, ca_file=city.pem,
        client_cert=d / "stranger.pem", client_key=d / "stranger.key",
    )  # fmt: skip
    assert not wrong.push_once().ok

    good = _shipper(
        tmp_path, url, token, ca_file=city.pem,
        client_cert=d / "agent.pem", client_key=d / "agent.key",
    )  # fmt: skip
    outcome = good.push_once()
    assert outcome.ok and outcome.sent == 1, outcome
    for s in (bare, wrong, good):
        s.close()


def test_renewed_certificate_is_served_after_sighup_and_after_a_file_change(
    serve: Server, pki: Pki, tmp_path: Path
) -> None:
    city = pki.city
    cert, key = pki.dir / "server.pem", pki.dir / "server.key"
    url = serve(*pki.serving())
    first = _served_serial(url, city.pem)
    proc_pid = serve.pids[url]
    # A renewal that is not a certificate: refused, and the old one goes on serving.
    good_key = key.read_bytes()
    cert.write_text("not a certificate\n")
    os.kill(proc_pid, signal.SIGHUP)
    time.sleep(0.5)
    assert _served_serial(url, city.pem) == first
    key.write_bytes(good_key)

    renewed = issue(city, cert, key).serial_number
    os.kill(proc_pid, signal.SIGHUP)
    assert _wait_for_serial(url, city.pem, renewed, 10) == renewed

    # No signal this time: the files changing is enough, within the watch period.
    again = issue(city, cert, key).serial_number
    assert _wait_for_serial(url, city.pem, again, WATCH_SECONDS * 3) == again
