"""Keep a process's State current by following the results table.

With several collector processes on one database each ingests only part of the batches, yet
each serves /metrics, the board and the API from its own State. So every process reads, each
period, the results others committed: the rows with an id above the highest it has seen.

Ids are not committed in order on PostgreSQL: a transaction that took ids 100-103 may commit
after one that took 104-107. A process that read up to 107 would then never see 100-103. So
the follower remembers the *gaps*, ranges of ids below the highest seen that it has not seen,
and reads them again each period until they fill or are older than ``gap_seconds`` (ids that
never fill: a rolled-back transaction, a duplicate that PostgreSQL's ON CONFLICT skipped
after taking an id, a pruned row). After a (re)build it reads the last ``start_slack`` ids
again once, for transactions that were open while the rebuild read the table. Whatever it
reads twice, State drops: a result whose start time its series already holds is a replay.

Each period reads at most ``pages`` pages of ``page`` rows, so a process far behind (just
started on a busy database) catches up over several periods instead of in one huge read.
Agents' last contact (``agents.last_seen``) is followed too, for staleness verdicts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from itertools import groupby
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from collector import db
from collector.state import State
from shared.wire import ResultRecord

DEFAULT_PAGE = 5000
DEFAULT_PAGES = 4
# Longer than any ingest transaction stays open: a gap older than this will never fill.
DEFAULT_GAP_SECONDS = 60.0
DEFAULT_START_SLACK = 10_000
# The most gaps remembered; past it the closest two merge (their ids between are read again,
# and dropped by State).
MAX_GAPS = 64
# Another process's clock may run this far behind ours: its last_seen is still read.
AGENT_SLACK_SECONDS = 120.0

STATE_COLUMNS = tuple(
    db.results.c[name]
    for name in (
        "agent",
        "seq",
        "check",
        "name",
        "target",
        "address",
        "labels",
        "interval_seconds",
        "started",
        "duration_seconds",
        "success",
        "reason",
        "metrics",
    )
)


def record(row: sa.Row[Any]) -> ResultRecord:
    # Rows were validated on the way in; constructing without validation keeps a restart
    # with millions of rows quick.
    return ResultRecord.model_construct(
        seq=row.seq,
        check=row.check,
        name=row.name,
        target=row.target,
        address=row.address,
        labels=json.loads(row.labels),
        interval_seconds=row.interval_seconds,
        started=row.started,
        duration_seconds=row.duration_seconds,
        success=bool(row.success),
        reason=row.reason,
        metrics=json.loads(row.metrics),
        info={},
    )


Gap = tuple[int, int, float]  # first id, last id, when noticed (monotonic)


def holes(lo: int, hi: int, ids: list[int]) -> list[tuple[int, int]]:
    """The ranges of [lo, hi] not in ``ids`` (ascending; may hold ids outside [lo, hi])."""
    out: list[tuple[int, int]] = []
    cur = lo
    for i in ids:
        if i < cur:
            continue
        if i > hi:
            break
        if i > cur:
            out.append((cur, i - 1))
        cur = i + 1
    if cur <= hi:
        out.append((cur, hi))
    return out


class Follower:
    def __init__(
        self,
        engine: Engine,
        *,
        page: int = DEFAULT_PAGE,
        pages: int = DEFAULT_PAGES,
        gap_seconds: float = DEFAULT_GAP_SECONDS,
        start_slack: int = DEFAULT_START_SLACK,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if page < 1 or pages < 1:
            raise ValueError("page and pages: must be at least 1")
        self.engine = engine
        self.page = page
        self.pages = pages
        self.gap_seconds = gap_seconds
        self.start_slack = start_slack
        self.monotonic = monotonic
        self.high = 0
        self.gaps: list[Gap] = []
        self._agents_high = float("-inf")
        self.rows_read = 0

    def start(self) -> None:
        """Follow from the newest row now; call before a rebuild reads the table."""
        with self.engine.connect() as conn:
            newest = conn.execute(sa.select(sa.func.max(db.results.c.id))).scalar()
        self.high = int(newest or 0)
        low = max(1, self.high - self.start_slack + 1)
        self.gaps = [(low, self.high, self.monotonic())] if self.high else []
        self._agents_high = float("-inf")

    def poll(self, state: State) -> int:
        """Add to ``state`` what was committed since the last poll; returns rows read."""
        read = 0
        for _ in range(self.pages):
            rows = self._page()
            read += len(rows)
            self._add(state, rows)
            if len(rows) < self.page:
                break
        self._follow_agents(state)
        self.rows_read += read
        return read

    def _page(self) -> list[sa.Row[Any]]:
        r = db.results
        wanted = [r.c.id > self.high, *(r.c.id.between(lo, hi) for lo, hi, _ in self.gaps)]
        query = (
            sa.select(r.c.id, r.c.ward_id, *STATE_COLUMNS)
            .where(sa.or_(*wanted))
            .order_by(r.c.id)
            .limit(self.page)
        )
        with self.engine.connect() as conn:
            rows = list(conn.execute(query))
        self._note([int(row.id) for row in rows])
        return rows

    def _note(self, ids: list[int]) -> None:
        now = self.monotonic()
        gaps: list[Gap] = []
        for lo, hi, since in self.gaps:
            if now - since <= self.gap_seconds:
                gaps.extend((a, b, since) for a, b in holes(lo, hi, ids))
        newer = [i for i in ids if i > self.high]
        if newer:
            gaps.extend((a, b, now) for a, b in holes(self.high + 1, newer[-1], newer))
            self.high = newer[-1]
        gaps.sort()
        while len(gaps) > MAX_GAPS:
            k = min(range(len(gaps) - 1), key=lambda j: gaps[j + 1][0] - gaps[j][1])
            (lo, _, s1), (_, hi, s2) = gaps[k], gaps[k + 1]
            gaps[k : k + 2] = [(lo, hi, min(s1, s2))]
        self.gaps = gaps

    def _add(self, state: State, rows: list[sa.Row[Any]]) -> None:
        rows.sort(key=lambda row: (row.ward_id, row.agent, row.started))
        for (ward, agent), group in groupby(rows, key=lambda row: (row.ward_id, row.agent)):
            state.add(ward, agent, [record(row) for row in group])

    def _follow_agents(self, state: State) -> None:
        a = db.agents
        query = sa.select(a.c.ward_id, a.c.agent, a.c.last_seen)
        if self._agents_high > float("-inf"):
            query = query.where(a.c.last_seen > self._agents_high - AGENT_SLACK_SECONDS)
        with self.engine.connect() as conn:
            for row in conn.execute(query):
                state.heard(row.ward_id, row.agent, row.last_seen)
                self._agents_high = max(self._agents_high, row.last_seen)
