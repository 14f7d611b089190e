"""Two audits side by side: which wards improved, regressed or stayed, criterion by criterion.

A ward is compared by the share of its window it was ready; a criterion by the share of the
window it failed, then by the share it was unknown. Shares, not seconds, so a two-hour trial
compares with a three-hour one. Shares are exact fractions of whole seconds: "stayed" means
exactly the same, not "close".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any

from collector import i18n
from collector.audit_export import Words, criterion_title, ward_order
from collector.audits import Audit

IMPROVED = "improved"
REGRESSED = "regressed"
STAYED = "stayed"
ORDER = {REGRESSED: 0, IMPROVED: 1, STAYED: 2}


def _change(
    before: tuple[Fraction, ...], after: tuple[Fraction, ...], *, higher_is_better: bool
) -> str:
    if before == after:
        return STAYED
    better = after > before if higher_is_better else after < before
    return IMPROVED if better else REGRESSED


@dataclass
class CriterionChange:
    id: str
    severity: str
    a_failed_seconds: int
    a_unknown_seconds: int
    b_failed_seconds: int
    b_unknown_seconds: int
    change: str


@dataclass
class WardChange:
    id: str
    name: str
    kind: str
    change: str
    a_ready_seconds: int | None
    b_ready_seconds: int | None
    criteria: list[CriterionChange] = field(default_factory=list)


@dataclass
class Comparison:
    a: int
    b: int
    a_seconds: int
    b_seconds: int
    same_profile: bool
    wards: list[WardChange]

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys((IMPROVED, REGRESSED, STAYED), 0)
        for w in self.wards:
            if w.change in out:
                out[w.change] += 1
        return out

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "counts": self.counts()}


def _bad(ward: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in ward["criteria"]}


def compare(a: Audit, b: Audit) -> Comparison:
    sa, sb = int(a.content["window"]["seconds"]), int(b.content["window"]["seconds"])
    wa = {w["id"]: w for w in a.content["wards"]}
    wb = {w["id"]: w for w in b.content["wards"]}
    severity = {
        c["id"]: c["severity"] for doc in (a.content, b.content) for c in doc["profile"]["criteria"]
    }
    out = []
    for ward_id in {**wa, **wb}:
        x, y = wa.get(ward_id), wb.get(ward_id)
        ref = x or y
        assert ref is not None
        if x is None or y is None:
            only = "only_a" if y is None else "only_b"
            ready_x = None if x is None else x["seconds"]["ready"]
            ready_y = None if y is None else y["seconds"]["ready"]
            out.append(WardChange(ward_id, ref["name"], ref["kind"], only, ready_x, ready_y))
            continue
        ready_a, ready_b = x["seconds"]["ready"], y["seconds"]["ready"]
        change = _change((Fraction(ready_a, sa),), (Fraction(ready_b, sb),), higher_is_better=True)
        criteria = []
        bad_a, bad_b = _bad(x), _bad(y)
        for cid in {**bad_a, **bad_b}:
            ca = bad_a.get(cid, {}).get("seconds", {})
            cb = bad_b.get(cid, {}).get("seconds", {})
            fa, ua = ca.get("failed", 0), ca.get("unknown", 0)
            fb, ub = cb.get("failed", 0), cb.get("unknown", 0)
            criteria.append(
                CriterionChange(
                    cid,
                    severity.get(cid, ""),
                    fa,
                    ua,
                    fb,
                    ub,
                    _change(
                        (Fraction(fa, sa), Fraction(ua, sa)),
                        (Fraction(fb, sb), Fraction(ub, sb)),
                        higher_is_better=False,
                    ),
                )
            )
        criteria.sort(key=lambda c: (ORDER[c.change], c.severity != "blocker", c.id))
        out.append(WardChange(ward_id, x["name"], x["kind"], change, ready_a, ready_b, criteria))
    out.sort(key=lambda w: (ORDER.get(w.change, 3), ward_order({"name": w.name, "id": w.id}, "vi")))
    same = a.content["profile"]["sha256"] == b.content["profile"]["sha256"]
    return Comparison(a.id, b.id, sa, sb, same, out)


def text(cmp: Comparison, a: Audit, b: Audit, lang: str) -> str:
    w = Words(lang)
    _ = w._
    criteria = {c["id"]: c for doc in (b.content, a.content) for c in doc["profile"]["criteria"]}
    change_word = {
        IMPROVED: _("improved"),
        REGRESSED: _("regressed"),
        STAYED: _("stayed"),
        "only_a": _("only in audit #{n}").format(n=a.id),
        "only_b": _("only in audit #{n}").format(n=b.id),
    }

    def window(x: Audit) -> str:
        win = x.content["window"]
        return f"#{x.id} {x.content['title']} ({w.time(win['from'])} – {w.time(win['to'])})"

    def state(failed: int, unknown: int) -> str:
        if not failed and not unknown:
            return _("met throughout")
        parts = [_("failed {duration}").format(duration=w.duration(failed))] if failed else []
        if unknown:
            parts.append(_("unknown {duration}").format(duration=w.duration(unknown)))
        return ", ".join(parts)

    counts = cmp.counts()
    lines = [
        f"A: {window(a)}",
        f"B: {window(b)}",
        _("{improved} improved, {regressed} regressed, {stayed} stayed").format(
            improved=counts[IMPROVED], regressed=counts[REGRESSED], stayed=counts[STAYED]
        ),
    ]
    if not cmp.same_profile:
        lines.append(_("warning: the two audits were judged with different profiles"))
    for ward in cmp.wards:
        shown = i18n.display_name(ward.name, ward.kind, w.lang)
        ready_a = (
            "—" if ward.a_ready_seconds is None else w.percent(ward.a_ready_seconds, cmp.a_seconds)
        )
        ready_b = (
            "—" if ward.b_ready_seconds is None else w.percent(ward.b_ready_seconds, cmp.b_seconds)
        )
        lines.append("")
        lines.append(
            f"[{change_word[ward.change]}] {ward.id}  {shown}  "
            + _("ready {before} → {after}").format(before=ready_a, after=ready_b)
        )
        for c in ward.criteria:
            title = criterion_title(criteria[c.id], w) if c.id in criteria else c.id
            lines.append(
                f"    {c.id}: {title}: {state(c.a_failed_seconds, c.a_unknown_seconds)} → "
                f"{state(c.b_failed_seconds, c.b_unknown_seconds)}  ({change_word[c.change]})"
            )
    return "\n".join(lines) + "\n"
