"""Enrollment: short codes an officer carries to a ward PC, traded there for the agent's token.

A code is 10 characters from an alphabet without look-alikes (no 0/O, 1/I/L), shown grouped
as ``K7QM-3XPA-W9``: about 50 bits, enough since each try costs a request and failures are
rate-limited per client address. Codes are stored as SHA-256 hashes with their first group as
a prefix (to list and revoke them), expire, and count their uses. Trading one creates a token
bound to the ward and the agent's name, so revoking one agent leaves the ward's others alone.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy.engine import Engine

from collector import db
from collector import tokens as tokenstore
from shared.wire import Ident

ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
LENGTH = 10
GROUPS = (4, 4, 2)
PREFIX_LENGTH = 4
DEFAULT_EXPIRES_SECONDS = 7 * 86400.0
MAX_CODE_TEXT = 64
# Failed attempts from one address within the window before it must wait.
FAIL_LIMIT = 10
FAIL_WINDOW_SECONDS = 600.0


class EnrollError(Exception):
    """A refused enrollment: ``status`` is the HTTP status, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class EnrollRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    code: Annotated[str, StringConstraints(min_length=1, max_length=MAX_CODE_TEXT)]
    agent: Ident
    hostname: Annotated[str, StringConstraints(max_length=255)] = ""
    machine_id_hash: Annotated[str, StringConstraints(pattern=r"^([0-9a-f]{64})?$")] = ""
    version: Annotated[str, StringConstraints(max_length=64)] = ""
    os: Annotated[str, StringConstraints(max_length=255)] = ""


class EnrollAnswer(BaseModel):
    ward: str
    agent: str
    token: str = Field(description="the agent's own bearer token; shown only in this answer")
    collector_time: float


