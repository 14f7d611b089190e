"""Audits: every ward judged over a past window, stored once, with a SHA-256 that proves it
has not changed since.

An auditor asks "was ward X ready during the trial run of 12 June, 08:00-10:00, and if not,
why". :func:`take` answers for every ward: each is replayed from the stored results with the
profile in force (:mod:`collector.audit_replay`), judged every ``step`` seconds, and the audit
keeps, per ward, how long it was ready, not ready and unknown, when it first became ready,
every criterion that was not met at some point with its evidence and the periods it failed,
the changes of verdict, and how many results it was judged from. The profile's hash, its
criteria and the ward list go in too, so the audit reads the same after either changes.

The content is canonical JSON (sorted keys, no insignificant spaces, UTF-8, NFC text) with no
floating-point numbers in it: times are ISO 8601 strings in the window's own UTC offset,
durations whole seconds, measured values decimal strings. Any program can then recompute the
SHA-256 byte for byte. An audit is written once and never updated (a trigger makes the
database refuse, see migration 0005); :func:`verify` recomputes
the hash, checks the content is still canonical and that the listed columns agree with it.
The hash alone cannot stop someone who rewrites both content and hash: the exports print it,
so the copy that was signed pins the content (``audit verify ID --expect HASH``).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from importlib import metadata as pkg_metadata
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from collector import auditlog, db
from collector import wards as wardlist
from collector.audit_tally import iso, judge_ward, num
from collector.profile import Profile

FORMAT = "wardready-audit/1"
DEFAULT_STEP_SECONDS = 10
# A window is judged every step for every ward: bound the work one command can ask for.
MAX_STEPS = 100_000
MAX_WINDOW_SECONDS = 31 * 86400
MAX_TEXT = 200


class AuditError(Exception):
    """Bad input for an audit; the message names the field."""


class AuditNotFound(AuditError):
    pass


# ---- canonical content ----------------------------------------------------------------------


def _check(value: Any, where: str) -> Any:
    if isinstance(value, float):
        raise TypeError(f"{where}: floats are not canonical; store a string or an integer")
    if isinstance(value, str):
        return unicodedata.normalize("NFC", value)
    if isinstance(value, dict):
        return {_check(k, where): _check(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_check(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, bool | int):
        return value
    raise TypeError(f"{where}: {type(value).__name__} is not JSON")


def canonical(doc: dict[str, Any]) -> str:
    """The one text of ``doc`` whose SHA-256 is taken: sorted keys, no spaces, NFC."""
    return json.dumps(
        _check(doc, "audit"), ensure_ascii=False, sort_keys=True, separators=(",", ":")
    )


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def profile_sha256(profile: Profile) -> str:
    """Of the profile as loaded (comments and layout of the file do not count)."""
    return sha256(json.dumps(profile.model_dump(mode="json"), sort_keys=True, ensure_ascii=False))


# ---- times ----------------------------------------------------------------------------------


def parse_time(text: str, name: str) -> datetime:
    """'2026-06-12T08:00+07:00' -> an aware datetime; a time without a zone is refused, since
    the collector's clock and the auditor's may be in different zones."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise AuditError(
            f"{name}: {text!r} is not an ISO 8601 time (e.g. 2026-06-12T08:00+07:00)"
        ) from None
    if when.tzinfo is None or when.utcoffset() is None:
        raise AuditError(f"{name}: {text!r} has no time zone; add one, e.g. {text}+07:00")
    return when.replace(microsecond=0)


def offset_of(when: datetime) -> timezone:
    delta = when.utcoffset() or timedelta(0)
    return timezone(delta)


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


# ---- taking, reading, verifying -------------------------------------------------------------


@dataclass(frozen=True)
class Audit:
    id: int
    sha256: str
    text: str
    content: dict[str, Any]

    @property
    def tz(self) -> timezone:
        return offset_of(datetime.fromisoformat(self.content["window"]["from"]))


def _text_field(value: str, name: str) -> str:
    value = unicodedata.normalize("NFC", " ".join(value.split()))
    if not value:
        raise AuditError(f"{name}: must not be empty")
    if len(value) > MAX_TEXT:
        raise AuditError(f"{name}: longer than {MAX_TEXT} characters")
    return value


def _version() -> str:
    try:
        return pkg_metadata.version("wardready")
    except pkg_metadata.PackageNotFoundError:
        return "unknown"


def _criteria(profile: Profile) -> list[dict[str, Any]]:
    out = []
    for c in profile.criteria:
        cond = c.condition
        entry = {
            "id": c.id,
            "title": c.title,
            "severity": c.severity,
            "require": c.require,
            "metric": cond.metric,
            "agg": cond.agg,
            "op": cond.op,
            "threshold": num(cond.threshold),
            "span": cond.span,
            "min_samples": cond.min_samples,
        }
        # A profile may carry a Vietnamese title beside the English one (issue 10, item 5).
        title_vi = getattr(c, "title_vi", None)
        if isinstance(title_vi, str) and title_vi:
            entry["title_vi"] = title_vi
        out.append(entry)
    return out


