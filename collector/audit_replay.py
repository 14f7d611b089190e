"""Judging a ward over a past window from the stored results, as the live judge saw it.

The results table is replayed, in the order the collector received them, into the same
:class:`collector.state.State` the service keeps in memory, and the ward is judged at every
step with the same :func:`collector.readiness.evaluate`. A result counts from the moment it
was received (``received_at``), not from when it started: that is when the live judge could
first see it, so an audit over a window the collector was also judging agrees with what the
board showed at each step.

The state at the start of the window is what a collector started then would rebuild: the
profile's retention of results before the start, plus the newest ``keep_last`` results of
each series seen there (as :meth:`collector.service.Service.rebuild` loads). Agents count as
heard when a batch of theirs with results was received; batches that carried only a
heartbeat are not stored, so an agent whose checks all run less often than the profile's
silence limit looks silent between them here, where the live judge heard its heartbeats.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from collector import db
from collector.follow import STATE_COLUMNS, record
from collector.profile import Profile
from collector.readiness import Verdict, evaluate
from collector.state import State
from shared.wire import MAX_FUTURE_SECONDS, ResultRecord

# Results may reach the collector late (an agent's spool after an outage); those that started
# this long before the retention window are still loaded when they arrived inside it.
LATE_LOOKBACK_SECONDS = 3600.0

# What the live state is rebuilt from, and when each result arrived.
_COLUMNS = (*STATE_COLUMNS, db.results.c.id, db.results.c.received_at)


@dataclass(frozen=True)
class Row:
    """One stored result, with when it was received."""

    id: int
    agent: str
    received_at: float
    record: ResultRecord
    series: tuple[str, str, str]


def _row(r: sa.Row[Any]) -> Row:
    return Row(r.id, r.agent, r.received_at, record(r), (r.agent, r.name, r.target))


def load_rows(
    conn: sa.Connection, profile: Profile, ward: str, start: float, end: float, keep_last: int
) -> list[Row]:
    """The results of ``ward`` a replay of [start, end] needs, in the order received."""
    t = db.results
    since = start - profile.retention_seconds()
    rows = [
        _row(r)
        for r in conn.execute(
            sa.select(*_COLUMNS).where(
                t.c.ward_id == ward,
                t.c.started >= since - LATE_LOOKBACK_SECONDS,
                t.c.started <= end + MAX_FUTURE_SECONDS,
                t.c.received_at <= end,
            )
        )
    ]
    before: dict[tuple[str, str, str], int] = {}
    for row in rows:
        if row.received_at <= start:
            before[row.series] = before.get(row.series, 0) + 1
    for agent, name, target in sorted({row.series for row in rows}):
        n = before.get((agent, name, target), 0)
        if n >= keep_last:
            continue
        rows.extend(
            _row(r)
            for r in conn.execute(
                sa.select(*_COLUMNS)
                .where(
                    t.c.ward_id == ward,
                    t.c.agent == agent,
                    t.c.name == name,
                    t.c.target == target,
                    t.c.started < since - LATE_LOOKBACK_SECONDS,
                    t.c.received_at <= start,
                )
                .order_by(t.c.started.desc())
                .limit(keep_last - n)
            )
        )
    rows.sort(key=lambda row: (row.received_at, row.id))
    return rows


def first_seen(conn: sa.Connection, ward: str) -> dict[str, float]:
    """When each agent of ``ward`` first reached the collector."""
    a = db.agents
    query = sa.select(a.c.agent, a.c.first_seen).where(a.c.ward_id == ward)
    return {r.agent: r.first_seen for r in conn.execute(query)}


def replay(
    profile: Profile,
    ward: str,
    rows: Sequence[Row],
    steps: Sequence[float],
    agents_first_seen: dict[str, float] | None = None,
) -> Iterator[Verdict]:
    """The ward's verdict at each of ``steps`` (ascending), from ``rows`` in received order."""
    state = State.for_profile(profile)
    pending = iter(groupby(rows, key=lambda row: (row.received_at, row.agent)))
    batch: tuple[tuple[float, str], list[Row]] | None = None
    first = dict(agents_first_seen or {})
    for at in steps:
        while True:
            if batch is None:
                nxt = next(pending, None)
                if nxt is None:
                    break
                batch = (nxt[0], list(nxt[1]))
            (received_at, agent), group = batch
            if received_at > at:
                break
            state.add(ward, agent, [row.record for row in group])
            state.heard(ward, agent, received_at)
            batch = None
        # An agent the collector knew of but whose results fell outside what was loaded.
        for agent, seen in list(first.items()):
            if seen <= at:
                state.heard(ward, agent, seen)
                del first[agent]
        yield evaluate(profile, state.ward(ward), at)


def steps(start: float, end: float, step: float) -> list[tuple[float, float]]:
    """(time, seconds it stands for) for each step of [start, end): the verdict judged at a
    step holds until the next one."""
    out = []
    at = start
    i = 0
    while at < end:
        nxt = min(start + (i + 1) * step, end)
        out.append((at, nxt - at))
        i += 1
        at = nxt
    return out


def ward_verdicts(
    engine: Engine, profile: Profile, ward: str, at: Sequence[float]
) -> list[Verdict]:
    """The ward's verdict at each time of ``at`` (ascending), judged from stored results."""
    if not at:
        return []
    keep_last = State.for_profile(profile).keep_last
    with engine.connect() as conn:
        rows = load_rows(conn, profile, ward, at[0], at[-1], keep_last)
        seen = first_seen(conn, ward)
    return list(replay(profile, ward, rows, at, seen))
