"""One view of a ward: the facts the API, `status`, the board and the ward page all show.

Built here and only here, so every place that shows a ward agrees on its verdict, its
reasons and its defaults (a ward not evaluated yet is ``unknown`` with the reason
:data:`NOT_EVALUATED`, everywhere). The dataclasses double as the API's response models:
readiness's own dataclasses are used as they are, not re-declared.

Counter devices (printers and scanners at the counters) are read from the newest stored
result of each device series, whose ``info`` lists every fault and supply level: a fixed
door must not hide an empty cyan toner.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal, TypeVar

import sqlalchemy as sa
from pydantic import Field

from collector import db, i18n
from collector import inventory as inventory_store
from collector.clocks import CLOCK_SKEW
from collector.fleet_api import WardFleet, ward_fleet
from collector.readiness import AGENT_SILENT, NO_DATA, CriterionResult, Verdict
from collector.service import AgentInfo
from collector.state import SeriesUsage
from collector.wards import Ward
from shared.wire import Device

if TYPE_CHECKING:
    from collector.profile import Profile
    from collector.service import Service

VerdictWord = Literal["ready", "not_ready", "unknown"]
VERDICTS: tuple[VerdictWord, ...] = ("not_ready", "unknown", "ready")
NOT_EVALUATED = "not evaluated yet"

DEVICE_CHECKS = frozenset({"printer_snmp", "printer_ipp", "scanner_escl", "scanner_usb"})
DEVICE_ROLE = "counter_device"
# A name that already starts with its kind ("Phường Bến Thành") gets no second one.
_KIND_PREFIXES = ("phường ", "xã ", "đặc khu ", "ward ", "commune ", "special zone ")


@dataclass
class WardSummary:
    id: str
    name: str
    kind: str
    former_district: str
    working_group: str
    verdict: VerdictWord
    reasons: list[str]


@dataclass
class CounterDevice:
    agent: str
    name: str
    check: str
    target: str
    labels: dict[str, str]
    success: bool
    reason: str
    faults: Annotated[list[str], Field(description="every current fault, not only the first")]
    warnings: list[str]
    supplies: Annotated[list[str], Field(description="each supply and its level, as reported")]
    inputs: list[str]
    error: str
    at: Annotated[float, Field(description="start time of the result shown (Unix time)")]


@dataclass
class InventoryOut:
    agent: str
    taken_at: float
    received_at: float
    devices: list[Device]


@dataclass
class WardDetail(WardSummary):
    criteria: list[CriterionResult]
    agents: list[AgentInfo]
    devices: Annotated[
        list[CounterDevice], Field(description="counter printers and scanners, newest result")
    ]
    inventory: Annotated[
        list[InventoryOut], Field(description="each agent's newest device inventory")
    ]
    last_seen: Annotated[float | None, Field(description="the latest contact of any of its agents")]
    evaluated_at: float
    series: Annotated[
        SeriesUsage, Field(description="series held in memory against the ward's budgets")
    ]
    fleet: Annotated[WardFleet, Field(description="the ward's plan and enrolled agents")]


def summarize(ward: Ward, verdict: Verdict | None) -> WardSummary:
    word: VerdictWord = "unknown"
    reasons = [NOT_EVALUATED]
    if verdict is not None:
        word = verdict.verdict  # type: ignore[assignment]
        reasons = list(verdict.reasons)
    return WardSummary(
        ward.id, ward.name, ward.kind, ward.former_district, ward.working_group, word, reasons
    )


W = TypeVar("W", Ward, WardSummary)


def in_order(wards: Iterable[W], lang: str = i18n.DEFAULT) -> list[W]:
    """Vietnamese (or English) alphabetical order of names, not code points."""
    return sorted(wards, key=lambda w: (i18n.sort_key(w.name, lang), w.id))


def summaries(service: Service, lang: str = i18n.DEFAULT) -> list[WardSummary]:
    verdicts = service.verdicts()
    return in_order((summarize(w, verdicts.get(w.id)) for w in service.wards().values()), lang)


def fold(text: str) -> str:
    """Lower case without diacritics, for matching what people type: "ben thanh" finds
    "Bến Thành" (đ has no decomposition, so it is mapped by hand)."""
    decomposed = unicodedata.normalize("NFD", text.lower().replace("đ", "d"))
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def shown_name(w: Ward | WardSummary, lang: str) -> str:
    """ "Phường Bến Thành": the unit's kind before its name, unless the list already has it."""
    if w.name.lower().startswith(_KIND_PREFIXES):
        return w.name
    return i18n.display_name(w.name, w.kind, lang)


