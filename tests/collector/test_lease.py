"""The judge lease (collector.lease) with two services on one database, on SQLite and on
PostgreSQL: one judges and publishes, the other serves its snapshot; when the holder stops
renewing, the other takes over; a holder that lost the lease stores nothing."""

from __future__ import annotations

import json
import math
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from collector import cli, db, lease, tokens, wards
from collector.readiness import CriterionResult, Evidence, Verdict
from collector.service import Service

from . import test_follow
from .conftest import PROFILE, READY, UNITS, batch, body, healthy_results

shared_url = test_follow.shared_url  # the fixture: SQLite, then PostgreSQL


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "units.csv").write_text(UNITS, "utf-8")
    profile = tmp_path / "profile.yaml"
    profile.write_text(PROFILE, "utf-8")
    return profile


@pytest.fixture
def two(shared_url: str, files: Path) -> Iterator[tuple[Service, Service]]:
    engine = db.make_engine(shared_url)
    db.upgrade(engine)
    wards.import_csv(engine, files.parent / "units.csv")
    engine.dispose()
    made = [
        Service.open(
            shared_url, files, name=f"replica-{i}", follow_seconds=1.0, verdict_seconds=0.5
        )
        for i in (1, 2)
    ]
    yield made[0], made[1]
    for s in made:
        s.close()


def held_gauge(service: Service) -> float:
    for family in text_string_to_metric_families(service.metrics.render().decode()):
        if family.name == "wardready_collector_judge_lease_held":
            return float(family.samples[0].value)
    raise AssertionError("no lease gauge")


def test_one_judges_and_the_other_serves_its_snapshot(two: tuple[Service, Service]) -> None:
    a, b = two
    token = tokens.create(a.engine, READY, "pc-01")
    a.ingest(f"Bearer {token}", body(batch(READY, results=healthy_results())))
    a._judge_if_leader()
    b._judge_if_leader()
    assert a.lease is not None and b.lease is not None
    assert (a.lease.held, b.lease.held) == (True, False)
    assert (held_gauge(a), held_gauge(b)) == (1.0, 0.0)
    found = lease.holder(a.engine)
    assert found is not None and found.holder == "replica-1"
    # B never ingested nor followed: the ready verdict it serves is A's judgement.
    assert b.state.ward(READY).series == []
    assert b.verdicts()[READY].verdict == "ready"
    assert b.verdicts() == a.verdicts()
    # Renewing keeps it; B asking again changes nothing.
    a._judge_if_leader()
    b._judge_if_leader()
    assert (a.lease.held, b.lease.held) == (True, False)


def test_holder_that_stops_renewing_is_replaced(two: tuple[Service, Service]) -> None:
    a, b = two
    a._judge_if_leader()
    b._judge_if_leader()
    assert a.lease is not None and b.lease is not None and a.lease.held
    first = lease.snapshot_judged_at(a.engine)
    assert first is not None and first[0] == "replica-1"
    # A hangs (no more renewals); B keeps trying, as its judge thread would.
    deadline = time.monotonic() + 20
    while not b.lease.held and time.monotonic() < deadline:
        time.sleep(0.1)
        b._judge_if_leader()
    assert b.lease.held
    found = lease.holder(b.engine)
    assert found is not None and found.holder == "replica-2"
    after = lease.snapshot_judged_at(b.engine)
    assert after is not None and after[0] == "replica-2"
    # A wakes up: its publish is refused (fenced), and it goes back to serving B's snapshot.
    assert not a.lease.publish({}, time.time(), 5.0)
    assert lease.snapshot_judged_at(a.engine) == after
    a._judge_if_leader()
    assert not a.lease.held and held_gauge(a) == 0.0
    assert set(a.verdicts()) == set(b.verdicts()) != set()


def test_a_released_lease_is_taken_at_once(two: tuple[Service, Service]) -> None:
    a, b = two
    a._judge_if_leader()
    assert a.lease is not None and a.lease.held
    a.lease.release()
    b._judge_if_leader()
    assert b.lease is not None and b.lease.held


def test_takeover_within_the_lease_on_the_process_clock(tmp_path: Path, files: Path) -> None:
    """On SQLite the lease runs on the processes' clock: with a fake one, the standby takes
    over exactly when the lease has expired, 1.5 periods after the last renewal."""
    url = f"sqlite:///{tmp_path / 'clock.db'}"
    engine = db.make_engine(url)
    db.upgrade(engine)
    now = [1000.0]
    a = lease.Lease(engine, "a", lambda: now[0])
    b = lease.Lease(engine, "b", lambda: now[0])
    assert a.claim(1.5) and not b.claim(1.5)
    now[0] = 1001.0
    assert a.claim(1.5)  # renewed: now until 1002.5
    now[0] = 1002.4
    assert not b.claim(1.5)
    now[0] = 1002.6
    assert b.claim(1.5) and not a.claim(1.5)
    found = lease.holder(engine)
    assert found == lease.Holder("b", 1002.6, 1004.1)
    engine.dispose()


