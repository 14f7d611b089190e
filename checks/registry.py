"""The literal map from a config's ``type:`` word to its check.

Adding a check type: write ``checks/<word>.py`` ending in its one declaration,
``CHECK = core.CheckType(params=..., probe=..., reasons=..., metrics=...)``, add one line here,
and add ``tests/checks/test_<word>.py``. The module name, the type word and the metric prefix
are the same word. A probe imports ``checks.core`` and the private toolkit (``checks._*``),
never another probe.
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

REGISTRY: Mapping[str, CheckType] = MappingProxyType(
    {
        "icmp": icmp.CHECK,
        "tcp": tcp.CHECK,
        "http": http.CHECK,
        "dns": dns.CHECK,
        "host": host.CHECK,
        "sip": sip.CHECK,
        "stun": stun.CHECK,
        "turn": turn.CHECK,
        "h323": h323.CHECK,
        "bandwidth": bandwidth.CHECK,
        "traceroute": traceroute.CHECK,
        "pmtu": pmtu.CHECK,
        "link": link.CHECK,
        "stream": stream.CHECK,
        "printer_snmp": printer_snmp.CHECK,
        "printer_ipp": printer_ipp.CHECK,
        "scanner_escl": scanner_escl.CHECK,
        "scanner_usb": scanner_usb.CHECK,
        "ssh": ssh.CHECK,
    }
)
