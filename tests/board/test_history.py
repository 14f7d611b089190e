"""Verdict history: changes only, surviving a new recorder (a restart), the auditors'
queries, the API endpoint, and the same on PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from collector import db, history, tokens
from collector.readiness import CriterionResult, Evidence, Verdict
from collector.service import Service
from tests.collector.conftest import READY, auth, batch, body, healthy_results
from tests.collector.test_api import serving

T0 = 1_750_000_000.0


def verdict(state: str, at: float, wan: str = "ok", ward: str = READY) -> Verdict:
    ev = Evidence("pc-01/wan-city→gw", 0.0, 0.01, "<", "avg", "15m", 3, at, wan,
                  f"loss_ratio avg 0 over 15m (3 samples) < 0.01 [{wan}]")  # fmt: skip
    crit = CriterionResult("wan_loss", "WAN loss", "blocker", wan, [ev])
    reasons = [] if state == "ready" else [f"wan_loss: WAN loss — {ev.series}: {ev.detail}"]
    return Verdict(ward, state, reasons, [crit], at)


def rows(engine: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(db.history).order_by(db.history.c.id)))


def check_history(engine: Any) -> None:
    rec = history.Recorder(engine)
    first = rec.record({READY: verdict("not_ready", T0, "failed")})
    assert [(c.criterion, c.from_state, c.to_state) for c in first] == [
        (None, None, "not_ready"),
        ("wan_loss", None, "failed"),
    ]
    assert first[0].evidence.startswith("wan_loss: WAN loss — pc-01/wan-city→gw")
    assert rec.record({READY: verdict("not_ready", T0 + 10, "failed")}) == []
    turned = rec.record({READY: verdict("ready", T0 + 100)})
    assert [(c.criterion, c.from_state, c.to_state) for c in turned] == [
        (None, "not_ready", "ready"),
        ("wan_loss", "failed", "ok"),
    ]

    # A restart: a new recorder takes up the stored states instead of starting from nothing.
    again = history.Recorder(engine)
    assert again.record({READY: verdict("ready", T0 + 200)}) == []
    (back,) = [c for c in again.record({READY: verdict("unknown", T0 + 400, "ok")})]
    assert (back.criterion, back.from_state, back.to_state) == (None, "ready", "unknown")
    assert len(rows(engine)) == 5

    assert history.became_ready(engine, READY, T0 + 150) == T0 + 100
    assert history.became_ready(engine, READY, T0 + 500) is None
    assert history.first_ready(engine, READY, T0 - 50, T0 + 500) == T0 + 100
    assert history.first_ready(engine, READY, T0 + 150, T0 + 500) == T0 + 150
    spent = history.time_in_states(engine, READY, T0 - 50, T0 + 500)
    assert spent == {"unrecorded": 50.0, "not_ready": 100.0, "ready": 300.0, "unknown": 100.0}
    assert history.not_ready_seconds(engine, READY, T0 - 50, T0 + 500) == 250.0
    assert history.state_at(engine, READY, T0 + 50, "wan_loss") == "failed"
    window = history.changes(engine, READY, T0 + 50, T0 + 450, verdict_only=True)
    assert [c.to_state for c in window] == ["ready", "unknown"]
    with pytest.raises(ValueError, match="end"):
        history.time_in_states(engine, READY, T0, T0 - 1)


def test_history_queries(engine: Any, service: Service) -> None:
    check_history(engine)


def test_judging_writes_history_and_the_api_answers_windows(
    client: TestClient, service: Service
) -> None:
    service.verdicts()
    now = service.clock()
    r = client.get(f"/api/v1/wards/{READY}/history")
    assert r.status_code == 200
    doc = r.json()
    verdicts = [c for c in doc["changes"] if c["criterion"] is None]
    assert [(c["from_state"], c["to_state"]) for c in verdicts] == [(None, "not_ready")]
    assert doc["ready_since"] is None and doc["first_ready"] is None
    assert doc["end"] - doc["start"] == pytest.approx(86400)
    assert doc["seconds"]["not_ready"] > 0

    iso = client.get(
        f"/api/v1/wards/{READY}/history",
        params={"from": "2026-06-12T08:00:00+07:00", "to": "2026-06-12T10:00:00+07:00"},
    ).json()
    assert iso["end"] - iso["start"] == 7200 and iso["changes"] == []
    assert iso["seconds"] == {"unrecorded": 7200.0}
    bad = client.get(f"/api/v1/wards/{READY}/history", params={"from": "yesterday"})
    assert bad.status_code == 422 and "from" in bad.json()["detail"]
    backwards = client.get(
        f"/api/v1/wards/{READY}/history", params={"from": str(now), "to": str(now - 10)}
    )
    assert backwards.status_code == 422
    assert client.get("/api/v1/wards/ward-nowhere/history").status_code == 404


def test_a_served_collector_takes_up_its_history_after_a_restart(
    db_url: str, profile_path: Path, units_csv: Path, tmp_path: Path
) -> None:
    """Real ``serve`` processes on the database under test: what the first judged is what
    the second starts from, so a restart writes no state "from nothing"."""

    def ward_history(url: str, viewer: str) -> dict[str, Any]:
        with httpx.Client(base_url=url, timeout=10, headers=auth(viewer)) as http:
            assert http.get(f"/api/v1/wards/{READY}").json()["verdict"] == "ready"
            doc: dict[str, Any] = http.get(f"/api/v1/wards/{READY}/history").json()
            return doc

    with serving(db_url, profile_path, units_csv, tmp_path / "first.log") as url:
        engine = db.make_engine(db_url)
        try:
            agent = tokens.create(engine, READY, "pc-01")
            viewer = tokens.create(engine, role="viewer", name="Tổ giám sát")
        finally:
            engine.dispose()
        with httpx.Client(base_url=url, timeout=10) as http:
            data = body(batch(READY, results=healthy_results()))
            r = http.post("/api/v1/ingest", content=data, headers=auth(agent))
            assert r.status_code == 200 and r.json()["accepted"] == 5
        before = ward_history(url, viewer)
    verdicts = [c for c in before["changes"] if c["criterion"] is None]
    assert verdicts and verdicts[-1]["to_state"] == "ready"
    assert before["ready_since"] == verdicts[-1]["at"]

    with serving(db_url, profile_path, units_csv, tmp_path / "second.log") as url:
        after = ward_history(url, viewer)
    assert after["ready_since"] == before["ready_since"]
    assert [c for c in after["changes"] if c["from_state"] is None] == [
        c for c in before["changes"] if c["from_state"] is None
    ]
