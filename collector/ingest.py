"""The ingest path: authorize, validate and store one agent batch.

Kept free of the web framework so it can be tested and benchmarked on its own; the API
endpoint only reads the body and maps :class:`IngestError` to a response. The order of the
steps decides which error a client sees: 401 (who are you) before 413/422 (what did you
send) before 403 (may you write there).

A result of a check type this collector does not know is stored like any other (an agent
upgraded first must not go silent); a value outside the plausible range its known check type
declares for the metric is refused (a broken or hostile agent, not a measurement).

Storing is idempotent: each (ward, agent, stream, seq) is stored once however often a batch
is replayed, and only the results actually inserted are reported back as new, so the
in-memory state never counts a replayed result twice.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from pydantic import ValidationError

from collector import db
from collector.declared import check_types
from collector.tokens import Grant, TokenCache, bearer
from shared.wire import MAX_BATCH_BYTES, WIRE_VERSION, Batch, ResultRecord, time_errors

if TYPE_CHECKING:
    from checks.core import CheckType

log = logging.getLogger(__name__)

# Errors listed in one 422 body; a batch of 2000 bad results should not answer with 2000.
MAX_ERRORS = 100
# The wire schema leaves integers unbounded, and text may hold NUL characters; the database
# takes neither (PostgreSQL refuses NUL in text), so they are refused here as bad input
# rather than failing the insert.
MAX_INT64 = 2**63 - 1


@dataclass
class IngestError(Exception):
    status: int
    detail: str
    errors: list[dict[str, str]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    # A bounded word for the rejection counter (collector.selfmetrics.REASONS); "" lets the
    # counter derive it from the status.
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.status}: {self.detail}"

    def body(self) -> dict[str, object]:
        out: dict[str, object] = {"detail": self.detail}
        if self.errors:
            out["errors"] = self.errors
        return out


@dataclass(frozen=True)
class Stored:
    inserted: list[ResultRecord]
    duplicates: int
    last_seq: int | None


def known_checks() -> Mapping[str, CheckType]:
    """The declarations :func:`check` holds results to."""
    return check_types()


def _unprocessable(errors: list[dict[str, str]]) -> IngestError:
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return IngestError(422, f"{first['field']}: {first['message']}{more}", errors[:MAX_ERRORS])


def authorize(cache: TokenCache, authorization: str | None) -> Grant:
    token = bearer(authorization)
    challenge = {"WWW-Authenticate": "Bearer"}
    if token is None:
        raise IngestError(401, "authorization: a Bearer token is required", headers=challenge)
    grant = cache.lookup(token)
    if grant is None:
        raise IngestError(401, "authorization: unknown or revoked token", headers=challenge)
    return grant


def parse(body: bytes) -> Batch:
    if len(body) > MAX_BATCH_BYTES:
        raise IngestError(413, f"body: larger than {MAX_BATCH_BYTES} bytes")
    try:
        return Batch.model_validate_json(body)
    except ValidationError as exc:
        errors = []
        for e in exc.errors(include_url=False, include_input=False):
            loc, message = list(e["loc"]), e["msg"]
            if loc and loc[-1] == "[key]":  # the key itself is wrong, not its value
                loc.pop()
                message = f"key: {message}"
            errors.append({"field": ".".join(str(p) for p in loc) or "body", "message": message})
        raise _unprocessable(errors) from None


def check(
    batch: Batch, grant: Grant, now: float, checks: Mapping[str, CheckType] | None = None
) -> None:
    """Refuse a well-formed batch this token may not write, or that makes no sense.

    ``checks`` holds the known check types' declarations (none: nothing is range-checked).
    """
    if batch.ward != grant.ward:
        raise IngestError(403, f"ward: this token writes ward {grant.ward!r}, not {batch.ward!r}")
    if grant.agent is not None and batch.agent != grant.agent:
        raise IngestError(
            403, f"agent: this token writes as agent {grant.agent!r}, not {batch.agent!r}"
        )
    errors: list[dict[str, str]] = []
    if batch.wire_version != WIRE_VERSION:
        errors.append(
            {
                "field": "wire_version",
                "message": f"version {batch.wire_version} is not supported (need {WIRE_VERSION})",
            }
        )
    status = batch.status
    for name in ("spool_depth", "spool_dropped_total", "resident_memory_bytes"):
        if getattr(status, name) > MAX_INT64:
            errors.append({"field": f"status.{name}", "message": "larger than a 64-bit integer"})
    if "\x00" in status.version:
        errors.append({"field": "status.version", "message": "must not contain NUL characters"})
    seen: dict[int, int] = {}
    for i, r in enumerate(batch.results):
        if r.seq > MAX_INT64:
            errors.append({"field": f"results.{i}.seq", "message": "larger than a 64-bit integer"})
        if "\x00" in r.address:
            errors.append(
                {"field": f"results.{i}.address", "message": "must not contain NUL characters"}
            )
        kind = checks.get(r.check) if checks else None
        if kind is not None:
            errors.extend(_implausible(i, r, kind))
        if r.seq in seen:
            errors.append(
                {
                    "field": f"results.{i}.seq",
                    "message": f"seq {r.seq} repeats results.{seen[r.seq]}.seq",
                }
            )
        else:
            seen[r.seq] = i
    for line in time_errors(batch, now):
        where, _, message = line.partition(": ")
        errors.append({"field": where, "message": message})
    if errors:
        raise _unprocessable(errors)


def _implausible(i: int, r: ResultRecord, kind: CheckType) -> list[dict[str, str]]:
    # A metric the type does not declare (yet: the agent may be newer) is stored as it is.
    out = []
    for name, value in r.metrics.items():
        declared = kind.metric(name)
        if declared is not None and not declared.admits(value):
            span = f"{declared.low:g}..{declared.high:g}"
            out.append(
                {
                    "field": f"results.{i}.metrics.{name}",
                    "message": f"{value!r} is outside {span} declared for {r.check}",
                }
            )
    return out


_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False).encode
# The same few label sets arrive over and over (one per series); bounded, then started over.
_labels_json: dict[tuple[tuple[str, str], ...], str] = {}
MAX_CACHED_LABELS = 50_000


def _dumps(mapping: dict[str, str] | dict[str, float]) -> str:
    return _encode(mapping) if mapping else "{}"


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return "{}"
    key = tuple(labels.items())
    text = _labels_json.get(key)
    if text is None:
        if len(_labels_json) >= MAX_CACHED_LABELS:
            _labels_json.clear()
        text = _labels_json[key] = _encode(labels)
    return text


# The results columns store() writes, in the order it builds each row.
_COLUMNS = (
    "ward_id",
    "agent",
    "stream",
    "seq",
    "check",
    "name",
    "target",
    "address",
    "labels",
    "interval_seconds",
    "started",
    "duration_seconds",
    "success",
    "reason",
    "metrics",
    "info",
    "received_at",
)


@dataclass(frozen=True)
class _Compiled:
    """A Core statement compiled once for one dialect, run through the driver directly.

    SQLAlchemy builds, caches and processes every statement and every parameter of every row
    in Python; on the ingest path of hundreds of small batches a second that cost more than
    the database's own work. The values passed are plain strings, numbers and bools, which
    both drivers take as they are.
    """

    sql: str
    # The parameter names, in the order callers give each row's values.
    keys: tuple[str, ...]
    # Where each of the statement's positional parameters is in a row; None when the driver
    # takes named parameters (psycopg).
    order: tuple[int, ...] | None

    def params(self, row: tuple[Any, ...]) -> tuple[Any, ...] | dict[str, Any]:
        order = self.order
        if order is None:
            return dict(zip(self.keys, row, strict=True))
        if order == tuple(range(len(self.keys))):
            return row
        return tuple([row[i] for i in order])

    def run(self, conn: sa.Connection, rows: list[tuple[Any, ...]]) -> None:
        """Execute once per row (the driver's executemany)."""
        order = self.order
        if order is not None and order == tuple(range(len(self.keys))):
            conn.exec_driver_sql(self.sql, rows)
        else:
            conn.exec_driver_sql(self.sql, [self.params(row) for row in rows])

    def query(self, conn: sa.Connection, row: tuple[Any, ...]) -> sa.CursorResult[Any]:
        return conn.exec_driver_sql(self.sql, self.params(row))


def _compile(dialect: sa.Dialect, stmt: Any, keys: tuple[str, ...], many: bool) -> _Compiled:
    if many:
        compiled = stmt.compile(dialect=dialect, column_keys=list(keys), for_executemany=True)
    else:
        compiled = stmt.compile(dialect=dialect)
    order = None
    if compiled.positional:
        index = {name: i for i, name in enumerate(keys)}
        order = tuple(index[name] for name in compiled.positiontup or ())
    elif set(compiled.binds) != set(keys) or compiled.escaped_bind_names:
        raise RuntimeError(f"{stmt.table if many else 'query'}: unexpected parameters for "
                           f"{dialect.name}")  # fmt: skip
    return _Compiled(compiled.string, keys, order)


_AGENT_COLUMNS = (
    "ward_id",
    "agent",
    "first_seen",
    "last_seen",
    "version",
    "stream",
    "last_seq",
    "spool_depth",
    "spool_dropped_total",
    "resident_memory_bytes",
    "clock_offset_seconds",
)
_HELD_KEYS = ("ward", "agent", "stream", "low", "high")


@dataclass(frozen=True)
class _Statements:
    insert: _Compiled
    held: _Compiled
    agent: _Compiled


_statements: dict[tuple[str, str], _Statements] = {}


def _statements_for(conn: sa.Connection) -> _Statements:
    dialect = conn.dialect
    key = (dialect.name, dialect.paramstyle)
    found = _statements.get(key)
    if found is None:
        t, a = db.results, db.agents
        insert = db.insert_for(conn, t).on_conflict_do_nothing(
            index_elements=[t.c.ward_id, t.c.agent, t.c.stream, t.c.seq]
        )
        held = sa.select(t.c.seq).where(
            t.c.ward_id == sa.bindparam("ward"),
            t.c.agent == sa.bindparam("agent"),
            t.c.stream == sa.bindparam("stream"),
            t.c.seq.between(sa.bindparam("low"), sa.bindparam("high")),
        )
        ex = db.insert_for(conn, a).excluded
        # The last seq the agent's current stream reached: a new stream starts over, and a
        # replay of older results never moves it back. Old values on the right of SET are
        # the row before the update, on SQLite and PostgreSQL alike.
        last_seq = sa.case(
            (a.c.stream != ex.stream, ex.last_seq),
            (ex.last_seq.is_(None), a.c.last_seq),
            (a.c.last_seq.is_(None), ex.last_seq),
            (a.c.last_seq > ex.last_seq, a.c.last_seq),
            else_=ex.last_seq,
        )
        updated = {c: ex[c] for c in _AGENT_COLUMNS if c not in ("ward_id", "agent", "first_seen")}
        upsert = db.insert_for(conn, a).on_conflict_do_update(
            index_elements=[a.c.ward_id, a.c.agent], set_={**updated, "last_seq": last_seq}
        )
        found = _statements[key] = _Statements(
            _compile(dialect, insert, _COLUMNS, many=True),
            _compile(dialect, held, _HELD_KEYS, many=False),
            _compile(dialect, upsert, _AGENT_COLUMNS, many=True),
        )
    return found


def _insert(conn: sa.Connection) -> _Compiled:
    return _statements_for(conn).insert


def _held(conn: sa.Connection, statements: _Statements, batch: Batch) -> set[int]:
    seqs = [r.seq for r in batch.results]
    found = statements.held.query(
        conn, (batch.ward, batch.agent, batch.stream, min(seqs), max(seqs))
    )
    return {row[0] for row in found}


def _rows(batch: Batch, inserted: list[ResultRecord], now: float) -> list[tuple[Any, ...]]:
    ward, agent, stream = batch.ward, batch.agent, batch.stream
    labels, dumps = _labels, _dumps
    return [
        (
            ward,
            agent,
            stream,
            r.seq,
            r.check,
            r.name,
            r.target,
            r.address,
            labels(r.labels),
            r.interval_seconds,
            r.started,
            r.duration_seconds,
            r.success,
            r.reason,
            dumps(r.metrics),
            dumps(r.info),
            now,
        )
        for r in inserted
    ]


def store(conn: sa.Connection, batch: Batch, now: float) -> Stored:
    """Insert the batch's results and update its agent row, in the caller's transaction."""
    return store_many(conn, [(batch, now)])[0]


def store_many(conn: sa.Connection, batches: list[tuple[Batch, float]]) -> list[Stored]:
    """Store several batches (each with its arrival time) in the caller's transaction.

    The caller serialises writes and gives at most one batch per agent: what was not held
    before this insert is then what it adds; the conflict clause still keeps a concurrent
    writer (another collector process) from storing a result twice.
    """
    statements = _statements_for(conn)
    rows: list[tuple[Any, ...]] = []
    agents: list[tuple[Any, ...]] = []
    out = []
    for batch, now in batches:
        inserted: list[ResultRecord] = []
        if batch.results:
            held = _held(conn, statements, batch)
            inserted = [r for r in batch.results if r.seq not in held] if held else batch.results
            rows.extend(_rows(batch, inserted, now))
        last = max((r.seq for r in batch.results), default=None)
        status = batch.status
        agents.append(
            (
                batch.ward,
                batch.agent,
                now,
                now,
                status.version,
                batch.stream,
                last,
                status.spool_depth,
                status.spool_dropped_total,
                status.resident_memory_bytes,
                status.clock_offset_seconds,
            )
        )
        out.append(Stored(inserted, len(batch.results) - len(inserted), last))
    if rows:
        statements.insert.run(conn, rows)
    statements.agent.run(conn, agents)
    return out
