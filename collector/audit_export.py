"""What an audit says, for people: the terminal, HTML, PDF and CSV, in Vietnamese or English.

:func:`view` turns the stored content into plain rows and sentences in one language; every
format renders that, so the PDF, the CSV and ``audit show`` never disagree. Ward names read as
"Phường Bến Thành" and sort in Vietnamese order (:mod:`collector.i18n`). Measured values,
durations and times are formatted here; the content itself keeps them language-free.

CSV: UTF-8 with a byte-order mark and CRLF line ends, because the spreadsheet program on a
ward's office PC reads a CSV without the mark in the machine's legacy code page and garbles
every Vietnamese letter; one row per ward, headers in the chosen language, ward ids as they
are so that rows can be matched by program.
"""

from __future__ import annotations

import csv
import functools
import gettext
import io
import unicodedata
from collections.abc import Callable
from datetime import datetime
from typing import Any

import jinja2
from babel.numbers import format_decimal, format_percent

from collector import i18n
from collector.audits import Audit

# A font with every Vietnamese letter first: the PDF embeds whatever the first family that
# exists provides (fonts-noto-core, else fonts-dejavu-core, both from Debian).
FONTS = '"Noto Sans", "DejaVu Sans", sans-serif'

_TIME_FORMAT = {"vi": "%d/%m/%Y %H:%M:%S", "en": "%Y-%m-%d %H:%M:%S"}
_OPS = {">=": "≥", "<=": "≤", "==": "=", "!=": "≠"}
_CSS_CLASS = {"ready": "ok", "not_ready": "bad", "unknown": "unknown"}


class Words:
    """The few ways an audit speaks, in one language."""

    def __init__(self, lang: str) -> None:
        self.lang = lang if lang in i18n.LANGS else i18n.DEFAULT
        self.t: gettext.NullTranslations = i18n.gettext_for(self.lang)
        self._ = self.t.gettext

    def verdict(self, word: str) -> str:
        _ = self._
        return {
            "ready": _("ready"),
            "not_ready": _("not ready"),
            "unknown": _("unknown"),
        }.get(word, word)

    def status(self, word: str) -> str:
        _ = self._
        return {
            "ok": _("met"),
            "failed": _("failed"),
            "unknown": _("unknown"),
            "stale": _("stale"),
        }.get(word, word)

    def severity(self, word: str) -> str:
        _ = self._
        return {"blocker": _("blocker"), "warning": _("warning")}.get(word, word)

    def duration(self, seconds: int) -> str:
        _ = self._
        h, rest = divmod(int(seconds), 3600)
        m, s = divmod(rest, 60)
        parts = []
        if h:
            parts.append(_("{n} h").format(n=h))
        if m:
            parts.append(_("{n} min").format(n=m))
        if s or not parts:
            parts.append(_("{n} s").format(n=s))
        return " ".join(parts)

    def time(self, text: str | None) -> str:
        if not text:
            return "—"
        return datetime.fromisoformat(text).strftime(_TIME_FORMAT[self.lang])

    def clock(self, text: str) -> str:
        return datetime.fromisoformat(text).strftime("%H:%M:%S")

    def percent(self, part: int, whole: int) -> str:
        share = part / whole if whole else 0.0
        return str(format_percent(share, "#,##0.0%", locale=self.lang))

    def number(self, text: str | None) -> str:
        if text is None:
            return "—"
        try:
            return str(format_decimal(float(text), "#,##0.######", locale=self.lang))
        except ValueError:
            return text

    def span(self, span: str) -> str:
        if span.startswith("last "):
            return self._("last {n} runs").format(n=span.removeprefix("last "))
        return span

    def results(self, n: int, failed: int) -> str:
        text = self.t.ngettext("{n} result", "{n} results", n).format(n=n)
        if failed:
            text += " " + self._("({n} failed)").format(n=failed)
        return text


def criterion_title(criterion: dict[str, Any], w: Words) -> str:
    if w.lang == "vi" and criterion.get("title_vi"):
        return str(criterion["title_vi"])
    return w._(str(criterion["title"]))


def evidence_sentence(ev: dict[str, Any], criterion: dict[str, Any], w: Words) -> str:
    """One piece of evidence as a sentence; the English one is what the live judge wrote."""
    _ = w._
    detail = str(ev.get("detail", ""))
    if w.lang == "en":
        return f"{ev['series']}: {detail}" if ev["series"] else detail
    if not ev["series"]:
        return _("no check of this ward matches the criterion")
    status = ev["status"]
    if status == "stale":
        text = _("no recent results: the newest is from {at}").format(at=w.time(ev["at"]))
    elif ev["observed"] is None:
        text = _("not enough data: {n} samples over {span}, {need} needed").format(
            n=ev["samples"], span=w.span(ev["window"]), need=criterion.get("min_samples", 1)
        )
    else:
        sentence = _(
            "{metric} {agg} {observed} over {span} ({n} samples), required {op} {threshold}"
        )
        text = sentence.format(
            metric=criterion.get("metric", ""),
            agg=ev["agg"],
            observed=w.number(ev["observed"]),
            span=w.span(ev["window"]),
            n=ev["samples"],
            op=_OPS.get(ev["op"], ev["op"]),
            threshold=w.number(ev["threshold"]),
        )
    latest = detail.partition("; latest run: ")[2]
    if latest:
        text += "; " + _("latest run: {reason}").format(reason=latest)
    return f"{ev['series']}: {text}"


