"""The three ways ``discover`` finds hosts: ARP sweep (scapy), mDNS/DNS-SD browse (zeroconf)
and SNMP probes (``checks._snmp``, over pysnmp). Each library is imported inside its function:
the agent daemon never pays for them.

Every function takes the addresses it may touch already confined to the subnet asked for
(see :func:`agent.discover.confine`), and every exchange has a timeout.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from checks import _snmp
from checks.core import CheckFailed

SYS_DESCR = (1, 3, 6, 1, 2, 1, 1, 1, 0)
SYS_OBJECT_ID = (1, 3, 6, 1, 2, 1, 1, 2, 0)
SYS_NAME = (1, 3, 6, 1, 2, 1, 1, 5, 0)
PRINTER_MIB = (1, 3, 6, 1, 2, 1, 43)  # RFC 3805: any object under it means a printer agent

SERVICE_TYPES = (
    "_ipp._tcp.local.",
    "_ipps._tcp.local.",
    "_uscan._tcp.local.",
    "_uscans._tcp.local.",
    "_pdl-datastream._tcp.local.",
    "_sip._udp.local.",
)
MAX_SERVICES_SEEN = 512


@dataclass(frozen=True)
class Announced:
    """One DNS-SD service instance resolved to an address."""

    service: str  # short word: ipp, ipps, uscan, uscans, pdl-datastream, sip
    instance: str
    address: str
    port: int
    host: str
    txt: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SnmpAnswer:
    address: str
    sys_descr: str
    sys_object_id: str
    sys_name: str
    printer_mib: bool


class Pace:
    """Spaces events at most ``rate`` per second, across all the tasks that share it."""

    def __init__(self, rate: float) -> None:
        self.gap = 1.0 / rate
        self._next = 0.0

    async def wait(self) -> None:
        now = time.monotonic()
        slot = max(now, self._next)
        self._next = slot + self.gap
        if slot > now:
            await asyncio.sleep(slot - now)


def short_service(service_type: str) -> str:
    return service_type.split(".")[0].lstrip("_")


# ---- ARP ------------------------------------------------------------------------------------


def arp_sweep(
    targets: Sequence[str], interface: str | None, rate: float, timeout: float
) -> dict[str, str]:
    """Who-has every address in ``targets`` (at most ``rate`` per second): address -> MAC."""
    if not targets:
        return {}
    from scapy.layers.l2 import ARP, Ether
    from scapy.sendrecv import srp

    wanted = set(targets)
    frames = Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(pdst=list(targets))
    kwargs: dict[str, Any] = {"timeout": timeout, "inter": 1.0 / rate, "verbose": False}
    if interface:
        kwargs["iface"] = interface
    answered, _ = srp(frames, **kwargs)
    found: dict[str, str] = {}
    for _sent, reply in answered:
        arp = reply[ARP]
        if arp.op == 2 and arp.psrc in wanted:
            found[str(arp.psrc)] = str(arp.hwsrc).lower()
    return found


# ---- mDNS / DNS-SD --------------------------------------------------------------------------


def mdns_browse(
    seconds: float,
    bind: str | None,
    types: Iterable[str] = SERVICE_TYPES,
    resolve_timeout: float = 1.5,
) -> list[Announced]:
    """Browse the DNS-SD ``types`` for ``seconds`` on the interface holding ``bind`` (an IPv4
    address; None: all), then resolve each instance seen."""
    from zeroconf import InterfaceChoice, IPVersion, ServiceBrowser, ServiceStateChange, Zeroconf

    seen: dict[tuple[str, str], None] = {}
    lock = threading.Lock()

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is not ServiceStateChange.Removed:
            with lock:
                if len(seen) < MAX_SERVICES_SEEN:
                    seen[(service_type, name)] = None

    interfaces: Any = [bind] if bind else InterfaceChoice.All
    zc = Zeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)
    try:
        browser = ServiceBrowser(zc, list(types), handlers=[on_change])
        time.sleep(seconds)
        browser.cancel()
        with lock:
            pending = list(seen)
        out: list[Announced] = []
        deadline = time.monotonic() + max(resolve_timeout, seconds)
        for service_type, name in pending:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            info = zc.get_service_info(service_type, name, timeout=int(min(left, 1.5) * 1000))
            if info is None or info.port is None:
                continue
            txt = {
                k.decode("utf-8", "replace"): (v or b"").decode("utf-8", "replace")
                for k, v in info.properties.items()
            }
            instance = name.removesuffix("." + service_type)
            for address in info.parsed_addresses(IPVersion.V4Only):
                out.append(
                    Announced(
                        service=short_service(service_type),
                        instance=instance,
                        address=address,
                        port=int(info.port),
                        host=(info.server or "").removesuffix(".").removesuffix(".local"),
                        txt=txt,
                    )
                )
        return out
    finally:
        zc.close()


# ---- SNMP -----------------------------------------------------------------------------------


async def _probe_one(
    engine: Any, address: str, port: int, community: str, timeout: float
) -> SnmpAnswer | None:
    session = await _snmp.Session.open(
        engine, _snmp.community(community), (address, port), socket.AF_INET, timeout, 0
    )
    try:
        values = await session.get([SYS_DESCR, SYS_OBJECT_ID, SYS_NAME])
    except CheckFailed:
        return None
    try:
        printer = bool((await session.columns([PRINTER_MIB], 1))[PRINTER_MIB])
    except CheckFailed:
        printer = False
    text = [_text(values.get(oid)) for oid in (SYS_DESCR, SYS_OBJECT_ID, SYS_NAME)]
    return SnmpAnswer(address, text[0], text[1], text[2], printer)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


async def _probe_all(
    targets: Sequence[str], port: int, community: str, timeout: float, rate: float, workers: int
) -> list[SnmpAnswer]:
    pace = Pace(rate)
    gate = asyncio.Semaphore(workers)

    async def one(address: str) -> SnmpAnswer | None:
        async with gate:
            await pace.wait()
            try:
                # Bounded even if pysnmp's own timeout misbehaves: two requests per host.
                return await asyncio.wait_for(
                    _probe_one(engine, address, port, community, timeout), 2 * timeout + 1
                )
            except (TimeoutError, OSError):
                return None

    with _snmp.engine() as engine:
        answers = await asyncio.gather(*(one(a) for a in targets))
    return [a for a in answers if a is not None]


def snmp_probe(
    targets: Sequence[str],
    port: int = 161,
    community: str = "public",
    timeout: float = 1.0,
    rate: float = 50.0,
    workers: int = 16,
) -> list[SnmpAnswer]:
    """sysDescr, sysObjectID, sysName and Printer MIB presence of each host that answers
    SNMP v2c; at most ``rate`` hosts started per second, ``workers`` at once."""
    for address in targets:
        ipaddress.IPv4Address(address)  # a name here would mean a lookup we did not confine
    if not targets:
        return []
    return asyncio.run(_probe_all(targets, port, community, timeout, rate, workers))
