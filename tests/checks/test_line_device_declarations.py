"""The line and device checks: each imports only the core, pure helpers and the private
toolkit, and declares itself once, metrics included, as its registry entry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from checks import host, icmp, link, pmtu, printer_ipp, printer_snmp, stream, traceroute
from checks.core import CheckType
from checks.registry import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
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
PURE_HELPERS = {"core", "emodel", "twamp"}


@pytest.mark.parametrize("word", sorted(DECLARED))
def test_loading_a_probe_loads_no_other_probe(word: str) -> None:
    # In a fresh interpreter, so what the toolkit pulls in counts too, however indirectly.
    code = (
        f"import sys, checks.{word}\n"
        "print(' '.join(m.split('.')[1] for m in sys.modules if m.startswith('checks.')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    loaded = set(done.stdout.split())
    assert word in loaded
    probes = {m for m in loaded if not m.startswith("_")} - PURE_HELPERS - {word}
    assert probes == set(), f"checks.{word} loads probe modules {sorted(probes)}"


@pytest.mark.parametrize("word", sorted(DECLARED))
def test_the_registry_holds_the_module_declaration(word: str) -> None:
    check = DECLARED[word]
    assert REGISTRY[word] is check
    assert check.strict
    assert check.metrics
    for name in check.metrics:
        # The docstring is the check's manual: every metric it may report is in it.
        assert f"``{name}" in check.doc, (word, name)


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