def _cause(code: str, criteria: dict[str, dict[str, Any]], w: Words) -> str:
    if code == "no_data":
        return w._("no agent has reported")
    if code == "agent_silent":
        return w._("every agent silent")
    c = criteria.get(code)
    return criterion_title(c, w) if c else code


def _ward(
    ward: dict[str, Any], criteria: dict[str, dict[str, Any]], total: int, w: Words
) -> dict[str, Any]:
    secs = ward["seconds"]
    bad = []
    for c in ward["criteria"]:
        crit = criteria.get(c["id"], {"id": c["id"], "title": c["id"]})
        spans = [
            f"{w.clock(e['from'])}–{w.clock(e['to'])} ({w.status(e['status'])})"
            for e in c["episodes"]
        ]
        if c.get("episodes_more"):
            spans.append(w._("and {n} more").format(n=c["episodes_more"]))
        bad.append(
            {
                "id": c["id"],
                "title": criterion_title(crit, w),
                "severity": c["severity"],
                "severity_word": w.severity(c["severity"]),
                "failed": w.duration(c["seconds"].get("failed", 0)),
                "unknown": w.duration(c["seconds"].get("unknown", 0)),
                "failed_seconds": c["seconds"].get("failed", 0),
                "unknown_seconds": c["seconds"].get("unknown", 0),
                "first_failed": w.time(c["first_failed_at"]),
                "episodes": spans,
                "evidence_at": w.time(c.get("evidence_at")),
                "evidence": [evidence_sentence(e, crit, w) for e in c["evidence"]],
            }
        )
    # Blockers first, then the longest failing.
    bad.sort(key=lambda c: (c["severity"] != "blocker", -c["failed_seconds"], c["id"]))
    timeline = [
        {
            "at": w.clock(e["at"]),
            "verdict": w.verdict(e["verdict"]),
            "css": _CSS_CLASS.get(e["verdict"], "unknown"),
            "causes": "; ".join(_cause(code, criteria, w) for code in e["causes"]),
        }
        for e in ward["timeline"]
    ]
    samples = ward["samples"]
    ready = secs.get("ready", 0)
    return {
        "id": ward["id"],
        "name": i18n.display_name(ward["name"], ward["kind"], w.lang),
        "former_district": ward["former_district"],
        "working_group": ward["working_group"],
        "ready_share": w.percent(ready, total),
        "ready_ratio": ready / total if total else 0.0,
        "ready_seconds": ready,
        "ready": w.duration(ready),
        "not_ready": w.duration(secs.get("not_ready", 0)),
        "unknown": w.duration(secs.get("unknown", 0)),
        "css": "ok" if ready == total else ("bad" if ready == 0 else "partial"),
        "first_ready": w.time(ward["first_ready_at"]),
        "verdict_at_end": w.verdict(ward["verdict_at_end"]),
        "blockers": [c for c in bad if c["severity"] == "blocker"],
        "criteria": bad,
        "timeline": timeline,
        "timeline_more": ward.get("timeline_more", 0),
        "never_heard": samples["results"] == 0
        and all(e["causes"][:1] == ["no_data"] for e in ward["timeline"]),
        "results": w.results(samples["results"], samples["failed"]),
        "series": [
            {"series": s["series"], "results": w.results(s["results"], s["failed"])}
            for s in samples["series"]
        ],
    }


def ward_order(ward: dict[str, Any], lang: str) -> tuple[bytes, str]:
    return i18n.sort_key(unicodedata.normalize("NFC", ward["name"]), lang), ward["id"]


def view(a: Audit, lang: str) -> dict[str, Any]:
    """The audit in one language, ready to render."""
    w = Words(lang)
    doc = a.content
    total = int(doc["window"]["seconds"])
    criteria = {c["id"]: c for c in doc["profile"]["criteria"]}
    wards = [
        _ward(x, criteria, total, w)
        for x in sorted(doc["wards"], key=lambda x: ward_order(x, w.lang))
    ]
    offset = datetime.fromisoformat(doc["window"]["from"]).strftime("%z")
    return {
        "lang": w.lang,
        "id": a.id,
        "sha256": a.sha256,
        "title": doc["title"],
        "from": w.time(doc["window"]["from"]),
        "to": w.time(doc["window"]["to"]),
        "utc_offset": f"UTC{offset[:3]}:{offset[3:]}",
        "length": w.duration(total),
        "step": w.duration(int(doc["window"]["step_seconds"])),
        "created_at": w.time(doc["created_at"]),
        "created_by": doc.get("created_by") or "—",
        "signed_off_by": doc["signed_off_by"],
        "software": doc.get("software", {}).get("wardready", ""),
        "profile_sha256": doc["profile"]["sha256"],
        "ward_list_sha256": doc["ward_list"]["sha256"],
        "criteria": [
            {"id": c["id"], "title": criterion_title(c, w), "severity": w.severity(c["severity"])}
            for c in doc["profile"]["criteria"]
        ],
        "wards": wards,
        "count": len(wards),
        "ready_throughout": sum(1 for x in wards if x["ready_seconds"] == total),
        "never_ready": sum(1 for x in wards if x["ready_seconds"] == 0),
    }


