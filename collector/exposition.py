"""Prometheus /metrics: verdicts, criteria, agents and the newest check results, per ward.

Built at scrape time by a custom collector on a private registry, from the service's cached
verdicts and in-memory state, so a scrape never waits for an evaluation of its own and never
reads results from the database.

Choices:

- ``wardready_ward_criterion_ok`` is 1 for ok and 0 for failed (a stale check counts as
  failed, as in the verdict). A criterion whose state is unknown (too few samples) is not
  exported: 0 would raise alerts for wards that simply started, and -1 would break ``sum``
  and ``avg`` over the gauge. ``wardready_ward_verdict`` tells unknown apart.
- Check metrics carry the labels ``ward, agent, name, target, role, line`` and no others: a
  fixed, bounded set whatever labels agents invent. ``agent`` is there because two PCs in one
  ward running the same check would otherwise export the same series twice, which makes
  Prometheus reject the whole scrape; for the same reason, of two series that still collide
  (same name and target, labels differing only outside role/line), the newest result wins.
  A metric ``<base>__<item>`` (one of several mounts, interfaces, supplies or trays) adds
  ``item``, as the agent's endpoint does: ``wardready_host_disk_free_ratio{item="var_lib"}``.
- A check metric has the help text and the type (gauge or counter) its check type declares
  (:mod:`shared.families`). A result of a check type this collector does not know is shown
  all the same, each metric with a plain help text; it only counts if the profile says so.
- The ward's name and working group are not repeated on every check series: at national
  scale that adds about 40% to each scrape (18 MB at 3,321 wards). ``wardready_ward_info``
  (value 1) carries them once per ward, and a query joins them where it needs them, the
  Prometheus idiom for descriptive labels: ``... * on (ward) group_left (ward_name, working_group)
  wardready_ward_info``. ``wardready_ward_ready`` carries them too, since almost every view
  of readiness groups by them.
- ``wardready_ward_reason`` (value 1) lists why a ward is not ready, or what it is warned
  about, as bounded labels: one series per criterion the verdict names (status ``failed`` or
  ``unknown``), and the pseudo-criteria ``no_data`` (no agent ever reported; the criteria
  are then not listed, as the verdict does not list them) and ``agent_silent`` (severity
  ``blocker`` when every agent of the ward went silent, ``warning`` when only some did).
  The free-text evidence stays in the API: it would make a new series every time a figure
  moved.
- ``wardready_check_failure_reason`` (value 1) names the reason of each check whose newest
  run failed (a word from the check's bounded ``REASONS``): the device or system behind it
  is then diagnosed from the dashboard. Passing checks export nothing here, so it stays
  small; the reason is not a label of ``wardready_check_success``, which would start a new
  series at every change of reason.
- ``wardready_agent_info`` (value 1) carries each agent's reported version.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client.core import Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample as PromSample

from collector.clocks import CLOCK_SKEW
from collector.declared import check_types
from collector.readiness import AGENT_SILENT, FAILED, NO_DATA, UNKNOWN, Verdict
from collector.state import Sample
from shared.families import family_of

if TYPE_CHECKING:
    from collector.service import Service

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
VERDICTS = ("ready", "not_ready", "unknown")
SERIES_LABELS = ("ward", "agent", "name", "target", "role", "line")
CHECK_LABELS = ("ward", "agent", "check", "name", "target", "role", "line")
CHECK_PREFIX = "wardready_check_"

FIXED = {
    "wardready_ward_ready": (
        "1 when the ward is ready to operate, else 0 (not_ready or unknown).",
        ("ward", "ward_name", "working_group"),
    ),
    "wardready_ward_info": (
        "The ward's name and working group, for joins: one series per ward, value 1.",
        ("ward", "ward_name", "working_group", "kind"),
    ),
    "wardready_ward_verdict": (
        "The ward's current verdict: one series per ward, value 1, verdict in the label.",
        ("ward", "verdict"),
    ),
    "wardready_ward_criterion_ok": (
        "1 when the readiness criterion holds, 0 when it fails (stale checks fail); "
        "criteria without enough data are not exported.",
        ("ward", "criterion", "severity"),
    ),
    "wardready_ward_reason": (
        "Why the ward is not ready or is warned about, value 1: one series per failed or "
        "unknown criterion, or the pseudo-criterion no_data or agent_silent.",
        ("ward", "criterion", "severity", "status"),
    ),
    "wardready_wards": ("Number of wards with each verdict.", ("verdict",)),
    "wardready_verdicts_evaluated_timestamp_seconds": (
        "When the verdicts exported here were computed (Unix time).",
        (),
    ),
    "wardready_agent_last_seen_timestamp_seconds": (
        "When the collector last received a batch from the agent (Unix time).",
        ("ward", "agent"),
    ),
    "wardready_agent_spool_depth": (
        "Results waiting in the agent's spool, as it reported in its last batch.",
        ("ward", "agent"),
    ),
    "wardready_agent_spool_dropped_results": (
        "Results the agent's full spool dropped since it was created, as it reported "
        "(its own counter wardready_agent_spool_dropped_total).",
        ("ward", "agent"),
    ),
    "wardready_agent_resident_memory_bytes": (
        "The agent's resident memory, as it reported in its last batch.",
        ("ward", "agent"),
    ),
    "wardready_agent_clock_offset_seconds": (
        "The collector's clock minus the agent's PC's, as the agent last measured it "
        "(negative: the PC's clock is fast); absent until the agent says.",
        ("ward", "agent"),
    ),
    "wardready_agent_info": (
        "The agent's reported version: one series per agent, value 1.",
        ("ward", "agent", "version"),
    ),
    "wardready_check_success": (
        "1 when the newest result of the check succeeded, else 0.",
        CHECK_LABELS,
    ),
    "wardready_check_duration_seconds": (
        "How long the newest run of the check took.",
        CHECK_LABELS,
    ),
    "wardready_check_started_timestamp_seconds": (
        "When the newest run of the check started (Unix time), to tell fresh from stale.",
        CHECK_LABELS,
    ),
    "wardready_check_failure_reason": (
        "Why the newest run of the check failed (one of the check's reasons), value 1; "
        "exported only while it fails.",
        (*CHECK_LABELS, "reason"),
    ),
}


class _Family(Metric):
    """A gauge or counter family held as ready-made exposition lines.

    Every family of one check series (success, duration, start time, each metric) shares
    that series' label set: formatting it once per series and each value straight into its
    line, instead of keeping a Sample object per value and formatting its labels again at
    render time, is what keeps a national scrape (hundreds of thousands of values) quick.
    ``samples`` is built on demand for prometheus_client's own exposition, which the tests
    compare with :func:`render`.
    """

    def __init__(self, name: str, documentation: str, kind: str = "gauge") -> None:
        self.lines: list[str] = []
        self.label_sets: list[Mapping[str, str]] = []
        self.values: list[float] = []
        super().__init__(name, documentation, kind)
        # The name each line starts with: a counter's samples end in _total, its family not.
        self.sample_name = f"{name}_total" if kind == "counter" else name

    @property
    def samples(self) -> list[PromSample]:
        name = self.sample_name
        return [
            PromSample(name, dict(lb), v)
            for lb, v in zip(self.label_sets, self.values, strict=True)
        ]

    @samples.setter
    def samples(self, value: list[PromSample]) -> None:
        # Metric.__init__ starts every family with an empty list; nothing else sets it.
        if value:
            raise TypeError(f"{self.name}: add samples with add(), not through .samples")

    def add(self, labels: Mapping[str, str], value: float, text: str | None = None) -> None:
        """One sample; ``text`` is ``labels`` already formatted, when the caller has it."""
        value = float(value)
        if text is None:
            text = _label_text(labels)
        self.lines.append(f"{self.sample_name}{text} {_number(value)}\n")
        self.label_sets.append(labels)
        self.values.append(value)


# Where one check metric goes: its family and the label text its item adds ("" for none).
_Target = tuple[_Family, str | None, str] | None


def _metric_target(families: dict[str, _Family], check: str, metric: str) -> _Target:
    """The family re-exporting one check metric, and its item; None if the family's name is
    taken by a fixed one, or the metric's name cannot be part of a family name.

    Named, typed and labelled as the agent's own endpoint does (:mod:`shared.families`).
    """
    found = family_of(check, metric, check_types().get(check))
    if found is None or found.name in FIXED or found.sample_name in FIXED:
        return None
    # Keyed by the name its samples carry: a counter ``x_total`` and a gauge ``x`` of one
    # check type are two families.
    family = families.get(found.sample_name)
    if family is None:
        family = families[found.sample_name] = _Family(found.name, found.help, found.kind)
    if found.item is None:
        return family, None, ""
    return family, found.item, f',item="{_label_value(found.item)}"'


def _family(name: str) -> _Family:
    return _Family(name, FIXED[name][0])


def _reasons(v: Verdict) -> list[dict[str, str]]:
    """The verdict's reasons as ``wardready_ward_reason`` label sets, in the verdict's order.

    The verdict lists a criterion when it failed or is unknown; silence is only in its
    text, so it is recognised by the prefix readiness gives it.
    """
    ward = v.ward
    if v.reasons and v.reasons[0].startswith(f"{NO_DATA}:"):
        return [{"ward": ward, "criterion": NO_DATA, "severity": "blocker", "status": FAILED}]
    out = []
    for text in v.reasons:
        if text.startswith(f"{AGENT_SILENT}:") or text.startswith(f"warning: {AGENT_SILENT}:"):
            severity = "blocker" if text.startswith(AGENT_SILENT) else "warning"
            out.append(
                {"ward": ward, "criterion": AGENT_SILENT, "severity": severity, "status": FAILED}
            )
        elif text.startswith(f"warning: {CLOCK_SKEW}:"):
            out.append(
                {"ward": ward, "criterion": CLOCK_SKEW, "severity": "warning", "status": FAILED}
            )
    for c in v.criteria:
        if c.status in (FAILED, UNKNOWN):
            out.append(
                {"ward": ward, "criterion": c.id, "severity": c.severity, "status": c.status}
            )
    # Two agents with a wrong clock give two reasons but one series: a scrape with the same
    # series twice is refused whole.
    return list({tuple(d.items()): d for d in out}.values())


class ReadinessCollector(Collector):
    def __init__(self, service: Service) -> None:
        self._service = service

    def collect(self) -> Iterable[Metric]:
        service = self._service
        verdicts: dict[str, Verdict] = service.verdicts()
        wards = service.wards()
        fam = {name: _family(name) for name in FIXED if not name.startswith(CHECK_PREFIX)}
        ready = fam["wardready_ward_ready"]
        info = fam["wardready_ward_info"]
        verdict_s = fam["wardready_ward_verdict"]
        crit = fam["wardready_ward_criterion_ok"]
        reason = fam["wardready_ward_reason"]
        counts = dict.fromkeys(VERDICTS, 0)
        evaluated = 0.0
        # Every ward has the same criteria: their part of the label text is formatted once.
        crit_tails: dict[tuple[str, str], str] = {}
        for ward_id, ward in wards.items():
            labels = {"ward": ward_id, "ward_name": ward.name, "working_group": ward.working_group}
            info.add({**labels, "kind": ward.kind}, 1.0)
            v = verdicts.get(ward_id)
            if v is None:
                continue
            counts[v.verdict] = counts.get(v.verdict, 0) + 1
            evaluated = max(evaluated, v.evaluated_at)
            ready.add(labels, 1.0 if v.verdict == "ready" else 0.0)
            for reason_labels in _reasons(v):
                reason.add(reason_labels, 1.0)
            verdict_s.add({"ward": ward_id, "verdict": v.verdict}, 1.0)
            ward_text = f'{{ward="{_label_value(ward_id)}"'
            for c in v.criteria:
                if c.status in ("ok", "failed"):
                    tail = crit_tails.get((c.id, c.severity))
                    if tail is None:
                        tail = crit_tails[c.id, c.severity] = (
                            f',criterion="{_label_value(c.id)}",'
                            f'severity="{_label_value(c.severity)}"}}'
                        )
                    crit.add(
                        {"ward": ward_id, "criterion": c.id, "severity": c.severity},
                        1.0 if c.status == "ok" else 0.0,
                        ward_text + tail,
                    )
        for verdict, n in counts.items():
            fam["wardready_wards"].add({"verdict": verdict}, n)
        if evaluated:
            fam["wardready_verdicts_evaluated_timestamp_seconds"].add({}, evaluated)

        for a in service.agents():
            if a.ward not in wards:
                continue
            labels = {"ward": a.ward, "agent": a.agent}
            text = _label_text(labels)
            fam["wardready_agent_last_seen_timestamp_seconds"].add(labels, a.last_seen, text)
            fam["wardready_agent_spool_depth"].add(labels, a.spool_depth, text)
            fam["wardready_agent_spool_dropped_results"].add(labels, a.spool_dropped_total, text)
            fam["wardready_agent_resident_memory_bytes"].add(labels, a.resident_memory_bytes, text)
            fam["wardready_agent_info"].add({**labels, "version": a.version}, 1.0)
            if a.clock_offset_seconds is not None:
                fam["wardready_agent_clock_offset_seconds"].add(
                    labels, a.clock_offset_seconds, text
                )

        yield from fam.values()
        yield from self._checks(wards)

    def _checks(self, wards: Iterable[str]) -> Iterator[Metric]:
        newest_of = self._service.state.newest
        success = _family("wardready_check_success")
        duration = _family("wardready_check_duration_seconds")
        started = _family("wardready_check_started_timestamp_seconds")
        failure = _family("wardready_check_failure_reason")
        families: dict[str, _Family] = {}
        # check -> metric -> where it goes; looked up once per value, so nested rather than
        # keyed by a (check, metric) tuple built for every value.
        targets: dict[str, dict[str, _Target]] = {}
        number = _number
        for ward in wards:
            newest: dict[tuple[str, ...], tuple[Sample, dict[str, str], str]] = {}
            for n in newest_of(ward):
                sample, labels = n.sample, n.labels
                base = {
                    "ward": ward,
                    "agent": n.agent,
                    "name": n.name,
                    "target": n.target,
                    "role": labels.get("role", ""),
                    "line": labels.get("line", ""),
                }
                key = (n.check, *base.values())
                held = newest.get(key)
                if held is None or held[0].started < sample.started:
                    newest[key] = (sample, base, n.check)
            for sample, base, check in newest.values():
                # The series' label text, built once and shared by every family below.
                text = _label_text(base)
                with_check = {**base, "check": check}
                check_text = f'{text[:-1]},check="{_label_value(check)}"}}'
                success.add(with_check, 1.0 if sample.success else 0.0, check_text)
                duration.add(with_check, sample.duration_seconds, check_text)
                started.add(with_check, sample.started, check_text)
                if not sample.success:
                    failure.add({**with_check, "reason": sample.reason}, 1.0)
                per_check = targets.get(check)
                if per_check is None:
                    per_check = targets[check] = {}
                for metric, raw in sample.metrics.items():
                    try:
                        where = per_check[metric]
                    except KeyError:
                        where = per_check[metric] = _metric_target(families, check, metric)
                    if where is None:
                        continue
                    family, item, item_text = where
                    value = float(raw)
                    if item is None:
                        family.lines.append(f"{family.sample_name}{text} {number(value)}\n")
                        family.label_sets.append(base)
                    else:
                        family.lines.append(
                            f"{family.sample_name}{text[:-1]}{item_text}}} {number(value)}\n"
                        )
                        family.label_sets.append({**base, "item": item})
                    family.values.append(value)
        yield success
        yield duration
        yield started
        yield failure
        yield from families.values()


def registry_for(service: Service) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ReadinessCollector(service))
    return registry


def _label_value(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        value = value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def _label_text(labels: Mapping[str, str]) -> str:
    """``{k="v",...}`` with the values escaped; "" for no labels."""
    if not labels:
        return ""
    return "{" + ",".join([f'{k}="{_label_value(v)}"' for k, v in labels.items()]) + "}"


def _number(value: float) -> str:
    if value - value == 0.0:  # finite: inf - inf and nan - nan are nan
        return repr(value)
    if math.isnan(value):
        return "NaN"
    return "+Inf" if value > 0 else "-Inf"


def render(registry: CollectorRegistry) -> bytes:
    """The registry in the Prometheus text format (0.0.4), for gauge and counter families.

    Equivalent to ``generate_latest`` for what this module collects, but several times
    faster at national scale (hundreds of thousands of samples): this module's families
    arrive already formatted (see :class:`_Family`), and label names fixed here are not
    re-validated. tests/collector/test_exposition.py checks that both give the same families.
    """
    out: list[str] = []
    for family in registry.collect():
        kind = family.type
        if kind not in ("gauge", "counter"):
            raise ValueError(f"{family.name}: only gauges and counters render here, not {kind}")
        # prometheus_client names a counter family without _total; the text format with it.
        name = f"{family.name}_total" if kind == "counter" else family.name
        doc = family.documentation.replace("\\", "\\\\").replace("\n", "\\n")
        out.append(f"# HELP {name} {doc}\n# TYPE {name} {kind}\n")
        if isinstance(family, _Family):
            out.extend(family.lines)
        else:
            out.extend(
                [
                    f"{s.name}{_label_text(s.labels)} {_number(float(s.value))}\n"
                    for s in family.samples
                ]
            )
    return "".join(out).encode("utf-8")
