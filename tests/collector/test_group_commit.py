"""Group commit: many batches made durable by one transaction, each acknowledged only after
the commit that holds it, and a batch the database refuses failing alone.

Batches are made to wait for the committer the way they would in production: another
connection holds SQLite's write lock (as the CLI or a second process would), so the
committer blocks in BEGIN IMMEDIATE while more batches arrive.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from collector import db, tokens, wards
from collector.api import create_app
from collector.clock import HEADER
from collector.commit import Closed, Committer, Job
from collector.profile import load_profile
from collector.service import Service
from collector.tokens import Grant
from shared.wire import Ack

from .conftest import BROKEN, PROFILE, READY, UNITS, auth, batch, body, result

WARDS = [READY, "commune-can-gio", BROKEN, "ward-binh-thoi"]


def grant(ward: str) -> Grant:
    return Grant(ward, "pc-01")


def stored(engine: sa.Engine, ward: str | None = None) -> int:
    query = sa.select(sa.func.count()).select_from(db.results)
    if ward is not None:
        query = query.where(db.results.c.ward_id == ward)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def samples(service: Service, ward: str) -> int:
    return sum(len(s.samples) for s in service.state.ward(ward).series)


def commits(service: Service) -> tuple[float, float]:
    """(commits made, batches they held), from the collector's own metrics."""
    value = service.metrics.registry.get_sample_value
    count = value("wardready_collector_db_commit_batches_count") or 0.0
    total = value("wardready_collector_db_commit_batches_sum") or 0.0
    return count, total


@contextmanager
def write_lock_held(db_url: str) -> Iterator[None]:
    """Another connection holding SQLite's write lock until the block ends."""
    raw = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        raw.execute("BEGIN IMMEDIATE")
        yield
        raw.execute("ROLLBACK")
    finally:
        raw.close()


