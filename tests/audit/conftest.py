"""A collector fed through its real ingest path on a simulated clock: three wards, one whose
WAN line is cut for a while, one whose agent loses the collector for a while, one that never
reports. The live verdicts are recorded at every judging step, for audits to agree with."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from collector import audits, db, tokens, wards
from collector.profile import load_profile
from collector.readiness import Verdict
from collector.service import Service
from tests.pg import PgServer

PROFILE = """\
version: 1
silence_seconds: 180
criteria:
  - id: wan_up
    title: WAN line to the city answers
    severity: blocker
    select: {check: icmp, labels: {role: wan}}
    require: any
    condition: {metric: success, agg: min, last: 3, op: ">=", threshold: 1}
  - id: wan_loss
    title: WAN line packet loss under 1% over 15 min
    severity: blocker
    select: {check: icmp, labels: {role: wan}}
    require: any
    condition: {metric: loss_ratio, agg: avg, window: 15m, op: "<", threshold: 0.01,
                min_samples: 3}
  - id: dms_up
    title: Document Management System answers
    severity: blocker
    select: {check: http, labels: {role: shared_system}}
    condition: {metric: success, agg: min, last: 2, op: ">=", threshold: 1}
  - id: disk_free
    title: PC disk has room
    severity: warning
    select: {check: host}
    condition: {metric: disk_free_ratio_min, agg: last, last: 1, op: ">", threshold: 0.1}
"""

UNITS = """\
id,name,kind,former_district,working_group
ward-ben-thanh,Bến Thành,ward,Quận 1,2
ward-minh-phung,Minh Phụng,ward,Quận 11,1
commune-can-gio,Cần Giờ,commune,Huyện Cần Giờ,2
ward-da-kao,Đa Kao,ward,Quận 1,2
"""

HEALTHY = "ward-ben-thanh"
CUT = "ward-minh-phung"
SILENT = "commune-can-gio"
OUTAGE = "ward-da-kao"

CHECK_EVERY = 30
PUSH_EVERY = 7  # not a divisor of the judging step, so batches land between judgements
JUDGE_EVERY = 10


def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


@dataclass
class Trial:
    """One simulated trial run: when each ward's line was cut or its agent unheard."""

    start: float
    end: float
    cut: tuple[float, float] | None = None
    outage: tuple[float, float] | None = None
    live: dict[float, dict[str, Verdict]] = field(default_factory=dict)


def _result(seq: int, started: float, kind: str, ok: bool) -> dict[str, Any]:
    common = {"seq": seq, "interval_seconds": float(CHECK_EVERY), "started": started,
              "duration_seconds": 0.5, "info": {}}  # fmt: skip
    if kind == "icmp":
        return {**common, "check": "icmp", "name": "wan-city", "target": "gw",
                "address": "10.0.0.1", "labels": {"role": "wan", "line": "fibre"},
                "success": ok, "reason": "ok" if ok else "no_reply",
                "metrics": {"loss_ratio": 0.0 if ok else 1.0,
                            "rtt_avg_seconds": 0.012}}  # fmt: skip
    if kind == "http":
        return {**common, "check": "http", "name": "dms", "target": "dms",
                "address": "http://127.0.0.1/", "labels": {"role": "shared_system"},
                "success": True, "reason": "ok", "metrics": {"status_code": 200.0}}  # fmt: skip
    return {**common, "check": "host", "name": "host", "target": "localhost",
            "address": "localhost", "labels": {"role": "host"}, "success": True,
            "reason": "ok", "metrics": {"disk_free_ratio_min": 0.5}}  # fmt: skip


