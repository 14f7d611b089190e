"""The line and device checks' declarations: counters, items and targets checked at load."""

from __future__ import annotations

import pytest

from checks import host, icmp, link, pmtu, printer_ipp, printer_snmp, stream, traceroute
from checks.core import CheckType

DECLARED: dict[str, CheckType] = {
    "icmp": icmp.CHECK,
    "pmtu": pmtu.CHECK,
    "traceroute": traceroute.CHECK,
    "stream": stream.CHECK,
    "link": link.CHECK,
    "host": host.CHECK,
    "printer_snmp": printer_snmp.CHECK,
    "printer_ipp": printer_ipp.CHECK,
}




def test_host_nic_counters_are_counters() -> None:
    for name in ("nic_errors_total", "nic_drops_total"):
        declared = host.CHECK.metrics[name]
        assert (declared.kind, declared.per_item) == ("counter", True)
    assert host.CHECK.metric("nic_errors_total__eth0") is not None
    assert host.CHECK.metric("disk_free_ratio__") is not None  # the "/" mount
    assert host.CHECK.metric("disk_free_ratio") is None


@pytest.mark.parametrize(
    ("word", "good", "bad"),
    [
        ("icmp", "gw.example.vn", "10.0.0.1:80"),
        ("pmtu", "[2001:db8::1]", ""),
        ("traceroute", "192.0.2.1", "2001:db8::1"),
        ("stream", "reflector.example.vn", "[2001:db8::1"),
        ("printer_snmp", "[2001:db8::5]:1161", "printer:99999"),
        ("printer_ipp", "ipps://printer.example.vn/ipp/print", "http://printer/"),
    ],
)
def test_targets_are_checked_at_config_load(word: str, good: str, bad: str) -> None:
    parse = DECLARED[word].parse_target
    assert parse is not None
    parse(good)
    with pytest.raises(ValueError, match="address"):
        parse(bad)
