"""The judge lease and the verdict snapshot, for several collector processes on one database.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    leases = op.create_table(
        "leases",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("holder", sa.UnicodeText, nullable=False, server_default=""),
        sa.Column("acquired_at", sa.Double, nullable=False, server_default="0"),
        sa.Column("expires_at", sa.Double, nullable=False, server_default="0"),
    )
    # The row exists from the start, so taking the lease is always one conditional UPDATE.
    op.bulk_insert(leases, [{"name": "judge", "holder": "", "acquired_at": 0.0, "expires_at": 0.0}])
    op.create_table(
        "verdict_snapshot",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("holder", sa.UnicodeText, nullable=False),
        sa.Column("judged_at", sa.Double, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("verdict_snapshot")
    op.drop_table("leases")
