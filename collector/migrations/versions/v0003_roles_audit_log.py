"""Token roles (agent, viewer, admin) with a holder's name, and the audit log.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

# Written out, as in 0001: a migration keeps its own revision's schema.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # Batch mode: SQLite cannot drop NOT NULL in place, so the table is copied (existing
    # tokens become agent tokens, as they were).
    with op.batch_alter_table("tokens") as batch:
        batch.alter_column("ward_id", existing_type=sa.String(64), nullable=True)
        batch.add_column(sa.Column("role", sa.String(16), nullable=False, server_default="agent"))
        batch.add_column(sa.Column("name", sa.UnicodeText, nullable=False, server_default=""))
    op.create_table(
        "audit_log",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Double, nullable=False),
        sa.Column("who", sa.UnicodeText, nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("detail", sa.UnicodeText, nullable=False, server_default=""),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])


def downgrade() -> None:
    op.drop_index("ix_audit_log_at", "audit_log")
    op.drop_table("audit_log")
    op.execute("DELETE FROM tokens WHERE role <> 'agent'")
    with op.batch_alter_table("tokens") as batch:
        batch.drop_column("name")
        batch.drop_column("role")
        batch.alter_column("ward_id", existing_type=sa.String(64), nullable=False)