def group_key(group: str) -> tuple[int, int, str]:
    """Working groups in numeric order when they are numbers: 1, 2, ... 10."""
    return (0, int(group), "") if group.isdigit() else (1, 0, group)


def _split(text: str | None, sep: str) -> list[str]:
    return [part.strip() for part in (text or "").split(sep) if part.strip()]


def _is_device(check: str, labels: Mapping[str, str]) -> bool:
    return check in DEVICE_CHECKS or labels.get("role") == DEVICE_ROLE


def counter_devices(service: Service, ward: str) -> list[CounterDevice]:
    """Each counter device's newest stored result with all its faults and supplies."""
    newest = [n for n in service.state.newest(ward) if _is_device(n.check, n.labels)]
    r = db.results
    out = []
    with service.engine.connect() as conn:
        for n in newest:
            info_text = conn.execute(
                sa.select(r.c.info)
                .where(
                    r.c.ward_id == ward,
                    r.c.started == n.sample.started,
                    r.c.agent == n.agent,
                    r.c.name == n.name,
                    r.c.target == n.target,
                )
                .limit(1)
            ).scalar()
            info = json.loads(info_text) if info_text else {}
            faults = _split(info.get("faults"), ",")
            if not n.sample.success and not faults:
                faults = [n.sample.reason]
            out.append(
                CounterDevice(
                    agent=n.agent,
                    name=n.name,
                    check=n.check,
                    target=n.target,
                    labels=dict(n.labels),
                    success=n.sample.success,
                    reason=n.sample.reason,
                    faults=faults,
                    warnings=_split(info.get("warnings"), ","),
                    supplies=_split(info.get("supplies"), ";"),
                    inputs=_split(info.get("inputs"), ";"),
                    error=str(info.get("error") or info.get("hint") or ""),
                    at=n.sample.started,
                )
            )
    out.sort(key=lambda d: (d.agent, d.name, d.target))
    return out


def titles(profile: Profile, lang: str) -> dict[str, str]:
    """Each criterion's title in ``lang``; the English one where no Vietnamese is given."""
    return {
        c.id: (c.title_vi if lang == "vi" and c.title_vi else c.title) for c in profile.criteria
    }


def detail(service: Service, ward_id: str) -> WardDetail | None:
    ward = service.wards().get(ward_id) or service.wards(refresh=True).get(ward_id)
    if ward is None:
        return None
    verdict = service.verdicts().get(ward_id)
    agents = service.agents(ward_id)
    base = summarize(ward, verdict)
    return WardDetail(
        **vars(base),
        criteria=list(verdict.criteria) if verdict else [],
        agents=agents,
        devices=counter_devices(service, ward_id),
        inventory=[
            InventoryOut(
                agent=i["agent"],
                taken_at=i["taken_at"],
                received_at=i["received_at"],
                devices=[Device.model_validate(d) for d in i["devices"]],
            )
            for i in inventory_store.latest(service.engine, ward_id)
        ],
        last_seen=max((a.last_seen for a in agents), default=None),
        evaluated_at=verdict.evaluated_at if verdict else service.clock(),
        series=service.series_usage(ward_id),
        fleet=WardFleet(**ward_fleet(service, ward_id)),
    )


def criterion_title(c: CriterionResult, titles: dict[str, str]) -> str:
    return titles.get(c.id, c.title)


def reason_text(reason: str, lang: str, titles: dict[str, str]) -> str:
    """A verdict's reason as a person reads it in ``lang``: the criterion's title from
    ``titles`` (see :func:`titles`) without its id, the fixed words translated; figures and
    series names stay as measured. English without titles is the reason as the API gives it."""
    if lang == "en" and not titles:
        return reason
    _ = i18n.gettext_for(lang).gettext
    warning = reason.startswith("warning: ")
    rest = reason.removeprefix("warning: ")
    head, sep, tail = rest.partition(": ")
    if rest == NOT_EVALUATED:
        text = _(NOT_EVALUATED)
    elif rest == f"{NO_DATA}: no agent has reported":
        text = _("no agent has reported")
    elif head == AGENT_SILENT and sep:
        text = f"{_('agent silent')}: {tail}"
    elif head == CLOCK_SKEW and sep:
        text = f"{_('wrong clock on a ward PC')}: {tail}"
    elif head in titles and sep:
        # "id: English title — evidence": the English title is the profile's, known exactly.
        _title, dash, evidence = tail.partition(" — ")
        text = f"{titles[head]} — {evidence}" if dash else titles[head]
    else:
        text = rest
    return f"{_('warning')}: {text}" if warning else text


def reasons_text(reasons: Sequence[str], lang: str, titles: dict[str, str]) -> list[str]:
    return [reason_text(r, lang, titles) for r in reasons]
