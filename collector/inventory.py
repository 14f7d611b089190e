"""Device inventories from agents: validate, check the token may write it, keep the newest.

Each agent's newest inventory replaces its previous one; an older one arriving late (a
retried post) is ignored rather than rolling the list back.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.engine import Engine

from collector import db
from collector.ingest import IngestError
from collector.tokens import Grant
from shared.wire import MAX_FUTURE_SECONDS, WIRE_VERSION, Inventory

MAX_INVENTORY_BYTES = 1024 * 1024


def parse(body: bytes) -> Inventory:
    if len(body) > MAX_INVENTORY_BYTES:
        raise IngestError(413, f"body: larger than {MAX_INVENTORY_BYTES} bytes")
    try:
        return Inventory.model_validate_json(body)
    except ValidationError as exc:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"]) or "body", "message": e["msg"]}
            for e in exc.errors(include_url=False, include_input=False)
        ]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise IngestError(
            422, f"{errors[0]['field']}: {errors[0]['message']}{more}", errors[:100]
        ) from None


def check(inv: Inventory, grant: Grant, now: float) -> None:
    if inv.ward != grant.ward:
        raise IngestError(403, f"ward: this token writes ward {grant.ward!r}, not {inv.ward!r}")
    if grant.agent is not None and inv.agent != grant.agent:
        raise IngestError(
            403, f"agent: this token writes as agent {grant.agent!r}, not {inv.agent!r}"
        )
    if inv.wire_version != WIRE_VERSION:
        raise IngestError(422, f"wire_version: version {inv.wire_version} is not supported")
    if inv.taken_at > now + MAX_FUTURE_SECONDS:
        raise IngestError(422, f"taken_at: more than {MAX_FUTURE_SECONDS} s in the future")
    text = inv.model_dump_json()
    if "\\u0000" in text:
        raise IngestError(422, "devices: must not contain NUL characters")


def store(engine: Engine, inv: Inventory, now: float) -> bool:
    """Keep ``inv`` as its agent's inventory unless a newer one is held; True if kept."""
    t = db.inventory
    devices = json.dumps(
        [d.model_dump() for d in inv.devices], ensure_ascii=False, separators=(",", ":")
    )
    values = {"taken_at": inv.taken_at, "received_at": now, "devices": devices}
    with db.writer(engine).begin() as conn:
        stmt = db.insert_for(conn, t).values(ward_id=inv.ward, agent=inv.agent, **values)
        stmt = stmt.on_conflict_do_update(
            index_elements=[t.c.ward_id, t.c.agent],
            set_=values,
            where=t.c.taken_at <= inv.taken_at,
        )
        # A returned row, not rowcount: psycopg reports -1 for an upsert (truthy).
        return conn.execute(stmt.returning(t.c.agent)).first() is not None


def latest(engine: Engine, ward: str) -> list[dict[str, Any]]:
    """Each agent's newest inventory of ``ward``, by agent name."""
    t = db.inventory
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t).where(t.c.ward_id == ward).order_by(t.c.agent)).all()
    return [
        {
            "agent": row.agent,
            "taken_at": row.taken_at,
            "received_at": row.received_at,
            "devices": json.loads(row.devices),
        }
        for row in rows
    ]
