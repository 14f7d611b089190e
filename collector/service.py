"""The running collector: database, in-memory state, profile and cached verdicts in one place.

The database is the record; :class:`collector.state.State` holds the recent window the
profile needs so judging every ward never queries it. The state is rebuilt from the
database at start, and after that only ever updated after a commit, so it never holds a
result the database does not.

Verdicts for all wards are computed at most every ``verdict_seconds``: a Prometheus scrape,
the ward list and a ward's detail all read the same cached evaluation. ``serve`` keeps that
evaluation fresh from a thread of its own, so no request waits for it. That thread is
supervised: a failed judgement is logged, counted and tried again the next period, a dead
thread is restarted, and :meth:`Service.health` reports unhealthy when the last full judgement
is older than :data:`STALE_PERIODS` periods. An error judging one ward only makes that ward
unknown (see :func:`collector.readiness.evaluate_all`).

Each agent and each ward has a series budget (:mod:`collector.state`): a batch that would
create series past it is refused with a 422 naming the budget, before anything is stored.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from collector import clocks, db, history, ingest
from collector import wards as wardlist
from collector.expected import PlanBook, annotate
from collector.profile import Profile, default_profile_path, load_profile
from collector.readiness import Judge, Verdict, evaluate_all
from collector.selfmetrics import SelfMetrics
from collector.state import DEFAULT_AGENT_SERIES, DEFAULT_WARD_SERIES, SeriesUsage, State
from collector.tokens import CACHE_SECONDS, Grant, TokenCache
from shared.wire import Ack, ResultRecord

log = logging.getLogger(__name__)

DEFAULT_VERDICT_SECONDS = 2.0
# A ward list imported by the CLI while the server runs shows up within this long.
DEFAULT_WARDS_SECONDS = 10.0
DEFAULT_RETENTION_DAYS = 30.0
# /healthz fails when the last full judgement is older than this many judging periods.
STALE_PERIODS = 3.0
# ... and never sooner than this: a judge a period or two late on a busy machine is not sick.
MIN_STALE_SECONDS = 10.0
# Between these, a judgement re-judges only the wards whose verdict may have changed
# (readiness.Judge); a full one is the safety net should that ever miss a change.
FULL_JUDGEMENT_SECONDS = 30.0


@dataclass(frozen=True)
class AgentInfo:
    ward: str
    agent: str
    first_seen: float
    last_seen: float
    version: str
    stream: str
    last_seq: int | None
    spool_depth: int
    spool_dropped_total: int
    resident_memory_bytes: int
    clock_offset_seconds: float | None = None


def profile_path(explicit: str | Path | None = None) -> Path:
    given = explicit or os.environ.get("WARDREADY_PROFILE")
    return Path(given) if given else default_profile_path()


_STATE_COLUMNS = tuple(
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


def _record(row: sa.Row[Any]) -> ResultRecord:
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


class Service:
    def __init__(
        self,
        engine: Engine,
        profile: Profile,
        *,
        verdict_seconds: float = DEFAULT_VERDICT_SECONDS,
        wards_seconds: float = DEFAULT_WARDS_SECONDS,
        token_seconds: float = CACHE_SECONDS,
        clock: Callable[[], float] = time.time,
        agent_series_budget: int = DEFAULT_AGENT_SERIES,
        ward_series_budget: int = DEFAULT_WARD_SERIES,
    ) -> None:
        self.engine = engine
        self.profile = profile
        self._budgets = {"agent_budget": agent_series_budget, "ward_budget": ward_series_budget}
        self.state = State.for_profile(profile, **self._budgets)
        self.metrics = SelfMetrics()
        self.tokens = TokenCache(engine, token_seconds)
        self.plan_book = PlanBook(engine)
        self.clock = clock
        self._verdict_seconds = verdict_seconds
        self._wards_seconds = wards_seconds
        # SQLite has one writer anyway; taking turns here instead of in SQLite's busy loop
        # keeps latency even, and keeps State updates in commit order.
        self._write_lock = threading.Lock()
        # Made once: deriving the engine's options for every batch costs as much as a query.
        self._writer = db.writer(engine)
        self._verdict_lock = threading.Lock()
        self._wards_lock = threading.Lock()
        self._verdicts: tuple[float, dict[str, Verdict]] | None = None
        self._judging = threading.Event()
        self._wards: tuple[float, dict[str, wardlist.Ward]] | None = None
        self.history = history.Recorder(engine)
        # Monotonic times: judging started (None: no judge thread), the last full judgement
        # ended, and how long it took.
        self._judge_since: float | None = None
        self._last_judged: float | None = None
        self._judge_took = 0.0
        self.min_stale_seconds = MIN_STALE_SECONDS
        self._judge_of = Judge(profile)
        self._last_full: float | None = None

    @classmethod
    def open(
        cls,
        url: str | None = None,
        profile: str | Path | None = None,
        *,
        verdict_seconds: float = DEFAULT_VERDICT_SECONDS,
        synchronous: str = "FULL",
        agent_series_budget: int = DEFAULT_AGENT_SERIES,
        ward_series_budget: int = DEFAULT_WARD_SERIES,
    ) -> Service:
        """Engine + migrations + profile + state rebuilt from the database, ready to serve."""
        loaded = load_profile(profile_path(profile))
        engine = db.make_engine(url, synchronous=synchronous)
        db.upgrade(engine)
        service = cls(
            engine,
            loaded,
            verdict_seconds=verdict_seconds,
            agent_series_budget=agent_series_budget,
            ward_series_budget=ward_series_budget,
        )
        service.rebuild()
        return service

    def close(self) -> None:
        self.engine.dispose()

    def wards(self, refresh: bool = False) -> dict[str, wardlist.Ward]:
        now = time.monotonic()
        with self._wards_lock:
            if refresh or self._wards is None or now - self._wards[0] > self._wards_seconds:
                self._wards = (now, wardlist.load(self.engine))
            return self._wards[1]

    def rebuild(self, now: float | None = None) -> int:
        """Load what State keeps from the database: the profile's window of results, the
        newest ``keep_last`` results of each series found there (a slow check's `last: N`
        reaches further back than the window), and every agent's last contact.

        The series budgets hold here too: series past them (the database may hold more, from
        before a budget was lowered) are skipped, and series too old to matter are dropped,
        so memory after a restart is bounded as it is while running."""
        now = self.clock() if now is None else now
        self.state = State.for_profile(self.profile, **self._budgets)
        since = now - self.profile.retention_seconds()
        keep_last = self.state.keep_last
        r = db.results
        loaded = skipped = 0
        with self.engine.connect() as conn:
            # One ward at a time: each query is a range of the (ward_id, started) index, and
            # memory holds one ward's rows at once.
            for ward in self.wards(refresh=True):
                rows = list(
                    conn.execute(
                        sa.select(*_STATE_COLUMNS).where(r.c.ward_id == ward, r.c.started >= since)
                    )
                )
                per_series: dict[tuple[str, str, str], int] = {}
                for row in rows:
                    key = (row.agent, row.name, row.target)
                    per_series[key] = per_series.get(key, 0) + 1
                for (agent, name, target), n in per_series.items():
                    if n < keep_last:
                        rows.extend(
                            conn.execute(
                                sa.select(*_STATE_COLUMNS)
                                .where(
                                    r.c.ward_id == ward,
                                    r.c.started < since,
                                    r.c.agent == agent,
                                    r.c.name == name,
                                    r.c.target == target,
                                )
                                .order_by(r.c.started.desc())
                                .limit(keep_last - n)
                            ).all()
                        )
                rows.sort(key=lambda row: (row.agent, row.started))
                for agent, group in groupby(rows, key=lambda row: row.agent):
                    records = [_record(row) for row in group]
                    dropped = self.state.add(ward, agent, records)
                    skipped += dropped
                    loaded += len(records) - dropped
        for a in self.agents():
            self.state.heard(a.ward, a.agent, a.last_seen)
        self.state.expire(now)
        if skipped:
            log.warning("rebuild: %d results skipped, their series past a series budget", skipped)
        self._verdicts = None
        return loaded

    def agents(self, ward: str | None = None) -> list[AgentInfo]:
        a = db.agents
        query = sa.select(a).order_by(a.c.ward_id, a.c.agent)
        if ward is not None:
            query = query.where(a.c.ward_id == ward)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            AgentInfo(
                ward=row.ward_id,
                agent=row.agent,
                first_seen=row.first_seen,
                last_seen=row.last_seen,
                version=row.version,
                stream=row.stream,
                last_seq=row.last_seq,
                spool_depth=row.spool_depth,
                spool_dropped_total=row.spool_dropped_total,
                resident_memory_bytes=row.resident_memory_bytes,
                clock_offset_seconds=row.clock_offset_seconds,
            )
            for row in rows
        ]

    def ingest(self, authorization: str | None, body: bytes, now: float | None = None) -> Ack:
        """Authorize, validate, store and remember one batch; raises ingest.IngestError."""
        return self.accept(self.authorize(authorization), body, now)

    def authorize(self, authorization: str | None) -> Grant:
        try:
            return ingest.authorize(self.tokens, authorization)
        except ingest.IngestError as exc:
            self.metrics.refused(exc)
            raise

    def accept(self, grant: Grant, body: bytes, now: float | None = None) -> Ack:
        """Validate, store and remember a batch sent with ``grant``'s token."""
        metrics = self.metrics
        try:
            batch = ingest.parse(body)
        except ingest.IngestError as exc:
            metrics.refused(exc)
            raise
        now = self.clock() if now is None else now
        try:
            ingest.check(batch, grant, now, ingest.known_checks())
        except ingest.IngestError as exc:
            metrics.refused(exc, max(1, len(batch.results)))
            raise
        with self._write_lock:
            over = self.state.admit(batch.ward, batch.agent, batch.results)
            if over:
                self.state.refuse(batch.ward, len(batch.results))
                refusal = _budget_error(over)
                log.warning("ward %s agent %s: batch of %d results refused: %s", batch.ward,
                            batch.agent, len(batch.results), refusal.detail)  # fmt: skip
                metrics.refused(refusal, len(batch.results))
                raise refusal
            began = time.perf_counter()
            with self._writer.begin() as conn:
                stored = ingest.store(conn, batch, now)
                self.plan_book.note(conn, batch, now)
            metrics.commit_duration.observe(time.perf_counter() - began)
            # Only after the commit: State must never hold what the database may not.
            if stored.inserted:
                self.state.add(batch.ward, batch.agent, stored.inserted)
            self.state.heard(batch.ward, batch.agent, now)
        metrics.results.inc(len(stored.inserted))
        metrics.duplicates.inc(stored.duplicates)
        metrics.result_age.observe_many([max(0.0, now - r.started) for r in stored.inserted])
        return Ack(
            accepted=len(stored.inserted), duplicates=stored.duplicates, last_seq=stored.last_seq
        )

    def verdicts(self, now: float | None = None) -> dict[str, Verdict]:
        """Every known ward's verdict, recomputed at most every ``verdict_seconds``.

        An explicit ``now`` (a what-if, or a test's clock) is always computed afresh and
        not cached.
        """
        if now is not None:
            result = evaluate_all(
                self.profile, self.state, list(self.wards()), now, self._ward_error
            )
            annotate(result, self.profile, self.plan_book, now)
            clocks.annotate(result, self.agents())
            return result
        mono = time.monotonic()
        # While judge_forever runs, a cached result may be up to two periods old: a request
        # then never waits for an evaluation of every ward (~0.5 s at 3,321 wards).
        fresh_for = self._verdict_seconds * (2 if self._judging.is_set() else 1)
        with self._verdict_lock:
            cached = self._verdicts
            if cached is not None and mono - cached[0] <= fresh_for:
                return cached[1]
            return self._judge(mono)

    def _ward_error(self, ward: str, exc: Exception) -> None:
        self.metrics.judge_errors.inc()

    def _judge(self, mono: float) -> dict[str, Verdict]:
        began, cpu = time.perf_counter(), time.thread_time()
        now = self.clock()
        if self._judge_of.profile is not self.profile:
            self._judge_of = Judge(self.profile)
        last_full = self._last_full
        full = last_full is None or not 0 <= mono - last_full < FULL_JUDGEMENT_SECONDS
        result = self._judge_of.judge(
            self.state, list(self.wards()), now, self._ward_error, full=full
        )
        if full:
            self._last_full = mono
        annotate(result, self.profile, self.plan_book, now)
        clocks.annotate(result, self.agents())
        took = time.perf_counter() - began
        self.metrics.judge_duration.observe(took)
        self.metrics.judge_cpu.inc(time.thread_time() - cpu)
        self.metrics.judge_last_success.set(now)
        self._judge_took = took
        self._last_judged = time.monotonic()
        self._verdicts = (mono, result)
        try:
            self.history.record(result)
        except sa.exc.SQLAlchemyError:
            # Verdicts are still served; the recorder keeps its last stored states, so the
            # next evaluation writes the changes this one could not.
            log.exception("storing verdict history failed")
        return result

    def judge_forever(self, stop: threading.Event) -> None:
        """Re-evaluate every ward each ``verdict_seconds`` until ``stop`` is set, so API and
        /metrics requests read a ready result instead of computing one. A judgement that
        fails (the database gone while the ward list is read) is logged, counted and tried
        again the next period; series that stopped reporting are forgotten on the way."""
        if self._judge_since is None:
            self._judge_since = time.monotonic()
        self._judging.set()
        try:
            while not stop.is_set():
                try:
                    self.state.expire(self.clock())
                    with self._verdict_lock:
                        self._judge(time.monotonic())
                except Exception:
                    log.exception("judging every ward failed; trying again in %g s",
                                  self._verdict_seconds)  # fmt: skip
                    self.metrics.judge_errors.inc()
                stop.wait(self._verdict_seconds)
        finally:
            self._judging.clear()

    def supervise_judge(self, stop: threading.Event) -> None:
        """Run :meth:`judge_forever` in a thread of its own, and start it again if it dies,
        until ``stop`` is set."""
        while not stop.is_set():
            worker = threading.Thread(
                target=self.judge_forever, args=(stop,), name="judge", daemon=True
            )
            worker.start()
            worker.join()
            if not stop.is_set():
                log.error("the judge thread died; restarting it in %g s", self._verdict_seconds)
                self.metrics.judge_errors.inc()
                stop.wait(self._verdict_seconds)

    def health(self) -> str | None:
        """Why the collector is unhealthy, or None: while a judge thread runs, the last full
        judgement must be younger than STALE_PERIODS periods (a judgement's own duration
        counted in the period), or than ``min_stale_seconds``, whichever is longer."""
        since = self._judge_since
        if since is None:
            return None
        limit = max(
            STALE_PERIODS * (self._verdict_seconds + self._judge_took), self.min_stale_seconds
        )
        last = self._last_judged
        age = time.monotonic() - (since if last is None else last)
        if age <= limit:
            return None
        if last is None:
            return f"judge stale: no full judgement in the {age:.0f} s since judging started"
        return f"judge stale: last full judgement {age:.0f} s ago (limit {limit:.0f} s)"

    def series_usage(self, ward: str) -> SeriesUsage:
        return self.state.usage(ward)

    def prune(self, days: float = DEFAULT_RETENTION_DAYS, now: float | None = None) -> int:
        """Delete results that started more than ``days`` ago; returns how many."""
        return prune(self.engine, days, self.clock() if now is None else now)


def _budget_error(over: list[tuple[int, str]]) -> ingest.IngestError:
    errors = [{"field": f"results.{i}", "message": why} for i, why in over]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    detail = f"{errors[0]['field']}: {errors[0]['message']}{more}"
    return ingest.IngestError(422, detail, errors[: ingest.MAX_ERRORS], reason="series_budget")


def _ward_ids(engine: Engine) -> Iterator[str]:
    with engine.connect() as conn:
        yield from conn.execute(sa.select(db.wards.c.id).order_by(db.wards.c.id)).scalars().all()


def prune(engine: Engine, days: float, now: float) -> int:
    if days <= 0:
        raise ValueError("days: must be greater than 0")
    cutoff = now - days * 86400
    r = db.results
    removed = 0
    # Ward by ward, so each delete is an index range and holds the write lock briefly.
    for ward in _ward_ids(engine):
        with db.writer(engine).begin() as conn:
            removed += conn.execute(
                sa.delete(r).where(r.c.ward_id == ward, r.c.started < cutoff)
            ).rowcount
    return removed
