"""Checks for a device found on a ward's LAN: the one mapping that ``wardready-agent discover
--out`` writes and the collector's ``inventory accept`` puts in a ward's plan.

Entries are agent config ``checks:`` items, labelled as the shipped profile expects:
printers ``{role: counter_device, device: printer}``, scanners ``{role: counter_device}``,
SIP endpoints ``{role: vc}``, the LAN's router ``{role: lan, device: router}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shared.wire import Endpoint

PRINTER_KINDS = frozenset({"printer", "multifunction"})


def slug(address: str) -> str:
    return address.replace(".", "-").replace(":", "-")


def _endpoint_check(
    address: str, kind: str, e: Endpoint, labels: dict[str, str]
) -> dict[str, Any] | None:
    host = f"[{address}]" if ":" in address else address
    if e.service in ("ipp", "ipps"):
        path = (e.path or "ipp/print").strip("/")
        return {
            "name": f"{kind}-{slug(address)}-{e.service}",
            "type": "printer_ipp",
            "target": f"{e.service}://{host}:{e.port}/{path}",
            "labels": labels,
        }
    if e.service in ("uscan", "uscans"):
        scheme = "https" if e.service == "uscans" else "http"
        path = (e.path or "eSCL").strip("/")
        return {
            "name": f"{kind}-{slug(address)}-{e.service}",
            "type": "scanner_escl",
            "target": f"{scheme}://{host}:{e.port}/{path}",
            "labels": {"role": "counter_device"},
        }
    if e.service == "sip":
        return {
            "name": f"vc-{slug(address)}-sip",
            "type": "sip",
            "target": f"{host}:{e.port}",
            "labels": {"role": "vc"},
        }
    return None


def device_checks(
    address: str,
    kind: str,
    endpoints: Sequence[Endpoint],
    printer_mib: bool,
    community: str = "public",
    snmp_port: int = 161,
) -> list[dict[str, Any]]:
    """The checks for one device, in a stable order."""
    labels = {"role": "counter_device"}
    if kind in PRINTER_KINDS:
        labels = {"role": "counter_device", "device": "printer"}
    offered = {e.service for e in endpoints}
    out: list[dict[str, Any]] = []
    names: set[str] = set()
    for e in endpoints:
        # One IPP and one eSCL check per device: the TLS variant only when it is the one
        # offered, since printers mostly present self-signed certificates.
        if e.service in ("ipps", "uscans") and e.service[:-1] in offered:
            continue
        check = _endpoint_check(address, kind, e, dict(labels))
        if check is not None and check["name"] not in names:
            names.add(check["name"])
            out.append(check)
    if printer_mib:
        check = {
            "name": f"{kind}-{slug(address)}-snmp",
            "type": "printer_snmp",
            "target": address if snmp_port == 161 else f"{address}:{snmp_port}",
            "labels": dict(labels),
        }
        if community != "public":
            check["params"] = {"community": community}
        out.append(check)
    if kind == "router":
        out.append(
            {
                "name": f"router-{slug(address)}-icmp",
                "type": "icmp",
                "target": address,
                "labels": {"role": "lan", "device": "router"},
            }
        )
    return out
