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

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

import sqlalchemy as sa
from prometheus_client import Counter, Gauge
from sqlalchemy.engine import Engine

from collector import clocks, db, history, ingest
from collector import lease as leases
from collector import wards as wardlist
from collector.commit import Committer, Job
from collector.expected import PlanBook, annotate
from collector.follow import STATE_COLUMNS, Follower, record
from collector.ingest import Stored
from collector.profile import Profile, default_profile_path, load_profile
from collector.readiness import Judge, Verdict, evaluate_all
from collector.selfmetrics import SelfMetrics
from collector.state import DEFAULT_AGENT_SERIES, DEFAULT_WARD_SERIES, SeriesUsage, State
from collector.tokens import CACHE_SECONDS, Grant, TokenCache, bearer
from shared.wire import Ack, Batch

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
        name: str | None = None,
        follow_seconds: float = 0.0,
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
        # Every batch is stored by one committer thread, many at a time (collector.commit):
        # SQLite has one writer anyway, and State is updated in commit order.
        self._committer: Committer[tuple[Batch, float], Ack] = Committer(self._commit)
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
        # Several processes on one database (follow_seconds > 0): follow the results table,
        # and judge only while holding the judge lease (collector.follow, collector.lease).
        self.name = name or default_name()
        self.follow_seconds = follow_seconds
        self.follower = Follower(engine) if follow_seconds > 0 else None
        self.lease = leases.Lease(engine, self.name, clock) if follow_seconds > 0 else None
        # The holder's latest snapshot, and (monotonic) when it was last seen to change.
        self._snapshot: leases.Snapshot | None = None
        self._snapshot_changed: float | None = None
        # Verdicts judged here while no snapshot exists yet: (monotonic, verdicts).
        self._interim: tuple[float, dict[str, Verdict]] | None = None
        self.lease_held = Gauge(
            "wardready_collector_judge_lease_held",
            "1 while this collector process holds the judge lease (it judges every ward and "
            "writes the verdict snapshot), 0 while it serves the holder's snapshot.",
            registry=self.metrics.registry,
        )
        self.lease_held.set(0 if self.lease is not None else 1)
        self.followed = Counter(
            "wardready_collector_followed_results",
            "Result rows read back from the database to follow what other collector "
            "processes stored (re-reads of id gaps included).",
            registry=self.metrics.registry,
        )
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
        name: str | None = None,
        follow_seconds: float = 0.0,
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
            name=name,
            follow_seconds=follow_seconds,
        )
        service.rebuild()
        return service

    def close(self) -> None:
        self._committer.close()
        if self.lease is not None:
            try:
                self.lease.release()
            except sa.exc.SQLAlchemyError:
                log.exception("releasing the judge lease failed; it expires by itself")
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
        if self.follower is not None:
            # Before reading: what commits while the rebuild reads is then followed.
            self.follower.start()
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
                        sa.select(*STATE_COLUMNS).where(r.c.ward_id == ward, r.c.started >= since)
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
                                sa.select(*STATE_COLUMNS)
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
                    records = [record(row) for row in group]
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

    def known(self, authorization: str | None) -> Grant | None:
        """The grant of a token the cache holds, or None (then :meth:`authorize` decides)."""
        token = bearer(authorization)
        return None if token is None else self.tokens.peek(token)

    def accept(self, grant: Grant, body: bytes, now: float | None = None) -> Ack:
        """Validate, store and remember a batch sent with ``grant``'s token."""
        return self.submit(grant, body, now).result()

    def submit(self, grant: Grant, body: bytes, now: float | None = None) -> Future[Ack]:
        """Validate a batch sent with ``grant``'s token (an IngestError at once when it is
        bad) and hand it to the committer: the future's Ack comes after its commit."""
        batch, now = self.validate(grant, body, now)
        return self._committer.submit((batch, now), batch.ward, max(1, len(batch.results)))

    def validate(self, grant: Grant, body: bytes, now: float | None = None) -> tuple[Batch, float]:
        """The batch in ``body`` and its arrival time; IngestError when it is refused."""
        try:
            batch = ingest.parse(body)
        except ingest.IngestError as exc:
            self.metrics.refused(exc)
            raise
        now = self.clock() if now is None else now
        try:
            ingest.check(batch, grant, now, ingest.known_checks())
        except ingest.IngestError as exc:
            self.metrics.refused(exc, max(1, len(batch.results)))
            raise
        return batch, now

    def _commit(self, jobs: list[Job[tuple[Batch, float], Ack]]) -> None:
        """Store a group of batches (at most one per ward) in one transaction and answer each.

        When that transaction fails, each batch is tried in a transaction of its own, so a
        batch the database refuses fails alone."""
        admitted = [job for job in jobs if self._admit(job)]
        if not admitted:
            return
        metrics = self.metrics
        try:
            stored = self._store(admitted)
        except Exception as exc:
            if len(admitted) == 1:
                admitted[0].future.set_exception(exc)
                return
            # The driver's own message, without the statement and every row's values.
            log.warning("storing %d batches together failed (%s); storing each alone",
                        len(admitted), getattr(exc, "orig", exc))  # fmt: skip
            self.plan_book.forget_reported([(j.item[0].ward, j.item[0].agent) for j in admitted])
            stored = []
            for job in admitted:
                try:
                    stored += self._store([job])
                except Exception as alone:
                    job.future.set_exception(alone)
        state = self.state
        for job, done in stored:
            batch, now = job.item
            # Only after the commit: State must never hold what the database may not.
            if done.inserted:
                state.add(batch.ward, batch.agent, done.inserted)
            state.heard(batch.ward, batch.agent, now)
            metrics.results.inc(len(done.inserted))
            metrics.duplicates.inc(done.duplicates)
            metrics.result_age.observe_many([max(0.0, now - r.started) for r in done.inserted])
            job.future.set_result(
                Ack(accepted=len(done.inserted), duplicates=done.duplicates, last_seq=done.last_seq)
            )

    def _admit(self, job: Job[tuple[Batch, float], Ack]) -> bool:
        """Whether the batch fits its agent's and ward's series budgets; else it is refused."""
        batch = job.item[0]
        over = self.state.admit(batch.ward, batch.agent, batch.results)
        if not over:
            return True
        self.state.refuse(batch.ward, len(batch.results))
        refusal = _budget_error(over)
        log.warning("ward %s agent %s: batch of %d results refused: %s", batch.ward,
                    batch.agent, len(batch.results), refusal.detail)  # fmt: skip
        self.metrics.refused(refusal, len(batch.results))
        job.future.set_exception(refusal)
        return False

    def _store(
        self, jobs: list[Job[tuple[Batch, float], Ack]]
    ) -> list[tuple[Job[tuple[Batch, float], Ack], Stored]]:
        began = time.perf_counter()
        with self._writer.begin() as conn:
            stored = ingest.store_many(conn, [job.item for job in jobs])
            for job in jobs:
                self.plan_book.note(conn, *job.item)
        self.metrics.commit_duration.observe(time.perf_counter() - began)
        self.metrics.commit_batches.observe(len(jobs))
        return list(zip(jobs, stored, strict=True))

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
        if self.lease is not None and not self.lease.held:
            return self._served()
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
        expired = float("-inf")
        try:
            while not stop.is_set():
                wait = self._verdict_seconds
                try:
                    mono = time.monotonic()
                    # Once a period: a standby's loop turns more often than that.
                    if mono - expired >= self._verdict_seconds:
                        self.state.expire(self.clock())
                        expired = mono
                    if self.lease is None:
                        with self._verdict_lock:
                            self._judge(time.monotonic())
                    else:
                        wait = self._judge_if_leader()
                except Exception:
                    log.exception("judging every ward failed; trying again in %g s",
                                  self._verdict_seconds)  # fmt: skip
                    self.metrics.judge_errors.inc()
                stop.wait(wait)
        finally:
            self._judging.clear()

    def _judge_if_leader(self) -> float:
        """One period with several processes: judge and publish while holding the lease,
        else keep the holder's snapshot current. Returns how long to wait for the next."""
        lease = self.lease
        assert lease is not None
        period = self._verdict_seconds
        seconds = leases.LEASE_PERIODS * period + 2 * self._judge_took
        was = lease.held
        if not lease.claim(seconds):
            if was:
                log.warning("%s: lost the judge lease; serving the holder's verdicts", self.name)
            self.lease_held.set(0)
            self._refresh_snapshot()
            # A standby looks often, so it takes over soon after the lease expires: well
            # within two periods of the holder's death.
            return period / 4
        with self._verdict_lock:
            if not was:
                log.warning("%s: took the judge lease", self.name)
                # History another holder wrote since: read its last states afresh.
                self.history = history.Recorder(self.engine)
                self._judge_since, self._last_judged = time.monotonic(), None
            self.lease_held.set(1)
            result = self._judge(time.monotonic())
        if not lease.publish(result, self.clock(), seconds):
            log.warning("%s: lost the judge lease while judging; snapshot not stored", self.name)
            self.lease_held.set(0)
        return period

    def _refresh_snapshot(self) -> None:
        """Load the holder's snapshot when it changed (a cheap look at judged_at first)."""
        seen = leases.snapshot_judged_at(self.engine)
        held = self._snapshot
        if seen is None or (held is not None and (held.holder, held.judged_at) == seen):
            return
        snapshot = leases.load_snapshot(self.engine)
        if snapshot is not None:
            self._snapshot = snapshot
            self._snapshot_changed = time.monotonic()

    def _served(self) -> dict[str, Verdict]:
        """Verdicts for a process without the lease: the holder's snapshot; before any
        exists (a new database), a judgement of our own, cached for a period, never recorded."""
        if self._snapshot is None and not self._judging.is_set():
            self._refresh_snapshot()
        if self._snapshot is not None:
            return self._snapshot.verdicts
        mono = time.monotonic()
        with self._verdict_lock:
            interim = self._interim
            if interim is None or mono - interim[0] > self._verdict_seconds:
                interim = self._interim = (mono, self.verdicts(self.clock()))
            return interim[1]

    def follow_forever(self, stop: threading.Event) -> None:
        """Every ``follow_seconds``, add to State what other processes stored."""
        follower = self.follower
        if follower is None:
            return
        while not stop.wait(self.follow_seconds):
            try:
                self.followed.inc(follower.poll(self.state))
            except Exception:
                log.exception("following the results table failed; trying again in %g s",
                              self.follow_seconds)  # fmt: skip

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
        # A process without the lease is healthy while the holder's snapshot keeps changing:
        # someone judges, and this process sees it.
        standby = self.lease is not None and not self.lease.held
        took = 0.0 if standby else self._judge_took
        limit = max(STALE_PERIODS * (self._verdict_seconds + took), self.min_stale_seconds)
        last = self._snapshot_changed if standby else self._last_judged
        age = time.monotonic() - (since if last is None else last)
        if age <= limit:
            return None
        if standby:
            if last is None:
                return f"verdict snapshot stale: none from a judge in the {age:.0f} s since start"
            return f"verdict snapshot stale: unchanged for {age:.0f} s (limit {limit:.0f} s)"
        if last is None:
            return f"judge stale: no full judgement in the {age:.0f} s since judging started"
        return f"judge stale: last full judgement {age:.0f} s ago (limit {limit:.0f} s)"

    def series_usage(self, ward: str) -> SeriesUsage:
        return self.state.usage(ward)

    def prune(self, days: float = DEFAULT_RETENTION_DAYS, now: float | None = None) -> int:
        """Delete results that started more than ``days`` ago; returns how many."""
        return prune(self.engine, days, self.clock() if now is None else now)


def default_name() -> str:
    """A name no other collector process has: host name and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


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
