"""Credentials: random bearer tokens, stored only as hashes, each with a role.

- ``agent``: writes results and inventory for one ward (and one agent name when created with
  one); reads nothing.
- ``viewer``: reads the ward list, each ward's page and ``/metrics``.
- ``admin``: reads, and manages tokens (every change lands in the audit log).

The token is shown once, when created; the database keeps its SHA-256 and its first
characters (the prefix) so an operator can tell tokens apart and revoke one.
"""

from __future__ import annotations

import hashlib
import secrets
import string
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from collector import auditlog, db

# 43 characters from 62 carry 256 bits. Letters and digits only: a token (or its prefix)
# never starts with '-' (which a shell command line would take for an option) and needs no
# quoting anywhere.
ALPHABET = string.ascii_letters + string.digits
LENGTH = 43
PREFIX_LENGTH = 8
# Longer than any token we issue; anything longer is refused without touching the database.
MAX_PRESENTED = 256
# A revocation made by another process (the CLI) reaches a running server's cache within
# this many seconds; one made through the same Service takes effect at once.
CACHE_SECONDS = 10.0

# Ingest requests per agent token (collector.auth.RateLimiter). An agent pushes every 5 s,
# and back to back while it replays a backlog (a batch of 500 results takes tens of ms to
# store): 5 requests/s with bursts of 20 lets a replay run at ~2,500 results/s per agent,
# while one token can no longer flood the collector.
DEFAULT_INGEST_RATE = 5.0
DEFAULT_INGEST_BURST = 20.0


Role = Literal["agent", "viewer", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)
MAX_NAME = 64


class TokenError(Exception):
    pass


@dataclass(frozen=True)
class Grant:
    """What a valid token allows: an agent token writes for ``ward``, and only as ``agent``
    when set; viewer and admin tokens have no ward."""

    ward: str | None
    agent: str | None
    role: Role = "agent"
    name: str = ""
    prefix: str = ""


@dataclass(frozen=True)
class TokenInfo:
    prefix: str
    ward: str | None
    agent: str | None
    created_at: float
    revoked_at: float | None
    role: Role = "agent"
    name: str = ""


def _role(value: str) -> Role:
    for role in ROLES:
        if value == role:
            return role
    raise TokenError(f"role: {value!r} is not one of {', '.join(ROLES)}")


def _check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME or not name.isprintable():
        raise TokenError(f"name: give who holds the token, 1 to {MAX_NAME} printable characters")
    return name


def hash_token(token: str) -> str:
    # A plain SHA-256 is the right hash here, not a slow password hash: tokens are 256-bit
    # random values, so there is nothing to brute-force, and the lookup runs on every ingest
    # request, where a deliberately slow hash would cost real throughput.
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(LENGTH))


def create(
    engine: Engine,
    ward: str | None = None,
    agent: str | None = None,
    now: float | None = None,
    *,
    role: Role = "agent",
    name: str = "",
    by: str | None = None,
) -> str:
    """Store a new token and return it: the only time it is seen.

    An agent token needs ``ward`` (and may be limited to ``agent``); a viewer or admin token
    takes neither, but needs ``name``, the person or system that holds it. With ``by`` (who
    asks) the creation is written to the audit log in the same transaction.
    """
    role = _role(role)
    if role == "agent":
        if ward is None:
            raise TokenError("ward: an agent token writes one ward; give --ward")
        name = name.strip() or f"{ward}/{agent or '*'}"
    else:
        if ward is not None or agent is not None:
            raise TokenError(f"ward: a {role} token is not tied to a ward or agent")
        name = _check_name(name)
    now = time.time() if now is None else now
    with db.writer(engine).begin() as conn:
        token = _insert(conn, ward, agent, role, name, now)
        if by is not None:
            detail = f"{token[:PREFIX_LENGTH]} role={role} name={name}"
            if ward is not None:
                detail += f" ward={ward} agent={agent or '*'}"
            auditlog.record(conn, by, "token.create", detail, now)
    return token


def create_agents(
    engine: Engine, pairs: list[tuple[str, str | None]], now: float | None = None
) -> list[str]:
    """Agent tokens for many (ward, agent) pairs at once, in one transaction: a national
    fleet's worth (thousands) would otherwise cost one commit and one read of every prefix
    each. Returns the tokens in the order of ``pairs``."""
    now = time.time() if now is None else now
    made: list[str] = []
    with db.writer(engine).begin() as conn:
        known = set(conn.execute(sa.select(db.wards.c.id)).scalars())
        used = set(conn.execute(sa.select(db.tokens.c.prefix)).scalars())
        rows = []
        for ward, agent in pairs:
            if ward not in known:
                raise TokenError(f"ward: {ward!r} is not a known ward (import the ward list first)")
            token = _draw(used)
            used.add(token[:PREFIX_LENGTH])
            made.append(token)
            rows.append(_row(token, ward, agent, "agent", f"{ward}/{agent or '*'}", now))
        if rows:
            conn.execute(sa.insert(db.tokens), rows)
    return made


def _draw(used: set[str]) -> str:
    # Prefixes are unique so "token revoke PREFIX" always names one token; with 47 bits
    # of prefix a second draw is already vanishingly rare.
    for _ in range(100):
        token = new_token()
        if token[:PREFIX_LENGTH] not in used:
            return token
    raise TokenError("could not draw a token with an unused prefix")


