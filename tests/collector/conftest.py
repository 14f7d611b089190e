"""Shared fixtures for the collector tests: a database (a SQLite file in tmp_path, or a
PostgreSQL database: every test that uses one runs on both), a small profile, a ward list
with Vietnamese names, a Service and an in-process client, and a batch builder that makes
valid wire batches to break on purpose."""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from collector import db, tokens, wards
from collector.api import create_app
from collector.auth import COOKIE
from collector.profile import load_profile
from collector.service import Service

PROFILE = """\
version: 1
silence_seconds: 180
criteria:
  - id: wan_loss
    title: WAN line loss under 1% over 15 min
    severity: blocker
    select: {check: icmp, labels: {role: wan}}
    condition: {metric: loss_ratio, agg: avg, window: 15m, op: "<", threshold: 0.01}
  - id: dms_up
    title: Document Management System answers
    severity: blocker
    select: {check: http, labels: {role: shared_system}}
    condition: {metric: success, agg: min, last: 2, op: ">=", threshold: 1}
  - id: disk_free
    title: PC disk has room
    severity: warning
    select: {check: host}
    condition: {metric: disk_free_ratio_min, agg: last, last: 1, op: ">", threshold: 0.1}
"""

UNITS = """\
id,name,kind,former_district,working_group
ward-ben-thanh,Phường Bến Thành,ward,Quận 1,2
commune-can-gio,Xã Cần Giờ,commune,Huyện Cần Giờ,2
ward-minh-phung,Phường Minh Phụng,ward,Quận 11,1
ward-binh-thoi,Phường Bình Thới,ward,Quận 11,1
"""

READY = "ward-ben-thanh"
BROKEN = "ward-minh-phung"


@pytest.fixture
def profile_path(tmp_path: Path) -> Path:
    path = tmp_path / "profile.yaml"
    path.write_text(PROFILE, encoding="utf-8")
    return path


@pytest.fixture
def units_csv(tmp_path: Path) -> Path:
    path = tmp_path / "units.csv"
    # With a byte-order mark, as spreadsheet programs save "CSV UTF-8".
    path.write_bytes(b"\xef\xbb\xbf" + UNITS.encode("utf-8"))
    return path


@pytest.fixture
def empty_url(database: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """An empty database, not yet migrated."""
    if database == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite:///{tmp_path / 'empty.db'}"


@pytest.fixture
def engine(db_url: str) -> Iterator[Any]:
    eng = db.make_engine(db_url)
    db.upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def service(engine: Any, profile_path: Path, units_csv: Path) -> Service:
    wards.import_csv(engine, units_csv)
    svc = Service(engine, load_profile(profile_path), verdict_seconds=0.0)
    svc.rebuild()
    return svc


@pytest.fixture
def viewer(engine: Any, service: Service) -> str:
    return tokens.create(engine, role="viewer", name="Tổ giám sát")


@pytest.fixture
def client(service: Service, viewer: str) -> Iterator[TestClient]:
    """A client that reads as a viewer, through the board's cookie: ingest still needs its
    own ``Authorization`` header (the cookie never authorizes a write)."""
    with TestClient(create_app(service), base_url="http://127.0.0.1") as c:
        c.cookies.set(COOKIE, viewer)
        yield c


@pytest.fixture
def anon(service: Service) -> Iterator[TestClient]:
    """A client with no credentials at all."""
    with TestClient(create_app(service), base_url="http://127.0.0.1") as c:
        yield c


@pytest.fixture
def token(engine: Any, service: Service) -> str:
    return tokens.create(engine, READY, "pc-01")


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def result(seq: int, **over: Any) -> dict[str, Any]:
    """One valid ResultRecord as JSON data: an icmp WAN probe started a few seconds ago."""
    rec: dict[str, Any] = {
        "seq": seq,
        "check": "icmp",
        "name": "wan-city",
        "target": "gw",
        "address": "10.0.0.1",
        "labels": {"role": "wan", "line": "fibre"},
        "interval_seconds": 30.0,
        "started": time.time() - 60 + seq * 0.01,
        "duration_seconds": 0.5,
        "success": True,
        "reason": "ok",
        "metrics": {"loss_ratio": 0.0, "rtt_avg_seconds": 0.012},
        "info": {},
    }
    rec.update(over)
    return rec


def batch(
    ward: str = READY, agent: str = "pc-01", results: Any = None, **over: Any
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "wire_version": 1,
        "ward": ward,
        "agent": agent,
        "stream": uuid.uuid4().hex,
        "sent_at": time.time(),
        "status": {
            "version": "0.1.0",
            "spool_depth": 7,
            "spool_dropped_total": 0,
            "resident_memory_bytes": 30_000_000,
            "cpu_seconds_total": 1.5,
            "checks": 3,
        },
        "results": [result(i) for i in range(1, 4)] if results is None else results,
    }
    doc.update(over)
    return doc


def healthy_results(start: int = 1) -> list[dict[str, Any]]:
    """Results that make a ward ready under PROFILE: clean WAN, DMS up twice, disk roomy."""
    now = time.time()
    return [
        result(start, started=now - 20),
        result(start + 1, started=now - 10),
        result(
            start + 2,
            check="http",
            name="dms",
            target="dms",
            address="http://127.0.0.1/",
            labels={"role": "shared_system"},
            metrics={"status_code": 200.0},
            started=now - 20,
        ),
        result(
            start + 3,
            check="http",
            name="dms",
            target="dms",
            address="http://127.0.0.1/",
            labels={"role": "shared_system"},
            metrics={"status_code": 200.0},
            started=now - 10,
        ),
        result(
            start + 4,
            check="host",
            name="host",
            target="localhost",
            address="localhost",
            labels={"role": "host"},
            metrics={"disk_free_ratio_min": 0.5},
            started=now - 10,
        ),
    ]


def broken_results(start: int = 1) -> list[dict[str, Any]]:
    """Results that make a ward not ready: 50% WAN loss."""
    out = healthy_results(start)
    for r in out[:2]:
        r["metrics"] = {"loss_ratio": 0.5, "rtt_avg_seconds": 0.2}
    return out


def body(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode("utf-8")


def clone(doc: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(doc)
