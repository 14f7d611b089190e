"""The agent's own Prometheus endpoint: the latest result of every check, and the agent itself.

Families are built at scrape time from ``Board`` (latest Result per check, run and failure
counters), so a check that is no longer configured simply stops appearing. Label values come
from the config (check, name, target, config labels, ward), so their number is bounded by it.

A check metric ``<metric>`` becomes ``wardready_<type>_<metric>``, with the help text and the
type (gauge or counter) its check type declares; ``<metric>__<item>`` adds the label ``item``
(see :mod:`shared.families`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import psutil
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from agent.scheduler import CheckSpec
from checks.core import Result
from shared.families import Family, family_of

log = logging.getLogger(__name__)

_PROCESS = psutil.Process()


def process_usage() -> tuple[int, float]:
    """This process's resident memory in bytes and CPU time (user + system) in seconds."""
    with _PROCESS.oneshot():
        rss = _PROCESS.memory_info().rss
        cpu = _PROCESS.cpu_times()
    return int(rss), float(cpu.user + cpu.system)


class SpoolStats(Protocol):
    def depth(self) -> int: ...

    @property
    def dropped_total(self) -> int: ...

    def counts(self, kind: str) -> dict[str, int]: ...


class PlanStats(Protocol):
    @property
    def version(self) -> int | None: ...

    @property
    def errors_total(self) -> int: ...

    @property
    def polls(self) -> dict[str, int]: ...


class PushStats(Protocol):
    @property
    def last_push_success(self) -> float | None: ...

    @property
    def push_failures_total(self) -> int: ...

    @property
    def clock_offset(self) -> float | None: ...


@dataclass
class _Entry:
    spec: CheckSpec
    latest: Result | None = None
    runs: int = 0


class Board:
    """Latest result and cumulative counters per configured check; fed by the scheduler."""

    def __init__(self, specs: Sequence[CheckSpec]) -> None:
        self._lock = threading.Lock()
        self._entries = {s.name: _Entry(s) for s in specs}
        self._failures: dict[tuple[str, str], int] = {}

    def record(self, spec: CheckSpec, result: Result) -> None:
        with self._lock:
            entry = self._entries.setdefault(spec.name, _Entry(spec))
            entry.spec, entry.latest = spec, result
            entry.runs += 1
            if not result.success:
                key = (spec.name, result.reason)
                self._failures[key] = self._failures.get(key, 0) + 1

    def retain(self, names: Iterable[str]) -> None:
        """Forget every check not in ``names`` (a check removed from the config)."""
        keep = set(names)
        with self._lock:
            self._entries = {n: e for n, e in self._entries.items() if n in keep}
            self._failures = {k: v for k, v in self._failures.items() if k[0] in keep}

    def snapshot(self) -> tuple[list[_Entry], dict[tuple[str, str], int]]:
        with self._lock:
            entries = [_Entry(e.spec, e.latest, e.runs) for e in self._entries.values()]
            return entries, dict(self._failures)