def _row(
    token: str, ward: str | None, agent: str | None, role: Role, name: str, now: float
) -> dict[str, Any]:
    return {
        "ward_id": ward,
        "agent": agent,
        "hash": hash_token(token),
        "prefix": token[:PREFIX_LENGTH],
        "created_at": now,
        "role": role,
        "name": name,
    }


def _insert(
    conn: sa.Connection, ward: str | None, agent: str | None, role: Role, name: str, now: float
) -> str:
    known = sa.select(db.wards.c.id).where(db.wards.c.id == ward)
    if ward is not None and conn.execute(known).first() is None:
        raise TokenError(f"ward: {ward!r} is not a known ward (import the ward list first)")
    token = _draw(set(conn.execute(sa.select(db.tokens.c.prefix)).scalars()))
    conn.execute(sa.insert(db.tokens).values(**_row(token, ward, agent, role, name, now)))
    return token


def _info(row: sa.Row[Any], revoked_at: float | None) -> TokenInfo:
    return TokenInfo(
        row.prefix, row.ward_id, row.agent, row.created_at, revoked_at, _role(row.role), row.name
    )


def list_all(engine: Engine) -> list[TokenInfo]:
    t = db.tokens
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(t).order_by(t.c.role, t.c.ward_id, t.c.created_at, t.c.id)
        ).all()
    return [_info(r, r.revoked_at) for r in rows]


def revoke(
    engine: Engine, prefix: str, now: float | None = None, by: str | None = None
) -> TokenInfo:
    """Revoke the one token whose prefix is ``prefix``; already revoked is not an error.

    With ``by`` (who asks) the revocation is written to the audit log."""
    t = db.tokens
    prefix = prefix.strip()
    if len(prefix) < PREFIX_LENGTH:
        raise TokenError(f"prefix: give the first {PREFIX_LENGTH} characters of the token")
    prefix = prefix[:PREFIX_LENGTH]
    with db.writer(engine).begin() as conn:
        rows = conn.execute(sa.select(t).where(t.c.prefix == prefix)).all()
        if not rows:
            raise TokenError(f"prefix: no token starts with {prefix!r}")
        row = rows[0]
        when = row.revoked_at
        if when is None:
            when = time.time() if now is None else now
            conn.execute(sa.update(t).where(t.c.id == row.id).values(revoked_at=when))
            if by is not None:
                auditlog.record(conn, by, "token.revoke", f"{row.prefix} role={row.role}", when)
    return _info(row, when)


def bearer(authorization: str | None) -> str | None:
    """The token in an ``Authorization: Bearer ...`` header value, if there is one."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_PRESENTED:
        return None
    return token


class TokenCache:
    """Token hash -> Grant, to keep the ingest path off the database.

    Every ``seconds`` the whole cache is read again in one query of every valid token, not
    token by token: a fleet of thousands of agents, each pushing every few seconds, would
    otherwise send one lookup per token per period. A token created a moment ago is looked up
    on its own the first time it is seen; unknown tokens cost one indexed lookup each and are
    never cached.
    """

    def __init__(
        self,
        engine: Engine,
        seconds: float = CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._seconds = seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self._known: dict[str, Grant] = {}
        self._fresh_until = float("-inf")
        # Bumped by clear(): a reload that read the table before a revocation in this
        # process must not bring the revoked token back.
        self._generation = 0

    def peek(self, token: str) -> Grant | None:
        """The grant when the cache holds it and is fresh, without ever asking the database:
        safe to call from the event loop."""
        if self._clock() >= self._fresh_until:
            return None
        return self._known.get(hash_token(token))

    def lookup(self, token: str) -> Grant | None:
        digest = hash_token(token)
        if self._clock() >= self._fresh_until:
            self._reload()
        with self._lock:
            hit = self._known.get(digest)
        if hit is not None:
            return hit
        generation = self._generation
        t = db.tokens
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(t.c.ward_id, t.c.agent, t.c.role, t.c.name, t.c.prefix).where(
                    t.c.hash == digest, t.c.revoked_at.is_(None)
                )
            ).first()
        if row is None:
            return None
        grant = Grant(row.ward_id, row.agent, _role(row.role), row.name, row.prefix)
        with self._lock:
            if generation == self._generation:
                self._known[digest] = grant
        return grant

    def _reload(self) -> None:
        with self._reload_lock:
            began = self._clock()
            if began < self._fresh_until:
                return  # another thread reloaded it meanwhile
            generation = self._generation
            t = db.tokens
            with self._engine.connect() as conn:
                rows = conn.execute(
                    sa.select(
                        t.c.hash, t.c.ward_id, t.c.agent, t.c.role, t.c.name, t.c.prefix
                    ).where(t.c.revoked_at.is_(None))
                ).all()
            known = {
                r.hash: Grant(r.ward_id, r.agent, _role(r.role), r.name, r.prefix) for r in rows
            }
            with self._lock:
                if generation == self._generation:
                    self._known = known
                    self._fresh_until = began + self._seconds

    def revoke(self, prefix: str, now: float | None = None, by: str | None = None) -> TokenInfo:
        info = revoke(self._engine, prefix, now, by)
        self.clear()
        return info

    def clear(self) -> None:
        with self._lock:
            self._known = {}
            self._fresh_until = float("-inf")
            self._generation += 1