# ---- formats --------------------------------------------------------------------------------


@functools.cache
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("collector", "templates"),
        autoescape=True,
        extensions=["jinja2.ext.i18n"],
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env


def html(a: Audit, lang: str) -> str:
    env = _env().overlay()
    env.install_gettext_translations(i18n.gettext_for(lang), newstyle=True)  # type: ignore[attr-defined]
    return env.get_template("audit.html").render(a=view(a, lang), fonts=FONTS)


def pdf(a: Audit, lang: str) -> bytes:
    # WeasyPrint loads Pango through cffi at import: only the PDF export pays for it.
    import weasyprint

    data = weasyprint.HTML(string=html(a, lang)).write_pdf()
    assert isinstance(data, bytes)
    return data


def csv_bytes(a: Audit, lang: str) -> bytes:
    v = view(a, lang)
    w = Words(lang)
    _ = w._
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(
        [
            _("Ward id"),
            _("Ward"),
            _("Working group"),
            _("Ready share"),
            _("Ready seconds"),
            _("Not ready seconds"),
            _("Unknown seconds"),
            _("First ready at"),
            _("Verdict at the end"),
            _("Blockers not met"),
            _("Warnings not met"),
            _("Results"),
            _("Failed results"),
        ]
    )
    by_id = {x["id"]: x for x in a.content["wards"]}
    for ward in v["wards"]:
        raw = by_id[ward["id"]]
        writer.writerow(
            [
                ward["id"],
                ward["name"],
                ward["working_group"],
                ward["ready_share"],
                raw["seconds"].get("ready", 0),
                raw["seconds"].get("not_ready", 0),
                raw["seconds"].get("unknown", 0),
                ward["first_ready"] if raw["first_ready_at"] else "",
                ward["verdict_at_end"],
                "; ".join(f"{c['id']} ({c['failed']})" for c in ward["blockers"]),
                "; ".join(
                    f"{c['id']} ({c['failed']})"
                    for c in ward["criteria"]
                    if c["severity"] != "blocker"
                ),
                raw["samples"]["results"],
                raw["samples"]["failed"],
            ]
        )
    return ("\ufeff" + unicodedata.normalize("NFC", out.getvalue())).encode("utf-8")


def text(a: Audit, lang: str) -> str:
    """``audit show``: the header, then one line per ward and what it lacked."""
    v = view(a, lang)
    _ = Words(lang)._
    lines = [
        _("Audit #{id}: {title}").format(id=v["id"], title=v["title"]),
        _("Window: {start} – {end} ({offset}, {length}, judged every {step})").format(
            start=v["from"], end=v["to"], offset=v["utc_offset"], length=v["length"], step=v["step"]
        ),
        _("Signed off by: {name}, taken at {at}").format(
            name=v["signed_off_by"], at=v["created_at"]
        ),
        f"SHA-256: {v['sha256']}",
        _("{ready}/{count} wards ready throughout, {never} never ready").format(
            ready=v["ready_throughout"], count=v["count"], never=v["never_ready"]
        ),
        "",
    ]
    for ward in v["wards"]:
        lines.append(
            _("{id}  {name}  ready {share}, first ready {first}, {results}").format(
                id=ward["id"],
                name=ward["name"],
                share=ward["ready_share"],
                first=ward["first_ready"],
                results=ward["results"],
            )
        )
        for c in ward["criteria"]:
            lines.append(
                "    "
                + _("{id} ({severity}): {title} — failed {failed}, unknown {unknown}").format(
                    id=c["id"],
                    severity=c["severity_word"],
                    title=c["title"],
                    failed=c["failed"],
                    unknown=c["unknown"],
                )
            )
            lines.extend(f"      {sentence}" for sentence in c["evidence"][:3])
    return "\n".join(lines) + "\n"


FORMATS: dict[str, tuple[str, Callable[[Audit, str], bytes]]] = {
    "html": ("text/html; charset=utf-8", lambda a, lang: html(a, lang).encode("utf-8")),
    "pdf": ("application/pdf", pdf),
    "csv": ("text/csv; charset=utf-8", csv_bytes),
}
