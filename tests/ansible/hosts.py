"""Hosts that boot real systemd: one systemd-nspawn container per host, each in a network
namespace of its own, all on one bridge in a switch namespace, reached over real SSH.

Each host boots from an overlay whose lower layer is the cached Debian tree
(``tests.ansible.rootfs``), so the cache is never written. Before boot the overlay gets the
host's name, a fresh SSH host key (the test's known_hosts pins it) and the test's public key
for root. The controller (this process) reaches the hosts through one veth from the root
namespace into the switch: every address lives only on links the test made.

Stopping sends SIGTERM to the nspawn PID this module started (the container halts cleanly),
then unmounts the overlay and deletes the namespaces.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BOOT_TIMEOUT = 90.0
SSH_TIMEOUT = 60.0


def sh(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout)


@dataclass
class Host:
    name: str
    address: str
    netns: str
    root: Path
    log: Path
    popen: subprocess.Popen[bytes] | None = None


@dataclass
class Fleet:
    """The hosts, the switch, and how to reach them."""

    work: Path
    lower: Path
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    net: str = field(
        default_factory=lambda: f"10.{250 + secrets.randbelow(5)}.{secrets.randbelow(256)}"
    )
    hosts: dict[str, Host] = field(default_factory=dict)
    switch: str = ""
    uplink: str = ""
    key: Path = field(init=False)
    known_hosts: Path = field(init=False)
    _mounted: list[Path] = field(default_factory=list)
    _namespaces: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.key = self.work / "id_ed25519"
        self.known_hosts = self.work / "known_hosts"

    @property
    def controller_address(self) -> str:
        return f"{self.net}.1"

    # -- network ---------------------------------------------------------------------------

    def _netns(self, name: str) -> str:
        sh("ip", "netns", "add", name)
        self._namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def make_switch(self) -> None:
        self.switch = self._netns(f"wr-asw-{self.tag}")
        sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.switch, "link", "set", "br0", "up")
        self.uplink = f"wra{self.tag}c"
        peer = f"wra{self.tag}s"
        sh("ip", "link", "add", self.uplink, "type", "veth", "peer", "name", peer)
        sh("ip", "link", "set", peer, "netns", self.switch)
        sh("ip", "-n", self.switch, "link", "set", peer, "master", "br0", "up")
        sh("ip", "addr", "add", f"{self.controller_address}/24", "dev", self.uplink)
        sh("ip", "link", "set", self.uplink, "up")

    def _wire(self, host: Host, index: int) -> None:
        inside, outside = f"wra{self.tag}{index}h", f"wra{self.tag}{index}s"
        sh("ip", "link", "add", inside, "type", "veth", "peer", "name", outside)
        sh("ip", "link", "set", outside, "netns", self.switch)
        sh("ip", "-n", self.switch, "link", "set", outside, "master", "br0", "up")
        sh("ip", "link", "set", inside, "netns", host.netns)
        sh("ip", "-n", host.netns, "link", "set", inside, "name", "eth0")
        sh("ip", "-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        sh("ip", "-n", host.netns, "link", "set", "eth0", "up")

    # -- hosts -----------------------------------------------------------------------------

    def add(self, name: str, mask: Sequence[str] = ()) -> Host:
        """Make host ``name`` (not booted yet); ``mask`` lists units it must not start."""
        index = len(self.hosts) + 10
        base = self.work / "hosts" / name
        upper, workdir, merged = base / "upper", base / "work", base / "root"
        for d in (upper, workdir, merged):
            d.mkdir(parents=True)
        sh(
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={self.lower},upperdir={upper},workdir={workdir}",
            str(merged),
        )
        self._mounted.append(merged)
        host = Host(
            name,
            f"{self.net}.{index}",
            self._netns(f"wr-ah{index}-{self.tag}"),
            merged,
            base / "console.log",
        )
        self._wire(host, index)
        self._prepare(host, mask)
        self.hosts[name] = host
        return host

    def _prepare(self, host: Host, mask: Sequence[str]) -> None:
        root = host.root
        (root / "etc/hostname").write_text(host.name + "\n")
        with (root / "etc/hosts").open("a") as f:
            f.write(f"{host.address} {host.name}\n")
        ssh = root / "etc/ssh"
        for old in ssh.glob("ssh_host_*"):
            old.unlink()
        sh(
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            host.name,
            "-f",
            str(ssh / "ssh_host_ed25519_key"),
        )
        (ssh / "sshd_config.d/wardready-test.conf").write_text(
            "HostKey /etc/ssh/ssh_host_ed25519_key\nPermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\n"
        )
        pub = (ssh / "ssh_host_ed25519_key.pub").read_text().split()
        with self.known_hosts.open("a") as f:
            f.write(f"{host.address} {pub[0]} {pub[1]}\n")
        dot_ssh = root / "root/.ssh"
        dot_ssh.mkdir(mode=0o700, exist_ok=True)
        (dot_ssh / "authorized_keys").write_text(Path(f"{self.key}.pub").read_text())
        os.chmod(dot_ssh / "authorized_keys", 0o600)
        for unit in mask:
            link = root / "etc/systemd/system" / unit
            link.unlink(missing_ok=True)
            link.symlink_to("/dev/null")

    def boot(self) -> None:
        for host in self.hosts.values():
            with host.log.open("ab") as out:
                host.popen = subprocess.Popen(
                    [
                        "systemd-nspawn",
                        "--quiet",
                        "--boot",
                        "--register=no",
                        "--keep-unit",
                        "--console=read-only",
                        f"--directory={host.root}",
                        f"--machine=wra-{host.name}-{self.tag}"[:64],
                        f"--network-namespace-path=/run/netns/{host.netns}",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        deadline = time.monotonic() + BOOT_TIMEOUT
        for host in self.hosts.values():
            self._wait_ssh(host, deadline)
            state = self.ssh(
                host,
                "systemctl is-system-running --wait",
                check=False,
                timeout=max(5.0, deadline - time.monotonic()),
            )
            if state.stdout.strip() not in ("running", "degraded"):
                raise RuntimeError(
                    f"{host.name} did not boot: {state.stdout}{state.stderr}\n{self.console(host)}"
                )

    def _wait_ssh(self, host: Host, deadline: float) -> None:
        while time.monotonic() < deadline:
            if host.popen is not None and host.popen.poll() is not None:
                raise RuntimeError(f"{host.name}: nspawn exited\n{self.console(host)}")
            with contextlib.suppress(OSError), socket.create_connection((host.address, 22), 1):
                return
            time.sleep(0.3)
        raise RuntimeError(f"{host.name}: no sshd within {BOOT_TIMEOUT:g} s\n{self.console(host)}")

    def console(self, host: Host) -> str:
        try:
            return host.log.read_bytes()[-3000:].decode("utf-8", "replace")
        except OSError:
            return ""

    def ssh_argv(self) -> list[str]:
        return [
            "ssh",
            "-i",
            str(self.key),
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=5",
            "-l",
            "root",
        ]

    def ssh(
        self, host: Host, command: str, check: bool = True, timeout: float = SSH_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*self.ssh_argv(), host.address, command],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{host.name}: {command!r} exited {done.returncode}:\n{done.stdout}{done.stderr}"
            )
        return done

    def put(self, host: Host, path: str, text: str) -> None:
        self.ssh(
            host,
            f"mkdir -p {shlex.quote(str(Path(path).parent))} && "
            f"cat > {shlex.quote(path)} <<'WARDREADY_EOF'\n{text}WARDREADY_EOF",
        )

    # -- teardown --------------------------------------------------------------------------

    def stop(self) -> None:
        for host in self.hosts.values():
            if host.popen is not None and host.popen.poll() is None:
                os.kill(host.popen.pid, signal.SIGTERM)
        for host in self.hosts.values():
            if host.popen is None:
                continue
            try:
                host.popen.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(host.popen.pid, signal.SIGKILL)
                host.popen.wait(10)
        for merged in reversed(self._mounted):
            if sh("umount", str(merged), check=False).returncode != 0:
                sh("umount", "--lazy", str(merged), check=False)
        if self.uplink:
            sh("ip", "link", "del", self.uplink, check=False)
        for ns in reversed(self._namespaces):
            sh("ip", "netns", "del", ns, check=False)


@contextlib.contextmanager
def fleet(work: Path, lower: Path) -> Iterator[Fleet]:
    made = Fleet(work, lower)
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "wardready-test", "-f", str(made.key))
    made.known_hosts.touch()
    try:
        made.make_switch()
        yield made
    finally:
        made.stop()
