"""Every word of an audit that a person reads has its Vietnamese translation in audit.po."""

from __future__ import annotations

import re
from pathlib import Path

from babel.messages.extract import extract_from_file
from babel.messages.pofile import read_po

from collector import i18n

COLLECTOR = Path(__file__).resolve().parents[2] / "collector"
PLACEHOLDER = re.compile(r"\{\w+\}|%\(\w+\)s")


def _messages() -> dict[str, str]:
    """msgid -> where it is used, from the audit modules and templates."""
    found: dict[str, str] = {}
    keywords = {"_": None, "gettext": None, "ngettext": (1, 2)}
    for path in sorted(COLLECTOR.glob("audit*.py")):
        for line, msg, _c, _ctx in extract_from_file("python", str(path), keywords=keywords):
            for m in msg if isinstance(msg, tuple) else (msg,):
                found.setdefault(m, f"{path.name}:{line}")
    for path in sorted((COLLECTOR / "templates").glob("audit*.html")):
        options = {"extensions": "jinja2.ext.i18n"}
        for line, msg, _c, _ctx in extract_from_file(
            "jinja2.ext:babel_extract", str(path), options=options
        ):
            for m in msg if isinstance(msg, tuple) else (msg,):
                if m:
                    found.setdefault(m, f"{path.name}:{line}")
    return found


def test_every_audit_message_is_translated_with_its_placeholders() -> None:
    po = COLLECTOR / "locale" / "vi" / "LC_MESSAGES" / "audit.po"
    with po.open("rb") as f:
        catalog = read_po(f, locale="vi", domain="audit")
    translated: dict[str, str] = {}
    for m in catalog:
        if not m.id:
            continue
        ids = m.id if isinstance(m.id, tuple) else (m.id,)
        text = m.string[0] if isinstance(m.string, tuple) else m.string
        for i in ids:
            translated[i] = text
    messages = _messages()
    assert len(messages) > 80
    missing = [f"{where}: {msg!r}" for msg, where in messages.items() if not translated.get(msg)]
    assert missing == []
    for msg in messages:
        assert sorted(PLACEHOLDER.findall(translated[msg])) == sorted(PLACEHOLDER.findall(msg)), msg
    assert not [m for m in catalog if m.id and m.fuzzy]


def test_the_catalog_is_the_one_gettext_reads() -> None:
    assert i18n.gettext_for("vi").gettext("Readiness audit") == "Biên bản đánh giá mức độ sẵn sàng"
    assert i18n.gettext_for("en").gettext("Readiness audit") == "Readiness audit"
