"""One throwaway PostgreSQL server for the whole test run, and a fresh database per test.

The server comes from Debian's postgresql package (scripts/setup.sh installs it), runs from a
data directory in /tmp, listens on a Unix socket there and on a loopback TCP port (HAProxy and
several collector processes reach it like a remote server), and is stopped by its data
directory when the run ends. Each test that asks gets a database of its own, so tests never
see each other's rows.
"""

from __future__ import annotations

import glob
import importlib.util
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.helpers import need


def pg_program(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """A running server; :meth:`database` gives a fresh database and returns its URL."""

    def __init__(self, base: Path, port: int) -> None:
        self.base = base
        self.port = port
        self._names = itertools.count(1)
        self._templates: set[str] = set()
        self._made: dict[str, str] = {}  # database: its template
        self._spare: dict[str, list[str]] = {}  # template: emptied copies for the next test
        # Templates whose tables hold no rows, with their shape (tables, triggers, functions).
        self._shape: dict[str, list[tuple[Any, ...]]] = {}
        self._tables: dict[str, list[str]] = {}

    def url(self, name: str = "postgres", tcp: bool = False) -> str:
        if tcp:
            return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"
        return f"postgresql+psycopg://postgres@/{name}?host={self.base}&port={self.port}"

    def _sql(self, sql: str, *params: object, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        import psycopg

        conninfo = f"host={self.base} port={self.port} user=postgres dbname={dbname}"
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
            cur = conn.execute(sql, params or None)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def database(self, tcp: bool = False, template: str = "template0") -> str:
        """A fresh database, empty or a copy of ``template`` made by :meth:`template`: a file
        copy on the server, much cheaper than migrating a new database for every test."""
        spare = self._spare.get(template)
        if spare:
            name = spare.pop()
        else:
            name = f"t{os.getpid()}_{next(self._names)}"
            self._sql(f'CREATE DATABASE "{name}" ENCODING \'UTF8\' TEMPLATE "{template}"')
        self._made[name] = template
        return self.url(name, tcp)

    def drop(self, url: str) -> None:
        """Done with a database made by :meth:`database`. A copy of a template whose tables
        were all empty is emptied again and kept for the next test (0.03 s, where a new copy
        costs 0.3 s); any other is dropped. Either way the sessions the test left open (a CLI
        run's pool, a killed server's) end, which would otherwise pile up to max_connections."""
        from sqlalchemy.engine import make_url

        name = str(make_url(url).database)
        template = self._made.pop(name, "")
        if template in self._shape:
            try:
                self._empty(name, template)
            except Exception:  # a test changed more than rows (a dropped trigger): start over
                pass
            else:
                self._spare.setdefault(template, []).append(name)
                return
        self._sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _empty(self, name: str, template: str) -> None:
        self._sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            name,
        )
        if self._shape_of(name) != self._shape[template]:
            raise RuntimeError(f"database {name} no longer has the shape of {template}")
        tables = ", ".join(f'"{t}"' for t in self._tables[template])
        self._sql(
            f"SET lock_timeout = '5s'; TRUNCATE {tables} RESTART IDENTITY CASCADE", dbname=name
        )

    def _shape_of(self, name: str) -> list[tuple[Any, ...]]:
        return self._sql(
            "SELECT 'table', tablename FROM pg_tables WHERE schemaname = 'public'"
            " UNION ALL SELECT 'trigger', tgname FROM pg_trigger WHERE NOT tgisinternal"
            " UNION ALL SELECT 'function', proname FROM pg_proc"
            " WHERE pronamespace = 'public'::regnamespace ORDER BY 1, 2",
            dbname=name,
        )

    def template(self, name: str, prepare: Callable[[str], None]) -> str:
        """A database ``name`` made once per run by ``prepare(url)``, to copy with
        :meth:`database`; ``prepare`` must close its connections (a template in use cannot be
        copied)."""
        if name in self._templates:
            return name
        self._sql(f"CREATE DATABASE \"{name}\" ENCODING 'UTF8' TEMPLATE template0")
        try:
            prepare(self.url(name))
        except BaseException:
            self._sql(f'DROP DATABASE "{name}" WITH (FORCE)')
            raise
        self._templates.add(name)
        shape = self._shape_of(name)
        tables = [t for kind, t in shape if kind == "table" and t != "alembic_version"]
        if tables and not self._sql(
            " UNION ALL ".join(f'SELECT 1 FROM (SELECT 1 FROM "{t}" LIMIT 1) AS x' for t in tables),
            dbname=name,
        ):
            self._shape[name], self._tables[name] = shape, tables
        return name


def _prefix(base: Path) -> list[str]:
    if os.geteuid() != 0:
        return []
    import pwd  # initdb refuses to run as root: run the server as the postgres user

    try:
        owner = pwd.getpwnam("postgres")
    except KeyError:
        need(False, "running as root and there is no postgres user to run the server")
        raise
    need(shutil.which("runuser") is not None, "running as root without runuser")
    os.chown(base, owner.pw_uid, owner.pw_gid)
    return ["runuser", "-u", "postgres", "--"]


def serve() -> Iterator[PgServer]:
    """Start a server, yield it, stop it and remove its files."""
    need(importlib.util.find_spec("psycopg") is not None, "psycopg is not installed")
    initdb, pg_ctl = pg_program("initdb"), pg_program("pg_ctl")
    need(initdb is not None and pg_ctl is not None, "PostgreSQL server programs are missing")
    assert initdb is not None and pg_ctl is not None
    base = Path(tempfile.mkdtemp(prefix="wardready-pg-"))
    try:
        prefix = _prefix(base)
        data = base / "data"

        def run(*argv: str) -> None:
            done = subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=90)
            if done.returncode != 0:
                log = base / "log"
                extra = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"{argv[0]} failed: {done.stderr}{extra}")

        run(initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8")
        port = _free_port()
        # fsync off: a test server's durability is not under test, and CI time is.
        options = (
            f"-k {base} -p {port} -c listen_addresses=127.0.0.1 -c max_connections=200"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        run(pg_ctl, "-D", str(data), "-o", options, "-l", str(base / "log"), "-w", "-t", "30",
            "start")  # fmt: skip
        try:
            yield PgServer(base, port)
        finally:
            run(pg_ctl, "-D", str(data), "-m", "immediate", "-w", "-t", "30", "stop")
    finally:
        shutil.rmtree(base, ignore_errors=True)
