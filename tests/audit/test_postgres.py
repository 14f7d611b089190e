"""The same audit on PostgreSQL as on SQLite, byte for byte."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from collector import audits, db
from collector.profile import load_profile

from .conftest import JUNE_12, Fed, tamper


@pytest.mark.sqlite_only("compares an audit of the SQLite run with one on PostgreSQL itself")
def test_an_audit_on_postgres_is_byte_for_byte_the_one_on_sqlite(
    pg_url: str, fed: Fed, tmp_path: Path
) -> None:
    lite = db.make_engine(fed.copy(tmp_path))
    pg = db.make_engine(pg_url)
    try:
        db.upgrade(pg)
        with lite.connect() as src, pg.begin() as dst:
            for table in (db.wards, db.agents, db.results):
                rows = [dict(r._mapping) for r in src.execute(sa.select(table))]
                dst.execute(sa.insert(table), rows)
        profile = load_profile(fed.profile_path)
        taken = [
            audits.take(
                engine,
                profile,
                start=datetime.fromisoformat(JUNE_12[0]),
                end=datetime.fromisoformat(JUNE_12[1]),
                title="Chạy thử ngày 12/6",
                signed_off_by="Nguyễn Văn An",
                now=fed.june_12.end + 60,
            )
            for engine in (lite, pg)
        ]
        assert taken[0].text == taken[1].text and taken[0].sha256 == taken[1].sha256
        assert audits.load(pg, taken[1].id).text == taken[0].text
        assert audits.verify(pg, taken[1].id) == []
        with (
            pytest.raises(sa.exc.DatabaseError, match="audits are written once"),
            pg.begin() as conn,
        ):
            conn.execute(sa.update(db.audits).values(title="Chạy thử ngày 12/6 (sửa)"))
        tamper(pg, title="Chạy thử ngày 12/6 (sửa)")
        assert audits.verify(pg, taken[1].id) == [
            "column title ('Chạy thử ngày 12/6 (sửa)') differs from the content "
            "('Chạy thử ngày 12/6')"
        ]
    finally:
        lite.dispose()
        pg.dispose()
