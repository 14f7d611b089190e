"""Who may do what over HTTP: FastAPI dependencies for readers and admins, and rate limits.

``reader`` (a viewer or admin token) and ``admin`` (an admin token) each return the
:class:`Principal` behind the request. The token comes from ``Authorization: Bearer ...`` or,
for the board's pages in a browser, from the ``wardready_token`` cookie that its login sets.
Answers: 401 with ``WWW-Authenticate: Bearer`` when no valid token was presented, 403 when
the token's role may not do this.

A cookie is sent by the browser on its own, so a state-changing request authenticated by the
cookie alone must come from the collector's own pages: one that a browser marks as
cross-site is refused (CSRF). Bearer headers are never sent by a browser on its own.

Agent tokens are checked on the ingest path (:func:`agent_grant`), which answers with the
ingest's own error bodies.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, cast
from urllib.parse import urlsplit

from fastapi import HTTPException, Request, Security
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer

from collector.ingest import IngestError
from collector.tokens import (
    MAX_PRESENTED,
    Grant,
    Role,
    TokenCache,
)

COOKIE = "wardready_token"
_CHALLENGE = {"WWW-Authenticate": "Bearer"}
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Buckets kept before full ones are forgotten; far above any fleet's count of agent tokens.
MAX_BUCKETS = 10_000

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="a token from `wardready-collector token create`",
)
cookie_scheme = APIKeyCookie(
    name=COOKIE,
    auto_error=False,
    scheme_name="cookie",
    description="the same token, set by the board's login page",
)


@dataclass(frozen=True)
class Principal:
    """Who is asking: a token's holder (``name``), its role, and its ward (agent tokens)."""

    name: str
    role: Role
    ward: str | None
    prefix: str = ""

    @property
    def who(self) -> str:
        """How the audit log names this principal: prefix and name, never the token."""
        return f"{self.prefix} {self.name}".strip()


def principal(grant: Grant) -> Principal:
    return Principal(grant.name, grant.role, grant.ward, grant.prefix)


def token_cache(request: Request) -> TokenCache:
    """The app's token cache, put on ``app.state.tokens`` by ``create_app``."""
    return cast(TokenCache, request.app.state.tokens)


def lookup(request: Request, token: str) -> Principal | None:
    """The principal a token stands for, or None: for a login form checking what was typed."""
    if not token or len(token) > MAX_PRESENTED:
        return None
    grant = token_cache(request).lookup(token)
    return None if grant is None else principal(grant)


def _cross_site(request: Request) -> bool:
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return True
    origin = request.headers.get("origin")
    if origin is None:
        return False
    return urlsplit(origin).netloc.lower() != request.headers.get("host", "").lower()


def _authenticate(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None,
    cookie: str | None,
    allowed: frozenset[Role],
    what: str,
) -> Principal:
    if credentials is not None:
        token = credentials.credentials.strip()
    elif cookie:
        if request.method not in _SAFE_METHODS and _cross_site(request):
            raise HTTPException(403, f"{COOKIE}: refused on a cross-site {request.method}")
        token = cookie
    else:
        raise HTTPException(401, "authorization: a Bearer token is required", _CHALLENGE)
    found = lookup(request, token)
    if found is None:
        raise HTTPException(401, "authorization: unknown or revoked token", _CHALLENGE)
    if found.role not in allowed:
        raise HTTPException(403, f"authorization: a {found.role} token may not {what}")
    return found


Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)]
Cookie = Annotated[str | None, Security(cookie_scheme)]

# What every guarded route may answer besides its own codes, for the OpenAPI schema.
DENIED: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing, unknown or revoked token"},
    403: {"description": "the token's role may not do this"},
}
READERS: frozenset[Role] = frozenset({"viewer", "admin"})
ADMINS: frozenset[Role] = frozenset({"admin"})


def reader(request: Request, credentials: Credentials, cookie: Cookie) -> Principal:
    """A viewer or admin token: may read wards, their inventory and /metrics."""
    return _authenticate(request, credentials, cookie, READERS, "read (need viewer or admin)")


def admin(request: Request, credentials: Credentials, cookie: Cookie) -> Principal:
    """An admin token: may manage tokens and read the audit log."""
    return _authenticate(request, credentials, cookie, ADMINS, "manage (need admin)")


def reader_or_none(request: Request, credentials: Credentials, cookie: Cookie) -> Principal | None:
    """As ``reader``, but None where ``reader`` answers 401: for an HTML page that sends a
    visitor without a valid token to the login form instead. A role that may not read still
    gets 403."""
    try:
        return reader(request, credentials, cookie)
    except HTTPException as exc:
        if exc.status_code == 401:
            return None
        raise


# ---- ingest: agent tokens, rate-limited ----------------------------------------------------


class RateLimiter:
    """A token bucket per key: ``rate`` requests a second on average, ``burst`` at once.

    Keys are token prefixes, and only valid tokens get this far, so the buckets are bounded
    by the tokens issued; a full bucket is forgotten (it is the same as a new one).
    """

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate: must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: str) -> float:
        """0 when a request may go now (and count it), else the seconds until one may."""
        now = self._clock()
        with self._lock:
            if len(self._buckets) > MAX_BUCKETS:
                self._forget_full(now)
            tokens, at = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if tokens >= 1:
                self._buckets[key] = (tokens - 1, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        full = [
            k
            for k, (tokens, at) in self._buckets.items()
            if tokens + (now - at) * self.rate >= self.burst
        ]
        for k in full:
            del self._buckets[k]


def agent_grant(grant: Grant, limiter: RateLimiter | None) -> Grant:
    """``grant`` when it is an agent token within its rate, else an IngestError (403, 429)."""
    if grant.role != "agent" or grant.ward is None:
        raise IngestError(
            403, f"authorization: a {grant.role} token may not write (need an agent token)"
        )
    if limiter is not None:  # ingest rate: see tokens.DEFAULT_INGEST_RATE
        wait = limiter.take(grant.prefix)
        if wait > 0:
            # Retry-After takes whole seconds; rounding up keeps a client that obeys it
            # from arriving a moment too early and being refused again.
            seconds = max(1, math.ceil(wait))
            raise IngestError(
                429,
                f"rate: more than {limiter.rate:g} requests/s (burst {limiter.burst:g}) "
                f"from this token; retry after {seconds} s",
                headers={"Retry-After": str(seconds)},
            )
    return grant
