"""Agent tokens: shown once, stored hashed, scoped to a ward (and agent), revocable."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from collector import cli, db, tokens
from collector.ingest import IngestError
from collector.service import Service

from .conftest import BROKEN, READY, auth, batch, body


def everything_stored(engine: sa.Engine) -> str:
    """Every value in every table, as one string, to search for a leaked secret."""
    parts: list[str] = []
    with engine.connect() as conn:
        for table in db.metadata.sorted_tables:
            for row in conn.execute(sa.select(table)):
                parts.extend(str(v) for v in row)
    return "\n".join(parts)


def test_create_prints_the_token_once_and_stores_only_its_hash(
    service: Service, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--db", db_url, "token", "create", "--ward", READY, "--agent", "pc-01"]) == 0
    captured = capsys.readouterr()
    token = captured.out.strip().splitlines()[-1]
    assert len(token) == tokens.LENGTH and token.isalnum()
    assert token not in captured.err and token[: tokens.PREFIX_LENGTH] in captured.err

    stored = everything_stored(service.engine)
    assert token not in stored
    assert hashlib.sha256(token.encode()).hexdigest() in stored

    assert cli.main(["--db", db_url, "token", "list"]) == 0
    listing = capsys.readouterr().out
    assert token[: tokens.PREFIX_LENGTH] in listing and token not in listing
    assert READY in listing and "pc-01" in listing


def test_tokens_are_random_and_prefixes_distinct(service: Service) -> None:
    made = [tokens.create(service.engine, READY) for _ in range(20)]
    assert len(set(made)) == 20
    assert len({t[: tokens.PREFIX_LENGTH] for t in made}) == 20


def test_token_for_unknown_ward_is_refused(
    db_url: str, service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--db", db_url, "token", "create", "--ward", "ward-nowhere"]) == 2
    assert "ward: 'ward-nowhere' is not a known ward" in capsys.readouterr().err
    with pytest.raises(tokens.TokenError, match="ward"):
        tokens.create(service.engine, "ward-nowhere")


def test_valid_token_writes_its_ward(client: TestClient, token: str) -> None:
    r = client.post("/api/v1/ingest", content=body(batch()), headers=auth(token))
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 3


def test_missing_and_unknown_tokens_get_401(client: TestClient) -> None:
    r = client.post("/api/v1/ingest", content=body(batch()))
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert "authorization" in r.json()["detail"]
    r = client.post("/api/v1/ingest", content=body(batch()), headers=auth("x" * 43))
    assert r.status_code == 401 and "unknown or revoked" in r.json()["detail"]
    r = client.post(
        "/api/v1/ingest", content=body(batch()), headers={"Authorization": "Basic Zm9v"}
    )
    assert r.status_code == 401


def test_another_wards_token_gets_403_naming_ward(client: TestClient, service: Service) -> None:
    other = tokens.create(service.engine, BROKEN)
    r = client.post("/api/v1/ingest", content=body(batch(ward=READY)), headers=auth(other))
    assert r.status_code == 403
    assert r.json()["detail"].startswith("ward:")
    assert BROKEN in r.json()["detail"]


def test_agent_scoped_token_refuses_other_agent(client: TestClient, token: str) -> None:
    r = client.post("/api/v1/ingest", content=body(batch(agent="pc-02")), headers=auth(token))
    assert r.status_code == 403 and r.json()["detail"].startswith("agent:")


def test_revoked_token_is_refused_at_once_in_process(
    client: TestClient, service: Service, token: str
) -> None:
    assert (
        client.post("/api/v1/ingest", content=body(batch()), headers=auth(token)).status_code == 200
    )
    info = service.tokens.revoke(token[: tokens.PREFIX_LENGTH])
    assert info.ward == READY and info.revoked_at is not None
    r = client.post("/api/v1/ingest", content=body(batch()), headers=auth(token))
    assert r.status_code == 401


def test_revocation_by_cli_reaches_a_running_service_after_its_cache(
    engine: sa.Engine,
    profile_path: Path,
    units_csv: Path,
    db_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from collector import wards
    from collector.profile import load_profile

    wards.import_csv(engine, units_csv)
    clock = [1000.0]
    svc = Service(engine, load_profile(profile_path))
    svc.tokens = tokens.TokenCache(engine, seconds=10, clock=lambda: clock[0])
    token = tokens.create(engine, READY)
    assert svc.authorize(f"Bearer {token}").ward == READY

    assert cli.main(["--db", db_url, "token", "revoke", token[:8]]) == 0
    assert "revoked" in capsys.readouterr().out
    listing = tokens.list_all(engine)
    assert listing[0].revoked_at is not None

    # Still cached: the documented window for a revocation made by another process.
    assert svc.authorize(f"Bearer {token}").ward == READY
    clock[0] += 11
    with pytest.raises(IngestError, match="unknown or revoked"):
        svc.authorize(f"Bearer {token}")


def test_revoke_needs_a_known_full_prefix(
    db_url: str, service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--db", db_url, "token", "revoke", "abc"]) == 2
    assert "prefix" in capsys.readouterr().err
    assert cli.main(["--db", db_url, "token", "revoke", "ZZZZZZZZ"]) == 2
    assert "no token starts with 'ZZZZZZZZ'" in capsys.readouterr().err


def test_bearer_header_parsing() -> None:
    assert tokens.bearer("Bearer abc") == "abc"
    assert tokens.bearer("bearer   abc ") == "abc"
    assert tokens.bearer("Basic abc") is None
    assert tokens.bearer("Bearer ") is None
    assert tokens.bearer(None) is None
    assert tokens.bearer("Bearer " + "a" * 1000) is None
