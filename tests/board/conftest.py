"""The collector tests' fixtures (a database on SQLite or PostgreSQL, a small profile, Vietnamese
ward names, a Service and an in-process client), shared with the board's tests."""

from tests.collector.conftest import (  # noqa: F401
    READY,
    anon,
    client,
    engine,
    profile_path,
    service,
    token,
    units_csv,
    viewer,
)
