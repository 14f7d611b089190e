"""``wardready-agent discover``: find the counter devices on the ward's LAN and say what they are.

Hosts are found by an ARP sweep of the subnet, a DNS-SD browse (printers, scanners, SIP
endpoints announce themselves over mDNS) and SNMP v2c probes of what was found. Each host is
classified from that evidence, and the result can be written as a checks snippet for the
agent config or reported to the collector as the ward's inventory.

Probing stays inside the subnet asked for: ARP and SNMP only go to addresses of the CIDR (at
most ``rate`` per second), mDNS answers from elsewhere are dropped, and subnets larger than
a /22 are refused unless forced. The mDNS browse itself sends its queries to the link-local
multicast group 224.0.0.251, as the protocol does.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from agent.discover_net import Announced, SnmpAnswer
from shared.devicechecks import device_checks
from shared.wire import MAX_SERVICES, Device, Endpoint, Inventory

MAX_PREFIX_UNFORCED = 22
KINDS = ("printer", "scanner", "multifunction", "vc", "router", "unknown")
PRINT_SERVICES = frozenset({"ipp", "ipps", "pdl-datastream"})
SCAN_SERVICES = frozenset({"uscan", "uscans"})
ROUTER_WORDS = (
    "router",
    "routeros",
    "mikrotik",
    "cisco ios",
    "junos",
    "edgeos",
    "openwrt",
    "draytek",
    "vigor",
    "fortigate",
    "pfsense",
)
# Enterprise numbers of router makers: Cisco, Juniper, MikroTik, DrayTek, Fortinet.
ROUTER_ENTERPRISES = ("9", "2636", "14988", "7367", "12356")
ENTERPRISES = "1.3.6.1.4.1."


class DiscoverError(Exception):
    """Bad input to discover; the message names the option."""


@dataclass
class Host:
    address: str
    mac: str = ""
    name: str = ""
    services: list[Announced] = field(default_factory=list)
    snmp: SnmpAnswer | None = None
    gateway: bool = False
    evidence: list[str] = field(default_factory=list)
    kind: str = "unknown"

    def service_words(self) -> list[str]:
        return sorted({s.service for s in self.services})


# ---- the subnet and what may be probed in it ----------------------------------------------


def plan_subnet(cidr: str, force: bool = False) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError as exc:
        raise DiscoverError(f"--subnet {cidr!r}: {exc}") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise DiscoverError(f"--subnet {cidr!r}: only IPv4 subnets can be swept")
    if net.prefixlen < MAX_PREFIX_UNFORCED and not force:
        raise DiscoverError(
            f"--subnet {cidr!r}: {net.num_addresses} addresses is larger than a "
            f"/{MAX_PREFIX_UNFORCED}; give --force to sweep it anyway"
        )
    return net


def confine(net: ipaddress.IPv4Network, addresses: Iterable[str]) -> list[str]:
    """The addresses that are hosts of ``net``, once each, in address order."""
    keep: set[ipaddress.IPv4Address] = set()
    for text in addresses:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            continue
        edge = ip in (net.network_address, net.broadcast_address) and net.prefixlen < 31
        if isinstance(ip, ipaddress.IPv4Address) and ip in net and not edge:
            keep.add(ip)
    return [str(ip) for ip in sorted(keep)]


def sweep_targets(net: ipaddress.IPv4Network, own: Iterable[str] = ()) -> list[str]:
    mine = set(own)
    return [str(ip) for ip in net.hosts() if str(ip) not in mine]


def local_addresses() -> dict[str, tuple[str, int]]:
    """IPv4 address -> (interface, prefix length) of this network namespace."""
    import psutil

    out: dict[str, tuple[str, int]] = {}
    for nic, addrs in psutil.net_if_addrs().items():
        for a in addrs:
            if a.family == socket.AF_INET and a.netmask:
                prefix = ipaddress.IPv4Network(f"0.0.0.0/{a.netmask}").prefixlen
                out[a.address] = (nic, prefix)
    return out


def default_gateway(path: str = "/proc/net/route") -> tuple[str, str] | None:
    """(interface, gateway address) of the IPv4 default route, if any."""
    try:
        with open(path, encoding="ascii") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        cols = line.split()
        if len(cols) >= 3 and cols[1] == "00000000" and cols[2] != "00000000":
            gw = socket.inet_ntoa(struct.pack("<I", int(cols[2], 16)))
            return cols[0], gw
    return None


def default_subnet(interface: str | None) -> str:
    """The subnet of ``interface``, or of the interface holding the default route."""
    addrs = local_addresses()
    if interface is None:
        route = default_gateway()
        if route is None:
            raise DiscoverError("--subnet: not given and there is no default route to pick one")
        interface = route[0]
    for address, (nic, prefix) in addrs.items():
        if nic == interface and not address.startswith("127."):
            return str(ipaddress.IPv4Network(f"{address}/{prefix}", strict=False))
    raise DiscoverError(f"--interface {interface}: has no IPv4 address; give --subnet")


# ---- classification -----------------------------------------------------------------------


def is_router(snmp: SnmpAnswer) -> bool:
    descr = snmp.sys_descr.lower()
    if any(word in descr for word in ROUTER_WORDS):
        return True
    oid = snmp.sys_object_id
    return any(oid.startswith(f"{ENTERPRISES}{e}.") for e in ROUTER_ENTERPRISES)


def classify(host: Host) -> str:
    """The host's kind from its evidence; also fills ``host.evidence``."""
    words = set(host.service_words())
    ev: list[str] = [f"mdns {s.service}:{s.port}" for s in host.services]
    printer = bool(words & PRINT_SERVICES)
    if host.snmp is not None:
        ev.append(f"snmp {host.snmp.sys_object_id or 'answered'}")
        if host.snmp.printer_mib:
            ev.append("Printer MIB")
            printer = True
    scanner = bool(words & SCAN_SERVICES)
    router = host.snmp is not None and is_router(host.snmp)
    if router:
        ev.append("router keywords")
    if host.gateway:
        ev.append("default gateway")
    if host.mac:
        ev.append("arp")
    host.evidence = sorted(set(ev), key=ev.index)
    if printer and scanner:
        return "multifunction"
    if printer:
        return "printer"
    if scanner:
        return "scanner"
    if "sip" in words:
        return "vc"
    if router or host.gateway:
        return "router"
    return "unknown"


