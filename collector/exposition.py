"""Prometheus /metrics: verdicts, criteria, agents, line quality and devices, per ward.

Built at scrape time by a custom collector on a private registry, from the service's cached
verdicts and in-memory state, so a scrape never waits for an evaluation of its own and never
reads results from the database.

Choices:

- A **series budget per ward** (``WARD_SERIES_BUDGET``): Prometheus holds every series of a
  national fleet in memory, and re-exporting every metric of every check made ~165 series a
  ward (a 22-check plan), 80 MB a scrape. A ward exports, in this order: its readiness
  (info, ready, verdict, reasons, criteria), its agents, line quality (``LINE_METRICS`` of
  the series a criterion of the profile selects) and device state (success and failure
  reason of ``printer_*`` and ``scanner_*`` checks). Past the budget the rest is cut, so a
  ward with too many lines or devices loses those, never its verdict; the cut is counted in
  ``wardready_collector_metrics_series_cut_total``. Everything else stays on the ward's
  page and on the agent's own /metrics.
- The shared systems (roles in ``SHARED_ROLES``) are the same for every ward: they are
  exported once for the fleet, as the number of wards whose newest run succeeded or failed
  and the soonest certificate expiry any ward sees.
- **Shards**: ``families(k, n)`` serves the wards whose ``zlib.crc32(ward) % n == k``, so
  Prometheus scrapes n smaller targets in parallel and a failed scrape blanks 1/n of the
  wards; fleet-level and the collector's own metrics come on shard 0 only.
- ``wardready_ward_criterion_ok`` is 1 for ok and 0 for failed (a stale check counts as
  failed, as in the verdict). A criterion whose state is unknown (too few samples) is not
  exported: 0 would raise alerts for wards that simply started, and -1 would break ``sum``
  and ``avg`` over the gauge. ``wardready_ward_verdict`` tells unknown apart.
- Line metrics carry the labels ``ward, agent, name, target, role, line`` and no others: a
  fixed, bounded set whatever labels agents invent. ``agent`` is there because two PCs in one
  ward running the same check would otherwise export the same series twice, which makes
  Prometheus reject the whole scrape; for the same reason, of two series that still collide
  (same name and target, labels differing only outside role/line), the newest result wins.
  A metric ``<base>__<item>`` would add ``item``, as the agent's endpoint does.
- A line metric has the help text and the type its check type declares
  (:mod:`shared.families`).
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
- ``wardready_check_failure_reason`` (value 1) names the reason of each device check whose
  newest run failed (a word from the check's bounded ``REASONS``): the device is then
  diagnosed from the dashboard. Passing checks export nothing here, so it stays
  small; the reason is not a label of ``wardready_check_success``, which would start a new
  series at every change of reason.
- ``wardready_agent_info`` (value 1) carries each agent's reported version.
"""

from __future__ import annotations

import math
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client.core import Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample as PromSample

from collector.clocks import CLOCK_SKEW
from collector.declared import check_types
from collector.readiness import AGENT_SILENT, FAILED, NO_DATA, UNKNOWN, Verdict
from collector.state import Newest, Sample
from shared.families import family_of

if TYPE_CHECKING:
    from collector.service import AgentInfo, Service
    from collector.wards import Ward

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
VERDICTS = ("ready", "not_ready", "unknown")
SERIES_LABELS = ("ward", "agent", "name", "target", "role", "line")
CHECK_LABELS = ("ward", "agent", "check", "name", "target", "role", "line")
SHARED_LABELS = ("check", "name", "target", "role")

