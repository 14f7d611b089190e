"""POST /api/v1/inventory and the inventory in GET /api/v1/wards/{id}."""

from __future__ import annotations

import json
import time
from typing import Any

import sqlalchemy as sa
from fastapi.testclient import TestClient

from collector import db, tokens
from tests.collector.conftest import BROKEN, READY, auth


def inventory(ward: str = READY, agent: str = "pc-01", **over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "ward": ward,
        "agent": agent,
        "taken_at": time.time() - 5,
        "devices": [
            {
                "address": "10.10.1.21",
                "mac": "3c:2a:f4:00:00:01",
                "name": "Máy in quầy 1",
                "kind": "printer",
                "services": ["ipp", "ipps"],
                "sys_descr": "Brother HL-L5100DN series",
            },
            {"address": "10.10.1.30", "kind": "unknown"},
        ],
    }
    doc.update(over)
    return doc


def post(client: TestClient, token: str | None, doc: dict[str, Any]) -> Any:
    headers = {"Content-Type": "application/json", **(auth(token) if token else {})}
    return client.post(
        "/api/v1/inventory",
        content=json.dumps(doc, ensure_ascii=False).encode("utf-8"),
        headers=headers,
    )


def test_schema_has_the_inventory_revision(engine: Any) -> None:
    assert db.current_revision(engine) == db.head_revision()
    assert "inventory" in sa.inspect(engine).get_table_names()


def test_inventory_is_stored_and_shown_on_the_ward(client: TestClient, token: str) -> None:
    r = post(client, token, inventory())
    assert r.status_code == 200, r.text
    assert r.json() == {"stored": True, "devices": 2}
    shown = client.get(f"/api/v1/wards/{READY}").json()["inventory"]
    assert len(shown) == 1 and shown[0]["agent"] == "pc-01"
    first = shown[0]["devices"][0]
    assert first["name"] == "Máy in quầy 1" and first["kind"] == "printer"
    assert first["services"] == ["ipp", "ipps"]
    assert shown[0]["devices"][1] == {
        "address": "10.10.1.30",
        "mac": "",
        "name": "",
        "kind": "unknown",
        "services": [],
        "sys_descr": "",
        "endpoints": [],
        "printer_mib": False,
    }
    # Another ward's page does not show it.
    assert client.get(f"/api/v1/wards/{BROKEN}").json()["inventory"] == []


def test_newest_inventory_replaces_and_a_late_older_one_does_not(
    client: TestClient, token: str
) -> None:
    now = time.time()
    assert post(client, token, inventory(taken_at=now - 10)).json()["stored"]
    newer = inventory(taken_at=now - 2, devices=[{"address": "10.10.1.40", "kind": "vc"}])
    assert post(client, token, newer).json() == {"stored": True, "devices": 1}
    assert post(client, token, inventory(taken_at=now - 30)).json()["stored"] is False
    shown = client.get(f"/api/v1/wards/{READY}").json()["inventory"]
    assert [d["address"] for d in shown[0]["devices"]] == ["10.10.1.40"]


def test_one_row_per_agent(client: TestClient, engine: Any, service: Any) -> None:
    ward_token = tokens.create(engine, READY, None)
    assert post(client, ward_token, inventory(agent="pc-01")).status_code == 200
    assert post(client, ward_token, inventory(agent="pc-02")).status_code == 200
    shown = client.get(f"/api/v1/wards/{READY}").json()["inventory"]
    assert [i["agent"] for i in shown] == ["pc-01", "pc-02"]


def test_token_writes_only_its_ward_and_agent(client: TestClient, token: str) -> None:
    r = post(client, token, inventory(ward=BROKEN))
    assert r.status_code == 403 and r.json()["detail"].startswith("ward:")
    r = post(client, token, inventory(agent="pc-09"))
    assert r.status_code == 403 and r.json()["detail"].startswith("agent:")
    assert client.get(f"/api/v1/wards/{BROKEN}").json()["inventory"] == []


def test_missing_or_bad_token_is_401(client: TestClient, token: str) -> None:
    assert post(client, None, inventory()).status_code == 401
    assert post(client, "not-a-token", inventory()).status_code == 401
    assert client.get(f"/api/v1/wards/{READY}").json()["inventory"] == []


def test_invalid_inventory_names_the_field(client: TestClient, token: str) -> None:
    bad = inventory()
    bad["devices"][0]["kind"] = "toaster"
    r = post(client, token, bad)
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "devices.0.kind"
    r = post(client, token, inventory(devices=[{"address": "x", "kind": "printer"}] * 1025))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "devices"
    r = post(client, token, inventory(taken_at=time.time() + 3600))
    assert r.status_code == 422 and r.json()["detail"].startswith("taken_at:")


def test_openapi_documents_the_inventory_body(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/api/v1/inventory"]["post"]["requestBody"]
    ref = body["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/Inventory"
    assert "devices" in spec["components"]["schemas"]["Inventory"]["properties"]