def merge(
    net: ipaddress.IPv4Network,
    arp: dict[str, str],
    announced: Sequence[Announced],
    snmp: Sequence[SnmpAnswer],
    gateway: str | None,
) -> list[Host]:
    """One Host per address of ``net`` seen by any method, classified; others dropped."""
    hosts: dict[str, Host] = {}

    def get(address: str) -> Host | None:
        if not confine(net, [address]):
            return None
        return hosts.setdefault(address, Host(address))

    for address, mac in arp.items():
        h = get(address)
        if h is not None:
            h.mac = mac
    for a in announced:
        h = get(a.address)
        if h is not None and a not in h.services:
            h.services.append(a)
            h.name = h.name or a.host or a.instance
    for s in snmp:
        h = get(s.address)
        if h is not None:
            h.snmp = s
            h.name = h.name or s.sys_name
    if gateway is not None:
        h = get(gateway)
        if h is not None:
            h.gateway = True
    for h in hosts.values():
        h.kind = classify(h)
    return [hosts[a] for a in confine(net, hosts)]


# ---- output ---------------------------------------------------------------------------------


def endpoints(host: Host) -> list[Endpoint]:
    """What ``host`` announced, as the wire schema (and the check mapping) takes it."""
    out = []
    for s in host.services[:MAX_SERVICES]:
        path = s.txt.get("rp", "") if s.service in ("ipp", "ipps") else s.txt.get("rs", "")
        out.append(Endpoint(service=s.service[:64], port=s.port, path=path[:255]))
    return out


def checks_snippet(
    hosts: Sequence[Host], community: str = "public", snmp_port: int = 161
) -> list[dict[str, Any]]:
    """Agent config ``checks:`` entries for what was found (``shared.devicechecks``)."""
    checks: list[dict[str, Any]] = []
    for h in hosts:
        mib = h.snmp is not None and h.snmp.printer_mib
        checks += device_checks(h.address, h.kind, endpoints(h), mib, community, snmp_port)
    return checks


def snippet_yaml(checks: list[dict[str, Any]]) -> str:
    head = "# written by wardready-agent discover: paste under the agent config's checks:\n"
    return head + yaml.safe_dump({"checks": checks}, allow_unicode=True, sort_keys=False, width=100)