# The most series one ward may add to a scrape. The shipped profile with the bench's 22-check
# plan needs about 40 (README, Metrics); Prometheus's sample_limit per shard is sized from it
# (prometheus/prometheus.yml).
WARD_SERIES_BUDGET = 64
# Line quality: the metrics of the line checks a criterion of the profile judges.
LINE_METRICS = {
    "icmp": ("loss_ratio", "rtt_avg_seconds", "jitter_seconds"),
    "stream": ("mos", "loss_ratio", "rtt_p95_seconds", "jitter_seconds"),
    "bandwidth": ("upload_bytes_per_second", "download_bytes_per_second"),
}
# Device state: up or failing, and why, for every printer and scanner check.
DEVICE_PREFIXES = ("printer_", "scanner_")
# Roles of the systems the city runs for every ward: exported once for the fleet (shard 0).
SHARED_ROLES = frozenset({"shared_system", "mail", "dns"})

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
    "wardready_check_failure_reason": (
        "Why the newest run of the check failed (one of the check's reasons), value 1; "
        "exported only while it fails.",
        (*CHECK_LABELS, "reason"),
    ),
    "wardready_shared_check_wards": (
        "Wards whose newest run of this check of a shared system (role shared_system, mail "
        "or dns) succeeded (state ok) or failed (state failed).",
        (*SHARED_LABELS, "state"),
    ),
    "wardready_shared_cert_expiry_seconds": (
        "The soonest expiry of the shared system's TLS certificate that any ward's newest "
        "check saw, in seconds from that check.",
        SHARED_LABELS,
    ),
    "wardready_metrics_ward_series_budget": (
        "The most series one ward may add to /metrics; a ward past it loses the rest.",
        (),
    ),
    "wardready_collector_metrics_series_cut": (
        "Series left out of /metrics scrapes because their ward was past its series budget.",
        (),
    ),
    "wardready_collector_metrics_wards_cut": (
        "Wards cut to their series budget, once per scrape that cut them.",
        (),
    ),
}
# Fleet-level and self families: only on shard 0 (and on the unsharded /metrics).
FLEET = (
    "wardready_wards",
    "wardready_verdicts_evaluated_timestamp_seconds",
    "wardready_shared_check_wards",
    "wardready_shared_cert_expiry_seconds",
)
SELF = (
    "wardready_metrics_ward_series_budget",
    "wardready_collector_metrics_series_cut",
    "wardready_collector_metrics_wards_cut",
)
COUNTERS = frozenset(
    {"wardready_collector_metrics_series_cut", "wardready_collector_metrics_wards_cut"}
)


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
    return _Family(name, FIXED[name][0], "counter" if name in COUNTERS else "gauge")


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
    """Builds the families of one scrape: every ward, or one shard of them.

    ``collect()`` (prometheus_client's interface) serves the unsharded /metrics; the route
    calls :meth:`families` with the shard it was asked for.
    """

    def __init__(self, service: Service, budget: int = WARD_SERIES_BUDGET) -> None:
        if budget < 1:
            raise ValueError(f"ward series budget: must be at least 1, not {budget}")
        self._service = service
        self.budget = budget
        self._cut_lock = threading.Lock()
        self._cut_series = 0
        self._cut_wards = 0

    def collect(self) -> Iterable[Metric]:
        return self.families(0, 1)

    def families(self, shard: int, shards: int) -> list[Metric]:
        """The families of ``shard`` (0..shards-1): its wards' series, and on shard 0 the
        fleet-level ones."""
        service = self._service
        verdicts: dict[str, Verdict] = service.verdicts()
        every_ward = service.wards()
        wards = (
            every_ward
            if shards == 1
            else {w: v for w, v in every_ward.items() if shard_of(w, shards) == shard}
        )
        agents: dict[str, list[AgentInfo]] = {}
        for a in service.agents():
            if a.ward in wards:
                agents.setdefault(a.ward, []).append(a)
        fam = {name: _family(name) for name in FIXED}
        build = _WardBuilder(fam, self._judged_keys(), self.budget)
        newest_of = service.state.newest
        for ward_id, ward in wards.items():
            build.ward(ward_id, ward, verdicts.get(ward_id), agents.get(ward_id, ()), newest_of)
        with self._cut_lock:
            self._cut_series += build.cut_series
            self._cut_wards += build.cut_wards
            cut_series, cut_wards = self._cut_series, self._cut_wards
        out: list[Metric] = [f for name, f in fam.items() if name not in FLEET and name not in SELF]
        out.extend(build.check_families.values())
        if shard == 0:
            out.extend(self._fleet(fam, verdicts, every_ward, newest_of))
            fam["wardready_metrics_ward_series_budget"].add({}, self.budget)
            fam["wardready_collector_metrics_series_cut"].add({}, cut_series)
            fam["wardready_collector_metrics_wards_cut"].add({}, cut_wards)
            out.extend(fam[name] for name in SELF)
        # A family with nothing to show would still cost its HELP and TYPE lines.
        return [f for f in out if f.samples]

    def _judged_keys(self) -> list[tuple[str | None, str | None, tuple[tuple[str, str], ...]]]:
        return [
            (c.select.check, c.select.name, tuple(sorted(c.select.labels.items())))
            for c in self._service.profile.criteria
        ]

    @staticmethod
    def _fleet(
        fam: dict[str, _Family],
        verdicts: Mapping[str, Verdict],
        wards: Mapping[str, object],
        newest_of: Callable[[str], list[Newest]],
    ) -> Iterator[Metric]:
        counts = dict.fromkeys(VERDICTS, 0)
        evaluated = 0.0
        for ward_id in wards:
            v = verdicts.get(ward_id)
            if v is not None:
                counts[v.verdict] = counts.get(v.verdict, 0) + 1
                evaluated = max(evaluated, v.evaluated_at)
        for verdict, count in counts.items():
            fam["wardready_wards"].add({"verdict": verdict}, count)
        if evaluated:
            fam["wardready_verdicts_evaluated_timestamp_seconds"].add({}, evaluated)
        # The central systems every ward probes, seen from the whole fleet: one series per
        # system rather than one per system and ward.
        states: dict[tuple[str, str, str, str], list[int]] = {}
        expiry: dict[tuple[str, str, str, str], float] = {}
        for ward_id in wards:
            for n in newest_of(ward_id):
                role = n.labels.get("role", "")
                if role not in SHARED_ROLES:
                    continue
                key = (n.check, n.name, n.target, role)
                ok_failed = states.get(key)
                if ok_failed is None:
                    ok_failed = states[key] = [0, 0]
                ok_failed[0 if n.sample.success else 1] += 1
                days = n.sample.metrics.get("cert_expiry_seconds")
                if days is not None and (key not in expiry or days < expiry[key]):
                    expiry[key] = float(days)
        for key in sorted(states):
            labels = dict(zip(("check", "name", "target", "role"), key, strict=True))
            ok, failed = states[key]
            fam["wardready_shared_check_wards"].add({**labels, "state": "ok"}, ok)
            fam["wardready_shared_check_wards"].add({**labels, "state": "failed"}, failed)
            if key in expiry:
                fam["wardready_shared_cert_expiry_seconds"].add(labels, expiry[key])
        yield from (fam[name] for name in FLEET)


