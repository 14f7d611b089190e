"""The audit log: who changed what, when.

Every change made with an admin token, and every management command of the CLI, adds one
row in the same transaction as the change itself, so a change is never without its entry.
``who`` is a token's prefix and holder's name (never the token), or ``cli:USER``.
"""

from __future__ import annotations

import getpass
import time
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from collector import db

MAX_DETAIL = 1000
DEFAULT_LIMIT = 100


@dataclass(frozen=True)
class Entry:
    id: int
    at: float
    who: str
    action: str
    detail: str


def cli_user() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no LOGNAME, e.g. in a bare container
        user = "unknown"
    return f"cli:{user}"


def record(
    conn: sa.Connection, who: str, action: str, detail: str = "", now: float | None = None
) -> None:
    conn.execute(
        sa.insert(db.audit_log).values(
            at=time.time() if now is None else now,
            who=who,
            action=action,
            detail=detail[:MAX_DETAIL],
        )
    )


def recent(engine: Engine, limit: int = DEFAULT_LIMIT, since: float | None = None) -> list[Entry]:
    """The newest ``limit`` entries (at or after ``since``), oldest first."""
    a = db.audit_log
    query = sa.select(a).order_by(a.c.at.desc(), a.c.id.desc()).limit(limit)
    if since is not None:
        query = query.where(a.c.at >= since)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [Entry(r.id, r.at, r.who, r.action, r.detail) for r in reversed(rows)]
