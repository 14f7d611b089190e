"""The same Core statements on PostgreSQL: a throwaway server on a Unix socket in /tmp.

Needs psycopg (the ``postgres`` extra) and the PostgreSQL server programs; scripts/setup.sh
installs both. The server listens on no TCP address, and is stopped by its data directory.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from collector import db, tokens, wards
from collector.ingest import IngestError
from collector.profile import load_profile
from collector.service import Service, prune
from tests.helpers import need

from .conftest import PROFILE, READY, UNITS, batch, body, healthy_results


def pg_program(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    need(importlib.util.find_spec("psycopg") is not None, "psycopg is not installed")
    initdb, pg_ctl = pg_program("initdb"), pg_program("pg_ctl")
    need(initdb is not None and pg_ctl is not None, "PostgreSQL server programs are missing")
    assert initdb is not None and pg_ctl is not None
    prefix: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="wardready-pg-"))
    if os.geteuid() == 0:  # initdb refuses to run as root
        import pwd

        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(base)
            need(False, "running as root and there is no postgres user to run the server")
        if shutil.which("runuser") is None:
            shutil.rmtree(base)
            need(False, "running as root without runuser to drop to the postgres user")
        os.chown(base, owner.pw_uid, owner.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data = base / "data"

    def run(*argv: str) -> None:
        subprocess.run([*prefix, *argv], check=True, capture_output=True, timeout=60)

    try:
        run(initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8")
        options = f"-k {base} -c listen_addresses=''"
        run(
            pg_ctl,
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(base / "log"),
            "-w",
            "-t",
            "30",
            "start",
        )
        try:
            yield f"postgresql+psycopg://postgres@/postgres?host={base}"
        finally:
            run(pg_ctl, "-D", str(data), "-m", "fast", "-w", "-t", "30", "stop")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_schema_ingest_verdicts_and_prune_on_postgres(pg_url: str, tmp_path: Path) -> None:
    engine = db.make_engine(pg_url)
    try:
        db.upgrade(engine)
        db.upgrade(engine)
        assert db.current_revision(engine) == db.head_revision()
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), db.metadata) == []

        units = tmp_path / "units.csv"
        units.write_text(UNITS, "utf-8")
        assert wards.import_csv(engine, units) == (4, 0)
        assert wards.import_csv(engine, units) == (0, 4)
        assert wards.load(engine)[READY].name == "Phường Bến Thành"

        profile = tmp_path / "profile.yaml"
        profile.write_text(PROFILE, "utf-8")
        service = Service(engine, load_profile(profile))
        service.rebuild()
        token = tokens.create(engine, READY, "pc-01")
        data = body(batch(READY, results=healthy_results()))
        first = service.ingest(f"Bearer {token}", data)
        again = service.ingest(f"Bearer {token}", data)
        assert (first.accepted, first.duplicates) == (5, 0)
        assert (again.accepted, again.duplicates) == (0, 5)
        assert service.verdicts()[READY].verdict == "ready"

        fresh = Service(engine, load_profile(profile))
        assert fresh.rebuild() == 5
        assert fresh.verdicts()[READY].verdict == "ready"

        service.tokens.revoke(token[: tokens.PREFIX_LENGTH])
        with pytest.raises(IngestError, match="revoked"):
            service.ingest(f"Bearer {token}", data)

        assert prune(engine, 1, time.time() + 2 * 86400) == 5
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(db.results)).scalar() == 0
    finally:
        engine.dispose()
