"""Following the results table (collector.follow), on SQLite and on PostgreSQL: what another
process committed reaches this one's State, ids that commit out of order are caught by the
gap re-reads, re-reads add nothing twice, and each period's read is bounded."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from collector import db, tokens, wards
from collector.follow import Follower, holes
from collector.service import Service
from collector.state import State
from shared.wire import ResultRecord

from .conftest import PROFILE, READY, UNITS, batch, body, healthy_results, result


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def two(shared_url: str, tmp_path: Path) -> Iterator[tuple[Service, Service]]:
    """Two services on one database, as two collector processes would be."""
    profile = tmp_path / "profile.yaml"
    profile.write_text(PROFILE, "utf-8")
    units = tmp_path / "units.csv"
    units.write_text(UNITS, "utf-8")
    engine = db.make_engine(shared_url)
    db.upgrade(engine)
    wards.import_csv(engine, units)
    engine.dispose()
    made = [
        Service.open(shared_url, profile, name=f"replica-{i}", follow_seconds=1.0) for i in (1, 2)
    ]
    yield made[0], made[1]
    for s in made:
        s.close()


def samples(state: State, ward: str) -> dict[str, int]:
    return {s.id: len(s.samples) for s in state.ward(ward).series}


def insert_row(engine: sa.Engine, seq: int, started: float, row_id: int | None = None) -> None:
    rec = result(seq, started=started)
    row = {
        "ward_id": READY, "agent": "pc-09", "stream": "s1", "seq": seq, "check": rec["check"],
        "name": rec["name"], "target": rec["target"], "address": rec["address"],
        "labels": '{"role": "wan"}', "interval_seconds": 30.0, "started": started,
        "duration_seconds": 0.5, "success": True, "reason": "ok",
        "metrics": '{"loss_ratio": 0.0}', "info": "{}", "received_at": started,
    }  # fmt: skip
    if row_id is not None:
        row["id"] = row_id
    with db.writer(engine).begin() as conn:
        conn.execute(sa.insert(db.results).values(**row))


def test_what_one_process_stores_reaches_the_others_state(two: tuple[Service, Service]) -> None:
    a, b = two
    token = tokens.create(a.engine, READY, "pc-01")
    a.ingest(f"Bearer {token}", body(batch(READY, results=healthy_results())))
    assert samples(b.state, READY) == {}
    assert b.follower is not None
    assert b.follower.poll(b.state) >= 5
    assert samples(b.state, READY) == samples(a.state, READY) != {}
    # The agent's last contact is followed too, so B's verdict is A's.
    assert "pc-01" in b.state.ward(READY).agents_last_seen
    now = time.time()
    assert b.verdicts(now)[READY].verdict == a.verdicts(now)[READY].verdict == "ready"


def test_reading_the_same_rows_again_adds_nothing(two: tuple[Service, Service]) -> None:
    a, b = two
    token = tokens.create(a.engine, READY, "pc-01")
    a.ingest(f"Bearer {token}", body(batch(READY, results=healthy_results())))
    assert b.follower is not None
    b.follower.poll(b.state)
    before = samples(b.state, READY)
    # Force a re-read of everything: the start slack covers every row again.
    b.follower.start()
    assert b.follower.poll(b.state) >= 5
    assert samples(b.state, READY) == before
    # A's own State, fed by its ingest, drops what its follower reads back.
    assert a.follower is not None
    a.follower.poll(a.state)
    assert samples(a.state, READY) == before


def test_state_drops_a_result_whose_start_time_its_series_holds() -> None:
    state = State(retention_seconds=3600)
    t = time.time()
    recs = [ResultRecord.model_validate(result(i, started=t - 30 + i)) for i in range(1, 4)]
    state.add(READY, "pc-01", recs)
    state.add(READY, "pc-01", [recs[1]])  # in the middle
    state.add(READY, "pc-01", [recs[2], recs[0]])  # newest and oldest
    (series,) = state.ward(READY).series
    assert [s.started for s in series.samples] == [r.started for r in recs]


def test_an_id_committed_late_below_the_highest_seen_is_still_read(
    two: tuple[Service, Service],
) -> None:
    _, b = two
    follower = b.follower
    assert follower is not None
    t = time.time()
    insert_row(b.engine, 1, t - 5, row_id=1000)
    follower.poll(b.state)
    assert follower.high == 1000
    # Ids 1..999 are a gap now (the start slack and the jump).
    insert_row(b.engine, 2, t - 4, row_id=995)  # commits after 1000 was read
    follower.poll(b.state)
    assert samples(b.state, READY) == {"pc-09/wan-city→gw": 2}
    assert any(lo <= 994 <= hi for lo, hi, _ in follower.gaps)
    assert not any(lo <= 995 <= hi for lo, hi, _ in follower.gaps)


def test_gaps_are_given_up_after_gap_seconds(shared_url: str, tmp_path: Path) -> None:
    engine = db.make_engine(shared_url)
    db.upgrade(engine)
    (tmp_path / "u.csv").write_text(UNITS, "utf-8")
    wards.import_csv(engine, tmp_path / "u.csv")
    clock = [100.0]
    follower = Follower(engine, gap_seconds=30, monotonic=lambda: clock[0])
    follower.start()
    state = State(retention_seconds=3600)
    t = time.time()
    insert_row(engine, 1, t - 5, row_id=50)
    follower.poll(state)
    assert follower.gaps == [(1, 49, 100.0)]
    clock[0] = 131.0
    follower.poll(state)
    assert follower.gaps == []
    insert_row(engine, 2, t - 4, row_id=40)  # too late: no longer looked for
    follower.poll(state)
    assert samples(state, READY) == {"pc-09/wan-city→gw": 1}
    engine.dispose()


def test_each_period_reads_at_most_pages_of_rows(two: tuple[Service, Service]) -> None:
    a, _ = two
    follower = Follower(a.engine, page=2, pages=2, start_slack=0)
    follower.start()
    state = State(retention_seconds=3600)
    token = tokens.create(a.engine, READY, "pc-01")
    a.ingest(f"Bearer {token}", body(batch(READY, results=healthy_results())))
    assert follower.poll(state) == 4
    assert follower.poll(state) == 1
    assert follower.poll(state) == 0
    assert sum(samples(state, READY).values()) == 5


def test_concurrent_transactions_committing_out_of_id_order(pg_url: str, tmp_path: Path) -> None:
    """On PostgreSQL the later id commits first; the follower still gets both."""
    engine = db.make_engine(pg_url)
    db.upgrade(engine)
    (tmp_path / "u.csv").write_text(UNITS, "utf-8")
    wards.import_csv(engine, tmp_path / "u.csv")
    follower = Follower(engine, start_slack=0)
    follower.start()
    state = State(retention_seconds=3600)
    t = time.time()
    slow = engine.connect()
    tx = slow.begin()
    row: dict[str, Any] = {
        "ward_id": READY, "agent": "pc-09", "stream": "s1", "seq": 1, "check": "icmp",
        "name": "wan-city", "target": "gw", "address": "10.0.0.1", "labels": "{}",
        "interval_seconds": 30.0, "started": t - 5, "duration_seconds": 0.5, "success": True,
        "reason": "ok", "metrics": "{}", "info": "{}", "received_at": t,
    }  # fmt: skip
    first_id = slow.execute(sa.insert(db.results).values(**row).returning(db.results.c.id))
    low = first_id.scalar_one()
    done = threading.Event()

    def other() -> None:
        with engine.begin() as conn:
            conn.execute(sa.insert(db.results).values(**{**row, "seq": 2, "started": t - 4}))
        done.set()

    threading.Thread(target=other).start()
    assert done.wait(10)
    follower.poll(state)
    assert follower.high > low
    assert samples(state, READY) == {"pc-09/wan-city→gw": 1}
    tx.commit()
    slow.close()
    follower.poll(state)
    assert samples(state, READY) == {"pc-09/wan-city→gw": 2}
    engine.dispose()


@pytest.mark.parametrize(
    ("lo", "hi", "ids", "want"),
    [
        (1, 10, [], [(1, 10)]),
        (1, 10, [1, 2, 3], [(4, 10)]),
        (1, 10, [3, 7], [(1, 2), (4, 6), (8, 10)]),
        (5, 8, [1, 5, 6, 7, 8, 20], []),
        (5, 8, [9, 10], [(5, 8)]),
    ],
)
def test_holes(lo: int, hi: int, ids: list[int], want: list[tuple[int, int]]) -> None:
    assert holes(lo, hi, ids) == want
