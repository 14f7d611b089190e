"""An audit is canonical JSON with its SHA-256; verify fails after any byte of it changes."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
import sqlalchemy as sa

from collector import audits, db
from collector.service import Service

from .conftest import JUNE_12, Fed, tamper
from .conftest import take as take_audit


def take(service: Service, fed: Fed) -> audits.Audit:
    return take_audit(service, created_by="cli:tester")


def test_content_is_canonical_and_hashed(service: Service, fed: Fed) -> None:
    taken = take(service, fed)
    assert audits.verify(service.engine, taken.id) == []
    row = service.engine.connect().execute(sa.select(db.audits)).one()
    assert row.sha256 == taken.sha256 == audits.sha256(row.content)
    parsed = json.loads(row.content)
    assert (
        json.dumps(parsed, sort_keys=True, separators=(",", ":"), ensure_ascii=False) == row.content
    )
    assert "Nguyễn Văn An" in row.content  # UTF-8, not \\u escapes
    assert parsed["id"] == taken.id and parsed["signed_off_by"] == "Nguyễn Văn An"
    assert parsed["created_at"] == "2026-06-12T10:01:00+07:00"
    assert parsed["window"] == {"from": "2026-06-12T08:00:00+07:00",
                                "to": "2026-06-12T10:00:00+07:00",
                                "seconds": 7200, "step_seconds": 10}  # fmt: skip

    def no_floats(value: object) -> None:
        assert not isinstance(value, float)
        if isinstance(value, dict):
            for v in value.values():
                no_floats(v)
        elif isinstance(value, list):
            for v in value:
                no_floats(v)

    no_floats(parsed)
    # Taking the same window again gives the same judgement (only id and hash differ).
    again = take(service, fed)
    assert {**again.content, "id": 0} == {**taken.content, "id": 0}


def test_the_database_refuses_to_change_a_complete_audit(service: Service, fed: Fed) -> None:
    taken = take(service, fed)
    with (
        pytest.raises(sa.exc.DatabaseError, match="audits are written once"),
        service.engine.begin() as conn,
    ):
        conn.execute(sa.update(db.audits).values(title="Đã sửa"))
    assert audits.verify(service.engine, taken.id) == []
    assert audits.load(service.engine, taken.id).text == taken.text


def test_canonical_refuses_floats() -> None:
    with pytest.raises(TypeError, match=r"audit\.wards\[0\]\.share: floats are not canonical"):
        audits.canonical({"wards": [{"share": 0.5}]})


def _flip(text: str, i: int) -> str:
    c = text[i]
    return text[:i] + ("1" if c != "1" else "2") + text[i + 1 :]


@pytest.mark.parametrize("where", ["start", "ward name", "seconds", "end"])
def test_verify_fails_after_any_byte_of_the_content_changes(
    service: Service, fed: Fed, where: str
) -> None:
    taken = take(service, fed)
    text = taken.text
    i = {
        "start": 0,
        "ward name": text.index("Minh Phụng") + 5,
        "seconds": text.index('"ready":') + 8,
        "end": len(text) - 1,
    }[where]
    tamper(service.engine, content=_flip(text, i))
    problems = audits.verify(service.engine, taken.id)
    assert any("does not match its SHA-256" in p for p in problems), problems


def test_verify_fails_after_the_hash_or_a_column_changes(service: Service, fed: Fed) -> None:
    taken = take(service, fed)
    tamper(service.engine, sha256=_flip(taken.sha256, 10))
    assert "content does not match its SHA-256" in audits.verify(service.engine, taken.id)[0]
    tamper(service.engine, sha256=taken.sha256)
    assert audits.verify(service.engine, taken.id) == []

    tamper(service.engine, signed_off_by="Trần Thị Bình")
    assert audits.verify(service.engine, taken.id) == [
        "column signed_off_by ('Trần Thị Bình') differs from the content ('Nguyễn Văn An')"
    ]
    tamper(service.engine, signed_off_by="Nguyễn Văn An", window_to=0.0)
    assert "column window_to" in audits.verify(service.engine, taken.id)[0]


def test_a_rewritten_but_rehashed_content_is_caught_by_the_expected_hash(
    service: Service, fed: Fed
) -> None:
    taken = take(service, fed)
    doc = json.loads(taken.text)
    doc["wards"][0]["seconds"]["ready"] = 7200
    forged = audits.canonical(doc)
    tamper(service.engine, content=forged, sha256=audits.sha256(forged))
    assert audits.verify(service.engine, taken.id) == []  # the hash alone cannot tell
    problems = audits.verify(service.engine, taken.id, expect=taken.sha256)
    assert problems == [
        f"stored SHA-256 {audits.sha256(forged)} is not the expected {taken.sha256}"
    ]
    # Re-serialised with spaces: same data, different bytes, so no longer canonical.
    spaced = json.dumps(doc, ensure_ascii=False, sort_keys=True)
    tamper(service.engine, content=spaced, sha256=audits.sha256(spaced))
    assert audits.verify(service.engine, taken.id) == [
        "content is not in canonical form (rewritten after it was taken)"
    ]


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        (
            "2026-06-12T08:00",
            "2026-06-12T10:00+07:00",
            "--from: '2026-06-12T08:00' has no time zone",
        ),
        ("12/06/2026", "2026-06-12T10:00+07:00", "--from: '12/06/2026' is not an ISO 8601 time"),
        ("2026-06-12T10:00+07:00", "2026-06-12T08:00+07:00", "to: must be later than from"),
        ("2026-06-12T08:00+07:00", "2099-01-01T00:00+07:00", "to: is in the future"),
        ("2026-01-01T00:00+07:00", "2026-06-12T08:00+07:00", "window: longer than 31 days"),
    ],
)
def test_bad_windows_are_refused_naming_the_field(
    service: Service, fed: Fed, start: str, end: str, message: str
) -> None:
    with pytest.raises(audits.AuditError, match=message):
        audits.take(
            service.engine,
            service.profile,
            start=audits.parse_time(start, "--from"),
            end=audits.parse_time(end, "--to"),
            title="x",
            signed_off_by="y",
            now=fed.june_22.end + 60,
        )
    assert audits.list_all(service.engine) == []


def test_unknown_wards_and_empty_names_are_refused(service: Service, fed: Fed) -> None:
    kw = {
        "start": datetime.fromisoformat(JUNE_12[0]),
        "end": datetime.fromisoformat(JUNE_12[1]),
        "now": fed.june_12.end + 60,
    }
    with pytest.raises(audits.AuditError, match="ward: ward-nowhere not in the ward list"):
        audits.take(service.engine, service.profile, title="x", signed_off_by="y",
                    ward_ids=["ward-nowhere"], **kw)  # type: ignore[arg-type]  # fmt: skip
    with pytest.raises(audits.AuditError, match="signed_off_by: must not be empty"):
        audits.take(service.engine, service.profile, title="x", signed_off_by="  ", **kw)  # type: ignore[arg-type]
    with pytest.raises(audits.AuditNotFound, match="audit 42: no such audit"):
        audits.verify(service.engine, 42)
