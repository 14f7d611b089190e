"""The fleet file: inheritance with provenance, file:line errors, plan versions, inventory
acceptance into a plan, and what verdicts say about planned checks."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from collector import fleet, inventory, tokens
from collector.service import Service
from shared.wire import Device, Endpoint, Inventory
from tests.collector.conftest import BROKEN, READY, auth, batch, body

FLEET = """\
version: 1
defaults:
  checks:
    - {name: dms, type: http, target: "http://dms.example/", labels: {role: shared_system}}
    - name: reflector
      type: tcp
      target: "reflector.example:862"
      labels: {role: vc, vc: stream}
groups:
  "1":
    checks:
      - {name: reflector, target: "reflector-g1.example:862", labels: {site: west}}
wards:
  ward-minh-phung:
    checks:
      - {name: wan-fibre, type: icmp, target: 10.0.0.1, labels: {role: wan, line: fibre}}
      - {name: dms, params: {valid_status: [200]}}
  ward-binh-thoi:
    checks:
      - {name: dms, enabled: false}
"""


def write(tmp_path: Path, text: str, name: str = "fleet.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def imported(service: Service, tmp_path: Path, text: str = FLEET) -> dict[str, int]:
    path = write(tmp_path, text)
    doc = fleet.read_file(path, fleet.known_wards(service.engine))
    return fleet.import_fleet(service.engine, doc, str(path))


def by_name(plan: fleet.Plan) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in plan.checks}


def test_inheritance_field_by_field_with_where_each_value_came_from(
    service: Service, tmp_path: Path
) -> None:
    imported(service, tmp_path)
    plan = fleet.get_plan(service.engine, "ward-minh-phung")
    assert plan is not None and plan.version == 1
    checks = by_name(plan)
    assert list(checks) == ["dms", "reflector", "wan-fibre"]
    # group 1 changed the target and added a label; the type and other labels stay inherited
    assert checks["reflector"] == {
        "name": "reflector",
        "type": "tcp",
        "target": "reflector-g1.example:862",
        "labels": {"role": "vc", "vc": "stream", "site": "west"},
    }
    assert plan.sources["reflector"]["target"] == "group 1"
    assert plan.sources["reflector"]["type"] == "defaults"
    assert plan.sources["reflector"]["labels.site"] == "group 1"
    assert plan.sources["dms"]["params.valid_status"] == "ward"
    assert plan.sources["dms"]["target"] == "defaults"
    assert plan.sources["wan-fibre"]["target"] == "ward"
    # Bến Thành is in group 2: the defaults' reflector, untouched
    other = by_name(fleet.get_plan(service.engine, READY) or pytest.fail("no plan"))
    assert other["reflector"]["target"] == "reflector.example:862"
    # enabled: false drops an inherited check
    assert "dms" not in by_name(fleet.get_plan(service.engine, "ward-binh-thoi") or pytest.fail())
    shown = fleet.render_plan(plan)
    assert 'target: "reflector-g1.example:862"  # group 1' in shown
    assert 'type: "tcp"  # defaults' in shown


def test_version_goes_up_only_for_wards_whose_plan_changed(
    service: Service, tmp_path: Path
) -> None:
    first = imported(service, tmp_path)
    assert first["ward-minh-phung"] == 1
    assert imported(service, tmp_path) == {}  # same file: nothing changes
    changed = imported(service, tmp_path, FLEET.replace("10.0.0.1", "10.0.0.2"))
    assert changed == {"ward-minh-phung": 2}
    assert fleet.plan_versions(service.engine)[READY][0] == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "version: 1\ndefaults:\n  checks:\n"
            "    - {name: a, type: tcp, target: 'h:1', colour: red}\n",
            "fleet.yaml:4: defaults.checks[0].colour: unknown key",
        ),
        (
            "wards:\n  ward-nowhere:\n    checks: []\n",
            "fleet.yaml:2: wards.ward-nowhere: 'ward-nowhere' is not a known ward",
        ),
        (
            "defaults:\n  checks:\n    - {name: a, type: tcp, target: 'h:1'}\n"
            "    - {name: a, type: tcp, target: 'h:2'}\n",
            "fleet.yaml:4: defaults.checks[1].name: duplicate check name 'a' (first at line 3)",
        ),
        (
            "defaults:\n  checks:\n    - name: wan\n      type: icmp\n      target: 10.0.0.1\n"
            "      params:\n        count: 0\n",
            "fleet.yaml:7: defaults.checks[0].params.count: ward ",
        ),
        (
            "defaults:\n  checks:\n    - {name: a, type: nosuch, target: x}\n",
            "fleet.yaml:3: defaults.checks[0].type: ward ",
        ),
    ],
)
def test_bad_fleet_files_name_file_line_and_field(
    service: Service, tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(fleet.FleetError) as err:
        fleet.read_file(path, fleet.known_wards(service.engine))
    shown = [m.replace(str(tmp_path) + "/", "") for m in err.value.messages]
    assert any(m.startswith(expected) for m in shown), shown


def printer_inventory(ward: str = BROKEN) -> Inventory:
    return Inventory(
        ward=ward,
        agent="pc-01",
        taken_at=time.time() - 5,
        devices=[
            Device(
                address="10.1.100.10",
                kind="printer",
                services=["ipp"],
                endpoints=[Endpoint(service="ipp", port=631, path="ipp/print")],
            ),
            Device(address="10.1.100.11", kind="printer", printer_mib=True),
            Device(address="10.1.100.12", kind="unknown"),
        ],
    )


def test_accepted_inventory_becomes_checks_in_the_plan(service: Service, tmp_path: Path) -> None:
    imported(service, tmp_path)
    inventory.store(service.engine, printer_inventory(), time.time())
    checks, plan = fleet.accept_inventory(service.engine, BROKEN, community="c0mm")
    assert plan is not None and plan.version == 2
    got = {(c["type"], c["target"]): c for c in checks}
    assert set(got) == {("printer_ipp", "ipp://10.1.100.10:631/ipp/print"),
                        ("printer_snmp", "10.1.100.11")}  # fmt: skip
    for c in checks:
        assert c["labels"] == {"role": "counter_device", "device": "printer"}
        assert plan.sources[c["name"]]["type"] == "inventory"
    assert got[("printer_snmp", "10.1.100.11")]["params"] == {"community": "c0mm"}
    assert {c["name"] for c in checks} <= set(by_name(plan))

    with pytest.raises(fleet.FleetError, match=r"10\.9\.9\.9 not in ward"):
        fleet.accept_inventory(service.engine, BROKEN, ["10.9.9.9"])
    with pytest.raises(fleet.FleetError, match="no inventory reported"):
        fleet.accept_inventory(service.engine, READY)


def test_accept_through_the_api(client: TestClient, service: Service, tmp_path: Path) -> None:
    inventory.store(service.engine, printer_inventory(), time.time())
    url = f"/api/v1/wards/{BROKEN}/inventory/accept"
    # Changing a ward's plan is an admin's: the client reads as a viewer.
    assert client.post(url, json={"devices": ["10.1.100.10"]}).status_code == 403
    admin = tokens.create(service.engine, role="admin", name="Trung tâm CĐS")
    client.headers["Authorization"] = f"Bearer {admin}"
    r = client.post(url, json={"devices": ["10.1.100.10"]})
    assert r.status_code == 200, r.text
    logged = client.get("/api/v1/audit-log").json()
    assert logged[-1]["action"] == "inventory.accept" and logged[-1]["who"].endswith("CĐS")
    assert [c["type"] for c in r.json()["accepted"]] == ["printer_ipp"]
    assert r.json()["plan_version"] == 1
    shown = client.get(f"/api/v1/wards/{BROKEN}/plan").json()
    assert shown["checks"][0]["target"] == "ipp://10.1.100.10:631/ipp/print"
    r = client.post(f"/api/v1/wards/{READY}/inventory/accept", json={})
    assert r.status_code == 422 and "no inventory" in r.json()["detail"]


def test_plan_endpoint_etag_304_and_reported_version(
    client: TestClient, service: Service, tmp_path: Path, token: str
) -> None:
    assert client.get("/api/v1/plan", headers=auth(token)).status_code == 404
    imported(service, tmp_path)
    r = client.get("/api/v1/plan", headers=auth(token))
    assert r.status_code == 200
    assert r.headers["etag"] == '"v1"' and r.json()["ward"] == READY
    again = client.get("/api/v1/plan", headers={**auth(token), "If-None-Match": '"v1"'})
    assert again.status_code == 304 and again.content == b""
    assert client.get("/api/v1/plan").status_code == 401
    assert client.get("/api/v1/fleet").json()["plan_requests"]["not_modified"] == 1

    doc = batch(results=[])
    doc["status"]["plan_version"] = 0
    doc["status"]["plan_error"] = "plan v1:3: checks[0].type: unknown check type 'x'"
    assert client.post("/api/v1/ingest", content=body(doc), headers=auth(token)).status_code == 200
    outdated = client.get("/api/v1/fleet").json()["outdated"]
    assert outdated == [{"ward": READY, "agent": "pc-01", "running": 0, "current": 1,
                         "plan_error": doc["status"]["plan_error"]}]  # fmt: skip
    agents = client.get(f"/api/v1/wards/{READY}").json()["fleet"]["agents"]
    assert agents[0]["plan_error"].startswith("plan v1:3")


def test_verdict_tells_a_planned_check_not_reported_from_a_plan_gap(
    client: TestClient, service: Service, tmp_path: Path, token: str
) -> None:
    heartbeat = body(batch(results=[]))
    assert client.post("/api/v1/ingest", content=heartbeat, headers=auth(token)).status_code == 200
    before = client.get(f"/api/v1/wards/{READY}").json()["reasons"]
    assert any("no check matches check=http role=shared_system" in r for r in before), before
    imported(service, tmp_path)
    service.plan_book.forget()
    assert client.get("/api/v1/plan", headers=auth(token)).status_code == 200
    reasons = client.get(f"/api/v1/wards/{READY}").json()["reasons"]
    dms = next(r for r in reasons if r.startswith("dms_up"))
    assert "pc-01 has not reported dms yet (plan v1 sent" in dms, reasons
    wan = next(r for r in reasons if r.startswith("wan_loss"))
    assert "no planned check serves criterion wan_loss (plan gap: plan v1 has no check" in wan


def test_plan_body_is_json_of_the_checks(service: Service, tmp_path: Path) -> None:
    imported(service, tmp_path)
    plan = fleet.get_plan(service.engine, BROKEN)
    assert plan is not None
    assert json.loads(json.dumps(plan.body()))["checks"] == plan.checks
