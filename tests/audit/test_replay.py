"""An audit judged from stored results agrees with what the live judge said at each step."""

from __future__ import annotations

import dataclasses

import pytest

from collector import audit_replay, audits
from collector.service import Service

from .conftest import (
    CUT,
    HEALTHY,
    JUDGE_EVERY,
    JUNE_12,
    JUNE_22,
    OUTAGE,
    SILENT,
    Fed,
    Trial,
    take,
)


@pytest.mark.parametrize("run", ["june_12", "june_22"])
def test_replay_agrees_with_the_live_verdicts_at_every_step(
    fed: Fed, service: Service, run: str
) -> None:
    trial: Trial = getattr(fed, run)
    times = sorted(trial.live)
    assert len(times) == 720
    for ward in (HEALTHY, CUT, OUTAGE, SILENT):
        replayed = audit_replay.ward_verdicts(service.engine, service.profile, ward, times)
        live = [trial.live[t][ward] for t in times]
        for t, want, got in zip(times, live, replayed, strict=True):
            assert dataclasses.asdict(got) == dataclasses.asdict(want), (ward, t)


def test_the_june_12_run_is_not_trivially_agreeable(fed: Fed) -> None:
    live = fed.june_12.live
    seen = {(w, v.verdict) for verdicts in live.values() for w, v in verdicts.items()}
    assert {(HEALTHY, "ready"), (CUT, "ready"), (CUT, "not_ready"), (SILENT, "not_ready"),
            (OUTAGE, "ready"), (OUTAGE, "not_ready")} <= seen  # fmt: skip
    reasons = {r.split(":")[0] for v in live.values() for r in v[OUTAGE].reasons}
    assert "agent_silent" in reasons
    assert {v[HEALTHY].verdict for v in fed.june_22.live.values()} == {"ready"}


@pytest.mark.parametrize(("run", "window"), [("june_12", JUNE_12), ("june_22", JUNE_22)])
def test_audit_totals_match_the_live_verdicts(
    fed: Fed, service: Service, run: str, window: tuple[str, str]
) -> None:
    trial: Trial = getattr(fed, run)
    taken = take(service, window, step=JUDGE_EVERY)
    by_id = {w["id"]: w for w in taken.content["wards"]}
    assert set(by_id) == {HEALTHY, CUT, OUTAGE, SILENT}
    for ward in by_id:
        live: dict[str, int] = {"ready": 0, "not_ready": 0, "unknown": 0}
        first_ready = None
        for t in sorted(trial.live):
            word = trial.live[t][ward].verdict
            live[word] += JUDGE_EVERY
            if word == "ready" and first_ready is None:
                first_ready = t
        assert by_id[ward]["seconds"] == live, ward
        got_first = by_id[ward]["first_ready_at"]
        assert (got_first and audits.epoch(got_first)) == first_ready, ward
    assert by_id[HEALTHY]["seconds"]["ready"] == 7200
    assert by_id[HEALTHY]["criteria"] == []
    assert by_id[SILENT]["seconds"]["not_ready"] == 7200
    assert by_id[CUT]["samples"]["results"] == 3 * 240


def test_audit_keeps_each_failing_criterion_with_its_evidence(service: Service, fed: Fed) -> None:
    taken = take(service)
    cut = next(w for w in taken.content["wards"] if w["id"] == CUT)
    criteria = {c["id"]: c for c in cut["criteria"]}
    assert set(criteria) == {"wan_up", "wan_loss"}
    up = criteria["wan_up"]
    assert up["first_failed_at"] == "2026-06-12T08:40:10+07:00"
    assert up["episodes"] == [
        {"status": "failed", "from": "2026-06-12T08:40:10+07:00", "to": "2026-06-12T09:11:10+07:00"}
    ]
    assert up["evidence"][0]["series"] == "pc-01/wan-city→gw"
    assert up["evidence"][0]["observed"] == "0"
    assert "latest run: no_reply" in up["evidence"][0]["detail"]
    assert cut["samples"]["failed"] == 60  # 30 minutes of icmp every 30 s
    assert [e["verdict"] for e in cut["timeline"]] == ["ready", "not_ready", "not_ready", "ready"]
    assert cut["timeline"][1]["causes"] == ["wan_up", "wan_loss"]
    # What the audit was judged with travels with it.
    assert taken.content["profile"]["sha256"] == audits.profile_sha256(service.profile)
    assert [c["id"] for c in taken.content["profile"]["criteria"]] == [
        "wan_up", "wan_loss", "dms_up", "disk_free"
    ]  # fmt: skip
    assert taken.content["ward_list"]["count"] == 4
