"""Discovery on a namespace LAN: a bridge joining a scanner PC, an IPP printer announced over
mDNS by avahi, an SNMP printer (snmpsim with a printer recording), a plain host, and a host
just outside the subnet asked for, each in a namespace this test makes.

``wardready-agent discover`` runs in the scanner namespace and must find the three hosts of
the subnet, classify each, write a snippet the agent config accepts, and send nothing to the
host outside the subnet (nftables counters there count what arrives from the scanner).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.config import load_config
from checks import printer_snmp
from tests.devices import SNMPREC, Proc, private_bus, wait_for
from tests.helpers import ROOT, need_program, need_root
from tests.netlab import Lab, lab, sh

pytestmark = [pytest.mark.netns, pytest.mark.peer]

AVAHI_CONF = """\
[server]
host-name={host}
use-ipv4=yes
use-ipv6=no
allow-interfaces={nic}
enable-dbus=yes
[wide-area]
enable-wide-area=no
[publish]
publish-workstation=no
publish-addresses=yes
publish-hinfo=no
"""

OUTSIDE_COUNTERS = """\
table inet wrdisc {{
  chain input {{
    type filter hook input priority 0; policy accept;
    ip saddr {scanner} ip daddr != 224.0.0.0/4 counter
  }}
}}
table arp wrdisc {{
  chain input {{
    type filter hook input priority 0; policy accept;
    arp daddr ip {outside} counter
  }}
}}
"""


@dataclass
class Lan:
    lab: Lab
    prefix: str  # "10.x.100"
    ns: dict[str, str]
    nic: dict[str, str]

    def addr(self, host: int) -> str:
        return f"{self.prefix}.{host}"


HOSTS = {"scanner": 2, "printer": 10, "snmp": 11, "plain": 12, "outside": 70}


@pytest.fixture
def lan() -> Iterator[Lan]:
    need_root()
    need_program("ip")
    need_program("nft")
    with lab() as net:
        hub = net.netns("hub")
        sh("ip", "-n", hub, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", hub, "link", "set", "br0", "up")
        prefix = f"10.{net.subnet}.100"
        made = Lan(net, prefix, {}, {})
        for i, (role, host) in enumerate(HOSTS.items()):
            ns = net.netns(role)
            nic, port = f"wd{net.tag}{i}", f"wp{net.tag}{i}"
            sh("ip", "link", "add", nic, "type", "veth", "peer", "name", port)
            sh("ip", "link", "set", port, "netns", hub)
            sh("ip", "link", "set", nic, "netns", ns)
            sh("ip", "-n", hub, "link", "set", port, "master", "br0")
            sh("ip", "-n", hub, "link", "set", port, "up")
            sh("ip", "-n", ns, "addr", "add", f"{prefix}.{host}/24", "dev", nic)
            sh("ip", "-n", ns, "link", "set", nic, "up")
            made.ns[role], made.nic[role] = ns, nic
        yield made


@pytest.fixture
def printer(lan: Lan, tmp_path: Path) -> Iterator[str]:
    """ippeveprinter in the printer namespace, announced by an avahi of that namespace."""
    avahi = need_program("avahi-daemon")
    ipp = need_program("ippeveprinter")
    ns, nic = lan.ns["printer"], lan.nic["printer"]
    host = f"wrprinter{lan.lab.tag}"
    work = tmp_path / "printer"
    work.mkdir()
    conf = work / "avahi.conf"
    conf.write_text(AVAHI_CONF.format(host=host, nic=nic))
    with private_bus(work) as bus:
        env = {"DBUS_SYSTEM_BUS_ADDRESS": bus}
        # `ip netns exec` runs in a mount namespace of its own: the tmpfs over avahi's run
        # directory (its pid file and socket) stays private to this avahi.
        script = (
            "mkdir -p /run/avahi-daemon && mount -t tmpfs tmpfs /run/avahi-daemon && "
            f"exec {avahi} -f {conf} --no-chroot --no-drop-root --no-rlimits"
        )
        daemon = Proc(["ip", "netns", "exec", ns, "sh", "-c", script], work / "avahi.log", env)
        try:
            wait_for("avahi", lambda: "Server startup complete" in daemon.output(), 15)
            spool = work / "spool"
            spool.mkdir()
            # ippeveprinter listens on the addresses its -n name resolves to, IPv4 and IPv6
            # both: a hosts file of its own (bound over /etc/hosts in its mount namespace)
            # points the name at the LAN address and at ::1.
            hosts = work / "hosts"
            hosts.write_text(f"{lan.addr(10)} {host}\n::1 {host}\n127.0.0.1 localhost\n")
            script = (
                f"mount --bind {hosts} /etc/hosts && exec {ipp} -p 631 -n {host} "
                f"-d {spool} Quay-1-{lan.lab.tag}"
            )
            args = ["ip", "netns", "exec", ns, "sh", "-c", script]
            printer = Proc(args, work / "ippeveprinter.log", env)
            try:
                # It says so once its D-Bus client reached avahi (AVAHI_CLIENT_S_RUNNING); the
                # announcement follows within milliseconds, well inside discover's browse.
                wait_for("ippeveprinter", lambda: "Avahi state 2" in printer.output(), 15)
                yield host
            finally:
                printer.stop()
        finally:
            daemon.stop()


@pytest.fixture
def snmp_printer(lan: Lan, tmp_path: Path) -> Iterator[None]:
    program = need_program("snmpsimd")
    work = tmp_path / "snmp"
    (work / "cache").mkdir(parents=True)
    args = ["ip", "netns", "exec", lan.ns["snmp"], program, f"--data-dir={SNMPREC}",
            f"--agent-udpv4-endpoint={lan.addr(11)}:161", f"--cache-dir={work / 'cache'}",
            "--process-user=root", "--process-group=root"]  # fmt: skip
    proc = Proc(args, work / "snmpsim.log")
    try:
        wait_for("snmpsimd", lambda: "Listening at UDP" in proc.output(), 20)
        yield
    finally:
        proc.stop()


def _counters(lan: Lan) -> list[int]:
    out = sh("ip", "netns", "exec", lan.ns["outside"], "nft", "list", "ruleset").stdout
    return [int(n) for n in re.findall(r"counter packets (\d+)", out)]


def test_discover_finds_and_classifies_the_lan(
    lan: Lan, printer: str, snmp_printer: None, tmp_path: Path
) -> None:
    lan.lab.nft(
        lan.ns["outside"], OUTSIDE_COUNTERS.format(scanner=lan.addr(2), outside=lan.addr(70))
    )
    snippet = tmp_path / "found.yaml"
    cmd = ["ip", "netns", "exec", lan.ns["scanner"], sys.executable, "-m", "agent", "discover",
           "--subnet", f"{lan.prefix}.0/26", "--json", "--out", str(snippet),
           "--community", "mono-normal", "--rate", "200", "--browse-seconds", "3"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    found = {d["address"]: d for d in json.loads(done.stdout)["devices"]}

    assert set(found) == {lan.addr(10), lan.addr(11), lan.addr(12)}, found
    ipp, snmp, plain = found[lan.addr(10)], found[lan.addr(11)], found[lan.addr(12)]
    assert ipp["kind"] == "printer"
    assert "ipp" in {s["service"] for s in ipp["services"]}
    assert ipp["name"] == printer
    assert snmp["kind"] == "printer" and snmp["printer_mib"]
    assert snmp["sys_descr"] == "Brother HL-L5100DN series"
    assert plain["kind"] == "unknown" and not plain["services"] and not plain["printer_mib"]
    for d in found.values():  # every host answered the ARP sweep with its real MAC
        mac = sh("ip", "-n", lan.ns[_role(lan, d["address"])], "-j", "link", "show",
                 lan.nic[_role(lan, d["address"])]).stdout  # fmt: skip
        assert json.loads(mac)[0]["address"] == d["mac"]

    # Nothing was sent to the host outside the subnet asked for: no ARP for it, no unicast.
    assert _counters(lan) == [0, 0]
    # ...and the counters do count: one ping from the scanner moves both.
    sh("ip", "netns", "exec", lan.ns["scanner"], "ping", "-c", "1", "-W", "2", lan.addr(70))
    assert all(n > 0 for n in _counters(lan)), _counters(lan)

    body = snippet.read_text(encoding="utf-8")
    config = tmp_path / "agent.yaml"
    config.write_text(
        "ward: ward-ben-thanh\ncollector: {url: 'http://127.0.0.1:9', token: x}\n" + body,
        encoding="utf-8",
    )
    checks = {(c.check, c.target.address): c for c in load_config(config).checks}
    p, s = lan.addr(10), lan.addr(11)
    assert set(checks) == {("printer_ipp", f"ipp://{p}:631/ipp/print"), ("printer_snmp", s)}
    for check in checks.values():
        assert check.target.labels == {
            "role": "counter_device",
            "device": "printer",
            "ward": "ward-ben-thanh",
        }
    params = checks[("printer_snmp", s)].params
    assert isinstance(params, printer_snmp.Params)
    assert params.community.get_secret_value() == "mono-normal"


def _role(lan: Lan, address: str) -> str:
    host = int(address.rsplit(".", 1)[1])
    return next(role for role, n in HOSTS.items() if n == host)
