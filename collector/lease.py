"""The judge lease and the verdict snapshot: exactly one collector process judges.

Several collector processes may share one database (replicas behind a load balancer, on
PostgreSQL). Each keeps its own State by following the results table (collector.follow), but
only the holder of the *judge lease* judges every ward, records the history and writes the
verdicts as a snapshot; the others serve that snapshot.

The lease is one row of ``leases``. Taking or renewing it is one conditional UPDATE ("set me
as holder where I already hold it or it has expired"), which both databases run atomically:
PostgreSQL re-checks the condition on the locked row, SQLite has one writer. Its times come
from the database's clock on PostgreSQL, so the replicas' own clocks never decide who holds
it; on SQLite (one machine) they come from this process's clock.

The holder sets how long its lease lasts: 1.5 judging periods plus twice its last judging
time, so a slow judgement on a busy machine does not lose it. It renews before each
judgement and again in the transaction that writes the snapshot, so a holder that lost the
lease (paused past its expiry) never overwrites a newer holder's snapshot. History is written
by collector.history in its own transaction: a holder paused past its expiry may still write
one period's changes that the new holder writes too; those rows repeat a state change, they
never invent one.
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from collector import db
from collector.readiness import CriterionResult, Evidence, Verdict, collection_paused

JUDGE = "judge"
# A lease outlives its last renewal by this many judging periods, plus twice the judging time.
LEASE_PERIODS = 1.5


@dataclass(frozen=True)
class Holder:
    """Who holds the lease, and until when (epoch seconds, the lease's clock)."""

    holder: str
    acquired_at: float
    expires_at: float


@dataclass(frozen=True)
class Snapshot:
    holder: str
    judged_at: float
    verdicts: dict[str, Verdict]


def _db_now(conn: sa.Connection, clock: Callable[[], float]) -> Any:
    """The lease's clock as a SQL expression: PostgreSQL's own, else this process's."""
    if conn.dialect.name == "postgresql":
        return sa.func.extract("epoch", sa.func.clock_timestamp())
    return sa.literal(clock(), sa.Double)


class Lease:
    """One process's view of the judge lease; ``name`` must be unique among the processes."""

    def __init__(self, engine: Engine, name: str, clock: Callable[[], float]) -> None:
        self.engine = engine
        self.name = name
        self.clock = clock
        self.held = False
        # Once released (shutting down), never taken again by this process.
        self.released = False

    def _claim(self, conn: sa.Connection, seconds: float) -> bool:
        t = db.leases
        now = _db_now(conn, self.clock)
        mine = t.c.holder == self.name
        claimed = conn.execute(
            sa.update(t)
            .where(t.c.name == JUDGE, sa.or_(mine, t.c.expires_at < now))
            .values(
                holder=self.name,
                expires_at=now + seconds,
                acquired_at=sa.case((mine, t.c.acquired_at), else_=now),
            )
        ).rowcount
        return bool(claimed == 1)

    def claim(self, seconds: float) -> bool:
        """Take or renew the lease for ``seconds``; True when this process now holds it."""
        if self.released:
            return False
        with db.writer(self.engine).begin() as conn:
            self.held = self._claim(conn, seconds)
        return self.held

    def publish(self, verdicts: Mapping[str, Verdict], judged_at: float, seconds: float) -> bool:
        """Renew the lease and, in the same transaction, store ``verdicts`` as the snapshot.
        False (nothing stored) when the lease is no longer ours."""
        if self.released:
            return False
        body = encode(verdicts)
        s = db.verdict_snapshot
        with db.writer(self.engine).begin() as conn:
            self.held = self._claim(conn, seconds)
            if self.held:
                values = {"holder": self.name, "judged_at": judged_at, "body": body}
                updated = conn.execute(sa.update(s).where(s.c.id == 1).values(**values)).rowcount
                if not updated:
                    conn.execute(sa.insert(s).values(id=1, **values))
        return self.held

    def release(self) -> None:
        """Let the lease go at once (a clean shutdown), so a standby need not wait it out."""
        self.released = True
        t = db.leases
        with db.writer(self.engine).begin() as conn:
            conn.execute(
                sa.update(t)
                .where(t.c.name == JUDGE, t.c.holder == self.name)
                .values(expires_at=0.0)
            )
        self.held = False


def holder(engine: Engine) -> Holder | None:
    t = db.leases
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(t.c.holder, t.c.acquired_at, t.c.expires_at).where(t.c.name == JUDGE)
        ).first()
    return None if row is None or not row.holder else Holder(*row)


