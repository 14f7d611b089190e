"""The collector tests' fixtures (a migrated SQLite database, a small profile, Vietnamese
ward names, a Service and an in-process client), shared with the board's tests."""

from tests.collector.conftest import (  # noqa: F401
    READY,
    anon,
    client,
    db_url,
    engine,
    profile_path,
    service,
    token,
    units_csv,
    viewer,
)
