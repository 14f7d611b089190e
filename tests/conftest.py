import sys
from pathlib import Path

# The demo's process helpers (scripts/fleet.py) drive the end-to-end tests too.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from collections.abc import Iterator

import pytest

from tests import pg


@pytest.fixture(scope="session")
def pg_server() -> Iterator[pg.PgServer]:
    """One PostgreSQL server for the whole run, started on first use (see tests/pg.py)."""
    yield from pg.serve()


@pytest.fixture
def pg_url(pg_server: pg.PgServer) -> str:
    """A fresh, empty PostgreSQL database of this test's own."""
    return pg_server.database()