def test_a_standby_is_unhealthy_when_the_snapshot_stops_changing(
    two: tuple[Service, Service],
) -> None:
    a, b = two
    b.min_stale_seconds = 0.0
    b._judge_since = time.monotonic()
    a._judge_if_leader()
    b._judge_if_leader()
    assert b.health() is None
    time.sleep(1.6)  # three periods of 0.5 s with no new snapshot
    b._refresh_snapshot()
    reason = b.health()
    assert reason is not None and reason.startswith("verdict snapshot stale")
    a._judge_if_leader()
    b._judge_if_leader()
    assert b.health() is None


def test_without_a_snapshot_a_standby_judges_for_itself(two: tuple[Service, Service]) -> None:
    a, b = two
    token = tokens.create(a.engine, READY, "pc-01")
    b.ingest(f"Bearer {token}", body(batch(READY, results=healthy_results())))
    assert lease.snapshot_judged_at(b.engine) is None
    assert b.verdicts()[READY].verdict == "ready"
    with b.engine.connect() as conn:
        assert conn.execute(db.history.select()).first() is None  # only the holder records


def test_snapshot_round_trip_keeps_every_field() -> None:
    v = Verdict(
        ward="xa-can-gio",
        verdict="not_ready",
        reasons=["Đường truyền WAN mất gói"],
        criteria=[
            CriterionResult(
                id="wan_loss", title="Mất gói", severity="blocker", status="failed",
                evidence=[
                    Evidence("pc-01/wan→gw", math.inf, 0.01, "<", "avg", "15m", 3, 12.5,
                             "failed", "loss 100%"),
                    Evidence("", None, 0.01, "<", "avg", "15m", 0, None, "unknown", "no data"),
                ],
            )
        ],
        evaluated_at=1234.5,
    )  # fmt: skip
    assert lease.decode(lease.encode({v.ward: v})) == {v.ward: v}


def test_a_snapshot_from_another_version_is_read_by_field_name() -> None:
    """Fields named in another order (a replica of another version mid-upgrade) still land
    where they belong."""
    ev = Evidence("pc-01/wan", 0.5, 0.01, "<", "avg", "15m", 3, 12.5, "failed", "loss 50%")
    v = Verdict("ward-a", "not_ready", ["WAN"], [CriterionResult("w", "W", "blocker", "failed",
                [ev])], 99.0)  # fmt: skip
    doc = json.loads(zlib.decompress(lease.encode({"ward-a": v})))
    doc["evidence"] = doc["evidence"][::-1]
    doc["verdict"] = doc["verdict"][::-1]
    for row in doc["rows"]:
        *fields, criteria = row
        row[:] = [*fields[::-1], criteria]
        for c in criteria:
            c[-1] = [e[::-1] for e in c[-1]]
    assert lease.decode(zlib.compress(json.dumps(doc).encode())) == {"ward-a": v}


def test_a_released_lease_is_never_taken_again_by_its_process(
    two: tuple[Service, Service],
) -> None:
    """Shutting down: a judgement finishing after close() must not take the lease back."""
    a, b = two
    a._judge_if_leader()
    assert a.lease is not None and a.lease.held
    a.lease.release()
    assert not a.lease.publish({}, time.time(), 5.0)
    assert not a.lease.claim(5.0)
    b._judge_if_leader()
    assert b.lease is not None and b.lease.held


def test_replicas_starting_together_migrate_once(pg_url: str) -> None:
    engines = [db.make_engine(pg_url) for _ in range(3)]
    errors: list[BaseException] = []

    def upgrade(engine: sa.Engine) -> None:
        try:
            db.upgrade(engine)
        except BaseException as exc:  # reported below, with the assertion
            errors.append(exc)

    threads = [threading.Thread(target=upgrade, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert db.current_revision(engines[0]) == db.head_revision()
    found = lease.holder(engines[0])
    assert found is None  # the lease row exists once, held by nobody
    with engines[0].connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(db.leases)).scalar() == 1
    for e in engines:
        e.dispose()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--follow-seconds", "-1"], "--follow-seconds: must be >= 0"),
        (["--name", " "], "--name: must not be empty"),
    ],
)
def test_serve_refuses_bad_cluster_options(
    tmp_path: Path, option: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    assert cli.main(["--db", url, "serve", "--listen", "127.0.0.1:0", *option]) == 2
    assert message in capsys.readouterr().err
