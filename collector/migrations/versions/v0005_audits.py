"""Audits: a window judged from stored results, written once with its SHA-256.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# The database itself refuses to change an audit once its hash is written (collector.audits
# writes the row, then completes it with content and hash in the same transaction). Anyone
# who can drop the trigger can still change it: `audit verify` is what tells.
_PG_FUNCTION = """
CREATE FUNCTION audits_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF OLD.sha256 <> '' THEN
    RAISE EXCEPTION 'audit % is complete: audits are written once', OLD.id;
  END IF;
  RETURN NEW;
END $$
"""


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
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        op.execute(
            "CREATE TRIGGER audits_immutable BEFORE UPDATE ON audits WHEN OLD.sha256 <> '' "
            "BEGIN SELECT RAISE(ABORT, 'audit is complete: audits are written once'); END"
        )
    elif dialect == "postgresql":
        op.execute(_PG_FUNCTION)
        op.execute(
            "CREATE TRIGGER audits_immutable BEFORE UPDATE ON audits "
            "FOR EACH ROW EXECUTE FUNCTION audits_immutable()"
        )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audits_immutable ON audits")
        op.execute("DROP FUNCTION IF EXISTS audits_immutable()")
    elif dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS audits_immutable")
    op.drop_table("audits")
