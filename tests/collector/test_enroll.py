"""Enrollment codes: format, hashing at rest, expiry, uses, revocation, clear refusals, the
per-address limit on failures, and revoking one agent without touching the ward's others."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from collector import db, enroll
from collector.service import Service
from tests.collector.conftest import READY, auth, batch, body

CODE = re.compile(
    r"^[23456789ABCDEFGHJKMNPQRSTUVWXYZ]{4}-[23456789ABCDEFGHJKMNPQRSTUVWXYZ]{4}-"
    r"[23456789ABCDEFGHJKMNPQRSTUVWXYZ]{2}$"
)
MID = "ab" * 32


def request(code: str, agent: str = "pc-01", machine: str = MID) -> dict[str, Any]:
    return {
        "code": code,
        "agent": agent,
        "hostname": "PC-01",
        "machine_id_hash": machine,
        "version": "0.1.0",
        "os": "Linux",
    }


def test_code_is_short_grouped_and_stored_only_hashed(service: Service) -> None:
    code = enroll.create(service.engine, READY)
    assert CODE.match(code), code
    with service.engine.connect() as conn:
        row = conn.execute(sa.select(db.enroll_codes)).one()
    assert code.replace("-", "") not in repr(tuple(row))
    assert row.hash == enroll.hash_code(code) and row.prefix == code[:4]
    # typed in lower case, without dashes: the same code
    assert enroll.hash_code(code.lower().replace("-", " ")) == row.hash


def test_enroll_gives_a_token_bound_to_ward_and_agent(client: TestClient, service: Service) -> None:
    code = enroll.create(service.engine, READY)
    r = client.post("/api/v1/enroll", json=request(code))
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["ward"] == READY and answer["agent"] == "pc-01"
    assert abs(answer["collector_time"] - time.time()) < 60
    token = answer["token"]
    ok = client.post("/api/v1/ingest", content=body(batch(results=[])), headers=auth(token))
    assert ok.status_code == 200
    other = client.post(
        "/api/v1/ingest", content=body(batch(agent="pc-02", results=[])), headers=auth(token)
    )
    assert other.status_code == 403
    agents = client.get(f"/api/v1/wards/{READY}").json()["fleet"]["agents"]
    assert agents[0]["hostname"] == "PC-01" and agents[0]["machine_id_hash"] == MID


@pytest.mark.parametrize(
    ("setup", "status", "message"),
    [
        ("unknown", 401, "code: unknown enrollment code"),
        ("expired", 403, "expired at"),
        ("revoked", 403, "was revoked"),
        ("used", 403, "is used up (1 of 1 uses)"),
    ],
)
def test_refusals_say_why(
    client: TestClient, service: Service, setup: str, status: int, message: str
) -> None:
    code = enroll.create(
        service.engine,
        READY,
        expires=3600,
        uses=1,
        now=time.time() - (7200 if setup == "expired" else 0),
    )
    if setup == "unknown":
        code = "2222-2222-22"
    elif setup == "revoked":
        enroll.revoke(service.engine, code[:4])
    elif setup == "used":
        assert client.post("/api/v1/enroll", json=request(code)).status_code == 200
    r = client.post("/api/v1/enroll", json=request(code, agent="pc-09"))
    assert r.status_code == status
    assert message in r.json()["detail"], r.json()


def test_a_second_machine_cannot_take_an_enrolled_name(
    client: TestClient, service: Service
) -> None:
    code = enroll.create(service.engine, READY, uses=3)
    assert client.post("/api/v1/enroll", json=request(code)).status_code == 200
    # the same PC enrolling again is fine; another PC under the same name is not
    assert client.post("/api/v1/enroll", json=request(code)).status_code == 200
    r = client.post("/api/v1/enroll", json=request(code, machine="cd" * 32))
    assert r.status_code == 409 and "--agent" in r.json()["detail"]


def test_failures_are_limited_per_address(client: TestClient, service: Service) -> None:
    for _ in range(enroll.FAIL_LIMIT):
        assert client.post("/api/v1/enroll", json=request("3333-3333-33")).status_code == 401
    code = enroll.create(service.engine, READY)
    r = client.post("/api/v1/enroll", json=request(code))
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    assert "too many failed enrollment attempts" in r.json()["detail"]


def test_limiter_window_slides() -> None:
    now = [0.0]
    limiter = enroll.FailureLimiter(limit=2, window=10, clock=lambda: now[0])
    limiter.failed("a")
    limiter.failed("a")
    assert limiter.wait_seconds("a") == 10 and limiter.wait_seconds("b") == 0
    now[0] = 10.5
    assert limiter.wait_seconds("a") == 0


def test_revoking_one_agent_leaves_the_wards_other_agent_working(
    client: TestClient, service: Service
) -> None:
    code = enroll.create(service.engine, READY, uses=2)
    t1 = client.post("/api/v1/enroll", json=request(code, "pc-01")).json()["token"]
    t2 = client.post("/api/v1/enroll", json=request(code, "pc-02", "cd" * 32)).json()["token"]
    assert enroll.revoke_agent(service.engine, READY, "pc-01") == 1
    service.tokens.clear()
    r1 = client.post("/api/v1/ingest", content=body(batch(results=[])), headers=auth(t1))
    r2 = client.post(
        "/api/v1/ingest", content=body(batch(agent="pc-02", results=[])), headers=auth(t2)
    )
    assert r1.status_code == 401 and r2.status_code == 200
    with pytest.raises(enroll.EnrollError, match="no live token"):
        enroll.revoke_agent(service.engine, READY, "pc-01")
    listed = {a.agent: a for a in enroll.agents(service.engine, READY)}
    assert listed["pc-01"].revoked_at is not None and listed["pc-02"].revoked_at is None


def test_bad_create_arguments(service: Service) -> None:
    with pytest.raises(enroll.EnrollError, match="not a known ward"):
        enroll.create(service.engine, "ward-nowhere")
    with pytest.raises(enroll.EnrollError, match="--uses"):
        enroll.create(service.engine, READY, uses=0)
    with pytest.raises(enroll.EnrollError, match="no enrollment code starts with"):
        enroll.revoke(service.engine, "ZZZZ")
