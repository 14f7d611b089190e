"""The collector's tables (SQLAlchemy Core), engine set-up and schema migrations.

Times are stored as epoch seconds (double precision), like the wire schema, so no time zone
conversion ever happens between agent, database and verdicts. JSON maps (labels, metrics,
info) are stored as text: they are only ever read back whole.

The same Core statements run on SQLite and PostgreSQL; the few dialect differences (upserts)
go through :func:`insert_for`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

DEFAULT_URL = "sqlite:///wardready.db"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# PostgreSQL advisory lock key held while migrating ("ward" in ASCII).
MIGRATION_LOCK = 0x77617264

# Seconds a SQLite connection waits for another writer (the CLI, a second thread) before
# giving up with "database is locked".
BUSY_TIMEOUT_MS = 10_000

# Execution option that makes a SQLite transaction take the write lock at BEGIN: a deferred
# transaction that reads first and writes later can fail at once with SQLITE_BUSY when
# another writer committed in between, without waiting for busy_timeout.
IMMEDIATE = "wardready_begin_immediate"

# The id column is a bigint on PostgreSQL, but on SQLite only "INTEGER PRIMARY KEY" becomes
# the rowid alias that autoincrements.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

metadata = sa.MetaData()

wards = sa.Table(
    "wards",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.UnicodeText, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False, server_default=""),
    sa.Column("former_district", sa.UnicodeText, nullable=False, server_default=""),
    sa.Column("working_group", sa.String(64), nullable=False),
)

# role is agent (writes ward_id, as agent when set), viewer (reads) or admin (reads and
# manages); only agent tokens have a ward. name is who holds a viewer or admin token.
tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("ward_id", sa.String(64), sa.ForeignKey("wards.id"), nullable=True),
    sa.Column("agent", sa.String(64), nullable=True),
    sa.Column("hash", sa.String(64), nullable=False, unique=True),
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("revoked_at", sa.Double, nullable=True),
    sa.Column("role", sa.String(16), nullable=False, server_default="agent"),
    sa.Column("name", sa.UnicodeText, nullable=False, server_default=""),
)

# Who did what, when: every change made with an admin token or by the CLI's management
# commands. who is a token's prefix and name ("cli:USER" for the command line).
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Double, nullable=False),
    sa.Column("who", sa.UnicodeText, nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("detail", sa.UnicodeText, nullable=False, server_default=""),
    sa.Index("ix_audit_log_at", "at"),
)

agents = sa.Table(
    "agents",
    metadata,
    sa.Column("ward_id", sa.String(64), sa.ForeignKey("wards.id"), primary_key=True),
    sa.Column("agent", sa.String(64), primary_key=True),
    sa.Column("first_seen", sa.Double, nullable=False),
    sa.Column("last_seen", sa.Double, nullable=False),
    sa.Column("version", sa.String(64), nullable=False, server_default=""),
    sa.Column("stream", sa.String(32), nullable=False, server_default=""),
    sa.Column("last_seq", sa.BigInteger, nullable=True),
    sa.Column("spool_depth", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("spool_dropped_total", sa.BigInteger, nullable=False, server_default="0"),
    # Collector minus agent, as the agent last measured it; NULL until it says.
    sa.Column("clock_offset_seconds", sa.Double, nullable=True),
    sa.Column("resident_memory_bytes", sa.BigInteger, nullable=False, server_default="0"),
)

results = sa.Table(
    "results",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("ward_id", sa.String(64), sa.ForeignKey("wards.id"), nullable=False),
    sa.Column("agent", sa.String(64), nullable=False),
    sa.Column("stream", sa.String(32), nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("check", sa.String(64), nullable=False),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("target", sa.String(128), nullable=False),
    sa.Column("address", sa.String(255), nullable=False),
    sa.Column("labels", sa.UnicodeText, nullable=False),
    sa.Column("interval_seconds", sa.Double, nullable=False),
    sa.Column("started", sa.Double, nullable=False),
    sa.Column("duration_seconds", sa.Double, nullable=False),
    sa.Column("success", sa.Boolean, nullable=False),
    sa.Column("reason", sa.String(64), nullable=False),
    sa.Column("metrics", sa.UnicodeText, nullable=False),
    sa.Column("info", sa.UnicodeText, nullable=False),
    sa.Column("received_at", sa.Double, nullable=False),
    sa.UniqueConstraint("ward_id", "agent", "stream", "seq", name="uq_results_origin"),
    sa.Index("ix_results_ward_started", "ward_id", "started"),
)

# The newest device inventory each agent reported (``wardready-agent discover --report``);
# devices are a JSON list, only ever read back whole.
inventory = sa.Table(
    "inventory",
    metadata,
    sa.Column("ward_id", sa.String(64), sa.ForeignKey("wards.id"), primary_key=True),
    sa.Column("agent", sa.String(64), primary_key=True),
    sa.Column("taken_at", sa.Double, nullable=False),
    sa.Column("received_at", sa.Double, nullable=False),
    sa.Column("devices", sa.UnicodeText, nullable=False),
)


# Every change of a ward's verdict (criterion NULL) or of one criterion's state, so "when did
# this ward become ready" and "how long was it not ready" are queries (collector.history).
# from_state is NULL for the first state ever recorded.
history = sa.Table(
    "history",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("ward_id", sa.String(64), sa.ForeignKey("wards.id"), nullable=False),
    sa.Column("criterion", sa.String(64), nullable=True),
    sa.Column("from_state", sa.String(16), nullable=True),
    sa.Column("to_state", sa.String(16), nullable=False),
    sa.Column("at", sa.Double, nullable=False),
    sa.Column("evidence", sa.UnicodeText, nullable=False, server_default=""),
    sa.Index("ix_history_ward_at", "ward_id", "at"),
)


# -- the fleet: enrollment codes, enrolled agents, the fleet file and each ward's plan --------

# One-time (or N-time) codes that an agent trades for a token of its own; stored hashed.
enroll_codes = sa.Table(
    "enroll_codes",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("ward_id", sa.String(64), sa.ForeignKey("wards.id"), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False, unique=True),
    sa.Column("prefix", sa.String(8), nullable=False, unique=True),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("expires_at", sa.Double, nullable=False),
    sa.Column("max_uses", sa.Integer, nullable=False),
    sa.Column("uses", sa.Integer, nullable=False, server_default="0"),
    sa.Column("revoked_at", sa.Double, nullable=True),
)

# Who each agent is (from enrollment) and which plan version it says it runs (every batch).
fleet_agents = sa.Table(
    "fleet_agents",
    metadata,
    sa.Column("ward_id", sa.String(64), sa.ForeignKey("wards.id"), primary_key=True),
    sa.Column("agent", sa.String(64), primary_key=True),
    sa.Column("hostname", sa.UnicodeText, nullable=False, server_default=""),
    sa.Column("machine_id_hash", sa.String(64), nullable=False, server_default=""),
    sa.Column("version", sa.String(64), nullable=False, server_default=""),
    sa.Column("os", sa.UnicodeText, nullable=False, server_default=""),
    sa.Column("enrolled_at", sa.Double, nullable=True),
    sa.Column("code_prefix", sa.String(8), nullable=False, server_default=""),
    sa.Column("revoked_at", sa.Double, nullable=True),
    sa.Column("plan_version", sa.BigInteger, nullable=True),
    sa.Column("plan_error", sa.UnicodeText, nullable=True),
    sa.Column("plan_reported_at", sa.Double, nullable=True),
)

# The imported fleet file (one row), already parsed: JSON of its defaults, groups and wards.
fleet = sa.Table(
    "fleet",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("source", sa.UnicodeText, nullable=False),
    sa.Column("body", sa.UnicodeText, nullable=False),
    sa.Column("imported_at", sa.Double, nullable=False),
)

# Checks an admin accepted from a ward's discovered inventory (JSON list of check entries).
accepted_checks = sa.Table(
    "accepted_checks",
    metadata,
    sa.Column("ward_id", sa.String(64), sa.ForeignKey("wards.id"), primary_key=True),
    sa.Column("checks", sa.UnicodeText, nullable=False),
    sa.Column("accepted_at", sa.Double, nullable=False),
)

# Each ward's effective plan; ``version`` goes up by one whenever ``digest`` changes.
plans = sa.Table(
    "plans",
    metadata,
    sa.Column("ward_id", sa.String(64), sa.ForeignKey("wards.id"), primary_key=True),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("checks", sa.UnicodeText, nullable=False),
    sa.Column("sources", sa.UnicodeText, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
)


def database_url(explicit: str | None = None) -> str:
    return explicit or os.environ.get("WARDREADY_DB") or DEFAULT_URL


def make_engine(url: str | None = None, *, synchronous: str = "FULL") -> Engine:
    """An engine for ``url`` (see :func:`database_url`), with SQLite tuned for one service.

    SQLite runs in WAL mode so readers (API, /metrics) never block the writer. ``synchronous``
    is FULL by default: the collector acknowledges a batch only after commit, and the agent
    then deletes it from its spool, so a commit must survive power loss. In WAL mode NORMAL
    only guarantees that against a crash of the process, not of the machine. FULL costs one
    fsync of the WAL per committed batch, which is small next to a batch of hundreds of results:
    on the development VM, ingesting 500-result batches took 15-20 ms each with either setting
    (the difference was below the run-to-run noise).
    """
    url = database_url(url)
    engine = sa.create_engine(url, future=True)
    if engine.dialect.name == "sqlite":
        _tune_sqlite(engine, synchronous)
    return engine


def _tune_sqlite(engine: Engine, synchronous: str) -> None:
    if synchronous.upper() not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
        raise ValueError(f"synchronous: {synchronous!r} is not OFF, NORMAL, FULL or EXTRA")

    @sa.event.listens_for(engine, "connect")
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Transactions are begun by the "begin" hook below, not by the sqlite3 module, which
        # would otherwise start them late and never around DDL (migrations must be atomic).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous.upper()}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def on_begin(conn: sa.Connection) -> None:
        immediate = conn.get_execution_options().get(IMMEDIATE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def writer(engine: Engine) -> Engine:
    """The same engine, but its transactions take the write lock when they begin."""
    return engine.execution_options(**{IMMEDIATE: True})


def insert_for(engine: Engine | sa.Connection, table: sa.Table) -> Any:
    """The dialect's own INSERT construct, which offers ON CONFLICT on both SQLite and PG."""
    name = engine.dialect.name
    if name == "sqlite":
        return sqlite.insert(table)
    if name == "postgresql":
        return postgresql.insert(table)
    raise RuntimeError(f"database dialect {name!r} is not supported (use sqlite or postgresql)")


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest revision; a no-op when it is already there."""
    cfg = alembic_config()
    with writer(engine).begin() as conn:
        if conn.dialect.name == "postgresql":
            # Replicas started together would each create the same tables: one at a time,
            # the later ones then find the schema at head. (SQLite: BEGIN IMMEDIATE does it.)
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK)))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


# Audits of a time window (collector.audits): written once, never updated. ``content`` is the
# canonical JSON the ``sha256`` column was computed over; the other columns repeat fields of
# it for listing, and ``audit verify`` checks that they still agree with it.
audits = sa.Table(
    "audits",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("title", sa.UnicodeText, nullable=False),
    sa.Column("window_from", sa.Double, nullable=False),
    sa.Column("window_to", sa.Double, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("signed_off_by", sa.UnicodeText, nullable=False),
    sa.Column("content", sa.UnicodeText, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
)

# Which collector process judges (collector.lease): one row, name "judge". A process holds the
# lease while ``expires_at`` (epoch seconds, the database's clock on PostgreSQL) is ahead.
leases = sa.Table(
    "leases",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("holder", sa.UnicodeText, nullable=False, server_default=""),
    sa.Column("acquired_at", sa.Double, nullable=False, server_default="0"),
    sa.Column("expires_at", sa.Double, nullable=False, server_default="0"),
)

# The lease holder's latest judgement of every ward (one row, id 1): zlib-compressed JSON of
# the verdicts, so a process without the lease serves the same verdicts (collector.lease).
verdict_snapshot = sa.Table(
    "verdict_snapshot",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("holder", sa.UnicodeText, nullable=False),
    sa.Column("judged_at", sa.Double, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
)
