"""Real device stand-ins for the printer, scanner and SSH tests, started and stopped by PID.

- ``snmpsim``: snmpsimd serving the recordings in tests/data/snmprec (one community or SNMPv3
  context per file), optionally with an SNMPv3 user;
- ``snmpd``: net-snmp's agent with an SNMPv3 user: unlike snmpsim it answers bad credentials
  with usmStats reports, the way printers do;
- ``ippeveprinter``: CUPS' IPP Everywhere printer simulator. It needs a D-Bus system bus for
  its DNS-SD client; a private bus (its own socket in the test's directory, pointed at by
  DBUS_SYSTEM_BUS_ADDRESS) is enough: without an avahi-daemon nothing is announced, and
  nothing leaves loopback;
- ``sshd``: OpenSSH with its own host key, config and authorized keys, on 127.0.0.1.

Every process listens on loopback only; every wait is bounded.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import ROOT, need, need_program

SNMPREC = ROOT / "tests" / "data" / "snmprec"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, ready: Callable[[], bool], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready within {seconds:g} s")


def tcp_open(port: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    return check


class Proc:
    """One program we started; stopped by its PID, SIGTERM then SIGKILL."""

    def __init__(self, args: Sequence[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.popen = subprocess.Popen(
                list(args),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
            )
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(5)


def _start(what: str, proc: Proc, ready: Callable[[], bool], seconds: float = 15.0) -> Proc:
    def go() -> bool:
        if not proc.alive():
            raise RuntimeError(f"{what} exited: {proc.output()[-2000:]}")
        return ready()

    try:
        wait_for(what, go, seconds)
    except BaseException:
        proc.stop()
        raise
    return proc


# ---- SNMP -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class V3User:
    user: str
    auth_key: str
    priv_key: str


@contextmanager
def snmpsim(work: Path, v3: V3User | None = None) -> Iterator[int]:
    """snmpsimd on 127.0.0.1: yields its UDP port. Community (or v3 context) = file name."""
    program = need_program("snmpsimd")
    cache = work / "snmpsim-cache"
    cache.mkdir(parents=True, exist_ok=True)
    port = free_port(socket.SOCK_DGRAM)
    args = [
        program,
        f"--data-dir={SNMPREC}",
        f"--agent-udpv4-endpoint=127.0.0.1:{port}",
        f"--cache-dir={cache}",
        # pytest's temporary directories are private to root: stay root to read them.
        "--process-user=root",
        "--process-group=root",
    ]
    if v3 is not None:
        args += [
            f"--v3-user={v3.user}",
            f"--v3-auth-key={v3.auth_key}",
            "--v3-auth-proto=SHA",
            f"--v3-priv-key={v3.priv_key}",
            "--v3-priv-proto=AES",
        ]
    proc = Proc(args, work / "snmpsim.log")
    _start("snmpsimd", proc, lambda: "Listening at UDP" in proc.output())
    try:
        yield port
    finally:
        proc.stop()


@contextmanager
def snmpd(work: Path, v3: V3User) -> Iterator[int]:
    """net-snmp snmpd on 127.0.0.1 with one authPriv (SHA/AES) user: yields its UDP port."""
    program = need_program("snmpd")
    state = work / "snmpd-state"
    state.mkdir(parents=True, exist_ok=True)
    conf = work / "snmpd.conf"
    conf.write_text(
        f"createUser {v3.user} SHA {v3.auth_key} AES {v3.priv_key}\nrouser {v3.user} priv\n"
    )
    port = free_port(socket.SOCK_DGRAM)
    proc = Proc(
        [program, "-f", "-Lo", "-C", "-c", str(conf), "-p", str(work / "snmpd.pid"),
         f"udp:127.0.0.1:{port}"],
        work / "snmpd.log",
        # No MIB files are needed, and without these snmpd writes into /var/lib/snmp.
        env={"MIBS": "", "MIBDIRS": str(state), "SNMP_PERSISTENT_DIR": str(state)},
    )  # fmt: skip
    _start("snmpd", proc, lambda: "NET-SNMP version" in proc.output())
    try:
        yield port
    finally:
        proc.stop()


# ---- IPP ------------------------------------------------------------------------------------

_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_type="method_return"/>
    <allow send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="signal"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
  </policy>
</busconfig>
"""


@contextmanager
def private_bus(work: Path) -> Iterator[str]:
    """A D-Bus daemon of our own: yields the address to give as DBUS_SYSTEM_BUS_ADDRESS."""
    program = need_program("dbus-daemon")
    sock = work / "bus"
    conf = work / "bus.conf"
    conf.write_text(_BUS_CONFIG.format(socket=sock))
    proc = Proc([program, f"--config-file={conf}", "--nofork"], work / "dbus.log")
    _start("dbus-daemon", proc, sock.exists)
    try:
        yield f"unix:path={sock}"
    finally:
        proc.stop()


