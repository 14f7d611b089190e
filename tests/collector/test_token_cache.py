"""The token cache keeps the ingest path off the database: one read of every valid token per
period, not one lookup per token, and nothing from it after a revocation."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from collector import tokens
from collector.service import Service
from collector.tokens import Grant, TokenCache

from .conftest import BROKEN, READY


def counting(engine: Any) -> list[str]:
    """Every statement the engine runs from now on, on any connection."""
    seen: list[str] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FROM tokens" in statement:
            seen.append(statement)

    return seen


def test_one_read_per_period_serves_every_valid_token(engine: Any, service: Service) -> None:
    ready = tokens.create(engine, READY, "pc-01")
    broken, *_ = tokens.create_agents(engine, [(BROKEN, "pc-01"), (BROKEN, "pc-02")])
    clock = [100.0]
    cache = TokenCache(engine, seconds=10, clock=lambda: clock[0])
    reads = counting(engine)
    assert cache.peek(ready) is None  # never read yet: the caller must call lookup
    assert cache.lookup(ready) == Grant(READY, "pc-01", "agent", f"{READY}/pc-01", ready[:8])
    # The other token was never looked up, yet it is known without a query of its own.
    assert cache.peek(broken) == Grant(BROKEN, "pc-01", "agent", f"{BROKEN}/pc-01", broken[:8])
    for _ in range(50):
        assert cache.lookup(broken) is not None and cache.peek(ready) is not None
    assert len(reads) == 1
    # Unknown tokens cost one lookup each and are never cached.
    assert cache.lookup("not-a-token") is None
    assert cache.lookup("not-a-token") is None
    assert len(reads) == 3

    # Revoked by another process (the CLI): gone once the period is over, from peek too.
    tokens.revoke(engine, broken[:8])
    assert cache.peek(broken) is not None
    clock[0] += 11
    assert cache.peek(broken) is None
    assert cache.lookup(broken) is None
    assert cache.peek(broken) is None and cache.peek(ready) is not None


def test_a_revocation_through_the_cache_holds_at_once(engine: Any, service: Service) -> None:
    token = tokens.create(engine, READY, "pc-01")
    assert service.tokens.lookup(token) is not None
    assert service.known(f"Bearer {token}") is not None
    service.tokens.revoke(token[:8])
    assert service.known(f"Bearer {token}") is None
    assert service.tokens.lookup(token) is None


def test_tokens_made_in_bulk_need_known_wards(engine: Any, service: Service) -> None:
    with pytest.raises(tokens.TokenError, match="'nowhere' is not a known ward"):
        tokens.create_agents(engine, [(READY, "pc-01"), ("nowhere", "pc-01")])
    assert tokens.list_all(engine) == []  # all or nothing
    made = tokens.create_agents(engine, [(READY, "pc-01"), (BROKEN, None)])
    assert len({t[: tokens.PREFIX_LENGTH] for t in made}) == 2
    held = {(t.ward, t.agent) for t in tokens.list_all(engine)}
    assert held == {(READY, "pc-01"), (BROKEN, None)}
