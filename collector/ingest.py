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
class _Insert:
    """The results insert compiled for one dialect, run through the driver's executemany.

    SQLAlchemy's own executemany processes every parameter of every row in Python, which
    cost more than the database's work for a batch of hundreds of results. The columns
    written are plain strings, numbers and a bool, which both drivers take as they are.
    """

    sql: str
    # Where each of the statement's positional parameters is in a row built in _COLUMNS
    # order; None when the driver takes named parameters (psycopg).
    order: tuple[int, ...] | None

    def run(self, conn: sa.Connection, rows: list[tuple[Any, ...]]) -> None:
        order = self.order
        params: list[tuple[Any, ...]] | list[dict[str, Any]]
        if order is None:
            params = [dict(zip(_COLUMNS, row, strict=True)) for row in rows]
        elif order == tuple(range(len(_COLUMNS))):
            params = rows
        else:
            params = [tuple([row[i] for i in order]) for row in rows]
        conn.exec_driver_sql(self.sql, params)


_inserts: dict[tuple[str, str], _Insert] = {}


def _insert(conn: sa.Connection) -> _Insert:
    dialect = conn.dialect
    key = (dialect.name, dialect.paramstyle)
    found = _inserts.get(key)
    if found is None:
        t = db.results
        # The same Core statement as ever (ON CONFLICT per dialect), compiled once.
        stmt = db.insert_for(conn, t).on_conflict_do_nothing(
            index_elements=[t.c.ward_id, t.c.agent, t.c.stream, t.c.seq]
        )
        compiled = stmt.compile(dialect=dialect, column_keys=list(_COLUMNS), for_executemany=True)
        order = None
        if compiled.positional:
            index = {name: i for i, name in enumerate(_COLUMNS)}
            order = tuple(index[name] for name in compiled.positiontup or ())
        elif set(compiled.binds) != set(_COLUMNS) or compiled.escaped_bind_names:
            raise RuntimeError(f"results insert: unexpected parameters for {dialect.name}")
        found = _inserts[key] = _Insert(compiled.string, order)
    return found


def store(conn: sa.Connection, batch: Batch, now: float) -> Stored:
    """Insert the batch's results and update its agent row, in the caller's transaction."""
    ward, agent, stream = batch.ward, batch.agent, batch.stream
    inserted: list[ResultRecord] = []
    if batch.results:
        t = db.results
        seqs = [r.seq for r in batch.results]
        held = set(
            conn.execute(
                sa.select(t.c.seq).where(
                    t.c.ward_id == ward,
                    t.c.agent == agent,
                    t.c.stream == stream,
                    t.c.seq.between(min(seqs), max(seqs)),
                )
            ).scalars()
        )
        # Callers serialise writes, so what was not held before this insert is what it adds;
        # the conflict clause still keeps a concurrent writer from storing a result twice.
        inserted = [r for r in batch.results if r.seq not in held] if held else batch.results
        if inserted:
            labels, dumps = _labels, _dumps
            rows = [
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
            _insert(conn).run(conn, rows)

    a = db.agents
    prev = conn.execute(
        sa.select(a.c.stream, a.c.last_seq).where(a.c.ward_id == ward, a.c.agent == agent)
    ).first()
    batch_last = max((r.seq for r in batch.results), default=None)
    stream_last = prev.last_seq if prev is not None and prev.stream == stream else None
    if batch_last is not None:
        stream_last = batch_last if stream_last is None else max(stream_last, batch_last)
    status = batch.status
    values = {
        "last_seen": now,
        "version": status.version,
        "stream": stream,
        "last_seq": stream_last,
        "spool_depth": status.spool_depth,
        "spool_dropped_total": status.spool_dropped_total,
        "resident_memory_bytes": status.resident_memory_bytes,
        "clock_offset_seconds": status.clock_offset_seconds,
    }
    upsert = db.insert_for(conn, a).values(ward_id=ward, agent=agent, first_seen=now, **values)
    conn.execute(upsert.on_conflict_do_update(index_elements=[a.c.ward_id, a.c.agent], set_=values))
    return Stored(inserted, len(batch.results) - len(inserted), batch_last)