@dataclass
class Printer:
    port: int
    uri: str
    web: str

    def form(self, page: str, **fields: str | int) -> None:
        """Submit ippeveprinter's web form (``supplies`` or ``media``) with these fields."""
        import httpx

        r = httpx.get(f"{self.web}/{page}", params={k: str(v) for k, v in fields.items()},
                      timeout=10)  # fmt: skip
        r.raise_for_status()


@contextmanager
def ippeveprinter(
    work: Path, bus: str, name: str, attrs: str | None = None, keys: Path | None = None
) -> Iterator[Printer]:
    """ippeveprinter on localhost; ``attrs``: the text of an -a attributes file; ``keys``: a
    directory holding localhost.crt and localhost.key, which makes it answer TLS too."""
    program = need_program("ippeveprinter")
    spool = work / f"spool-{name}"
    spool.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = [program, "-p", str(port), "-n", "localhost", "-r", "off", "-d", str(spool)]
    if attrs is not None:
        conf = work / f"{name}.conf"
        conf.write_text(attrs)
        args += ["-a", str(conf)]
    if keys is not None:
        args += ["-K", str(keys)]
    proc = Proc([*args, name], work / f"ippeveprinter-{name}.log",
                env={"DBUS_SYSTEM_BUS_ADDRESS": bus})  # fmt: skip
    _start("ippeveprinter", proc, tcp_open(port))
    try:
        yield Printer(port, f"ipp://localhost:{port}/ipp/print", f"http://localhost:{port}")
    finally:
        proc.stop()


# ---- SSH ------------------------------------------------------------------------------------

SSH_USER = "wrtest"


def keygen(path: Path, kind: str = "ed25519", passphrase: str = "") -> Path:
    """A new key pair at ``path`` and ``path``.pub (ssh-keygen)."""
    program = need_program("ssh-keygen")
    subprocess.run(
        [program, "-q", "-t", kind, "-N", passphrase, "-C", "wardready-test", "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return path


@contextmanager
def ssh_user(name: str = SSH_USER) -> Iterator[str]:
    """A local account for sshd to log into; removed afterwards if this made it."""
    need(os.geteuid() == 0, "needs root to add a test user for sshd")
    useradd, userdel, usermod = (need_program(p) for p in ("useradd", "userdel", "usermod"))
    made = False
    try:
        import pwd

        pwd.getpwnam(name)
    except KeyError:
        subprocess.run([useradd, "-M", "-d", "/nonexistent", "-s", "/bin/sh", name],
                       check=True, capture_output=True, timeout=30)  # fmt: skip
        made = True
    # '*': no password can match, yet the account is not locked ('!'), which sshd refuses
    # when PAM is off.
    subprocess.run([usermod, "-p", "*", name], check=True, capture_output=True, timeout=30)
    try:
        yield name
    finally:
        if made:
            _remove_user(userdel, name)


def _remove_user(userdel: str, name: str) -> None:
    # userdel refuses (status 8) while a session of the user is still winding down.
    for _ in range(50):
        done = subprocess.run([userdel, name], capture_output=True, timeout=30)
        if done.returncode != 8:
            return
        time.sleep(0.2)
    raise RuntimeError(f"test user {name} still in use: remove it with userdel")


@dataclass
class Sshd:
    port: int
    host_key: Path
    proc: Proc


@contextmanager
def sshd(work: Path, host_key: Path, authorized: dict[str, Path], port: int = 0) -> Iterator[Sshd]:
    """OpenSSH on 127.0.0.1 with ``host_key``; ``authorized``: user -> public key file."""
    program = need_program("sshd")
    program = str(Path(program).resolve())  # sshd insists on an absolute path
    work.mkdir(parents=True, exist_ok=True)
    # sshd reads authorized keys as the user, who cannot enter pytest's private directories.
    keys = Path(tempfile.mkdtemp(prefix="wardready-sshd-"))
    keys.chmod(0o755)
    for user, pub in authorized.items():
        shutil.copyfile(pub, keys / user)
        (keys / user).chmod(0o644)
    port = port or free_port()
    conf = work / f"sshd-{port}.conf"
    conf.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
        f"AuthorizedKeysFile {keys}/%u\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        f"PidFile {work}/sshd-{port}.pid\nLogLevel VERBOSE\n"
    )
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # its privilege separation directory
    try:
        proc = Proc([program, "-D", "-e", "-f", str(conf)], work / f"sshd-{port}.log")
        _start("sshd", proc, tcp_open(port))
        try:
            yield Sshd(port, host_key, proc)
        finally:
            proc.stop()
    finally:
        shutil.rmtree(keys, ignore_errors=True)
