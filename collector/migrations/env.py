"""Alembic environment: migrations run on the collector's own connection at start-up.

``collector.db.upgrade`` hands over an open connection in ``config.attributes``; running the
``alembic`` command by hand (with ``alembic.ini`` next to this file) builds an engine from
``WARDREADY_DB`` instead.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from collector.db import database_url, make_engine, metadata


def run(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things in place: batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    if context.is_offline_mode():
        context.configure(url=database_url(), target_metadata=metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    given = context.config.attributes.get("connection")
    if given is not None:
        run(given)
        return
    engine = make_engine()
    with engine.begin() as connection:
        run(connection)
    engine.dispose()


main()
