"""Device inventory: the newest list of LAN devices each agent reported.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "inventory",
        sa.Column("ward_id", sa.String(64), sa.ForeignKey("wards.id"), primary_key=True),
        sa.Column("agent", sa.String(64), primary_key=True),
        sa.Column("taken_at", sa.Double, nullable=False),
        sa.Column("received_at", sa.Double, nullable=False),
        sa.Column("devices", sa.UnicodeText, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("inventory")
