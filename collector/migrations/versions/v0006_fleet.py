"""The fleet: enrollment codes, enrolled agents, the fleet file, accepted checks, ward plans.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
# The lead rechains this after the migrations of the other branches (v0003..v0005).
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "enroll_codes",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("ward_id", sa.String(64), sa.ForeignKey("wards.id"), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(8), nullable=False, unique=True),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("expires_at", sa.Double, nullable=False),
        sa.Column("max_uses", sa.Integer, nullable=False),
        sa.Column("uses", sa.Integer, nullable=False, server_default="0"),
        sa.Column("revoked_at", sa.Double, nullable=True),
    )
    op.create_table(
        "fleet_agents",
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
    op.create_table(
        "fleet",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("source", sa.UnicodeText, nullable=False),
        sa.Column("body", sa.UnicodeText, nullable=False),
        sa.Column("imported_at", sa.Double, nullable=False),
    )
    op.create_table(
        "accepted_checks",
        sa.Column("ward_id", sa.String(64), sa.ForeignKey("wards.id"), primary_key=True),
        sa.Column("checks", sa.UnicodeText, nullable=False),
        sa.Column("accepted_at", sa.Double, nullable=False),
    )
    op.create_table(
        "plans",
        sa.Column("ward_id", sa.String(64), sa.ForeignKey("wards.id"), primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("checks", sa.UnicodeText, nullable=False),
        sa.Column("sources", sa.UnicodeText, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
    )


def downgrade() -> None:
    for table in ("plans", "accepted_checks", "fleet", "fleet_agents", "enroll_codes"):
        op.drop_table(table)