def snapshot_judged_at(engine: Engine) -> tuple[str, float] | None:
    """Who wrote the snapshot and when, without reading its body."""
    s = db.verdict_snapshot
    with engine.connect() as conn:
        row = conn.execute(sa.select(s.c.holder, s.c.judged_at).where(s.c.id == 1)).first()
    return None if row is None else (row.holder, row.judged_at)


def load_snapshot(engine: Engine) -> Snapshot | None:
    s = db.verdict_snapshot
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(s.c.holder, s.c.judged_at, s.c.body).where(s.c.id == 1)
        ).first()
    if row is None:
        return None
    return Snapshot(row.holder, row.judged_at, decode(row.body))


# Rows of field values, named once in the snapshot's header: a fraction of the size and
# time of one JSON object per evidence (3,321 wards of 22 criteria: well under a second).
_EVIDENCE = tuple(f.name for f in dataclasses.fields(Evidence))
_CRITERION = tuple(f.name for f in dataclasses.fields(CriterionResult) if f.name != "evidence")
_VERDICT = tuple(f.name for f in dataclasses.fields(Verdict) if f.name != "criteria")


# A snapshot of 3,321 wards is some 150,000 small objects without a cycle among them: built
# with the cycle collector running, it sweeps the whole heap again and again (measured: 0.9 s
# of CPU to decode, 0.22 s with it paused).
def encode(verdicts: Mapping[str, Verdict]) -> bytes:
    ev, cr, vd = attrgetter(*_EVIDENCE), attrgetter(*_CRITERION), attrgetter(*_VERDICT)
    with collection_paused():
        rows = [
            [*vd(v), [[*cr(c), [ev(e) for e in c.evidence]] for c in v.criteria]]
            for v in verdicts.values()
        ]
    doc = {"evidence": _EVIDENCE, "criterion": _CRITERION, "verdict": _VERDICT, "rows": rows}
    return zlib.compress(json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode(), 6)


def _maker(cls: Any, names: list[str], nested: str = "") -> Callable[..., Any]:
    """Builds ``cls`` from a row of values named ``names`` and the ``nested`` list: by position
    when those are its fields in its order (always, but in a cluster of mixed versions), the
    nested one last; else by name."""
    fields = tuple(f.name for f in dataclasses.fields(cls))
    if (*names, *([nested] if nested else [])) == fields:
        return lambda row, *more: cls(*row, *more)
    if nested:
        return lambda row, more: cls(**dict(zip(names, row, strict=True)), **{nested: more})
    return lambda row: cls(**dict(zip(names, row, strict=True)))


def decode(body: bytes) -> dict[str, Verdict]:
    with collection_paused():
        return _decode(json.loads(zlib.decompress(body)))


def _decode(doc: dict[str, Any]) -> dict[str, Verdict]:
    ev = _maker(Evidence, doc["evidence"])
    cr = _maker(CriterionResult, doc["criterion"], "evidence")
    vd = _maker(Verdict, doc["verdict"], "criteria")
    out: dict[str, Verdict] = {}
    for *fields, criteria in doc["rows"]:
        verdict: Verdict = vd(
            fields, [cr(c, [ev(e) for e in evidence]) for *c, evidence in criteria]
        )
        out[verdict.ward] = verdict
    return out