class AgentCollector(Collector):
    def __init__(
        self,
        board: Board,
        *,
        ward: str,
        agent: str,
        version: str,
        spool: SpoolStats | None = None,
        pushes: PushStats | None = None,
        plan: PlanStats | None = None,
    ) -> None:
        self.board = board
        self.ward = ward
        self.agent = agent
        self.version = version
        self.spool = spool
        self.pushes = pushes
        self.plan = plan

    def collect(self) -> Iterable[Metric]:
        entries, failures = self.board.snapshot()
        yield from self._checks(entries, failures)
        yield from self._agent()

    def _checks(
        self, entries: list[_Entry], failures: dict[tuple[str, str], int]
    ) -> Iterable[Metric]:
        extra = sorted({k for e in entries for k in e.spec.target.labels})
        names = ["check", "name", "target", *extra]

        def values(spec: CheckSpec) -> list[str]:
            labels = spec.target.labels
            return [spec.check, spec.name, spec.target.name, *(labels.get(k, "") for k in extra)]

        success = GaugeMetricFamily(
            "wardready_check_success",
            "1 if the latest run of the check succeeded, else 0",
            None,
            names,
        )
        duration = GaugeMetricFamily(
            "wardready_check_duration_seconds",
            "How long the latest run of the check took",
            labels=names,
        )
        runs = CounterMetricFamily(
            "wardready_check_runs",
            "Runs of the check since the agent started",
            labels=["check", "name"],
        )
        failed = CounterMetricFamily(
            "wardready_check_failures",
            "Failed runs of the check since the agent started, by reason",
            labels=["check", "name", "reason"],
        )
        # sample name -> (its family, [(label values, item, value)])
        per_family: dict[str, tuple[Family, list[tuple[list[str], str | None, float]]]] = {}
        kinds = {e.spec.name: e.spec.check for e in entries}
        for e in entries:
            runs.add_metric([e.spec.check, e.spec.name], e.runs)
            if e.latest is None:
                continue
            v = values(e.spec)
            success.add_metric(v, 1.0 if e.latest.success else 0.0)
            duration.add_metric(v, e.latest.duration_seconds)
            for metric, value in e.latest.metrics.items():
                family = family_of(e.spec.check, metric, e.spec.kind)
                if family is None:
                    continue  # one malformed name must not break the whole scrape
                held = per_family.setdefault(family.sample_name, (family, []))
                held[1].append((v, family.item, float(value)))
        for (name, reason), count in sorted(failures.items()):
            if name in kinds:
                failed.add_metric([kinds[name], name, reason], count)
        yield success
        yield duration
        yield runs
        yield failed
        for _, (family, samples) in sorted(per_family.items()):
            yield _exported(family, names, samples)

    def _agent(self) -> Iterable[Metric]:
        rss, cpu = process_usage()
        yield GaugeMetricFamily(
            "wardready_agent_resident_memory_bytes", "Resident memory of the agent", value=rss
        )
        yield CounterMetricFamily(
            "wardready_agent_cpu_seconds", "CPU time (user + system) used by the agent", value=cpu
        )
        if self.spool is not None:
            yield GaugeMetricFamily(
                "wardready_agent_spool_depth",
                "Results waiting in the spool for the collector",
                value=self.spool.depth(),
            )
            yield CounterMetricFamily(
                "wardready_agent_spool_dropped",
                "Results dropped because the spool was full (kept across restarts)",
                value=self.spool.dropped_total,
            )
            dropped = CounterMetricFamily(
                "wardready_agent_spool_dropped_by_reason",
                "Results lost, by reason: spool_full (its bound), unreadable (a damaged row), "
                "disk_full (the file system refused the write)",
                labels=["reason"],
            )
            rejected = CounterMetricFamily(
                "wardready_agent_results_rejected",
                "Results the collector refused for good and the spool set aside, by HTTP status",
                labels=["reason"],
            )
            for family, kind in ((dropped, "dropped"), (rejected, "rejected")):
                for reason, n in sorted(self.spool.counts(kind).items()):
                    family.add_metric([reason], n)
                yield family
        if self.pushes is not None:
            yield GaugeMetricFamily(
                "wardready_agent_last_push_success_timestamp_seconds",
                "Unix time of the last push the collector accepted; 0 before the first",
                value=self.pushes.last_push_success or 0.0,
            )
            yield CounterMetricFamily(
                "wardready_agent_push_failures",
                "Pushes to the collector that failed since the agent started",
                value=self.pushes.push_failures_total,
            )
            if self.pushes.clock_offset is not None:
                yield GaugeMetricFamily(
                    "wardready_agent_clock_offset_seconds",
                    "The collector's clock minus this PC's, from the last answer; results are "
                    "corrected by it when it exceeds 2 s",
                    value=self.pushes.clock_offset,
                )
        if self.plan is not None:
            yield from self._plan(self.plan)
        info = InfoMetricFamily("wardready_agent", "The agent's version, ward and name")
        info.add_metric([], {"version": self.version, "ward": self.ward, "agent": self.agent})
        yield info

    def _plan(self, plan: PlanStats) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "wardready_agent_plan_version",
            "Version of the collector's check plan the agent runs; -1 before one was applied",
            value=-1 if plan.version is None else plan.version,
        )
        yield CounterMetricFamily(
            "wardready_agent_plan_errors",
            "Plans from the collector refused because they did not validate",
            value=plan.errors_total,
        )
        polls = CounterMetricFamily(
            "wardready_agent_plan_polls",
            "Plan requests to the collector, by outcome: changed (a new plan applied), "
            "not_modified (304), invalid (refused), failed (no answer or an HTTP error)",
            labels=["outcome"],
        )
        for outcome, n in sorted(plan.polls.items()):
            polls.add_metric([outcome], n)
        yield polls


def _exported(
    family: Family, names: list[str], samples: list[tuple[list[str], str | None, float]]
) -> Metric:
    # A family whose first sample had no item may still get some with one (a check type
    # unknown here), so the label set is decided by all of them.
    with_item = any(item is not None for _, item, _ in samples)
    labels = [*names, "item"] if with_item else names
    out: GaugeMetricFamily | CounterMetricFamily
    if family.kind == "counter":
        out = CounterMetricFamily(family.name, family.help, labels=labels)
    else:
        out = GaugeMetricFamily(family.name, family.help, labels=labels)
    for v, item, value in samples:
        out.add_metric([*v, item or ""] if with_item else v, value)
    return out


class MetricsServer:
    """The /metrics endpoint on ``host:port`` (port 0 picks a free one: see ``port``)."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._server, self._thread = start_http_server(port, host, registry=registry)
        self.host = host
        self.port: int = self._server.server_port
        log.info("metrics on http://%s:%d/metrics", _bracket(host), self.port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def make_registry(collector: AgentCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
