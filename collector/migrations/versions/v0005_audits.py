"""Audits: a window judged from stored results, written once with its SHA-256.

Revision ID: 0005
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "audits",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("title", sa.UnicodeText, nullable=False),
        sa.Column("window_from", sa.Double, nullable=False),
        sa.Column("window_to", sa.Double, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("signed_off_by", sa.UnicodeText, nullable=False),
        sa.Column("content", sa.UnicodeText, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audits")
