"""An audit judged from stored results agrees with what the live judge said at each step."""

from __future__ import annotations

import dataclasses
from datetime import datetime

from collector import audit_replay, audits
from collector.service import Service

from .conftest import CUT, HEALTHY, JUDGE_EVERY, JUNE_12, OUTAGE, SILENT, Fleet, june_12


def test_replay_agrees_with_the_live_verdicts_at_every_step(service: Service) -> None:
    trial = june_12()
    Fleet(service).run(trial)
    times = sorted(trial.live)
    assert len(times) == 720
    for ward in (HEALTHY, CUT, OUTAGE, SILENT):
        replayed = audit_replay.ward_verdicts(service.engine, service.profile, ward, times)
        live = [trial.live[t][ward] for t in times]
        for t, want, got in zip(times, live, replayed, strict=True):
            assert dataclasses.asdict(got) == dataclasses.asdict(want), (ward, t)
    # The trial is not trivially agreeable: each kind of verdict and failure happened live.
    seen = {(w, v.verdict) for t in times for w, v in trial.live[t].items()}
    assert {(HEALTHY, "ready"), (CUT, "ready"), (CUT, "not_ready"), (SILENT, "not_ready"),
            (OUTAGE, "ready"), (OUTAGE, "not_ready")} <= seen  # fmt: skip
    reasons = {r.split(":")[0] for t in times for r in trial.live[t][OUTAGE].reasons}
    assert "agent_silent" in reasons


def test_audit_totals_match_the_live_verdicts(service: Service) -> None:
    trial = june_12()
    Fleet(service).run(trial)
    taken = audits.take(
        service.engine,
        service.profile,
        start=datetime.fromisoformat(JUNE_12[0]),
        end=datetime.fromisoformat(JUNE_12[1]),
        title="Chạy thử 12/6",
        signed_off_by="Nguyễn Văn An",
        step=JUDGE_EVERY,
        now=trial.end + 60,
    )
    by_id = {w["id"]: w for w in taken.content["wards"]}
    for ward in (HEALTHY, CUT, OUTAGE, SILENT):
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
    cut = {c["id"]: c for c in by_id[CUT]["criteria"]}
    assert set(cut) == {"wan_up", "wan_loss"}
    assert cut["wan_up"]["first_failed_at"].startswith("2026-06-12T08:4")
    assert cut["wan_up"]["evidence"][0]["series"] == "pc-01/wan-city→gw"
    assert "latest run: no_reply" in cut["wan_up"]["evidence"][0]["detail"]
    assert by_id[CUT]["samples"]["results"] == 3 * 240
    assert by_id[CUT]["samples"]["failed"] == 60  # 30 minutes of icmp every 30 s
