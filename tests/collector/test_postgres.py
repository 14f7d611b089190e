"""The same Core statements on PostgreSQL, on the run's throwaway server (tests/pg.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from collector import db, tokens, wards
from collector.ingest import IngestError
from collector.profile import load_profile
from collector.service import Service, prune

from .conftest import PROFILE, READY, UNITS, batch, body, healthy_results


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