def poison(engine: sa.Engine) -> None:
    """Make the database itself refuse any result named 'poison' (a real failed insert)."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql(
                "ALTER TABLE results ADD CONSTRAINT poisoned_result CHECK (name <> 'poison')"
            )
            return
        conn.exec_driver_sql(
            "CREATE TRIGGER poison BEFORE INSERT ON results WHEN NEW.name = 'poison' "
            "BEGIN SELECT RAISE(ABORT, 'poisoned result'); END"
        )


def pending(futures: list[Future[Ack]]) -> bool:
    return not any(f.done() for f in futures)


@pytest.mark.sqlite_only("batches wait behind SQLite's write lock held by another connection")
def test_concurrent_batches_share_commits_and_each_gets_its_own_ack(
    service: Service, db_url: str
) -> None:
    # Ten batches per ward, each overlapping the previous one by two results: a replaying
    # agent. Per ward 32 distinct results; every overlap must come back as a duplicate.
    futures: dict[str, list[Future[Ack]]] = {w: [] for w in WARDS}
    with write_lock_held(db_url):
        for k in range(10):
            for ward in WARDS:
                doc = batch(ward, results=[result(3 * k + i) for i in range(1, 6)])
                doc["stream"] = "a" * 32
                futures[ward].append(service.submit(grant(ward), body(doc)))
        every = [f for fs in futures.values() for f in fs]
        # Nothing is acknowledged while nothing can be committed.
        with pytest.raises(FutureTimeout):
            every[-1].result(timeout=0.3)
        assert pending(every)
        assert stored(service.engine) == 0
    acks = {w: [f.result(timeout=30) for f in fs] for w, fs in futures.items()}
    for ward, answers in acks.items():
        assert sum(a.accepted for a in answers) == 32, ward
        assert sum(a.duplicates for a in answers) == 10 * 5 - 32, ward
        assert [a.last_seq for a in answers] == [3 * k + 5 for k in range(10)]
        assert stored(service.engine, ward) == 32
        assert samples(service, ward) == 32
    made, held = commits(service)
    assert held == 40
    # One batch per ward per group: at least ten groups, and far fewer than 40 commits.
    assert 10 <= made <= 11
    (agent,) = service.agents(READY)
    assert agent.last_seq == 32 and agent.stream == "a" * 32


@pytest.mark.sqlite_only("batches wait behind SQLite's write lock held by another connection")
def test_a_batch_the_database_refuses_fails_alone(
    service: Service, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="collector.service")
    poison(service.engine)
    bad_ward = WARDS[3]
    with write_lock_held(db_url):
        # The committer takes the first batch (perhaps with a few more) and waits for the
        # lock; the rest wait for the next group. The poisoned batch comes second, so
        # whichever group it lands in holds good batches too.
        first = service.submit(grant(READY), body(batch(READY)))
        group = {bad_ward: service.submit(
            grant(bad_ward), body(batch(bad_ward, results=[result(1), result(2, name="poison")]))
        )}  # fmt: skip
        for ward in WARDS[:3]:
            group[ward] = service.submit(grant(ward), body(batch(ward)))
    assert first.result(timeout=30).accepted == 3
    with pytest.raises(sa.exc.IntegrityError, match="poisoned result"):
        group[bad_ward].result(timeout=30)
    for ward in WARDS[:3]:
        ack = group[ward].result(timeout=30)
        assert (ack.accepted, ack.duplicates) == (3, 0)
        # READY's two batches came on two streams (two spool files): six results.
        assert stored(service.engine, ward) == (6 if ward == READY else 3)
        assert samples(service, ward) == (6 if ward == READY else 3)
    # Nothing of the refused batch is stored or remembered, its agent row included.
    assert stored(service.engine, bad_ward) == 0
    assert samples(service, bad_ward) == 0
    assert service.agents(bad_ward) == []
    assert re.search(r"storing [2-5] batches together failed \(poisoned result\)", caplog.text)


def test_no_ack_and_no_state_when_the_commit_fails(service: Service) -> None:
    poison(service.engine)
    doc = batch(READY, results=[result(1), result(2, name="poison")])
    with pytest.raises(sa.exc.IntegrityError):
        service.accept(grant(READY), body(doc))
    assert stored(service.engine) == 0
    assert samples(service, READY) == 0
    assert service.agents(READY) == []
    # The same agent's next good batch goes through: the committer is still there.
    assert service.accept(grant(READY), body(batch(READY))).accepted == 3


def test_over_http_a_refused_batch_is_an_error_and_the_rest_of_the_api_is_unchanged(
    service: Service, engine: Any
) -> None:
    poison(service.engine)
    token = tokens.create(engine, READY, "pc-01")
    app = create_app(service)
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as c:
        ok = c.post("/api/v1/ingest", content=body(batch()), headers=auth(token))
        assert ok.status_code == 200
        assert ok.json() == {"accepted": 3, "duplicates": 0, "last_seq": 3}
        assert float(ok.headers[HEADER.decode()]) > 0
        assert ok.headers["content-type"] == "application/json"
        bad = c.post(
            "/api/v1/ingest",
            content=body(batch(results=[result(4, name="poison")])),
            headers=auth(token),
        )
        assert bad.status_code == 500
        refused = c.post("/api/v1/ingest", content=b"{", headers=auth(token))
        assert refused.status_code == 422 and HEADER.decode() in refused.headers
        assert c.get("/api/v1/ingest").status_code == 405  # other methods reach FastAPI
    assert stored(service.engine) == 3


def test_a_closed_committer_stores_what_waits_then_refuses() -> None:
    done: list[int] = []

    def commit(jobs: list[Job[int, int]]) -> None:
        for job in jobs:
            done.append(job.item)
            job.future.set_result(job.item * 10)

    committer: Committer[int, int] = Committer(commit)
    futures = [committer.submit(i, key=i) for i in range(5)]
    committer.close()
    assert [f.result(timeout=5) for f in futures] == [0, 10, 20, 30, 40]
    assert sorted(done) == [0, 1, 2, 3, 4]
    with pytest.raises(Closed):
        committer.submit(5, key=5)


def test_a_commit_that_leaves_a_job_unanswered_or_raises_fails_its_jobs() -> None:
    def commit(jobs: list[Job[int, int]]) -> None:
        if jobs[0].item == 0:
            raise RuntimeError("disk on fire")
        # Answers nothing: every job must still be settled.

    committer: Committer[int, int] = Committer(commit)
    with pytest.raises(RuntimeError, match="disk on fire"):
        committer.submit(0, key=0).result(timeout=5)
    with pytest.raises(RuntimeError, match="unanswered"):
        committer.submit(1, key=1).result(timeout=5)
    committer.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_the_agent_row_follows_its_stream_on_each_database(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # The agent upsert computes last_seq in SQL (no read first): check it on both databases.
    url = request.getfixturevalue("pg_url" if kind == "postgresql" else "db_url")
    engine = db.make_engine(url)
    try:
        db.upgrade(engine)
        units = tmp_path / "units.csv"
        units.write_text(UNITS, "utf-8")
        wards.import_csv(engine, units)
        profile = tmp_path / "profile.yaml"
        profile.write_text(PROFILE, "utf-8")
        service = Service(engine, load_profile(profile))
        service.rebuild()

        def push(stream: str, seqs: list[int]) -> int | None:
            doc = batch(READY, results=[result(s) for s in seqs], stream=stream * 32)
            service.accept(grant(READY), body(doc))
            (agent,) = service.agents(READY)
            return agent.last_seq

        assert push("a", [1, 2, 3]) == 3
        assert push("a", []) == 3  # a heartbeat keeps it
        assert push("a", [1, 2]) == 3  # a replay of older results does not move it back
        assert push("a", [4, 5]) == 5
        assert push("b", [1]) == 1  # a new spool file starts over
        assert push("c", []) is None  # ... even with nothing in it yet
        assert stored(engine, READY) == 6
        service.close()
    finally:
        engine.dispose()
