"""POST /api/v1/ingest: idempotent storage, and every bad batch refused naming its field."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from checks.registry import REGISTRY
from collector import db, ingest
from collector.profile import load_profile
from collector.service import Service
from collector.tokens import Grant
from shared.wire import MAX_BATCH_BYTES, MAX_RESULTS_PER_BATCH, Batch
from tests.gadget import GADGET

from .conftest import READY, auth, batch, body, clone, healthy_results, result


def count(engine: sa.Engine, table: sa.Table = db.results) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def samples(service: Service, ward: str = READY) -> int:
    return sum(len(s.samples) for s in service.state.ward(ward).series)


def post(client: TestClient, token: str, doc: dict[str, Any] | bytes) -> Any:
    data = doc if isinstance(doc, bytes) else body(doc)
    return client.post("/api/v1/ingest", content=data, headers=auth(token))


def test_valid_batch_is_stored_and_acknowledged(
    client: TestClient, service: Service, token: str
) -> None:
    doc = batch(results=healthy_results())
    r = post(client, token, doc)
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": 5, "duplicates": 0, "last_seq": 5}
    assert count(service.engine) == 5
    with service.engine.connect() as conn:
        row = conn.execute(sa.select(db.results).where(db.results.c.seq == 5)).one()
        agent = conn.execute(sa.select(db.agents)).one()
    assert row.ward_id == READY and row.check == "host" and row.success is True
    assert json.loads(row.metrics) == {"disk_free_ratio_min": 0.5}
    assert json.loads(row.labels) == {"role": "host"}
    assert row.stream == doc["stream"]
    assert agent.agent == "pc-01" and agent.last_seq == 5 and agent.spool_depth == 7
    assert agent.version == "0.1.0" and agent.stream == doc["stream"]
    assert samples(service) == 5
    assert service.verdicts()[READY].verdict == "ready"


def test_replayed_batch_is_stored_once(client: TestClient, service: Service, token: str) -> None:
    doc = batch(results=healthy_results())
    assert post(client, token, doc).json()["accepted"] == 5
    again = post(client, token, doc)
    assert again.status_code == 200
    assert again.json() == {"accepted": 0, "duplicates": 5, "last_seq": 5}
    assert count(service.engine) == 5
    assert samples(service) == 5


def test_overlapping_batch_stores_only_the_new_results(
    client: TestClient, service: Service, token: str
) -> None:
    first = batch(results=[result(i) for i in range(1, 11)])
    assert post(client, token, first).json()["accepted"] == 10
    second = clone(first)
    second["results"] = [result(i) for i in range(6, 16)]
    assert post(client, token, second).json() == {"accepted": 5, "duplicates": 5, "last_seq": 15}
    assert count(service.engine) == 15
    assert samples(service) == 15
    # The same seqs on another stream (a new spool file) are different results.
    third = clone(second)
    third["stream"] = "f" * 32
    assert post(client, token, third).json()["accepted"] == 10


def test_heartbeat_updates_the_agent_only(client: TestClient, service: Service, token: str) -> None:
    before = time.time()
    r = post(client, token, batch(results=[]))
    assert r.json() == {"accepted": 0, "duplicates": 0, "last_seq": None}
    assert count(service.engine) == 0
    (agent,) = service.agents(READY)
    assert agent.last_seen >= before and agent.last_seq is None
    assert service.state.ward(READY).agents_last_seen["pc-01"] >= before


def test_state_is_rebuilt_from_the_database(
    client: TestClient, service: Service, token: str, profile_path: Path
) -> None:
    post(client, token, batch(results=healthy_results()))
    fresh = Service(service.engine, load_profile(profile_path))
    assert fresh.rebuild() == 5
    assert samples(fresh) == 5
    assert fresh.state.ward(READY).agents_last_seen["pc-01"] > 0
    assert fresh.verdicts()[READY].verdict == "ready"


def too_many() -> dict[str, Any]:
    return batch(results=[result(i) for i in range(1, MAX_RESULTS_PER_BATCH + 2)])


def future() -> dict[str, Any]:
    return batch(results=[result(1), result(2, started=time.time() + 3600)])


def nan_metric() -> bytes:
    text = body(batch(results=[result(1), result(2), result(3, metrics={"loss_ratio": 1.0})]))
    return text.replace(b'"loss_ratio": 1.0', b'"loss_ratio": NaN')


def with_result(i: int, **over: Any) -> dict[str, Any]:
    doc = batch(results=[result(n) for n in range(1, 5)])
    doc["results"][i].update(over)
    return doc


def without(field: str) -> dict[str, Any]:
    doc = batch()
    del doc["results"][1][field]
    return doc


BAD: list[tuple[str, Any, int, str]] = [
    ("not json", b"{this is not json", 422, "body"),
    ("not an object", b"[1, 2, 3]", 422, "body"),
    ("wrong type", with_result(2, interval_seconds="often"), 422, "results.2.interval_seconds"),
    ("too many results", too_many(), 422, "results"),
    ("started in the future", future(), 422, "results.1.started"),
    ("NaN metric", nan_metric(), 422, "results.2.metrics.loss_ratio"),
    ("extra field", with_result(0, colour="blue"), 422, "results.0.colour"),
    ("extra top-level field", batch(extra=1), 422, "extra"),
    ("missing field", without("success"), 422, "results.1.success"),
    ("bad ward id", batch(ward="Phường Bến Thành"), 422, "ward"),
    ("bad stream", batch(stream="not-hex"), 422, "stream"),
    ("negative seq", with_result(1, seq=0), 422, "results.1.seq"),
    ("repeated seq", with_result(2, seq=1), 422, "results.2.seq"),
    ("bad metric name", with_result(1, metrics={"Loss%": 1.0}), 422, "results.1.metrics.Loss%"),
    ("wire version", batch(wire_version=2), 422, "wire_version"),
    ("seq past 64 bits", with_result(0, seq=2**63), 422, "results.0.seq"),
    ("NUL in address", with_result(1, address="10.0.0.1\x00"), 422, "results.1.address"),
    (
        "huge spool depth",
        batch(status={**batch()["status"], "spool_depth": 2**64}),
        422,
        "status.spool_depth",
    ),
]


@pytest.mark.parametrize(("what", "doc", "status", "field"), BAD, ids=[b[0] for b in BAD])
def test_bad_batch_is_refused_naming_the_field(
    client: TestClient, service: Service, token: str, what: str, doc: Any, status: int, field: str
) -> None:
    r = post(client, token, doc)
    assert r.status_code == status, r.text
    answer = r.json()
    assert answer["detail"].startswith(f"{field}"), answer
    assert any(e["field"].startswith(field) for e in answer["errors"]), answer
    assert all(set(e) == {"field", "message"} and e["message"] for e in answer["errors"])
    assert count(service.engine) == 0
    assert count(service.engine, db.agents) == 0
    assert samples(service) == 0


def test_oversize_body_gets_413_before_parsing(client: TestClient, token: str) -> None:
    big = b'{"ward": "' + b"a" * MAX_BATCH_BYTES + b'"}'
    r = post(client, token, big)
    assert r.status_code == 413
    assert r.json()["detail"].startswith("body:")


def test_oversize_body_without_length_gets_413(client: TestClient, token: str) -> None:
    def chunks() -> Any:
        for _ in range(MAX_BATCH_BYTES // 65536 + 2):
            yield b" " * 65536

    r = client.post("/api/v1/ingest", content=chunks(), headers=auth(token))
    assert r.status_code == 413


def test_unauthenticated_oversize_body_gets_401(client: TestClient) -> None:
    r = client.post("/api/v1/ingest", content=b"x" * (MAX_BATCH_BYTES + 1))
    assert r.status_code == 401


def test_old_results_are_refused(client: TestClient, token: str) -> None:
    doc = batch(results=[result(1, started=time.time() - 8 * 86400)])
    r = post(client, token, doc)
    assert r.status_code == 422 and r.json()["detail"].startswith("results.0.started")


def test_rebuild_keeps_last_n_of_slow_checks_beyond_the_window(
    client: TestClient, service: Service, token: str, profile_path: Path
) -> None:
    now = time.time()
    window = service.profile.retention_seconds()
    slow = {
        "check": "http",
        "name": "dms",
        "target": "dms",
        "address": "http://127.0.0.1/",
        "labels": {"role": "shared_system"},
        "interval_seconds": 3600.0,
        "metrics": {},
    }
    results = [result(1, started=now - window - 600, **slow), result(2, started=now - 10, **slow)]
    assert post(client, token, batch(results=results)).json()["accepted"] == 2

    def dms_samples(svc: Service) -> int:
        crit = next(c for c in svc.verdicts()[READY].criteria if c.id == "dms_up")
        return crit.evidence[0].samples

    assert dms_samples(service) == 2
    fresh = Service(service.engine, load_profile(profile_path))
    assert fresh.rebuild() == 2
    assert dms_samples(fresh) == 2


def test_every_column_is_stored_as_sent(client: TestClient, service: Service, token: str) -> None:
    # The results insert bypasses SQLAlchemy's per-row processing; what it stores must
    # read back through Core exactly as the agent sent it.
    metrics = {"loss_ratio": 0.25, "rtt_avg_seconds": 1e-05, "packets_sent": 5.0}
    odd = result(
        1,
        name="wan-backup",
        target="gw.city:80",
        address="10.0.0.1",
        labels={"role": "wan", "site": "Phường Bến Thành \\ 1"},
        success=False,
        reason="timeout",
        metrics=metrics,
        info={"note": "cáp đứt"},
    )
    doc = batch(results=[odd, result(2)])
    assert post(client, token, doc).json() == {"accepted": 2, "duplicates": 0, "last_seq": 2}
    with service.engine.connect() as conn:
        row = conn.execute(sa.select(db.results).where(db.results.c.seq == 1)).one()
    sent = doc["results"][0]
    assert (row.ward_id, row.agent, row.stream) == (READY, "pc-01", doc["stream"])
    for name in ("check", "name", "target", "address", "reason", "started"):
        assert getattr(row, name) == sent[name], name
    assert row.success is False and row.interval_seconds == 30.0
    assert row.duration_seconds == sent["duration_seconds"]
    assert json.loads(row.labels) == sent["labels"]
    assert json.loads(row.metrics) == metrics
    assert json.loads(row.info) == {"note": "cáp đứt"}
    assert abs(row.received_at - time.time()) < 600
    # A replay with one new result: only that one reaches the database and the state.
    again = clone(doc)
    again["results"].append(result(3))
    assert post(client, token, again).json() == {"accepted": 1, "duplicates": 2, "last_seq": 3}
    assert count(service.engine) == 3 and samples(service) == 3


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_results_insert_is_compiled_for_each_dialect(dialect: str) -> None:
    from sqlalchemy.dialects import postgresql, sqlite

    from collector.ingest import _COLUMNS, _insert

    class Conn:  # all _insert reads of a connection
        def __init__(self, d: sa.Dialect) -> None:
            self.dialect = d

    made = (postgresql.psycopg if dialect == "postgresql" else sqlite.pysqlite).dialect()
    compiled = _insert(Conn(made))  # type: ignore[arg-type]
    assert "ON CONFLICT (ward_id, agent, stream, seq) DO NOTHING" in compiled.sql
    assert "RETURNING" not in compiled.sql
    if dialect == "sqlite":
        assert compiled.order is not None and sorted(compiled.order) == list(range(len(_COLUMNS)))
        assert compiled.sql.count("?") == len(_COLUMNS)
    else:
        assert compiled.order is None
        assert all(f"%({c})s" in compiled.sql for c in _COLUMNS)


def test_a_result_of_an_unknown_check_type_is_stored_and_shown(
    client: TestClient, service: Service, token: str
) -> None:
    # An agent upgraded before its collector must not go silent: the type is not known here,
    # the result is well-formed, so it is stored, and only the profile decides if it counts.
    assert "telepathy" not in REGISTRY
    doc = batch(
        results=[
            result(1),
            result(2, check="telepathy", metrics={"aura_ratio": 7.5, "visions_total": 3.0}),
        ]
    )
    r = post(client, token, doc)
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": 2, "duplicates": 0, "last_seq": 2}
    with service.engine.connect() as conn:
        row = conn.execute(sa.select(db.results).where(db.results.c.check == "telepathy")).one()
    assert json.loads(row.metrics) == {"aura_ratio": 7.5, "visions_total": 3.0}
    assert samples(service) == 2
    # Shown on the ward's page; /metrics keeps to its series budget (collector/exposition.py).
    assert "wardready_telepathy" not in client.get("/metrics").text


def _errors(metrics: dict[str, float], checks: Any = None) -> list[dict[str, str]]:
    doc = batch(results=[result(1), result(2, check="gadget", metrics=metrics)])
    parsed = Batch.model_validate(doc)
    try:
        ingest.check(parsed, Grant(READY, "pc-01"), time.time(), checks or {"gadget": GADGET})
    except ingest.IngestError as exc:
        assert exc.status == 422
        return exc.errors
    return []


def test_values_outside_the_declared_range_are_refused_naming_the_field() -> None:
    assert _errors({"loss_ratio": 1.0, "rtt_avg_seconds": 0.0, "free_ratio__var": 0.5}) == []
    assert _errors({"loss_ratio": 1.7}) == [
        {
            "field": "results.1.metrics.loss_ratio",
            "message": "1.7 is outside 0..1 declared for gadget",
        }
    ]
    bad = _errors({"rtt_avg_seconds": -0.5, "free_ratio__": 2.0, "errors_total": -1.0})
    assert [e["field"] for e in bad] == [
        "results.1.metrics.rtt_avg_seconds",
        "results.1.metrics.free_ratio__",
        "results.1.metrics.errors_total",
    ]
    assert bad[0]["message"] == "-0.5 is outside 0..inf declared for gadget"
    # Undeclared (the agent may be newer): stored as it comes; so is any unknown type's.
    assert _errors({"loss_ratio_new": 9.0, "free_ratio": 5.0}) == []
    assert _errors({"loss_ratio": 1.7}, {"other": GADGET}) == []


def test_the_api_refuses_an_implausible_value_of_a_known_check(
    client: TestClient, service: Service, token: str
) -> None:
    found = [
        (word, name, m)
        for word, kind in sorted(REGISTRY.items())
        for name, m in sorted(kind.metrics.items())
        if not m.per_item and m.high < float("inf")
    ]
    word, name, declared = found[0]
    too_high = float(declared.high + 1)  # the wire carries floats, whatever the declaration
    doc = batch(results=[result(1), result(2, check=word, metrics={name: too_high})])
    r = post(client, token, doc)
    assert r.status_code == 422, r.text
    field = f"results.1.metrics.{name}"
    assert r.json()["errors"] == [
        {
            "field": field,
            "message": f"{too_high!r} is outside "
            f"{declared.low:g}..{declared.high:g} declared for {word}",
        }
    ]
    assert r.json()["detail"].startswith(field)
    assert count(service.engine) == 0
