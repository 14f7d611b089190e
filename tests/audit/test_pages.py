"""The audits on the board: the list with seals and exports, taking one (admins only), two
side by side, and a tampered audit shown as such."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from collector import tokens
from collector.api import create_app
from collector.auth import COOKIE
from collector.service import Service

from .conftest import CUT, JUNE_12, JUNE_22, Fed, tamper

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def form(window: tuple[str, str], title: str) -> str:
    from urllib.parse import urlencode

    return urlencode({"from": window[0], "to": window[1], "title": title,
                      "signed_off_by": "Nguyễn Văn An"})  # fmt: skip


@pytest.fixture
def pages(service: Service, fed: Fed) -> Iterator[tuple[TestClient, TestClient]]:
    """A viewer's browser and an admin's, each signed in with the board's cookie."""
    service.clock = lambda: fed.june_22.end + 60
    app = create_app(service)
    clients = []
    for role in ("viewer", "admin"):
        c = TestClient(app, base_url="http://127.0.0.1")
        c.cookies.set(COOKIE, tokens.create(service.engine, role=role, name=f"{role} Bình"))
        clients.append(c)
    yield clients[0], clients[1]
    for c in clients:
        c.close()


def test_an_admin_takes_audits_a_viewer_reads_and_compares_them(
    pages: tuple[TestClient, TestClient], service: Service
) -> None:
    viewer, admin = pages
    assert "Chưa lập biên bản nào." in viewer.get("/audits").text
    # Only an admin gets the form, and only an admin may post it.
    assert 'name="signed_off_by"' not in viewer.get("/audits").text
    r = viewer.post("/audits", content=form(JUNE_12, "12/6"), headers=FORM)
    assert r.status_code == 403
    for window, title in ((JUNE_12, "Chạy thử 12/6"), (JUNE_22, "Chạy thử 22/6")):
        r = admin.post("/audits", content=form(window, title), headers=FORM,
                       follow_redirects=False)  # fmt: skip
        assert r.status_code == 303, r.text
    listed = viewer.get("/audits").text
    assert "Chạy thử 12/6" in listed and "Chạy thử 22/6" in listed
    assert listed.count("Nguyên vẹn") == 2 and "Nguyễn Văn An" in listed
    # The exports are the API's, read with the board's cookie.
    html = viewer.get("/api/v1/audits/1/export?format=html&lang=vi")
    assert html.status_code == 200 and "Phường Minh Phụng" in html.text

    compared = viewer.get("/audits/compare?a=1&b=2")
    assert compared.status_code == 200
    row = compared.text.split(f"<code class=\"small\">{CUT}</code>")[1].split("</tr>")[0]
    assert "Tiến bộ" in row and "wan_up" in row
    assert viewer.get("/audits/compare?a=1&b=99").status_code == 404


def test_a_bad_window_is_said_and_a_tampered_audit_is_shown_as_such(
    pages: tuple[TestClient, TestClient], service: Service
) -> None:
    _viewer, admin = pages
    r = admin.post("/audits", content=form(("2026-06-12T08:00", JUNE_12[1]), "x"), headers=FORM)
    assert r.status_code == 422
    assert "has no time zone" in r.text and 'role="alert"' in r.text
    admin.post("/audits", content=form(JUNE_12, "Chạy thử"), headers=FORM)
    tamper(service.engine, title="Đã sửa")
    listed = admin.get("/audits").text
    assert "Không nguyên vẹn" in listed and "format=pdf" not in listed
