"""From discovery to plan: the printers found on the namespace LAN of test_discovery_lan are
reported by ``discover --report`` to a real collector, accepted by an admin, and come back to
the ward's agents as checks of its plan, validated as the agent validates a config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent.config import load_plan
from tests.devices import Proc, wait_for
from tests.e2e.test_discovery_lan import Lan, lan, printer, snmp_printer  # noqa: F401
from tests.helpers import ROOT

pytestmark = [pytest.mark.netns, pytest.mark.peer]

WARD = "ward-ben-thanh"


def collector_cli(db: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "collector", "--db", db, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def in_scanner(net: Lan, module: str, *args: str) -> list[str]:
    """A command line running ``python -m module args`` in the scanner PC's namespace."""
    return ["ip", "netns", "exec", net.ns["scanner"], sys.executable, "-m", module, *args]


def test_discovered_printers_become_plan_checks_after_acceptance(
    lan: Lan,  # noqa: F811
    printer: str,  # noqa: F811
    snmp_printer: None,  # noqa: F811
    tmp_path: Path,
) -> None:
    db = f"sqlite:///{tmp_path / 'collector.db'}"
    done = collector_cli(db, "wards", "import", str(ROOT / "data" / "hcmc_pilot_units.csv"))
    assert done.returncode == 0, done.stderr
    token = collector_cli(db, "token", "create", "--ward", WARD, "--agent", "pc-01")
    assert token.returncode == 0, token.stderr
    # The collector runs in the scanner PC's namespace, as the ward's collector would be
    # reachable from the ward PC; its loopback is that namespace's own.
    port = 18080
    listen = f"127.0.0.1:{port}"
    serve = Proc(
        in_scanner(lan, "collector", "--db", db, "serve", "--listen", listen),
        tmp_path / "collector.log",
    )
    try:
        wait_for("collector", lambda: "listening on" in serve.output(), 30)
        config = tmp_path / "agent.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "ward": WARD,
                    "agent": "pc-01",
                    "collector": {
                        "url": f"http://127.0.0.1:{port}",
                        "token": token.stdout.strip().splitlines()[-1],
                    },
                    "checks": [{"name": "host", "type": "host", "target": "localhost"}],
                }
            )
        )
        cmd = in_scanner(
            lan,
            "agent",
            "discover",
            "--subnet",
            f"{lan.prefix}.0/26",
            "--community",
            "mono-normal",
            "--rate",
            "200",
            "--browse-seconds",
            "3",
            "--report",
            "-c",
            str(config),
        )
        found = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert found.returncode == 0, found.stderr
        assert "inventory of 3 devices reported" in found.stderr
    finally:
        serve.stop()

    accepted = collector_cli(
        db, "inventory", "accept", "--ward", WARD, "--community", "mono-normal"
    )
    assert accepted.returncode == 0, accepted.stderr
    assert "2 checks accepted into plan v1" in accepted.stdout, accepted.stdout
    shown = collector_cli(db, "plan", "show", "--ward", WARD, "--json")
    plan = json.loads(shown.stdout)
    p, s = lan.addr(10), lan.addr(11)
    by_target = {(c["type"], c["target"]): c for c in plan["checks"]}
    assert set(by_target) == {("printer_ipp", f"ipp://{p}:631/ipp/print"), ("printer_snmp", s)}
    for check in plan["checks"]:
        assert check["labels"] == {"role": "counter_device", "device": "printer"}
        assert plan["sources"][check["name"]]["type"] == "inventory"
    assert by_target[("printer_snmp", s)]["params"] == {"community": "mono-normal"}
    # The agent takes these checks as it takes a config file's.
    specs = load_plan(plan["checks"], f"plan v{plan['version']}", WARD)
    assert {spec.check for spec in specs} == {"printer_ipp", "printer_snmp"}
    text = collector_cli(db, "plan", "show", "--ward", WARD).stdout
    assert '"printer_snmp"  # inventory' in text
