import sys
from pathlib import Path

# The demo's process helpers (scripts/fleet.py) drive the end-to-end tests too.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from collections.abc import Iterator

import pytest

from tests import pg

# Every test that asks for ``database`` (directly or through ``db_url``, ``engine``,
# ``service``...) runs once per database the collector supports.
DATABASES = ("sqlite", "postgresql")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sqlite_only(why): runs on SQLite only; why names the SQLite-specific thing"
    )
    config.addinivalue_line("markers", "postgresql: the PostgreSQL run of a database test")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "database" not in metafunc.fixturenames:
        return
    only = metafunc.definition.get_closest_marker("sqlite_only")
    if only is not None and not (only.args and str(only.args[0]).strip()):
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: sqlite_only needs a reason")
    kinds = DATABASES[:1] if only else DATABASES
    marks = {"postgresql": [pytest.mark.postgresql]}
    params = [pytest.param(k, id=k, marks=marks.get(k, [])) for k in kinds]
    metafunc.parametrize("database", params, indirect=True)


@pytest.fixture(scope="session")
def database(request: pytest.FixtureRequest) -> str:
    """Which database this run of the test uses: "sqlite" or "postgresql"."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture(scope="session")
def pg_server() -> Iterator[pg.PgServer]:
    """One PostgreSQL server for the whole run, started on first use (see tests/pg.py)."""
    yield from pg.serve()


@pytest.fixture
def pg_url(pg_server: pg.PgServer) -> Iterator[str]:
    """A fresh, empty PostgreSQL database of this test's own, dropped after it."""
    url = pg_server.database()
    yield url
    pg_server.drop(url)


def _migrate(url: str) -> None:
    from collector import db

    engine = db.make_engine(url)
    try:
        db.upgrade(engine)
    finally:
        engine.dispose()


@pytest.fixture
def pg_migrated_url(pg_server: pg.PgServer) -> Iterator[str]:
    """A fresh PostgreSQL database with the collector's schema at head, dropped after the test
    (copied from a template migrated once per run: alembic per test would cost seconds)."""
    url = pg_server.database(template=pg_server.template("wardready_head", _migrate))
    yield url
    pg_server.drop(url)


@pytest.fixture
def db_url(database: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A database for the collector: a SQLite file in tmp_path (not yet migrated: the
    ``engine`` fixture or the collector does it), or a PostgreSQL database of the test's own,
    already migrated."""
    if database == "postgresql":
        return str(request.getfixturevalue("pg_migrated_url"))
    return f"sqlite:///{tmp_path / 'collector.db'}"
