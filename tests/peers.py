"""Third-party peers for tests: start one on loopback, wait until it listens, stop it by PID.

``start`` runs a program in its own session with its output in a log file, then waits (bounded)
until the process, or one of its children, holds a socket on the port it was told to use;
a peer that exits or never listens fails the test with the tail of its log. ``Peer.stop``
sends SIGTERM to the PID it started, then SIGKILL when it lingers, and does the same to any
child that outlived it, each by its own PID.

Recipes: ``sipp_uas`` (sipp answering with a scenario), ``kamailio`` (a stateless SIP server
answering OPTIONS over UDP, TCP and TLS), ``coturn`` (a STUN/TURN server with one long-term
credential user). Each binds 127.0.0.1 only, on ports that were free a moment ago.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import psutil
import pytest

from tests.helpers import need_program

LOOPBACK = "127.0.0.1"
Proto = Literal["tcp", "udp"]


def free_port(*protos: Proto) -> int:
    """A loopback port free for every protocol given (default both TCP and UDP)."""
    wanted = protos or ("tcp", "udp")
    kinds = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM}
    for _ in range(50):
        with socket.socket(socket.AF_INET, kinds[wanted[0]]) as first:
            first.bind((LOOPBACK, 0))
            port: int = first.getsockname()[1]
            ok = True
            for proto in wanted[1:]:
                with socket.socket(socket.AF_INET, kinds[proto]) as other:
                    try:
                        other.bind((LOOPBACK, port))
                    except OSError:
                        ok = False
                        break
            if ok:
                return port
    raise RuntimeError(f"no loopback port free for {'+'.join(wanted)} in 50 tries")


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


@dataclass
class Peer:
    name: str
    argv: list[str]
    log: Path
    popen: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, size: int = 3000) -> str:
        try:
            return self.log.read_bytes()[-size:].decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def _family(self) -> list[psutil.Process]:
        try:
            main = psutil.Process(self.pid)
            return [main, *main.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def listening(self, port: int, proto: Proto) -> bool:
        """True when this process or a child holds ``port`` (a TCP listener, or a UDP socket)."""
        for proc in self._family():
            try:
                conns = proc.net_connections(kind=proto)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            for c in conns:
                here = bool(c.laddr) and c.laddr.port == port
                if here and (proto == "udp" or c.status == psutil.CONN_LISTEN):
                    return True
        return False

    def stop(self, timeout: float = 5.0) -> int | None:
        children = self._family()[1:]
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(timeout)
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                if child.is_running():
                    child.kill()
                    child.wait(timeout)
        return self.popen.returncode


def start(
    name: str,
    argv: Sequence[str],
    log: Path,
    listens: Sequence[tuple[int, Proto]] = (),
    ready: Callable[[Peer], bool] | None = None,
    timeout: float = 15.0,
    cwd: Path | None = None,
) -> Peer:
    """Start ``argv``; return once it listens on every ``(port, proto)`` and ``ready`` holds."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )
    peer = Peer(name, list(argv), log, popen)

    def up() -> bool:
        if not peer.alive():
            return True
        if not all(peer.listening(port, proto) for port, proto in listens):
            return False
        return ready is None or ready(peer)

    if not wait_until(up, timeout) or not peer.alive():
        code = peer.stop()
        pytest.fail(
            f"{name} did not come up within {timeout:g} s (exit {code}); argv {peer.argv}\n"
            f"--- {log} ---\n{peer.tail()}"
        )
    return peer


@contextlib.contextmanager
def running(
    name: str,
    argv: Sequence[str],
    log: Path,
    listens: Sequence[tuple[int, Proto]] = (),
    ready: Callable[[Peer], bool] | None = None,
    timeout: float = 15.0,
    cwd: Path | None = None,
) -> Iterator[Peer]:
    peer = start(name, argv, log, listens, ready, timeout, cwd)
    try:
        yield peer
    finally:
        peer.stop()


# ---- recipes -------------------------------------------------------------------------------


def sipp_uas(
    directory: Path, scenario: str, transport: Proto = "udp", name: str = "sipp"
) -> contextlib.AbstractContextManager[tuple[Peer, int]]:
    """sipp answering with ``scenario`` (XML text) on a free loopback port: ``(peer, port)``."""
    sipp = need_program("sipp")

    @contextlib.contextmanager
    def go() -> Iterator[tuple[Peer, int]]:
        port = free_port(transport)
        control = free_port("udp")
        path = directory / f"{name}.xml"
        path.write_text(scenario)
        argv = [sipp, "-sf", str(path), "-i", LOOPBACK, "-p", str(port)]
        argv += ["-t", "u1" if transport == "udp" else "t1", "-cp", str(control), "-nostdin"]
        # No -bg: sipp then stays the process we started, so it is stopped by that PID.
        with running(name, argv, directory / f"{name}.log", [(port, transport)]) as peer:
            yield peer, port

    return go()


KAMAILIO_MODULES = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules")


@dataclass(frozen=True)
class Kamailio:
    peer: Peer
    port: int  # UDP and TCP
    tls_port: int | None


