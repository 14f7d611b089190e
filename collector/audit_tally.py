"""One ward over a window, step by step: the tally an audit keeps of it.

Fed with the verdict of every step (:mod:`collector.audit_replay`), a :class:`WardTally`
keeps how long the ward was ready, not ready and unknown, when it first became ready, the
changes of verdict and why, and for every criterion that was not met at some step the
stretches it failed and the evidence of its first failure. It writes that as the content of
an audit (:mod:`collector.audits`): no floats, times in the window's own offset.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any

import sqlalchemy as sa

from collector import audit_replay
from collector import wards as wardlist
from collector.profile import Profile
from collector.readiness import (
    AGENT_SILENT,
    FAILED,
    NO_DATA,
    NOT_READY,
    OK,
    READY,
    UNKNOWN,
    Evidence,
    Verdict,
)
from collector.state import Series, State

# Per ward and per criterion, so one flapping line cannot make an audit of thousands of
# wards unreadable; the count of what was left out is kept.
MAX_TIMELINE = 200
MAX_EPISODES = 50

VERDICTS = (READY, NOT_READY, UNKNOWN)
STATUSES = (OK, FAILED, UNKNOWN)


def num(value: float | None) -> str | None:
    """A measured value as the decimal string the audit keeps."""
    if value is None:
        return None
    if not math.isfinite(value):
        return str(value)
    return f"{value:.6g}"


def iso(ts: float | None, tz: tzinfo) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz).isoformat(timespec="seconds")


def causes(verdict: Verdict) -> list[str]:
    """Why the ward was not ready at that step: no_data, agent_silent, or blocker ids."""
    out = []
    if verdict.reasons:
        code = verdict.reasons[0].split(":", 1)[0]
        if code in (NO_DATA, AGENT_SILENT):
            out.append(code)
    bad = FAILED if verdict.verdict == NOT_READY else UNKNOWN
    out += [c.id for c in verdict.criteria if c.severity == "blocker" and c.status == bad]
    return out


def _evidence(ev: Sequence[Evidence], tz: tzinfo) -> list[dict[str, Any]]:
    return [
        {
            "series": e.series,
            "status": e.status,
            "observed": num(e.observed),
            "threshold": num(e.threshold),
            "op": e.op,
            "agg": e.agg,
            "window": e.window,
            "samples": e.samples,
            "at": iso(e.at, tz),
            "detail": e.detail,
        }
        for e in ev
        if e.status != OK
    ]


@dataclass
class _CriterionTally:
    id: str
    severity: str
    seconds: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
    first_failed_at: float | None = None
    # [status, from, to] of each stretch the criterion was not met, merged while it lasts.
    episodes: list[list[Any]] = field(default_factory=list)
    episodes_more: int = 0
    evidence: list[dict[str, Any]] | None = None
    evidence_status: str = OK
    evidence_at: float | None = None
    _open: bool = False

    def add(self, at: float, seconds: int, status: str, ev: Sequence[Evidence], tz: tzinfo) -> None:
        self.seconds[status] = self.seconds.get(status, 0) + seconds
        if status == OK:
            self._open = False
            return
        if status == FAILED and self.first_failed_at is None:
            self.first_failed_at = at
        # The evidence kept is of the first failure, or of the first unknown if it never failed.
        if self.evidence is None or (status == FAILED and self.evidence_status != FAILED):
            self.evidence, self.evidence_status, self.evidence_at = _evidence(ev, tz), status, at
        last = self.episodes[-1] if self.episodes else None
        if self._open and last is not None and last[0] == status and last[2] == at:
            last[2] = at + seconds
        elif len(self.episodes) < MAX_EPISODES:
            self.episodes.append([status, at, at + seconds])
        else:
            self.episodes_more += 1
        self._open = True

    def content(self, tz: tzinfo) -> dict[str, Any]:
        return {
            "id": self.id,
            "severity": self.severity,
            "seconds": self.seconds,
            "first_failed_at": iso(self.first_failed_at, tz),
            "episodes": [
                {"status": s, "from": iso(a, tz), "to": iso(b, tz)} for s, a, b in self.episodes
            ],
            "episodes_more": self.episodes_more,
            "evidence": self.evidence or [],
            "evidence_at": iso(self.evidence_at, tz),
        }


@dataclass
class WardTally:
    ward: wardlist.Ward
    seconds: dict[str, int] = field(default_factory=lambda: dict.fromkeys(VERDICTS, 0))
    first_ready_at: float | None = None
    verdict_at_end: str = UNKNOWN
    timeline: list[tuple[float, str, list[str]]] = field(default_factory=list)
    timeline_more: int = 0
    criteria: dict[str, _CriterionTally] = field(default_factory=dict)
    results: int = 0
    failed: int = 0
    series: dict[str, list[int]] = field(default_factory=dict)

    def add(self, at: float, seconds: int, verdict: Verdict, tz: tzinfo) -> None:
        word = verdict.verdict
        self.seconds[word] = self.seconds.get(word, 0) + seconds
        if word == READY and self.first_ready_at is None:
            self.first_ready_at = at
        self.verdict_at_end = word
        why = causes(verdict) if word != READY else []
        if not self.timeline or self.timeline[-1][1:] != (word, why):
            if len(self.timeline) < MAX_TIMELINE:
                self.timeline.append((at, word, why))
            else:
                self.timeline_more += 1
        for c in verdict.criteria:
            tally = self.criteria.get(c.id)
            if tally is None:
                tally = self.criteria[c.id] = _CriterionTally(c.id, c.severity)
            tally.add(at, seconds, c.status, c.evidence, tz)

    def count(self, rows: Sequence[audit_replay.Row], start: float, end: float) -> None:
        """The results that started inside the window, per series."""
        ids: dict[tuple[str, str, str], str] = {}
        for row in rows:
            r = row.record
            if not start <= r.started < end:
                continue
            sid = ids.get(row.series)
            if sid is None:
                sid = ids[row.series] = Series(
                    self.ward.id, row.agent, r.check, r.name, r.target, {}, r.interval_seconds
                ).id
            counts = self.series.setdefault(sid, [0, 0])
            counts[0] += 1
            self.results += 1
            if not r.success:
                counts[1] += 1
                self.failed += 1

    def content(self, tz: tzinfo) -> dict[str, Any]:
        w = self.ward
        return {
            "id": w.id,
            "name": w.name,
            "kind": w.kind,
            "former_district": w.former_district,
            "working_group": w.working_group,
            "seconds": self.seconds,
            "first_ready_at": iso(self.first_ready_at, tz),
            "verdict_at_end": self.verdict_at_end,
            "timeline": [
                {"at": iso(at, tz), "verdict": v, "causes": why} for at, v, why in self.timeline
            ],
            "timeline_more": self.timeline_more,
            # Criteria met at every step are left out: absent means met throughout.
            "criteria": [
                c.content(tz)
                for c in self.criteria.values()
                if c.seconds[OK] != sum(c.seconds.values())
            ],
            "samples": {
                "results": self.results,
                "failed": self.failed,
                "series": [
                    {"series": s, "results": n, "failed": f}
                    for s, (n, f) in sorted(self.series.items())
                ],
            },
        }


def judge_ward(
    conn: sa.Connection,
    profile: Profile,
    ward: wardlist.Ward,
    start: int,
    end: int,
    step: int,
    tz: tzinfo,
) -> WardTally:
    plan = audit_replay.steps(start, end, step)
    keep_last = State.for_profile(profile).keep_last
    rows = audit_replay.load_rows(conn, profile, ward.id, start, end, keep_last)
    seen = audit_replay.first_seen(conn, ward.id)
    tally = WardTally(ward)
    verdicts = audit_replay.replay(profile, ward.id, rows, [at for at, _ in plan], seen)
    for (at, seconds), verdict in zip(plan, verdicts, strict=True):
        tally.add(at, int(seconds), verdict, tz)
    tally.count(rows, start, end)
    return tally
