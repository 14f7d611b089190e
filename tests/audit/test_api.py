"""Audits over HTTP: take (admin), list, read, verify, export, compare."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from collector import tokens
from collector.api import create_app
from collector.service import Service

from .conftest import CUT, JUNE_12, JUNE_22, Fed, tamper


@pytest.fixture
def client(service: Service, fed: Fed) -> Iterator[TestClient]:
    """An admin's client: taking an audit is an admin action."""
    service.clock = lambda: fed.june_22.end + 60
    admin = tokens.create(service.engine, role="admin", name="Trung tâm CĐS")
    with TestClient(create_app(service), base_url="http://127.0.0.1") as c:
        c.headers["Authorization"] = f"Bearer {admin}"
        yield c


def test_only_an_admin_takes_an_audit_and_a_viewer_reads_it(
    service: Service, fed: Fed, client: TestClient
) -> None:
    first = post(client, JUNE_12)
    viewer = tokens.create(service.engine, role="viewer", name="Kiểm toán viên")
    with TestClient(create_app(service), base_url="http://127.0.0.1") as c:
        body = {"from": JUNE_22[0], "to": JUNE_22[1], "title": "t", "signed_off_by": "s"}
        assert c.post("/api/v1/audits", json=body).status_code == 401
        c.headers["Authorization"] = f"Bearer {viewer}"
        assert c.post("/api/v1/audits", json=body).status_code == 403
        assert c.get(f"/api/v1/audits/{first['id']}/verify").json()["intact"] is True
    # Taking it is in the admin audit log, with who took it.
    log = client.get("/api/v1/audit-log").json()
    assert [e["action"] for e in log][-1] == "audit.create"
    assert log[-1]["who"].endswith("Trung tâm CĐS")


def post(client: TestClient, window: tuple[str, str], **over: object) -> dict[str, object]:
    body = {"from": window[0], "to": window[1], "title": "Chạy thử",
            "signed_off_by": "Nguyễn Văn An", **over}  # fmt: skip
    r = client.post("/api/v1/audits", json=body)
    assert r.status_code == 201, r.text
    doc: dict[str, object] = r.json()
    return doc


def test_take_read_verify_export_compare(client: TestClient) -> None:
    first = post(client, JUNE_12)
    second = post(client, JUNE_22, step_seconds=30, wards=[CUT])
    assert first["id"] == 1 and second["id"] == 2
    assert first["signed_off_by"] == "Nguyễn Văn An" and len(str(first["sha256"])) == 64

    listed = client.get("/api/v1/audits").json()
    assert [a["id"] for a in listed] == [1, 2]
    assert listed[0]["sha256"] == first["sha256"]

    one = client.get("/api/v1/audits/1").json()
    assert one["intact"] is True and one["problems"] == []
    assert one["content"]["created_by"].endswith(" Trung tâm CĐS")
    assert {w["id"] for w in one["content"]["wards"]} >= {CUT}
    assert client.get("/api/v1/audits/2/verify").json()["intact"] is True

    pdf = client.get("/api/v1/audits/1/export", params={"format": "pdf"})
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF-")
    assert pdf.headers["content-type"] == "application/pdf"
    assert 'filename="wardready-audit-1-vi.pdf"' in pdf.headers["content-disposition"]
    csv = client.get(
        "/api/v1/audits/1/export", params={"format": "csv"}, headers={"Accept-Language": "en"}
    )
    assert csv.content.startswith(b"\xef\xbb\xbfWard id,")
    html = client.get("/api/v1/audits/1/export", params={"format": "html", "lang": "vi"})
    assert "Phường Minh Phụng" in html.text

    cmp = client.get("/api/v1/audits/compare", params={"a": 1, "b": 2}).json()
    assert {w["id"]: w["change"] for w in cmp["wards"]}[CUT] == "improved"


def test_errors(client: TestClient, service: Service) -> None:
    r = client.post("/api/v1/audits", json={"from": "2026-06-12T08:00", "to": JUNE_12[1],
                                            "title": "t", "signed_off_by": "s"})  # fmt: skip
    assert (
        r.status_code == 422 and "from: '2026-06-12T08:00' has no time zone" in r.json()["detail"]
    )
    r = client.post("/api/v1/audits", json={"from": JUNE_12[0], "to": JUNE_12[1], "title": "t"})
    assert r.status_code == 422
    r = client.post("/api/v1/audits", json={"from": JUNE_12[0], "to": JUNE_12[1], "title": "t",
                                            "signed_off_by": "s", "extra": 1})  # fmt: skip
    assert r.status_code == 422
    assert client.get("/api/v1/audits/9").status_code == 404
    assert client.get("/api/v1/audits/9/export").status_code == 404
    assert client.get("/api/v1/audits/compare", params={"a": 1, "b": 9}).status_code == 404

    post(client, JUNE_12)
    tamper(service.engine, title="Đã sửa")
    r = client.get("/api/v1/audits/1/export", params={"format": "pdf"})
    assert r.status_code == 409 and "fails verification" in r.json()["detail"]
    assert client.get("/api/v1/audits/1/verify").json()["intact"] is False


def test_the_audit_routes_are_in_the_openapi_document(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/v1/audits", "/api/v1/audits/{audit_id}", "/api/v1/audits/{audit_id}/verify",
            "/api/v1/audits/{audit_id}/export", "/api/v1/audits/compare"} <= set(paths)  # fmt: skip
