"""Initial schema: wards, tokens, agents, results.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

# Written out rather than taken from collector.db.metadata: a migration must keep creating
# the schema of its own revision however the current table definitions change later.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "wards",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.UnicodeText, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False, server_default=""),
        sa.Column("former_district", sa.UnicodeText, nullable=False, server_default=""),
        sa.Column("working_group", sa.String(64), nullable=False),
    )
    op.create_table(
        "tokens",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("ward_id", sa.String(64), sa.ForeignKey("wards.id"), nullable=False),
        sa.Column("agent", sa.String(64), nullable=True),
        sa.Column("hash", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("revoked_at", sa.Double, nullable=True),
    )
    op.create_table(
        "agents",
        sa.Column("ward_id", sa.String(64), sa.ForeignKey("wards.id"), primary_key=True),
        sa.Column("agent", sa.String(64), primary_key=True),
        sa.Column("first_seen", sa.Double, nullable=False),
        sa.Column("last_seen", sa.Double, nullable=False),
        sa.Column("version", sa.String(64), nullable=False, server_default=""),
        sa.Column("stream", sa.String(32), nullable=False, server_default=""),
        sa.Column("last_seq", sa.BigInteger, nullable=True),
        sa.Column("spool_depth", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("spool_dropped_total", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("resident_memory_bytes", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_table(
        "results",
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
    )
    op.create_index("ix_results_ward_started", "results", ["ward_id", "started"])


def downgrade() -> None:
    op.drop_index("ix_results_ward_started", table_name="results")
    op.drop_table("results")
    op.drop_table("agents")
    op.drop_table("tokens")
    op.drop_table("wards")