def take(
    engine: Engine,
    profile: Profile,
    *,
    start: datetime,
    end: datetime,
    title: str,
    signed_off_by: str,
    created_by: str = "",
    step: int = DEFAULT_STEP_SECONDS,
    ward_ids: Sequence[str] | None = None,
    now: float | None = None,
) -> Audit:
    """Judge every ward (or those of ``ward_ids``) over [start, end) and store the audit."""
    now = float(int(time.time() if now is None else now))
    title = _text_field(title, "title")
    signed_off_by = _text_field(signed_off_by, "signed_off_by")
    t1, t2 = int(start.timestamp()), int(end.timestamp())
    if t2 <= t1:
        raise AuditError("to: must be later than from")
    if t2 > now:
        raise AuditError("to: is in the future; an audit judges a window that has ended")
    if t2 - t1 > MAX_WINDOW_SECONDS:
        raise AuditError(f"window: longer than {MAX_WINDOW_SECONDS // 86400} days")
    if step < 1:
        raise AuditError("step: must be at least 1 second")
    if math.ceil((t2 - t1) / step) > MAX_STEPS:
        raise AuditError(
            f"step: {step} s gives more than {MAX_STEPS} steps over this window; take a longer step"
        )
    tz = offset_of(start)
    known = wardlist.load(engine)
    if ward_ids is not None:
        missing = [w for w in ward_ids if w not in known]
        if missing:
            raise AuditError(f"ward: {', '.join(missing)} not in the ward list")
        known = {w: known[w] for w in ward_ids}
    if not known:
        raise AuditError("wards: the ward list is empty (import it first)")
    with engine.connect() as conn:
        tallies = [judge_ward(conn, profile, w, t1, t2, step, tz) for w in known.values()]
    ward_rows = [[w.id, w.name, w.kind, w.former_district, w.working_group] for w in known.values()]
    doc: dict[str, Any] = {
        "format": FORMAT,
        "title": title,
        "window": {
            "from": iso(t1, tz),
            "to": iso(t2, tz),
            "seconds": t2 - t1,
            "step_seconds": step,
        },
        "created_at": iso(now, tz),
        "created_by": created_by,
        "signed_off_by": signed_off_by,
        "software": {"wardready": _version()},
        "profile": {
            "sha256": profile_sha256(profile),
            "silence_seconds": num(profile.silence_seconds),
            "criteria": _criteria(profile),
        },
        "ward_list": {"sha256": sha256(canonical({"wards": ward_rows})), "count": len(ward_rows)},
        "wards": [t.content(tz) for t in tallies],
    }
    a = db.audits
    with db.writer(engine).begin() as conn:
        # The id belongs to the content, so it is taken first and the row completed in the
        # same transaction: nothing else ever sees it half written.
        inserted = conn.execute(
            sa.insert(a).values(
                title=title,
                window_from=float(t1),
                window_to=float(t2),
                created_at=now,
                signed_off_by=signed_off_by,
                content="",
                sha256="",
            )
        ).inserted_primary_key
        assert inserted is not None
        audit_id = int(inserted[0])
        doc["id"] = audit_id
        text = canonical(doc)
        digest = sha256(text)
        conn.execute(sa.update(a).where(a.c.id == audit_id).values(content=text, sha256=digest))
        auditlog.record(
            conn, created_by or "unknown", "audit.create", f"audit {audit_id}: {title}", now
        )
    return Audit(audit_id, digest, text, json.loads(text))


@dataclass(frozen=True)
class Listed:
    id: int
    title: str
    window_from: float
    window_to: float
    created_at: float
    signed_off_by: str
    sha256: str


def list_all(engine: Engine) -> list[Listed]:
    a = db.audits
    cols = (a.c.id, a.c.title, a.c.window_from, a.c.window_to, a.c.created_at,
            a.c.signed_off_by, a.c.sha256)  # fmt: skip
    with engine.connect() as conn:
        rows = conn.execute(sa.select(*cols).order_by(a.c.id)).all()
    return [Listed(*row) for row in rows]


def _row(engine: Engine, audit_id: int) -> sa.Row[Any]:
    a = db.audits
    with engine.connect() as conn:
        row = conn.execute(sa.select(a).where(a.c.id == audit_id)).first()
    if row is None:
        raise AuditNotFound(f"audit {audit_id}: no such audit")
    return row


def load(engine: Engine, audit_id: int) -> Audit:
    """The stored audit; its integrity is :func:`verify`'s business, not this one's."""
    row = _row(engine, audit_id)
    try:
        content = json.loads(row.content)
    except ValueError:
        raise AuditError(f"audit {audit_id}: content is not JSON (run audit verify)") from None
    return Audit(row.id, row.sha256, row.content, content)


def verify(engine: Engine, audit_id: int, expect: str | None = None) -> list[str]:
    """Every way the stored audit differs from what was written; empty when intact."""
    row = _row(engine, audit_id)
    problems = []
    computed = sha256(row.content)
    if computed != row.sha256:
        problems.append(
            f"content does not match its SHA-256: stored {row.sha256}, computed {computed}"
        )
    if expect is not None and expect.strip().lower() != row.sha256:
        problems.append(f"stored SHA-256 {row.sha256} is not the expected {expect.strip()}")
    try:
        content = json.loads(row.content)
    except ValueError as exc:
        problems.append(f"content is not JSON: {exc}")
        return problems
    if not isinstance(content, dict):
        problems.append("content is not a JSON object")
        return problems
    try:
        if canonical(content) != row.content:
            problems.append("content is not in canonical form (rewritten after it was taken)")
    except TypeError as exc:
        problems.append(f"content is not canonical: {exc}")
    window = content.get("window") or {}
    try:
        columns = {
            "id": (row.id, content.get("id")),
            "title": (row.title, content.get("title")),
            "signed_off_by": (row.signed_off_by, content.get("signed_off_by")),
            "window_from": (row.window_from, epoch(window["from"])),
            "window_to": (row.window_to, epoch(window["to"])),
            "created_at": (row.created_at, epoch(content["created_at"])),
        }
    except (KeyError, TypeError, ValueError) as exc:
        problems.append(f"content lacks a field the audit must have: {exc}")
        return problems
    for name, (stored, written) in columns.items():
        if stored != written:
            problems.append(f"column {name} ({stored!r}) differs from the content ({written!r})")
    return problems
