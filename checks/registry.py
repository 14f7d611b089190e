"""The literal map from a config's ``type:`` word to its check.

Adding a check type: write ``checks/<word>.py`` with ``Params``, ``REASONS`` and ``probe``, add
one line here, and add its tests. The module name, the type word and the metric prefix are the
same word.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from checks import (
    bandwidth,
    dns,
    h323,
    host,
    http,
    icmp,
    link,
    pmtu,
    printer_ipp,
    printer_snmp,
    scanner_escl,
    scanner_usb,
    sip,
    ssh,
    stream,
    stun,
    tcp,
    traceroute,
    turn,
)
from checks.core import CheckType


def _entry(module: object) -> CheckType:
    # TRANSITIONAL (issue 8): a converted module declares CHECK; its registry line then
    # becomes ``"word": word.CHECK`` and, once all are, this function goes.
    check = getattr(module, "CHECK", None)
    if isinstance(check, CheckType):
        return check
    return CheckType(
        params=module.Params,  # type: ignore[attr-defined]
        probe=module.probe,  # type: ignore[attr-defined]
        reasons=frozenset(module.REASONS),  # type: ignore[attr-defined]
        metrics={},
        doc=module.__doc__ or "",
        strict=False,
    )


REGISTRY: Mapping[str, CheckType] = MappingProxyType(
    {
        "icmp": icmp.CHECK,
        "tcp": _entry(tcp),
        "http": _entry(http),
        "dns": _entry(dns),
        "host": host.CHECK,
        "sip": _entry(sip),
        "stun": _entry(stun),
        "turn": _entry(turn),
        "h323": _entry(h323),
        "bandwidth": _entry(bandwidth),
        "traceroute": traceroute.CHECK,
        "pmtu": pmtu.CHECK,
        "link": link.CHECK,
        "stream": stream.CHECK,
        "printer_snmp": printer_snmp.CHECK,
        "printer_ipp": printer_ipp.CHECK,
        "scanner_escl": _entry(scanner_escl),
        "scanner_usb": _entry(scanner_usb),
        "ssh": _entry(ssh),
    }
)