def kamailio(
    directory: Path, route: str, tls: tuple[Path, Path] | None = None
) -> contextlib.AbstractContextManager[Kamailio]:
    """kamailio with ``route`` as its request_route body, on UDP+TCP (and TLS with a
    ``(certificate, key)``)."""
    binary = need_program("kamailio")

    @contextlib.contextmanager
    def go() -> Iterator[Kamailio]:
        port = free_port("tcp", "udp")
        tls_port = free_port("tcp") if tls else None
        rundir = directory / "kamailio-run"
        rundir.mkdir(exist_ok=True)
        lines = [
            "#!KAMAILIO",
            "debug=2",
            "log_stderror=yes",
            "children=1",
            "tcp_children=1",
            "auto_aliases=no",
            f"listen=udp:{LOOPBACK}:{port}",
            f"listen=tcp:{LOOPBACK}:{port}",
            f'mpath="{KAMAILIO_MODULES}/"',
            'loadmodule "pv.so"',
            'loadmodule "sl.so"',
            'loadmodule "textops.so"',
        ]
        if tls:
            lines += [
                f"listen=tls:{LOOPBACK}:{tls_port}",
                "enable_tls=yes",
                'loadmodule "tls.so"',
                f'modparam("tls", "certificate", "{tls[0]}")',
                f'modparam("tls", "private_key", "{tls[1]}")',
                'modparam("tls", "tls_method", "TLSv1.2+")',
            ]
        lines += ["request_route {", route, "}"]
        cfg = directory / "kamailio.cfg"
        cfg.write_text("\n".join(lines) + "\n")
        argv = [binary, "-f", str(cfg), "-DD", "-E", "-Y", str(rundir)]
        argv += ["-P", str(rundir / "kamailio.pid"), "-m", "32", "-M", "4"]
        listens: list[tuple[int, Proto]] = [(port, "udp"), (port, "tcp")]
        if tls_port is not None:
            listens.append((tls_port, "tcp"))
        with running("kamailio", argv, directory / "kamailio.log", listens) as peer:
            yield Kamailio(peer, port, tls_port)

    return go()


def kamailio_tls_available() -> bool:
    return (KAMAILIO_MODULES / "tls.so").exists()


@dataclass(frozen=True)
class Coturn:
    peer: Peer
    port: int  # UDP and TCP
    tls_port: int | None


def coturn(
    directory: Path,
    user: str,
    password: str,
    realm: str = "test.local",
    tls: tuple[Path, Path] | None = None,
    extra: Sequence[str] = (),
) -> contextlib.AbstractContextManager[Coturn]:
    """coturn (``turnserver``) with one long-term credential user, relaying on loopback;
    ``extra`` adds options (``--user-quota=1``...)."""
    binary = need_program("turnserver")

    @contextlib.contextmanager
    def go() -> Iterator[Coturn]:
        port = free_port("tcp", "udp")
        tls_port = free_port("tcp") if tls else None
        relay = free_port("udp")
        argv = [
            binary,
            "-n",
            f"--listening-ip={LOOPBACK}",
            f"--relay-ip={LOOPBACK}",
            f"--listening-port={port}",
            # A tiny relay range is enough for one allocation at a time.
            f"--min-port={relay}",
            f"--max-port={relay + 20}",
            "--no-dtls",
            "--no-cli",
            "--lt-cred-mech",
            f"--user={user}:{password}",
            f"--realm={realm}",
            f"--userdb={directory / 'turn.db'}",
            f"--pidfile={directory / 'turn.pid'}",
            "--log-file=stdout",
            "--simple-log",
        ]
        if tls:
            argv += [f"--tls-listening-port={tls_port}", f"--cert={tls[0]}", f"--pkey={tls[1]}"]
        else:
            argv.append("--no-tls")
        argv += extra
        listens: list[tuple[int, Proto]] = [(port, "udp"), (port, "tcp")]
        if tls_port is not None:
            listens.append((tls_port, "tcp"))
        with running("coturn", argv, directory / "coturn.log", listens) as peer:
            yield Coturn(peer, port, tls_port)

    return go()


# ---- scripted stand-ins, for answers no real peer here gives on demand ----------------------


@dataclass
class Scripted:
    port: int
    received: list[bytes] = field(default_factory=list)


@contextlib.contextmanager
def udp_responder(
    answer: Callable[[bytes, int], bytes | None], lifetime: float = 60.0
) -> Iterator[Scripted]:
    """A loopback UDP socket that replies ``answer(datagram, index)`` to each datagram (None:
    stays silent). Serves at most 1000 datagrams or ``lifetime`` seconds."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    sock.settimeout(0.05)
    state = Scripted(sock.getsockname()[1])
    stop = threading.Event()
    until = time.monotonic() + lifetime

    def serve() -> None:
        while not stop.is_set() and time.monotonic() < until and len(state.received) < 1000:
            try:
                data, addr = sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            state.received.append(data)
            reply = answer(data, len(state.received) - 1)
            if reply is not None:
                sock.sendto(reply, addr)

    thread = threading.Thread(target=serve, name="udp-responder", daemon=True)
    thread.start()
    try:
        yield state
    finally:
        stop.set()
        thread.join(5)
        sock.close()
