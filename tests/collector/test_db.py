"""Schema migrations (on SQLite and PostgreSQL) and the SQLite set-up."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from collector import db


def tables(engine: sa.Engine) -> dict[str, list[str]]:
    inspector = sa.inspect(engine)
    return {
        t: sorted(c["name"] for c in inspector.get_columns(t)) for t in inspector.get_table_names()
    }


def test_fresh_database_gets_head(empty_url: str) -> None:
    engine = db.make_engine(empty_url)
    assert db.current_revision(engine) is None
    db.upgrade(engine)
    assert db.current_revision(engine) == db.head_revision() is not None
    found = tables(engine)
    assert {"wards", "tokens", "agents", "results", "alembic_version"} <= set(found)
    assert "received_at" in found["results"] and "hash" in found["tokens"]


def test_upgrade_twice_is_a_no_op_and_keeps_data(empty_url: str) -> None:
    engine = db.make_engine(empty_url)
    db.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(
            sa.insert(db.wards).values(
                id="ward-a", name="Phường A", kind="ward", former_district="", working_group="1"
            )
        )
    before = tables(engine)
    db.upgrade(engine)
    assert tables(engine) == before
    assert db.current_revision(engine) == db.head_revision()
    with engine.connect() as conn:
        assert conn.execute(sa.select(db.wards.c.name)).scalar_one() == "Phường A"


def test_migrations_create_exactly_the_tables_the_code_uses(empty_url: str) -> None:
    engine = db.make_engine(empty_url)
    db.upgrade(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), db.metadata)
    assert diff == []


def test_results_are_unique_per_origin(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.insert(db.wards).values(
                id="w", name="W", kind="", former_district="", working_group="1"
            )
        )
    row = dict(
        ward_id="w",
        agent="a",
        stream="0" * 32,
        seq=1,
        check="icmp",
        name="n",
        target="t",
        address="x",
        labels="{}",
        interval_seconds=1.0,
        started=1.0,
        duration_seconds=0.1,
        success=True,
        reason="ok",
        metrics="{}",
        info="{}",
        received_at=1.0,
    )
    with engine.begin() as conn:
        conn.execute(sa.insert(db.results), [row])
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(sa.insert(db.results), [row])


@pytest.mark.sqlite_only("PRAGMAs: WAL, synchronous and busy_timeout are SQLite's")
def test_sqlite_runs_in_wal_with_full_sync_and_a_busy_timeout(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1  # off by default
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == db.BUSY_TIMEOUT_MS


def test_foreign_keys_are_enforced(engine: sa.Engine) -> None:
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(
            sa.insert(db.tokens).values(
                ward_id="no-such-ward", hash="h", prefix="p", created_at=1.0
            )
        )


def test_failed_transaction_leaves_nothing_behind(engine: sa.Engine) -> None:
    with pytest.raises(RuntimeError), db.writer(engine).begin() as conn:
        conn.execute(
            sa.insert(db.wards).values(
                id="w", name="W", kind="", former_district="", working_group="1"
            )
        )
        raise RuntimeError("abort")
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(db.wards)).scalar() == 0


def test_bad_synchronous_setting_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        db.make_engine(f"sqlite:///{tmp_path / 'x.db'}", synchronous="sometimes")


def test_database_url_prefers_flag_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARDREADY_DB", "sqlite:///from-env.db")
    assert db.database_url("sqlite:///flag.db") == "sqlite:///flag.db"
    assert db.database_url(None) == "sqlite:///from-env.db"
    monkeypatch.delenv("WARDREADY_DB")
    assert db.database_url(None) == db.DEFAULT_URL
