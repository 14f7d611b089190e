"""The ward list: import from CSV (all or nothing), read back from the database.

The CSV has the header ``id,name,kind,former_district,working_group`` and is UTF-8, with or
without a byte-order mark (spreadsheet programs add one). Names are stored NFC-normalized so
that a name typed with combining accents and one typed precomposed compare, sort and align
the same.
"""

from __future__ import annotations

import csv
import io
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.engine import Engine

from collector import db
from shared.wire import Ident

COLUMNS = ("id", "name", "kind", "former_district", "working_group")
REQUIRED = ("id", "name", "working_group")
MAX_NAME = 200
MAX_SHORT = 64
# Enough to fix a file in one pass without flooding the terminal.
MAX_REPORTED = 50

_ident = TypeAdapter(Ident)


@dataclass(frozen=True)
class Ward:
    id: str
    name: str
    kind: str
    former_district: str
    working_group: str


class WardImportError(Exception):
    def __init__(self, messages: list[str]) -> None:
        super().__init__("\n".join(messages))
        self.messages = messages


def is_ward_id(value: str) -> bool:
    try:
        _ident.validate_python(value)
    except ValidationError:
        return False
    return True


def _text(raw: str) -> str:
    return unicodedata.normalize("NFC", raw.strip())


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        bad = data[exc.start]
        raise WardImportError(
            [f"{path}:{line}: not UTF-8 text (byte 0x{bad:02x}); save the file as UTF-8"]
        ) from None


def _check_row(where: str, row: dict[str, str]) -> tuple[Ward | None, list[str]]:
    problems = []
    ward_id = row["id"].strip()
    if not is_ward_id(ward_id):
        problems.append(
            f"{where}: id: {ward_id!r} is not a valid ward id "
            "(lower-case letters, digits, '.', '_' or '-', at most 64 characters)"
        )
    fields = {c: _text(row.get(c) or "") for c in COLUMNS if c != "id"}
    for column in REQUIRED[1:]:
        if not fields[column]:
            problems.append(f"{where}: {column}: must not be empty")
    limits = {
        "name": MAX_NAME,
        "former_district": MAX_NAME,
        "kind": MAX_SHORT,
        "working_group": MAX_SHORT,
    }
    for column, limit in limits.items():
        if len(fields[column]) > limit:
            problems.append(f"{where}: {column}: longer than {limit} characters")
    if problems:
        return None, problems
    return Ward(id=ward_id, **fields), []


def read_csv(path: str | Path) -> list[Ward]:
    """Every ward in the file, or WardImportError listing each bad line and field."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WardImportError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    reader = csv.DictReader(io.StringIO(_decode(path, data), newline=""), strict=True)
    try:
        header = reader.fieldnames or []
    except csv.Error as exc:
        raise WardImportError([f"{path}:1: {exc}"]) from None
    missing = [c for c in COLUMNS if c not in header]
    unknown = [c for c in header if c not in COLUMNS]
    if missing or unknown:
        parts = []
        if missing:
            parts.append("missing column(s) " + ", ".join(missing))
        if unknown:
            parts.append("unknown column(s) " + ", ".join(repr(c) for c in unknown))
        raise WardImportError(
            [f"{path}:1: header: {'; '.join(parts)} (expected {','.join(COLUMNS)})"]
        )

    found: list[Ward] = []
    problems: list[str] = []
    first_line: dict[str, int] = {}
    try:
        for row in reader:
            line = reader.line_num
            where = f"{path}:{line}"
            if None in row:
                problems.append(f"{where}: more fields than the header's {len(COLUMNS)}")
                continue
            if any(v is None for v in row.values()):
                problems.append(f"{where}: fewer fields than the header's {len(COLUMNS)}")
                continue
            ward, errors = _check_row(where, row)
            problems.extend(errors)
            if ward is None:
                continue
            if ward.id in first_line:
                problems.append(
                    f"{where}: id: {ward.id!r} already appears on line {first_line[ward.id]}"
                )
                continue
            first_line[ward.id] = line
            found.append(ward)
    except csv.Error as exc:
        problems.append(f"{path}:{reader.line_num}: {exc}")
    if not found and not problems:
        problems.append(f"{path}: no wards in the file")
    if problems:
        if len(problems) > MAX_REPORTED:
            extra = len(problems) - MAX_REPORTED
            problems = [*problems[:MAX_REPORTED], f"{path}: ... and {extra} more problems"]
        raise WardImportError(problems)
    return found


def upsert(engine: Engine, found: Iterable[Ward]) -> tuple[int, int]:
    """Insert new wards and update known ones in one transaction: (added, updated)."""
    rows = [
        {
            "id": w.id,
            "name": w.name,
            "kind": w.kind,
            "former_district": w.former_district,
            "working_group": w.working_group,
        }
        for w in found
    ]
    if not rows:
        return 0, 0
    with db.writer(engine).begin() as conn:
        known = set(conn.execute(sa.select(db.wards.c.id)).scalars())
        stmt = db.insert_for(conn, db.wards)
        stmt = stmt.on_conflict_do_update(
            index_elements=[db.wards.c.id],
            set_={c: stmt.excluded[c] for c in COLUMNS if c != "id"},
        )
        conn.execute(stmt, rows)
    added = sum(1 for r in rows if r["id"] not in known)
    return added, len(rows) - added


def import_csv(engine: Engine, path: str | Path) -> tuple[int, int]:
    """Validate the whole file first, then upsert: a file with any error imports nothing."""
    return upsert(engine, read_csv(path))


def load(engine: Engine) -> dict[str, Ward]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(db.wards).order_by(db.wards.c.id)).all()
    return {r.id: Ward(r.id, r.name, r.kind, r.former_district, r.working_group) for r in rows}