@dataclass(frozen=True)
class CodeInfo:
    prefix: str
    ward: str
    created_at: float
    expires_at: float
    max_uses: int
    uses: int
    revoked_at: float | None

    def state(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if now >= self.expires_at:
            return "expired"
        if self.uses >= self.max_uses:
            return "used up"
        return "valid"


@dataclass(frozen=True)
class EnrolledAgent:
    ward: str
    agent: str
    hostname: str
    machine_id_hash: str
    version: str
    os: str
    enrolled_at: float | None
    revoked_at: float | None
    plan_version: int | None
    plan_error: str | None


def normalize(code: str) -> str:
    """What was typed, as stored: upper case, dashes and spaces dropped."""
    return "".join(ch for ch in code.upper() if ch not in "- \t")


def grouped(code: str) -> str:
    out, i = [], 0
    for n in GROUPS:
        out.append(code[i : i + n])
        i += n
    return "-".join(out)


def hash_code(code: str) -> str:
    return hashlib.sha256(normalize(code).encode("ascii", "replace")).hexdigest()


def _info(row: sa.Row[object]) -> CodeInfo:
    r = row._mapping
    return CodeInfo(
        r["prefix"],
        r["ward_id"],
        r["created_at"],
        r["expires_at"],
        r["max_uses"],
        r["uses"],
        r["revoked_at"],
    )


def create(
    engine: Engine,
    ward: str,
    expires: float = DEFAULT_EXPIRES_SECONDS,
    uses: int = 1,
    now: float | None = None,
) -> str:
    """A new code for ``ward``, grouped for reading aloud; the only time it is seen."""
    if expires <= 0:
        raise EnrollError(400, "--expires: must be longer than 0 s")
    if uses < 1:
        raise EnrollError(400, "--uses: must be at least 1")
    now = time.time() if now is None else now
    c = db.enroll_codes
    with db.writer(engine).begin() as conn:
        if conn.execute(sa.select(db.wards.c.id).where(db.wards.c.id == ward)).first() is None:
            raise EnrollError(404, f"ward: {ward!r} is not a known ward (import the ward list)")
        used = set(conn.execute(sa.select(c.c.prefix)).scalars())
        for _ in range(100):
            code = "".join(secrets.choice(ALPHABET) for _ in range(LENGTH))
            if code[:PREFIX_LENGTH] not in used:
                break
        else:
            raise EnrollError(500, "could not draw a code with an unused prefix")
        conn.execute(
            sa.insert(c).values(
                ward_id=ward,
                hash=hash_code(code),
                prefix=code[:PREFIX_LENGTH],
                created_at=now,
                expires_at=now + expires,
                max_uses=uses,
                uses=0,
            )
        )
    return grouped(code)


def list_codes(engine: Engine, ward: str | None = None) -> list[CodeInfo]:
    c = db.enroll_codes
    query = sa.select(c).order_by(c.c.ward_id, c.c.created_at)
    if ward is not None:
        query = query.where(c.c.ward_id == ward)
    with engine.connect() as conn:
        return [_info(row) for row in conn.execute(query)]


def revoke(engine: Engine, prefix: str, now: float | None = None) -> CodeInfo:
    c = db.enroll_codes
    prefix = normalize(prefix)[:PREFIX_LENGTH]
    if len(prefix) < PREFIX_LENGTH:
        raise EnrollError(400, f"prefix: give the first {PREFIX_LENGTH} characters of the code")
    with db.writer(engine).begin() as conn:
        row = conn.execute(sa.select(c).where(c.c.prefix == prefix)).first()
        if row is None:
            raise EnrollError(404, f"prefix: no enrollment code starts with {prefix!r}")
        if row.revoked_at is None:
            when = time.time() if now is None else now
            conn.execute(sa.update(c).where(c.c.id == row.id).values(revoked_at=when))
            row = conn.execute(sa.select(c).where(c.c.id == row.id)).one()
    return _info(row)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def redeem(engine: Engine, req: EnrollRequest, now: float | None = None) -> EnrollAnswer:
    """Trade ``req.code`` for a new token of agent ``req.agent``; raises EnrollError."""
    now = time.time() if now is None else now
    c, fa = db.enroll_codes, db.fleet_agents
    with db.writer(engine).begin() as conn:
        row = conn.execute(sa.select(c).where(c.c.hash == hash_code(req.code))).first()
        if row is None:
            raise EnrollError(401, "code: unknown enrollment code (check what was typed)")
        info = _info(row)
        state = info.state(now)
        if state == "revoked":
            raise EnrollError(403, f"code: enrollment code {info.prefix}… was revoked")
        if state == "expired":
            raise EnrollError(
                403, f"code: enrollment code {info.prefix}… expired at {_when(info.expires_at)}"
            )
        if state == "used up":
            raise EnrollError(
                403,
                f"code: enrollment code {info.prefix}… is used up ({info.max_uses} of "
                f"{info.max_uses} uses)",
            )
        known = conn.execute(
            sa.select(fa).where(fa.c.ward_id == info.ward, fa.c.agent == req.agent)
        ).first()
        if (
            known is not None
            and known.revoked_at is None
            and known.machine_id_hash
            and req.machine_id_hash
            and known.machine_id_hash != req.machine_id_hash
        ):
            raise EnrollError(
                409,
                f"agent: {req.agent!r} is already enrolled in ward {info.ward} from another "
                "machine; choose another name (--agent) or revoke that agent first",
            )
        conn.execute(sa.update(c).where(c.c.id == row.id).values(uses=c.c.uses + 1))
        identity = {
            "hostname": req.hostname,
            "machine_id_hash": req.machine_id_hash,
            "version": req.version,
            "os": req.os,
            "enrolled_at": now,
            "code_prefix": info.prefix,
            "revoked_at": None,
        }
        stmt = db.insert_for(conn, fa).values(ward_id=info.ward, agent=req.agent, **identity)
        conn.execute(
            stmt.on_conflict_do_update(index_elements=[fa.c.ward_id, fa.c.agent], set_=identity)
        )
    # The token is made after the code is counted: a crash in between wastes one use, never
    # hands out two tokens for one use.
    token = tokenstore.create(engine, info.ward, req.agent, now)
    return EnrollAnswer(ward=info.ward, agent=req.agent, token=token, collector_time=time.time())


def agents(engine: Engine, ward: str | None = None) -> list[EnrolledAgent]:
    fa = db.fleet_agents
    query = sa.select(fa).order_by(fa.c.ward_id, fa.c.agent)
    if ward is not None:
        query = query.where(fa.c.ward_id == ward)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [
        EnrolledAgent(
            r.ward_id,
            r.agent,
            r.hostname,
            r.machine_id_hash,
            r.version,
            r.os,
            r.enrolled_at,
            r.revoked_at,
            r.plan_version,
            r.plan_error,
        )
        for r in rows
    ]


def revoke_agent(engine: Engine, ward: str, agent: str, now: float | None = None) -> int:
    """Revoke every token of ``agent`` in ``ward`` (not the ward's other agents'); how many."""
    now = time.time() if now is None else now
    t, fa = db.tokens, db.fleet_agents
    with db.writer(engine).begin() as conn:
        revoked = conn.execute(
            sa.update(t)
            .where(t.c.ward_id == ward, t.c.agent == agent, t.c.revoked_at.is_(None))
            .values(revoked_at=now)
        ).rowcount
        enrolled = conn.execute(
            sa.update(fa)
            .where(fa.c.ward_id == ward, fa.c.agent == agent, fa.c.revoked_at.is_(None))
            .values(revoked_at=now)
        ).rowcount
    if not revoked and not enrolled:
        raise EnrollError(404, f"agent: no live token of agent {agent!r} in ward {ward!r}")
    return int(revoked)


class FailureLimiter:
    """Failed enrollments per client address in a sliding window; past the limit, wait."""

    def __init__(
        self,
        limit: int = FAIL_LIMIT,
        window: float = FAIL_WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, address: str, now: float) -> deque[float]:
        times = self._failures.setdefault(address, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    def wait_seconds(self, address: str) -> float:
        """0 when ``address`` may try; else how long until it may."""
        now = self._clock()
        with self._lock:
            times = self._recent(address, now)
            if len(times) < self.limit:
                if not times:
                    self._failures.pop(address, None)  # bounded by addresses failing now
                return 0.0
            return times[0] + self.window - now

    def failed(self, address: str) -> None:
        now = self._clock()
        with self._lock:
            self._recent(address, now).append(now)
