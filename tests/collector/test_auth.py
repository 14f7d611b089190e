"""Roles: every kind of token against every endpoint, the cookie, the audit log, rate limits."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import pytest
import sqlalchemy as sa
from fastapi import Depends
from fastapi.testclient import TestClient

from collector import auditlog, audits, cli, db, tokens
from collector.api import create_app
from collector.auth import COOKIE, Principal, RateLimiter, reader_or_none
from collector.service import Service

from .conftest import READY, auth, batch, body

Capture = pytest.CaptureFixture[str]

KINDS = ("none", "bad", "agent", "viewer", "admin", "revoked")


@pytest.fixture
def kinds(service: Service) -> dict[str, str | None]:
    """A token of each kind; "revoked" was an admin token."""
    engine = service.engine
    revoked = tokens.create(engine, role="admin", name="cựu quản trị")
    tokens.revoke(engine, revoked[: tokens.PREFIX_LENGTH])
    # Audit 1, for the routes that read one.
    end = audits.parse_time("2026-06-12T10:00+07:00", "to")
    audits.take(engine, service.profile, start=end - timedelta(minutes=10), end=end,
                title="Chạy thử", signed_off_by="Nguyễn Văn An", created_by="cli:tester",
                step=60)  # fmt: skip
    return {
        "none": None,
        "bad": "x" * tokens.LENGTH,
        "agent": tokens.create(engine, READY, "pc-01"),
        "viewer": tokens.create(engine, role="viewer", name="Tổ giám sát"),
        "admin": tokens.create(engine, role="admin", name="Trung tâm CĐS"),
        "revoked": revoked,
    }


def _app_client(service: Service, **options: Any) -> Iterator[TestClient]:
    with TestClient(create_app(service, **options), base_url="http://127.0.0.1") as c:
        yield c


@pytest.fixture
def open_client(service: Service) -> Iterator[TestClient]:
    """No rate limit, so the matrix sees the role answers only."""
    yield from _app_client(service, ingest_rate=None)


def _inventory() -> dict[str, Any]:
    return {"ward": READY, "agent": "pc-01", "taken_at": 1.7e9 + 1, "devices": []}


def _request(client: TestClient, service: Service, endpoint: str, headers: dict[str, str]) -> int:
    method, _, path = endpoint.partition(" ")
    json_headers = {**headers, "Content-Type": "application/json"}
    if endpoint == "POST /api/v1/ingest":
        r = client.post(path, content=body(batch(READY)), headers=json_headers)
    elif endpoint == "POST /api/v1/inventory":
        doc = _inventory()
        doc["taken_at"] = service.clock() - 5
        r = client.post(path, content=json.dumps(doc), headers=json_headers)
    elif endpoint == "POST /api/v1/tokens":
        r = client.post(path, json={"role": "viewer", "name": "mới"}, headers=headers)
    elif endpoint == "POST /api/v1/audits":
        window = {"from": "2026-06-12T08:00+07:00", "to": "2026-06-12T08:10+07:00"}
        r = client.post(path, json={**window, "title": "t", "signed_off_by": "s",
                                    "step_seconds": 60}, headers=headers)  # fmt: skip
    elif endpoint == "POST /api/v1/enroll":
        enrolling = {"code": "K7QM-3XPA-W9", "agent": "pc-09", "hostname": "pc-09",
                     "machine_id_hash": "0" * 64, "version": "0.1.0", "os": "Linux"}  # fmt: skip
        r = client.post(path, json=enrolling, headers=headers)
    elif endpoint == "POST /api/v1/wards/{ward}/inventory/accept":
        r = client.post(path.replace("{ward}", READY), json={}, headers=headers)
    elif endpoint == "GET /api/v1/audits/compare":
        r = client.get(path, params={"a": 1, "b": 1}, headers=headers)
    elif endpoint == "GET /api/v1/audits/{audit_id}/export":
        r = client.get("/api/v1/audits/1/export", params={"format": "csv"}, headers=headers)
    elif endpoint == "DELETE /api/v1/tokens/{prefix}":
        victim = tokens.create(service.engine, role="viewer", name="tạm")
        r = client.delete(f"/api/v1/tokens/{victim[: tokens.PREFIX_LENGTH]}", headers=headers)
    else:
        path = path.replace("{ward}", READY).replace("{audit_id}", "1")
        r = client.request(method, path, headers=headers)
    return r.status_code


# Expected status per endpoint for: none, bad, agent, viewer, admin, revoked.
MATRIX: dict[str, tuple[int, ...]] = {
    "GET /healthz": (200, 200, 200, 200, 200, 200),
    "GET /openapi.json": (200, 200, 200, 200, 200, 200),
    "GET /docs": (200, 200, 200, 200, 200, 200),
    "GET /api/v1/wards": (401, 401, 403, 200, 200, 401),
    "GET /api/v1/wards/{ward}": (401, 401, 403, 200, 200, 401),
    "GET /api/v1/wards/{ward}/history": (401, 401, 403, 200, 200, 401),
    "GET /api/v1/audits": (401, 401, 403, 200, 200, 401),
    "POST /api/v1/audits": (401, 401, 403, 403, 201, 401),
    "GET /api/v1/audits/compare": (401, 401, 403, 200, 200, 401),
    "GET /api/v1/audits/{audit_id}": (401, 401, 403, 200, 200, 401),
    "GET /api/v1/audits/{audit_id}/verify": (401, 401, 403, 200, 200, 401),
    "GET /api/v1/audits/{audit_id}/export": (401, 401, 403, 200, 200, 401),
    "GET /metrics": (401, 401, 403, 200, 200, 401),
    "POST /api/v1/ingest": (401, 401, 200, 403, 403, 401),
    "POST /api/v1/inventory": (401, 401, 200, 403, 403, 401),
    "GET /api/v1/tokens": (401, 401, 403, 403, 200, 401),
    "POST /api/v1/tokens": (401, 401, 403, 403, 201, 401),
    "DELETE /api/v1/tokens/{prefix}": (401, 401, 403, 403, 200, 401),
    "GET /api/v1/audit-log": (401, 401, 403, 403, 200, 401),
    # The code is the credential here, not a token: a made-up one is refused alike.
    "POST /api/v1/enroll": (401, 401, 401, 401, 401, 401),
    "GET /api/v1/plan": (401, 401, 404, 403, 403, 401),
    "GET /api/v1/fleet": (401, 401, 403, 200, 200, 401),
    "GET /api/v1/wards/{ward}/plan": (401, 401, 403, 404, 404, 401),
    "POST /api/v1/wards/{ward}/inventory/accept": (401, 401, 403, 403, 422, 401),
}


def test_matrix_covers_every_route(open_client: TestClient) -> None:
    spec = open_client.get("/openapi.json").json()
    documented = {
        f"{method.upper()} {path.replace('{ward_id}', '{ward}')}"
        for path, ops in spec["paths"].items()
        for method in ops
    }
    assert documented | {"GET /openapi.json", "GET /docs"} == set(MATRIX)


@pytest.mark.sqlite_only("which role reaches which route is under test, not the database")
@pytest.mark.parametrize("endpoint", sorted(MATRIX))
def test_role_matrix_with_bearer(
    open_client: TestClient, service: Service, kinds: dict[str, str | None], endpoint: str
) -> None:
    got = []
    for kind in KINDS:
        token = kinds[kind]
        got.append(_request(open_client, service, endpoint, auth(token) if token else {}))
    assert dict(zip(KINDS, got, strict=True)) == dict(zip(KINDS, MATRIX[endpoint], strict=True))


@pytest.mark.sqlite_only("which role reaches which route is under test, not the database")
@pytest.mark.parametrize("endpoint", sorted(MATRIX))
def test_role_matrix_with_cookie(
    open_client: TestClient, service: Service, kinds: dict[str, str | None], endpoint: str
) -> None:
    # The board's cookie stands for the token on reads and admin actions; never for what an
    # agent does (writes, its plan), which takes the Authorization header only.
    expected = dict(zip(KINDS, MATRIX[endpoint], strict=True))
    if endpoint in ("POST /api/v1/ingest", "POST /api/v1/inventory", "GET /api/v1/plan"):
        expected = dict.fromkeys(KINDS, 401)
    got = {}
    for kind in KINDS:
        open_client.cookies.clear()
        token = kinds[kind]
        if token is not None:
            open_client.cookies.set(COOKIE, token)
        got[kind] = _request(open_client, service, endpoint, {})
    assert got == expected


def test_metrics_open_serves_without_a_token(service: Service) -> None:
    for client in _app_client(service, metrics_open=True):
        r = client.get("/metrics")
        assert r.status_code == 200 and "wardready_ward_ready" in r.text
        assert client.get("/api/v1/wards").status_code == 401  # only /metrics is opened


def test_refusals_name_what_is_missing(
    open_client: TestClient, kinds: dict[str, str | None]
) -> None:
    r = open_client.get("/api/v1/wards")
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json() == {"detail": "authorization: a Bearer token is required"}
    r = open_client.get("/api/v1/wards", headers=auth(kinds["agent"] or ""))
    assert r.json()["detail"] == "authorization: a agent token may not read (need viewer or admin)"
    r = open_client.post(
        "/api/v1/ingest", content=body(batch(READY)), headers=auth(kinds["viewer"] or "")
    )
    assert r.status_code == 403 and "need an agent token" in r.json()["detail"]


def test_cross_site_cookie_post_is_refused(
    open_client: TestClient, kinds: dict[str, str | None]
) -> None:
    open_client.cookies.set(COOKIE, kinds["admin"] or "")
    spec = {"role": "viewer", "name": "qua trang khác"}
    r = open_client.post("/api/v1/tokens", json=spec, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and COOKIE in r.json()["detail"]
    r = open_client.post("/api/v1/tokens", json=spec, headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403
    r = open_client.post("/api/v1/tokens", json=spec, headers={"Origin": "http://127.0.0.1"})
    assert r.status_code == 201
    # Reads stay fine from anywhere: a cross-site GET cannot see the answer.
    r = open_client.get("/api/v1/tokens", headers={"Origin": "http://evil.example"})
    assert r.status_code == 200


def test_admin_manages_tokens_and_every_change_is_audited(
    open_client: TestClient, service: Service, kinds: dict[str, str | None]
) -> None:
    admin = kinds["admin"] or ""
    r = open_client.post(
        "/api/v1/tokens",
        json={"role": "agent", "ward": READY, "agent": "pc-02"},
        headers=auth(admin),
    )
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["role"] == "agent" and made["ward"] == READY and made["agent"] == "pc-02"
    new_token = made["token"]
    assert made["prefix"] == new_token[: tokens.PREFIX_LENGTH]
    # The new agent token writes at once; a bad request says what is wrong.
    r = open_client.post(
        "/api/v1/ingest", content=body(batch(READY, agent="pc-02")), headers=auth(new_token)
    )
    assert r.status_code == 200
    r = open_client.post(
        "/api/v1/tokens", json={"role": "agent", "ward": "ward-nowhere"}, headers=auth(admin)
    )
    assert r.status_code == 400 and "ward-nowhere" in r.json()["detail"]
    r = open_client.post("/api/v1/tokens", json={"role": "viewer"}, headers=auth(admin))
    assert r.status_code == 400 and r.json()["detail"].startswith("name:")
    r = open_client.post("/api/v1/tokens", json={"role": "root", "name": "x"}, headers=auth(admin))
    assert r.status_code == 422

    r = open_client.delete(f"/api/v1/tokens/{made['prefix']}", headers=auth(admin))
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    r = open_client.post(
        "/api/v1/ingest", content=body(batch(READY, agent="pc-02")), headers=auth(new_token)
    )
    assert r.status_code == 401  # revoked through the same service: refused at once
    assert open_client.delete("/api/v1/tokens/ZZZZZZZZ", headers=auth(admin)).status_code == 404

    logged = open_client.get("/api/v1/audit-log", headers=auth(admin)).json()
    entries = [e for e in logged if e["action"].startswith("token.")]  # not the fixture's audit
    who = f"{admin[: tokens.PREFIX_LENGTH]} Trung tâm CĐS"
    assert [(e["who"], e["action"]) for e in entries] == [
        (who, "token.create"),
        (who, "token.revoke"),
    ]
    assert f"ward={READY}" in entries[0]["detail"] and made["prefix"] in entries[1]["detail"]
    # The log names tokens by prefix only, never the token itself.
    text = json.dumps(entries)
    assert new_token not in text and admin not in text
    listed = open_client.get("/api/v1/tokens", headers=auth(admin)).json()
    assert {t["role"] for t in listed} == {"agent", "viewer", "admin"}
    assert all("token" not in t and "hash" not in t for t in listed)


def test_rate_limit_answers_429_with_retry_after(service: Service) -> None:
    token = tokens.create(service.engine, READY, "pc-01")
    other = tokens.create(service.engine, READY, "pc-02")
    # One request per 1,000 s: the third in a row is refused however slow this machine is.
    for client in _app_client(service, ingest_rate=0.001, ingest_burst=2):
        codes = [
            client.post(
                "/api/v1/ingest", content=body(batch(READY, results=[])), headers=auth(token)
            ).status_code
            for _ in range(2)
        ]
        assert codes == [200, 200]
        r = client.post(
            "/api/v1/ingest", content=body(batch(READY, results=[])), headers=auth(token)
        )
        assert r.status_code == 429
        assert 1 <= int(r.headers["retry-after"]) <= 1000
        assert r.json()["detail"].startswith("rate: ")
        # Buckets are per token: another agent is not held back.
        r = client.post(
            "/api/v1/ingest",
            content=body(batch(READY, agent="pc-02", results=[])),
            headers=auth(other),
        )
        assert r.status_code == 200


def test_rate_limiter_refills_at_its_rate() -> None:
    now = [100.0]
    limiter = RateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(0.5)
    now[0] += 0.5
    assert limiter.take("a") == 0.0
    assert limiter.take("a") == pytest.approx(0.5)
    assert limiter.take("b") == 0.0
    now[0] += 100
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]  # never above the burst
    assert limiter.take("a") > 0
    with pytest.raises(ValueError):
        RateLimiter(rate=0, burst=1)


def run(capsys: Capture, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_roles_and_audit_log(service: Service, db_url: str, capsys: Capture) -> None:
    code, out, err = run(capsys, "--db", db_url, "token", "create", "--role", "viewer")
    assert code == 2 and "--name" in err
    code, out, err = run(
        capsys, "--db", db_url, "token", "create", "--role", "admin", "--name", "x", "--ward", READY
    )
    assert code == 2 and "not tied to a ward" in err
    code, out, err = run(capsys, "--db", db_url, "token", "create")
    assert code == 2 and "--ward" in err
    code, out, err = run(
        capsys, "--db", db_url, "token", "create", "--role", "viewer", "--name", "Tổ giám sát"
    )
    assert code == 0 and "viewer Tổ giám sát" in err
    viewer = out.strip()
    assert tokens.TokenCache(service.engine).lookup(viewer) == tokens.Grant(
        None, None, "viewer", "Tổ giám sát", viewer[: tokens.PREFIX_LENGTH]
    )
    code, out, _ = run(capsys, "--db", db_url, "token", "list")
    assert code == 0 and "viewer" in out and "Tổ giám sát" in out
    code, out, _ = run(capsys, "--db", db_url, "token", "revoke", viewer[:8])
    assert code == 0 and "viewer Tổ giám sát" in out

    code, out, _ = run(capsys, "--db", db_url, "audit-log", "list", "--json")
    assert code == 0
    entries = json.loads(out)
    assert [e["action"] for e in entries] == ["token.create", "token.revoke"]
    assert all(e["who"] == auditlog.cli_user() for e in entries)
    assert viewer not in out
    code, out, _ = run(capsys, "--db", db_url, "audit-log", "list", "--limit", "1")
    assert code == 0 and "token.revoke" in out and "token.create" not in out
    code, _, err = run(capsys, "--db", db_url, "audit-log", "list", "--limit", "0")
    assert code == 2 and "--limit" in err


def test_upgrade_from_0002_keeps_agent_tokens(tmp_path: Path, units_csv: Path) -> None:
    from alembic import command

    from collector import wards

    engine = db.make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    cfg = db.alembic_config()
    with db.writer(engine).begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002")
    wards.import_csv(engine, units_csv)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO tokens (ward_id, agent, hash, prefix, created_at) "
                "VALUES (:w, 'pc-01', :h, 'AbCdEfGh', 1)"
            ),
            {"w": READY, "h": tokens.hash_token("AbCdEfGh-old-token")},
        )
    db.upgrade(engine)
    assert db.current_revision(engine) == db.head_revision()
    grant = tokens.TokenCache(engine).lookup("AbCdEfGh-old-token")
    assert grant == tokens.Grant(READY, "pc-01", "agent", "", "AbCdEfGh")
    assert "audit_log" in sa.inspect(engine).get_table_names()
    engine.dispose()


def test_reader_or_none_lets_a_page_send_visitors_to_its_login(
    service: Service, kinds: dict[str, str | None]
) -> None:
    app = create_app(service)

    @app.get("/page")
    def page(who: Annotated[Principal | None, Depends(reader_or_none)]) -> dict[str, str]:
        return {"who": who.name if who else "login"}

    with TestClient(app, base_url="http://127.0.0.1") as client:
        assert client.get("/page").json() == {"who": "login"}
        assert client.get("/page", headers=auth(kinds["revoked"] or "")).json() == {"who": "login"}
        client.cookies.set(COOKIE, kinds["viewer"] or "")
        assert client.get("/page").json() == {"who": "Tổ giám sát"}
        client.cookies.clear()
        assert client.get("/page", headers=auth(kinds["agent"] or "")).status_code == 403
