"""The outbox: every result waits in SQLite until the collector acknowledges it.

``seq`` is an AUTOINCREMENT key, so SQLite never hands out a number twice in one file, even
after rows are acknowledged and deleted, or the agent restarts. The ``stream`` id is made once
per file: (stream, seq) names a result for the collector's de-duplication, and a new file
starts a new stream rather than reusing old numbers.

The spool is bounded. Past ``max_results`` the oldest rows go, counted in ``dropped_total``
(kept in the file) and logged: losing old results while the collector is unreachable for days
beats filling the ward PC's disk.

Losses are counted by reason: ``spool_full`` (the bound above), ``unreadable`` (a row no
collector would take), ``disk_full`` (the file system refused the write: the result is lost,
the file stays consistent, and appends resume by themselves when space returns). Results the
collector refused for good are not lost but set aside in ``rejected`` (the newest
``MAX_REJECTED`` kept for a look), counted by reason, so they never block the rest.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from checks.core import Result
from shared.wire import MAX_INFO, MAX_METRICS, ResultRecord

log = logging.getLogger(__name__)

DROP_LOG_EVERY_SECONDS = 60.0
MAX_REJECTED = 1000
SPOOL_FULL = "spool_full"
UNREADABLE = "unreadable"
DISK_FULL = "disk_full"
DROP_REASONS = (SPOOL_FULL, UNREADABLE, DISK_FULL)
_WORD_MAX = 64
_INFO_VALUE_MAX = 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rejected (
    seq INTEGER PRIMARY KEY,
    record TEXT NOT NULL,
    reason TEXT NOT NULL,
    message TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counts (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


def _is_disk_full(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    # SQLITE_FULL, or the I/O error a WAL append gets from a full file system.
    return code == sqlite3.SQLITE_FULL or (code is not None and code & 0xFF == sqlite3.SQLITE_IOERR)


def _is_word(key: str) -> bool:
    return (
        0 < len(key) <= _WORD_MAX
        and key[0].isascii()
        and key[0].islower()
        and all(c.isascii() and (c.islower() or c.isdigit() or c == "_") for c in key)
    )


def record_fields(result: Result, interval: float) -> dict[str, Any]:
    """A Result as ResultRecord fields (no seq), trimmed to what the wire accepts.

    A check that reports a malformed metric must not make the whole batch unshippable: the
    collector would refuse it forever. So bad metrics and info are dropped here, and said so.
    """
    metrics = {
        k: float(v)
        for k, v in result.metrics.items()
        if _is_word(k) and isinstance(v, int | float) and math.isfinite(v)
    }
    info = {k: str(v)[:_INFO_VALUE_MAX] for k, v in result.info.items() if _is_word(k)}
    dropped = sorted(set(result.metrics) - set(metrics))
    if len(metrics) > MAX_METRICS:
        dropped += sorted(metrics)[MAX_METRICS:]
        metrics = {k: metrics[k] for k in sorted(metrics)[:MAX_METRICS]}
    if dropped:
        log.warning("check %s: dropped malformed metrics %s", result.name, ", ".join(dropped))
        info["dropped_metrics"] = ", ".join(dropped)[:_INFO_VALUE_MAX]
    if len(info) > MAX_INFO:
        info = {k: info[k] for k in sorted(info)[:MAX_INFO]}
    return {
        "check": result.check,
        "name": result.name,
        "target": result.target.name,
        "address": result.target.address,
        "labels": dict(result.target.labels),
        "interval_seconds": interval,
        "started": result.started,
        "duration_seconds": min(max(result.duration_seconds, 0.0), 3600.0),
        "success": result.success,
        "reason": result.reason,
        "metrics": metrics,
        "info": info,
    }


class Spool:
    """A SQLite outbox shared by the scheduler's workers (append) and the shipper (peek, ack)."""

    def __init__(self, path: str | Path, max_results: int = 100_000) -> None:
        if max_results < 1:
            raise ValueError("max_results must be at least 1")
        self.path = Path(path)
        self.max_results = max_results
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._pending: list[tuple[str, int]] = []
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: ward PCs lose power; a result acknowledged to the scheduler should survive it.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        with self._lock:
            with self._transaction():
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('stream', ?)",
                    (uuid.uuid4().hex,),
                )
                self._db.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('dropped_total', '0')"
                )
            self.stream: str = self._meta("stream")
            self._dropped_total = int(self._meta("dropped_total"))
            self._depth = int(self._db.execute("SELECT count(*) FROM results").fetchone()[0])
            self._counts: dict[str, int] = dict(
                self._db.execute("SELECT key, value FROM counts").fetchall()
            )
        # Drops the disk could not record; written into `counts` once it takes writes again.
        self._unsaved: dict[str, int] = {}
        self._unlogged_drops = 0
        self._last_drop_log = -math.inf
        self._last_disk_log = -math.inf

    def _meta(self, key: str) -> str:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0])

    def append(self, result: Result, interval: float) -> int | None:
        """Store one result; return its sequence number, or None when the disk is full."""
        fields = record_fields(result, interval)
        ResultRecord.model_validate({**fields, "seq": 1})  # refuse here, not at the collector
        body = json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            try:
                with self._transaction():
                    self._save_unsaved()
                    cur = self._db.execute("INSERT INTO results (record) VALUES (?)", (body,))
                    seq = cur.lastrowid
                    excess = self._depth + 1 - self.max_results
                    dropped = self._drop_oldest(excess) if excess > 0 else 0
            except sqlite3.OperationalError as exc:
                if not _is_disk_full(exc):
                    raise
                self._lost_to_full_disk(exc)
                return None
            self._unsaved.clear()
            self._depth += 1 - dropped
            self._dropped_total += dropped
            if dropped:
                self._log_drops(dropped)
        assert seq is not None
        return seq

    def _lost_to_full_disk(self, exc: sqlite3.Error) -> None:
        # The transaction rolled back: the file is as before, only this result is gone.
        self._unsaved[DISK_FULL] = self._unsaved.get(DISK_FULL, 0) + 1
        self._dropped_total += 1
        key = f"dropped:{DISK_FULL}"
        self._counts[key] = self._counts.get(key, 0) + 1
        now = time.monotonic()
        if now - self._last_disk_log >= DROP_LOG_EVERY_SECONDS:
            log.error(
                "spool %s: the disk is full (%s); results are lost until space returns, %d so far",
                self.path,
                exc,
                self._counts[key],
            )
            self._last_disk_log = now

    def _save_unsaved(self) -> None:
        for reason, n in self._unsaved.items():
            # Already counted in memory when lost: write to the file only.
            self._db.execute(
                "INSERT INTO counts (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
                (f"dropped:{reason}", n),
            )
            self._db.execute(
                "UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key = 'dropped_total'",
                (n,),
            )

    def _drop_oldest(self, n: int) -> int:
        cur = self._db.execute(
            "DELETE FROM results WHERE seq IN (SELECT seq FROM results ORDER BY seq LIMIT ?)",
            (n,),
        )
        self._count_dropped(cur.rowcount, SPOOL_FULL)
        return cur.rowcount

    def _count_dropped(self, n: int, reason: str) -> None:
        self._db.execute(
            "UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key = 'dropped_total'",
            (n,),
        )
        self._count(f"dropped:{reason}", n)

    def _count(self, key: str, n: int) -> None:
        # Inside a transaction: memory follows in _transaction, once the commit went through.
        self._db.execute(
            "INSERT INTO counts (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
            (key, n),
        )
        self._pending.append((key, n))

    def _log_drops(self, dropped: int) -> None:
        # Once full, every append drops one: log the first, then a summary at most every minute.
        self._unlogged_drops += dropped
        now = time.monotonic()
        if now - self._last_drop_log >= DROP_LOG_EVERY_SECONDS:
            log.warning(
                "spool full (%d results): dropped %d oldest result(s), %d dropped in total",
                self.max_results,
                self._unlogged_drops,
                self._dropped_total,
            )
            self._unlogged_drops = 0
            self._last_drop_log = now

    def peek(self, limit: int) -> list[ResultRecord]:
        """The oldest ``limit`` results, in seq order, without removing them."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, record FROM results ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        records = []
        for seq, body in rows:
            try:
                records.append(ResultRecord.model_validate({**json.loads(body), "seq": seq}))
            except (ValueError, ValidationError) as exc:
                # A row no collector would take (written by a different version, or damaged)
                # would block the queue forever: drop it, counted.
                log.error("spool row %d unreadable, dropped: %s", seq, str(exc).splitlines()[0])
                self._discard(seq)
        return records

    def _discard(self, seq: int) -> None:
        with self._lock:
            with self._transaction():
                n = self._db.execute("DELETE FROM results WHERE seq = ?", (seq,)).rowcount
                self._count_dropped(n, UNREADABLE)
            self._depth -= n
            self._dropped_total += n

    def ack(self, up_to_seq: int) -> int:
        """Delete every result with seq <= ``up_to_seq``; return how many went.

        On a full disk nothing is deleted (0): they go again with the next push, and the
        collector counts them as duplicates.
        """
        with self._lock:
            try:
                n = self._db.execute("DELETE FROM results WHERE seq <= ?", (up_to_seq,)).rowcount
            except sqlite3.OperationalError as exc:
                if not _is_disk_full(exc):
                    raise
                return 0
            self._depth -= n
        return n

    def set_aside(self, records: list[ResultRecord], reason: str, message: str) -> int:
        """Move results the collector refused for good out of the queue, counted by reason."""
        if not records:
            return 0
        now = time.time()
        with self._lock:
            with self._transaction():
                moved = 0
                for r in records:
                    body = r.model_dump_json(exclude={"seq"})
                    moved += self._db.execute(
                        "DELETE FROM results WHERE seq = ?", (r.seq,)
                    ).rowcount
                    self._db.execute(
                        "INSERT OR REPLACE INTO rejected (seq, record, reason, message, at) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (r.seq, body, reason, message[:1000], now),
                    )
                self._db.execute(
                    "DELETE FROM rejected WHERE seq NOT IN "
                    "(SELECT seq FROM rejected ORDER BY seq DESC LIMIT ?)",
                    (MAX_REJECTED,),
                )
                self._count(f"rejected:{reason}", moved)
            self._depth -= moved
        return moved

    def rejected(self, limit: int = 20) -> list[tuple[int, str, str]]:
        """The newest set-aside results as (seq, reason, message)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, reason, message FROM rejected ORDER BY seq DESC LIMIT ?", (limit,)
            ).fetchall()
        return [(int(a), str(b), str(c)) for a, b, c in rows]

    def counts(self, kind: str) -> dict[str, int]:
        """Results ``dropped`` or ``rejected`` since the file was made, by reason."""
        prefix = f"{kind}:"
        return {k[len(prefix) :]: v for k, v in self._counts.items() if k.startswith(prefix)}

    def depth(self) -> int:
        return self._depth

    @property
    def dropped_total(self) -> int:
        return self._dropped_total

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        # Callers hold self._lock: one connection, one transaction at a time.
        self._pending.clear()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self._pending.clear()
            raise
        for key, n in self._pending:
            self._counts[key] = self._counts.get(key, 0) + n
        self._pending.clear()
