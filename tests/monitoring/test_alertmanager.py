"""prometheus/alertmanager.yml: valid for amtool, every working group reaches its own on-call,
and WardSilent holds back the other alerts of its ward in a running Alertmanager."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.helpers import ROOT, need_program
from tests.monitoring import ALERTMANAGER_YML, ROUTE_CASES, run, wait_for
from tests.monitoring.alertmanager_peer import Hooks, absolute_templates, running, serving

PILOT_UNITS = ROOT / "data" / "hcmc_pilot_units.csv"


def route_cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = yaml.safe_load(ROUTE_CASES.read_text(encoding="utf-8"))["cases"]
    return cases


def routes_test(amtool: str, labels: dict[str, str], receivers: list[str] | None = None) -> Any:
    argv = [amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER_YML}"]
    if receivers is not None:
        argv.append(f"--verify.receivers={','.join(receivers)}")
    return run([*argv, *(f"{k}={v}" for k, v in labels.items())])


def test_amtool_check_config() -> None:
    amtool = need_program("amtool")
    done = run([amtool, "check-config", str(ALERTMANAGER_YML)])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 inhibit rules" in done.stdout
    # templates/wardready.tmpl, found relative to the config file as Alertmanager finds it.
    assert "1 templates" in done.stdout


@pytest.mark.parametrize(
    "case", route_cases(), ids=lambda c: f"{c['labels']['alertname']}-{'-'.join(c['receivers'])}"
)
def test_route(case: dict[str, Any]) -> None:
    amtool = need_program("amtool")
    done = routes_test(amtool, case["labels"], case["receivers"])
    assert done.returncode == 0, f"{case}: got {done.stdout.strip()} {done.stderr.strip()}"
    assert done.stdout.strip() == ",".join(case["receivers"])


def test_route_verification_can_fail() -> None:
    amtool = need_program("amtool")
    labels = {"alertname": "LineLossHigh", "severity": "warning", "working_group": "1"}
    done = routes_test(amtool, labels, ["wg-2-oncall"])
    assert done.returncode != 0
    assert done.stdout.splitlines()[0] == "wg-1-oncall"
    assert "did not match" in done.stdout


def test_every_pilot_working_group_has_its_own_route() -> None:
    amtool = need_program("amtool")
    with PILOT_UNITS.open(encoding="utf-8-sig") as f:
        groups = sorted({row["working_group"] for row in csv.DictReader(f)}, key=int)
    assert groups, PILOT_UNITS
    covered = {c["labels"].get("working_group") for c in route_cases()}
    for group in groups:
        assert group in covered, f"working group {group}: no case in {ROUTE_CASES.name}"
        labels = {"alertname": "WardNotReady", "severity": "warning", "working_group": group}
        done = routes_test(amtool, labels)
        assert done.stdout.strip() == f"wg-{group}-oncall", (group, done.stdout, done.stderr)


# --- inhibition, in a running Alertmanager -------------------------------------------------


@pytest.fixture
def hooks() -> Iterator[Hooks]:
    with serving() as h:
        yield h


def local_copy(tmp_path: Path, hooks_port: int) -> Path:
    """alertmanager.yml with every receiver turned into a webhook to this test: the routes and
    inhibit rules under test are kept as they are; only notification timing is shortened."""
    config = yaml.safe_load(ALERTMANAGER_YML.read_text(encoding="utf-8"))
    absolute_templates(config, ALERTMANAGER_YML)
    config["receivers"] = [
        {
            "name": r["name"],
            "webhook_configs": [{"url": f"http://127.0.0.1:{hooks_port}/{r['name']}"}],
        }
        for r in config["receivers"]
    ]
    config["route"].update(group_wait="1s", group_interval="1s")
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def alert(name: str, labels: dict[str, str], ends: datetime | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"labels": {"alertname": name, **labels}}
    doc["annotations"] = {"summary": f"{name} test"}
    if ends is not None:
        doc["endsAt"] = ends.isoformat()
    return doc


SILENT_WARD = {"ward": "ward-binh-thoi", "ward_name": "Phường Bình Thới", "working_group": "1"}
OTHER_WARD = {"ward": "ward-minh-phung", "ward_name": "Phường Minh Phụng", "working_group": "1"}


def key(labels: dict[str, str]) -> tuple[str, str]:
    return labels["alertname"], labels.get("ward", "")


@pytest.mark.peer
def test_ward_silent_inhibits_the_wards_other_alerts(tmp_path: Path, hooks: Hooks) -> None:
    config = local_copy(tmp_path, hooks.port)
    check = run([need_program("amtool"), "check-config", str(config)])
    assert check.returncode == 0, check.stdout + check.stderr
    with running(config, tmp_path) as api, httpx.Client(timeout=5) as http:

        def post(alerts: list[dict[str, Any]]) -> None:
            assert http.post(f"{api}/alerts", json=alerts).status_code == 200

        def statuses() -> dict[tuple[str, str], dict[str, Any]]:
            found = http.get(f"{api}/alerts").json()
            return {key(a["labels"]): a for a in found}

        # WardSilent fires first, as it does in Prometheus (2 minutes against 5 to 10 for
        # the others): Alertmanager's inhibitor learns of a source alert asynchronously.
        post(
            [
                alert("WardSilent", {"severity": "critical", **SILENT_WARD}),
                alert("WardNotReady", {"severity": "critical", **OTHER_WARD}),
                alert("CollectorDown", {"severity": "critical", "scope": "fleet"}),
            ]
        )
        wait_for(
            lambda: statuses()["WardSilent", SILENT_WARD["ward"]]["status"]["state"] == "active",
            20,
            "WardSilent processed",
        )
        post(
            [
                alert("WardNotReady", {"severity": "critical", **SILENT_WARD}),
                alert("LineLossHigh", {"severity": "warning", "line": "fibre", **SILENT_WARD}),
            ]
        )

        def settled() -> dict[tuple[str, str], dict[str, Any]] | None:
            now = statuses()
            held = [now.get((n, SILENT_WARD["ward"])) for n in ("WardNotReady", "LineLossHigh")]
            done = all(a and a["status"]["state"] == "suppressed" for a in held)
            return now if len(now) == 5 and done else None

        now = wait_for(settled, 20, "the silent ward's alerts inhibited")
        silent = now["WardSilent", SILENT_WARD["ward"]]
        assert silent["status"]["state"] == "active"
        for name in ("WardNotReady", "LineLossHigh"):
            held = now[name, SILENT_WARD["ward"]]["status"]
            assert held["inhibitedBy"] == [silent["fingerprint"]], (name, held)
        # Another ward, and a fleet alert without a ward, are not held back.
        assert now["WardNotReady", OTHER_WARD["ward"]]["status"]["state"] == "active"
        assert now["CollectorDown", ""]["status"]["state"] == "active"
        shown = http.get(f"{api}/alerts", params={"inhibited": "false"}).json()
        assert sorted(key(a["labels"]) for a in shown) == [
            ("CollectorDown", ""),
            ("WardNotReady", OTHER_WARD["ward"]),
            ("WardSilent", SILENT_WARD["ward"]),
        ]

        # What on-call is told: the silence and the other ward's verdict, in working group 1
        # and (critical) the DTC's Telegram; never the silent ward's held-back alerts.
        def told() -> set[tuple[str, str]] | None:
            got = {key(labels) for labels in hooks.alerts("wg-1-oncall")}
            want = {("WardSilent", SILENT_WARD["ward"]), ("WardNotReady", OTHER_WARD["ward"])}
            return got if want <= got else None

        wait_for(told, 20, "notifications to wg-1-oncall", step=0.5)
        # Each receiver is notified on its own; Telegram may come a moment after wg-1-oncall.
        wait_for(
            lambda: ("WardSilent", SILENT_WARD["ward"]) in map(key, hooks.alerts("dtc-telegram")),
            20,
            "the silent ward on the DTC's Telegram",
            step=0.5,
        )
        wait_for(lambda: ("CollectorDown", "") in map(key, hooks.alerts("dtc-oncall")), 20, "dtc")
        for receiver in ("wg-1-oncall", "dtc-telegram", "dtc-oncall"):
            told_keys = {key(labels) for labels in hooks.alerts(receiver)}
            assert ("WardNotReady", SILENT_WARD["ward"]) not in told_keys, receiver
            assert ("LineLossHigh", SILENT_WARD["ward"]) not in told_keys, receiver

        # The ward reports again: WardSilent resolves and its other alerts are shown.
        ended = datetime.now(UTC) - timedelta(seconds=1)
        post([alert("WardSilent", {"severity": "critical", **SILENT_WARD}, ends=ended)])

        def released() -> bool:
            now = statuses()
            return all(
                now[name, SILENT_WARD["ward"]]["status"]["state"] == "active"
                for name in ("WardNotReady", "LineLossHigh")
            )

        wait_for(released, 20, "inhibition lifted")