class Fleet:
    """The agents of the wards that report, pushing to a Service on a simulated clock."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.tokens = {w: tokens.create(service.engine, w, "pc-01") for w in (HEALTHY, CUT, OUTAGE)}
        self.seq = dict.fromkeys(self.tokens, 0)
        self.spool: dict[str, list[dict[str, Any]]] = {w: [] for w in self.tokens}
        self.stream = {w: uuid.uuid4().hex for w in self.tokens}

    def run(self, trial: Trial, warm_up: float = 1800.0) -> None:
        """From ``warm_up`` before the trial to its end: checks every 30 s, pushes every 7 s,
        and the live judge every 10 s inside the trial."""
        t = trial.start - warm_up
        next_check = t
        next_push = t + 3
        next_judge = trial.start
        while t <= trial.end:
            if t >= next_check:
                for ward in self.tokens:
                    line_ok = not (ward == CUT and trial.cut and trial.cut[0] <= t < trial.cut[1])
                    for kind in ("icmp", "http", "host"):
                        self.seq[ward] += 1
                        self.spool[ward].append(_result(self.seq[ward], t, kind, line_ok))
                next_check += CHECK_EVERY
            if t >= next_push:
                for ward in self.tokens:
                    cut_off = ward == OUTAGE and trial.outage
                    if cut_off and trial.outage[0] <= t < trial.outage[1]:  # type: ignore[index]
                        continue  # the agent keeps its results in its spool meanwhile
                    self.push(ward, t)
                next_push += PUSH_EVERY
            if trial.start <= t < trial.end and t >= next_judge:
                trial.live[t] = self.service.verdicts(now=t)
                next_judge += JUDGE_EVERY
            t += 1
        for ward in self.tokens:
            self.push(ward, t)

    def push(self, ward: str, now: float) -> None:
        results, self.spool[ward] = self.spool[ward], []
        doc = {"wire_version": 1, "ward": ward, "agent": "pc-01", "stream": self.stream[ward],
               "sent_at": now, "status": {"version": "0.1.0", "spool_depth": 0,
               "spool_dropped_total": 0, "resident_memory_bytes": 1, "cpu_seconds_total": 1.0,
               "checks": 3}, "results": results}  # fmt: skip
        if not results:
            return  # heartbeats are not stored, so the simulated agent sends none
        body = json.dumps(doc, ensure_ascii=False).encode("utf-8")
        self.service.ingest(f"Bearer {self.tokens[ward]}", body, now=now)


# The June 12 run: the line of Minh Phụng cut 08:40-09:10, Đa Kao's agent cut off from the
# collector 09:20-09:25. The June 22 run: everything works.
JUNE_12 = ("2026-06-12T08:00:00+07:00", "2026-06-12T10:00:00+07:00")
JUNE_22 = ("2026-06-22T08:00:00+07:00", "2026-06-22T10:00:00+07:00")


def june_12() -> Trial:
    return Trial(
        at(JUNE_12[0]),
        at(JUNE_12[1]),
        cut=(at("2026-06-12T08:40:00+07:00"), at("2026-06-12T09:10:00+07:00")),
        outage=(at("2026-06-12T09:20:00+07:00"), at("2026-06-12T09:25:00+07:00")),
    )


def june_22() -> Trial:
    return Trial(at(JUNE_22[0]), at(JUNE_22[1]))


def take(service: Service, window: tuple[str, str] = JUNE_12, **over: Any) -> audits.Audit:
    """An audit of ``window`` taken a minute after it ended, as the trial's auditor would."""
    start, end = datetime.fromisoformat(window[0]), datetime.fromisoformat(window[1])
    kw: dict[str, Any] = {"title": "Chạy thử ngày 12/6", "signed_off_by": "Nguyễn Văn An",
                          "now": end.timestamp() + 60, **over}  # fmt: skip
    return audits.take(service.engine, service.profile, start=start, end=end, **kw)


def tamper(engine: sa.Engine, **values: Any) -> None:
    """Change stored audits as someone with write access to the database could: the
    database refuses an UPDATE of a complete audit until its trigger is dropped."""
    drop = "DROP TRIGGER IF EXISTS audits_immutable"
    if engine.dialect.name == "postgresql":
        drop += " ON audits"
    with engine.begin() as conn:
        conn.execute(sa.text(drop))
        conn.execute(sa.update(db.audits).values(**values))


# The PostgreSQL template database holding the trial runs (tests/pg.py copies it per test).
FED_TEMPLATE = "wardready_fed"


@dataclass
class Fed:
    """A database holding both trial runs, with the live verdicts recorded during each: a
    SQLite file (``path``) or a template database on the run's PostgreSQL server (``pg``)."""

    profile_path: Path
    june_12: Trial
    june_22: Trial
    path: Path | None = None
    pg: PgServer | None = None

    def copy(self, to: Path) -> str:
        """A URL of a private copy, for a test that writes (audits, tampering); give it back
        with :meth:`release`."""
        if self.pg is not None:
            return self.pg.database(template=FED_TEMPLATE)
        assert self.path is not None
        target = to / "collector.db"
        shutil.copyfile(self.path, target)
        return f"sqlite:///{target}"

    def release(self, url: str) -> None:
        if self.pg is not None:
            self.pg.drop(url)


def open_service(url: str, profile_path: Path) -> Service:
    # Thousands of simulated pushes: durability is not what these tests are about.
    engine = db.make_engine(url, synchronous="OFF")
    db.upgrade(engine)
    svc = Service(engine, load_profile(profile_path), verdict_seconds=0.0)
    svc.rebuild()
    return svc


_FED: dict[str, Fed] = {}


@pytest.fixture(scope="session")
def fed(
    database: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Fed:
    """Both trial runs fed through the real ingest path into the database under test, once
    per run and database (pytest sets a parametrized session fixture up again whenever the
    order of tests switches database)."""
    if database in _FED:
        return _FED[database]
    folder = tmp_path_factory.mktemp("fed")
    profile_path = folder / "profile.yaml"
    profile_path.write_text(PROFILE, encoding="utf-8")
    units = folder / "units.csv"
    units.write_text(UNITS, encoding="utf-8")
    first, second = june_12(), june_22()

    def feed(url: str) -> None:
        svc = open_service(url, profile_path)
        try:
            wards.import_csv(svc.engine, units)
            svc.wards(refresh=True)
            fleet = Fleet(svc)
            fleet.run(first)
            fleet.run(second)
        finally:
            svc.close()  # SQLite folds its WAL into the file; a template must have no session

    if database == "postgresql":
        server: PgServer = request.getfixturevalue("pg_server")
        server.template(FED_TEMPLATE, feed)
        _FED[database] = Fed(profile_path, first, second, pg=server)
    else:
        path = folder / "collector.db"
        feed(f"sqlite:///{path}")
        _FED[database] = Fed(profile_path, first, second, path=path)
    return _FED[database]


@pytest.fixture
def service(fed: Fed, tmp_path: Path) -> Iterator[Service]:
    url = fed.copy(tmp_path)
    svc = open_service(url, fed.profile_path)
    yield svc
    svc.close()
    fed.release(url)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where tests leave files for a person to look at (git-ignored)."""
    path = Path(__file__).resolve().parents[2] / "artifacts" / "audit"
    path.mkdir(parents=True, exist_ok=True)
    return path