def write_private(path: str, text: str) -> None:
    """Write ``text`` readable by its owner only: the snippet may carry a community."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def render_table(hosts: Sequence[Host]) -> str:
    rows = [("address", "mac", "name", "kind", "evidence")]
    rows += [(h.address, h.mac or "-", h.name or "-", h.kind, ", ".join(h.evidence)) for h in hosts]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [
        "  ".join(f"{c:<{w}}" for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4]
        for r in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


def as_json(hosts: Sequence[Host], subnet: str) -> dict[str, Any]:
    return {
        "subnet": subnet,
        "devices": [
            {
                "address": h.address,
                "mac": h.mac,
                "name": h.name,
                "kind": h.kind,
                "services": [
                    {"service": s.service, "port": s.port, "instance": s.instance}
                    for s in h.services
                ],
                "sys_descr": h.snmp.sys_descr if h.snmp else "",
                "sys_object_id": h.snmp.sys_object_id if h.snmp else "",
                "printer_mib": bool(h.snmp and h.snmp.printer_mib),
                "evidence": h.evidence,
            }
            for h in hosts
        ],
    }


def inventory(hosts: Sequence[Host], ward: str, agent: str, now: float | None = None) -> Inventory:
    return Inventory(
        ward=ward,
        agent=agent,
        taken_at=time.time() if now is None else now,
        devices=[
            Device(
                address=h.address,
                mac=h.mac,
                name=h.name[:255],
                kind=h.kind,
                services=h.service_words()[:16],
                sys_descr=(h.snmp.sys_descr if h.snmp else "")[:1024],
                endpoints=endpoints(h),
                printer_mib=bool(h.snmp and h.snmp.printer_mib),
            )
            for h in hosts
        ],
    )


def post_inventory(url: str, token: str, inv: Inventory, timeout: float) -> dict[str, Any]:
    """POST ``inv`` to the collector; raises httpx.HTTPError with the collector's detail."""
    import httpx

    r = httpx.post(
        url.rstrip("/") + "/api/v1/inventory",
        content=inv.model_dump_json().encode("utf-8"),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        timeout=timeout,
    )
    if r.status_code != 200:
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        raise httpx.HTTPStatusError(
            f"collector answered {r.status_code}: {detail}", request=r.request, response=r
        )
    body: dict[str, Any] = r.json()
    return body


# ---- the whole run --------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    subnet: str | None = None
    interface: str | None = None
    force: bool = False
    rate: float = 50.0
    browse_seconds: float = 3.0
    arp_timeout: float = 2.0
    community: str = "public"
    snmp_port: int = 161
    snmp_timeout: float = 1.0
    arp: bool = True
    mdns: bool = True
    snmp: bool = True


@dataclass
class Discovery:
    subnet: str
    hosts: list[Host]
    warnings: list[str]


def discover(opts: Options) -> Discovery:
    if not 0 < opts.rate <= 1000:
        raise DiscoverError(f"--rate {opts.rate:g}: must be between 0 and 1000 per second")
    if not 0 <= opts.browse_seconds <= 60:
        raise DiscoverError(f"--browse-seconds {opts.browse_seconds:g}: must be 0 to 60")
    net = plan_subnet(opts.subnet or default_subnet(opts.interface), opts.force)
    own = local_addresses()
    mine = [a for a in own if ipaddress.ip_address(a) in net]
    warnings: list[str] = []
    from agent import discover_net as dn

    arp: dict[str, str] = {}
    if opts.arp:
        iface = opts.interface or (own[mine[0]][0] if mine else None)
        try:
            arp = dn.arp_sweep(sweep_targets(net, mine), iface, opts.rate, opts.arp_timeout)
        except PermissionError:
            warnings.append("ARP sweep skipped: needs root or CAP_NET_RAW")
        except OSError as exc:
            warnings.append(f"ARP sweep failed: {exc}")
    announced: list[Announced] = []
    if opts.mdns and opts.browse_seconds > 0:
        try:
            found = dn.mdns_browse(opts.browse_seconds, mine[0] if mine else None)
        except OSError as exc:
            warnings.append(f"mDNS browse failed: {exc}")
        else:
            announced = [a for a in found if confine(net, [a.address]) and a.address not in mine]
    gateway = None
    route = default_gateway()
    if route is not None and confine(net, [route[1]]):
        gateway = route[1]
    snmp: list[SnmpAnswer] = []
    if opts.snmp:
        candidates = [*arp, *(a.address for a in announced)]
        if gateway is not None:
            candidates.append(gateway)
        targets = [a for a in confine(net, candidates) if a not in mine]
        snmp = dn.snmp_probe(targets, opts.snmp_port, opts.community, opts.snmp_timeout, opts.rate)
    return Discovery(str(net), merge(net, arp, announced, snmp, gateway), warnings)
