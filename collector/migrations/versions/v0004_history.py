"""Verdict history: each change of a ward's verdict and of each criterion's state.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
# The lead rechains this after 0003 at merge time.
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "history",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("ward_id", sa.String(64), sa.ForeignKey("wards.id"), nullable=False),
        sa.Column("criterion", sa.String(64), nullable=True),
        sa.Column("from_state", sa.String(16), nullable=True),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("at", sa.Double, nullable=False),
        sa.Column("evidence", sa.UnicodeText, nullable=False, server_default=""),
    )
    op.create_index("ix_history_ward_at", "history", ["ward_id", "at"])


def downgrade() -> None:
    op.drop_index("ix_history_ward_at", "history")
    op.drop_table("history")
