"""Verdict history: every change of a ward's verdict and of each criterion's state, stored.

A row is written only when a state changes (``from_state`` → ``to_state`` at ``at``), with
the evidence in short, so a day of a steady fleet writes nothing. The recorder remembers the
last stored state of every (ward, criterion); after a restart it reads them back first, so
the first change it writes has the right ``from_state`` and an unchanged ward writes nothing.
A criterion of ``None`` stands for the ward's verdict.

Queries answer the auditors' questions: when did ward X become ready
(:func:`became_ready`), and how long was it not ready in a window (:func:`time_in_states`).
Time the history does not cover (before the first record) counts as ``unrecorded``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from collector import db
from collector.readiness import FAILED, READY, STALE, UNKNOWN, CriterionResult, Verdict

log = logging.getLogger(__name__)

# Evidence is a hint for the reader, not the record: the results table holds the figures.
MAX_EVIDENCE = 300
UNRECORDED = "unrecorded"

Key = tuple[str, str | None]


@dataclass(frozen=True)
class Change:
    ward: str
    criterion: str | None
    from_state: str | None
    to_state: str
    at: float
    evidence: str


def _clip(text: str) -> str:
    return text if len(text) <= MAX_EVIDENCE else text[: MAX_EVIDENCE - 1] + "…"


def criterion_evidence(c: CriterionResult) -> str:
    """The evidence that decided the state: the first failing (or unknown) series, else the
    first one."""
    wanted = (FAILED, STALE) if c.status == FAILED else (UNKNOWN,) if c.status == UNKNOWN else ()
    picked = next((e for e in c.evidence if e.status in wanted), None)
    if picked is None and c.evidence:
        picked = c.evidence[0]
    if picked is None:
        return ""
    return _clip(f"{picked.series}: {picked.detail}" if picked.series else picked.detail)


def last_states(conn: sa.Connection) -> dict[Key, str]:
    """The newest stored state of every (ward, criterion)."""
    h = db.history
    newest = (
        sa.select(sa.func.max(h.c.id).label("id")).group_by(h.c.ward_id, h.c.criterion).subquery()
    )
    rows = conn.execute(
        sa.select(h.c.ward_id, h.c.criterion, h.c.to_state).join(newest, h.c.id == newest.c.id)
    )
    return {(r.ward_id, r.criterion): r.to_state for r in rows}


class Recorder:
    """Writes the changes between the states it last stored and each new set of verdicts.

    Not thread-safe: the service calls it under its verdict lock.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._last: dict[Key, str] | None = None

    def record(self, verdicts: Mapping[str, Verdict]) -> list[Change]:
        """Store every change since the last call (or since the last stored state)."""
        if self._last is None:
            with self.engine.connect() as conn:
                self._last = last_states(conn)
        last = self._last
        changes: list[Change] = []
        # Runs for every criterion of every ward at each judging: evidence is only put into
        # words for what changed.
        for v in verdicts.values():
            ward, at = v.ward, v.evaluated_at
            before = last.get((ward, None))
            if before != v.verdict:
                evidence = _clip(v.reasons[0]) if v.reasons else ""
                changes.append(Change(ward, None, before, v.verdict, at, evidence))
            for c in v.criteria:
                before = last.get((ward, c.id))
                if before != c.status:
                    changes.append(Change(ward, c.id, before, c.status, at, criterion_evidence(c)))
        if changes:
            rows = [
                {
                    "ward_id": ch.ward,
                    "criterion": ch.criterion,
                    "from_state": ch.from_state,
                    "to_state": ch.to_state,
                    "at": ch.at,
                    "evidence": ch.evidence,
                }
                for ch in changes
            ]
            with db.writer(self.engine).begin() as conn:
                conn.execute(sa.insert(db.history), rows)
            # Only after the commit: a failed write is retried with the next verdicts.
            for ch in changes:
                last[(ch.ward, ch.criterion)] = ch.to_state
        return changes


def _row(r: Any) -> Change:
    return Change(r.ward_id, r.criterion, r.from_state, r.to_state, r.at, r.evidence)


def changes(
    engine: Engine,
    ward: str,
    start: float,
    end: float,
    *,
    verdict_only: bool = False,
) -> list[Change]:
    """Changes of ``ward`` with ``start <= at <= end``, oldest first."""
    h = db.history
    query = sa.select(h).where(h.c.ward_id == ward, h.c.at >= start, h.c.at <= end)
    if verdict_only:
        query = query.where(h.c.criterion.is_(None))
    with engine.connect() as conn:
        return [_row(r) for r in conn.execute(query.order_by(h.c.at, h.c.id))]


def state_at(engine: Engine, ward: str, at: float, criterion: str | None = None) -> str | None:
    """The ward's verdict (or one criterion's state) at time ``at``; None before any record."""
    h = db.history
    crit = h.c.criterion.is_(None) if criterion is None else h.c.criterion == criterion
    with engine.connect() as conn:
        found: str | None = conn.execute(
            sa.select(h.c.to_state)
            .where(h.c.ward_id == ward, crit, h.c.at <= at)
            .order_by(h.c.at.desc(), h.c.id.desc())
            .limit(1)
        ).scalar()
    return found


def became_ready(engine: Engine, ward: str, at: float) -> float | None:
    """When the ward last turned ready at or before ``at``, if it is ready at ``at``; else None.

    The start of the ready stretch that holds ``at``: "since when has it been ready".
    """
    h = db.history
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(h.c.to_state, h.c.at)
            .where(h.c.ward_id == ward, h.c.criterion.is_(None), h.c.at <= at)
            .order_by(h.c.at.desc(), h.c.id.desc())
            .limit(1)
        ).first()
    if row is None or row.to_state != READY:
        return None
    stretch_start: float = row.at
    return stretch_start


def first_ready(engine: Engine, ward: str, start: float, end: float) -> float | None:
    """The first moment in [start, end] the ward was ready: ``start`` if it already was."""
    if state_at(engine, ward, start) == READY:
        return start
    for c in changes(engine, ward, start, end, verdict_only=True):
        if c.to_state == READY:
            return c.at
    return None


def time_in_states(engine: Engine, ward: str, start: float, end: float) -> dict[str, float]:
    """Seconds of [start, end] the ward's verdict spent in each state (and ``unrecorded``)."""
    if end < start:
        raise ValueError("end: must not be before start")
    totals: dict[str, float] = {}
    state = state_at(engine, ward, start) or UNRECORDED
    t = start
    for c in changes(engine, ward, start, end, verdict_only=True):
        totals[state] = totals.get(state, 0.0) + (c.at - t)
        state, t = c.to_state, c.at
    totals[state] = totals.get(state, 0.0) + (end - t)
    return {k: v for k, v in totals.items() if v > 0 or k == state}


def not_ready_seconds(engine: Engine, ward: str, start: float, end: float) -> float:
    """How long in [start, end] the ward was not ready: judged not_ready or unknown, or not
    judged at all (no record): an auditor cannot count unseen time as ready."""
    return sum(v for k, v in time_in_states(engine, ward, start, end).items() if k != READY)