class _WardBuilder:
    """One scrape's per-ward series, each ward held to the budget.

    A ward's series are gathered in the order of what matters most (readiness and when its
    agents were last heard, the rest of its agents' state, line quality, devices) and only
    the first ``budget`` are exported: a ward that reports more lines or devices than planned
    loses its least important series, never its verdict.
    """

    def __init__(
        self,
        fam: dict[str, _Family],
        judged: list[tuple[str | None, str | None, tuple[tuple[str, str], ...]]],
        budget: int,
    ) -> None:
        self.fam = fam
        self.judged = judged
        self.budget = budget
        self.check_families: dict[str, _Family] = {}
        self.cut_series = 0
        self.cut_wards = 0
        # Every ward has the same criteria: their part of the label text is formatted once.
        self._crit_tails: dict[tuple[str, str], str] = {}
        # check -> metric -> where it goes, looked up once per check type and metric.
        self._targets: dict[str, dict[str, _Target]] = {}

    def ward(
        self,
        ward_id: str,
        ward: Ward,
        v: Verdict | None,
        agents: Iterable[AgentInfo],
        newest_of: Callable[[str], list[Newest]],
    ) -> None:
        fam = self.fam
        # (family, labels, value, label text); added to the families once the budget is known.
        out: list[tuple[_Family, Mapping[str, str], float, str | None]] = []
        labels = {"ward": ward_id, "ward_name": ward.name, "working_group": ward.working_group}
        out.append((fam["wardready_ward_info"], {**labels, "kind": ward.kind}, 1.0, None))
        if v is not None:
            ready = 1.0 if v.verdict == "ready" else 0.0
            out.append((fam["wardready_ward_ready"], labels, ready, None))
            out.append(
                (fam["wardready_ward_verdict"], {"ward": ward_id, "verdict": v.verdict}, 1.0, None)
            )
        # When each agent was last heard comes before the reasons and criteria: a silent
        # ward has a reason and a failed criterion for each criterion, and WardSilent reads
        # this to say for how long.
        agent_rows = [(a, {"ward": a.ward, "agent": a.agent}) for a in agents]
        texts = [_label_text(agent) for _, agent in agent_rows]
        for (a, agent), text in zip(agent_rows, texts, strict=True):
            out.append(
                (fam["wardready_agent_last_seen_timestamp_seconds"], agent, a.last_seen, text)
            )
        if v is not None:
            out.extend((fam["wardready_ward_reason"], r, 1.0, None) for r in _reasons(v))
            ward_text = f'{{ward="{_label_value(ward_id)}"'
            for c in v.criteria:
                if c.status in ("ok", "failed"):
                    tail = self._crit_tails.get((c.id, c.severity))
                    if tail is None:
                        tail = self._crit_tails[c.id, c.severity] = (
                            f',criterion="{_label_value(c.id)}",'
                            f'severity="{_label_value(c.severity)}"}}'
                        )
                    out.append(
                        (
                            fam["wardready_ward_criterion_ok"],
                            {"ward": ward_id, "criterion": c.id, "severity": c.severity},
                            1.0 if c.status == "ok" else 0.0,
                            ward_text + tail,
                        )
                    )
        for (a, agent), text in zip(agent_rows, texts, strict=True):
            out.append((fam["wardready_agent_spool_depth"], agent, a.spool_depth, text))
            out.append(
                (fam["wardready_agent_spool_dropped_results"], agent, a.spool_dropped_total, text)
            )
            out.append((fam["wardready_agent_info"], {**agent, "version": a.version}, 1.0, None))
            if a.clock_offset_seconds is not None:
                offset = fam["wardready_agent_clock_offset_seconds"]
                out.append((offset, agent, a.clock_offset_seconds, text))
        self._checks(ward_id, newest_of(ward_id), out)
        if len(out) > self.budget:
            self.cut_series += len(out) - self.budget
            self.cut_wards += 1
            del out[self.budget :]
        for family, lb, value, formatted in out:
            family.add(lb, value, formatted)

    def _checks(
        self,
        ward: str,
        found: list[Newest],
        out: list[tuple[_Family, Mapping[str, str], float, str | None]],
    ) -> None:
        newest: dict[tuple[str, ...], tuple[Sample, dict[str, str], Newest]] = {}
        for n in found:
            kind = _kind(n.check)
            if kind is None:
                continue
            labels = n.labels
            base = {
                "ward": ward,
                "agent": n.agent,
                "name": n.name,
                "target": n.target,
                "role": labels.get("role", ""),
                "line": labels.get("line", ""),
            }
            if kind == LINE and not self._is_judged(n):
                continue
            key = (n.check, *base.values())
            held = newest.get(key)
            if held is None or held[0].started < n.sample.started:
                newest[key] = (n.sample, base, n)
        lines: list[tuple[_Family, Mapping[str, str], float, str | None]] = []
        devices: list[tuple[_Family, Mapping[str, str], float, str | None]] = []
        for sample, base, n in newest.values():
            text = _label_text(base)
            if _kind(n.check) == DEVICE:
                with_check = {**base, "check": n.check}
                check_text = f'{text[:-1]},check="{_label_value(n.check)}"}}'
                devices.append(
                    (
                        self.fam["wardready_check_success"],
                        with_check,
                        1.0 if sample.success else 0.0,
                        check_text,
                    )
                )
                if not sample.success:
                    devices.append(
                        (
                            self.fam["wardready_check_failure_reason"],
                            {**with_check, "reason": sample.reason},
                            1.0,
                            None,
                        )
                    )
                continue
            per_check = self._targets.get(n.check)
            if per_check is None:
                per_check = self._targets[n.check] = {}
            for metric in LINE_METRICS[n.check]:
                raw = sample.metrics.get(metric)
                if raw is None:
                    continue
                try:
                    where = per_check[metric]
                except KeyError:
                    where = per_check[metric] = _metric_target(self.check_families, n.check, metric)
                if where is None:
                    continue
                family, item, item_text = where
                if item is None:
                    lines.append((family, base, float(raw), text))
                else:
                    lines.append(
                        (family, {**base, "item": item}, float(raw), f"{text[:-1]}{item_text}}}")
                    )
        out.extend(lines)
        out.extend(devices)

    def _is_judged(self, n: Newest) -> bool:
        """Whether a criterion of the profile selects this series."""
        have = n.labels
        for check, name, labels in self.judged:
            if check is not None and n.check != check:
                continue
            if name is not None and n.name != name:
                continue
            if all(have.get(k) == v for k, v in labels):
                return True
        return False


LINE = "line"
DEVICE = "device"


def _kind(check: str) -> str | None:
    """Which part of the budget a check type's series belong to; None: not exported here."""
    if check in LINE_METRICS:
        return LINE
    if check.startswith(DEVICE_PREFIXES):
        return DEVICE
    return None


def shard_of(ward: str, shards: int) -> int:
    """The /metrics shard serving ``ward``: stable across processes and restarts (Python's
    own hash of a str is salted per process)."""
    return zlib.crc32(ward.encode("utf-8")) % shards


def registry_for(service: Service, budget: int = WARD_SERIES_BUDGET) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ReadinessCollector(service, budget))
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
    return render_families(registry.collect())


def render_families(families: Iterable[Metric]) -> bytes:
    """Families in the Prometheus text format (0.0.4): see :func:`render`."""
    out: list[str] = []
    for family in families:
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
