"""The collector's metrics about itself, on its own /metrics next to the wards' readiness.

One registry per :class:`collector.service.Service` (not the process-wide default), so every
test's service counts from zero. Metrics:

- ``process_*``: CPU, memory, open files (prometheus_client's ProcessCollector).
- ``wardready_collector_ingest_requests_total{code}``: ingest requests by HTTP status.
- ``wardready_collector_ingest_results_total``, ``..._duplicates_total``: results stored, and
  results already held (an agent's replay).
- ``wardready_collector_ingest_rejected_results_total{reason}``: results refused; ``reason`` is
  one of :data:`REASONS`. A batch refused before its results were read, or holding none,
  counts as one.
- ``wardready_collector_judge_duration_seconds``, ``..._judge_cpu_seconds_total``,
  ``..._judge_last_success_timestamp_seconds``, ``..._judge_errors_total``: judging every ward;
  the CPU counter over time is the judge's share of a core.
- ``wardready_collector_db_commit_duration_seconds``: storing one group of batches, commit
  included; ``wardready_collector_db_commit_batches``: how many batches each commit held.
- ``wardready_collector_result_age_seconds``: how old a result is when it arrives; an agent
  replaying its spool after an outage shows here.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from collector.ingest import IngestError

# The text format shows each counter's creation time as a gauge of its own (``*_created``):
# nothing reads them, and they double the series of every counter. This is the collector's
# process, whose only prometheus_client metrics are these.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Bounded words for refused results: a label value per free-text error would grow without end.
REASONS = (
    "auth",
    "schema",
    "range",
    "series_budget",
    "rate_limited",
    "too_large",
    "other",
)
_BY_STATUS = {401: "auth", 403: "auth", 413: "too_large", 422: "schema", 429: "rate_limited"}

_JUDGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_GROUP_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# From a result pushed at once (seconds) to a spool replayed after a week's outage.
_AGE_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0, 604800.0)


def reason_of(exc: IngestError) -> str:
    """The bounded reason word of a refusal."""
    given = getattr(exc, "reason", "")
    if given in REASONS:
        return str(given)
    return _BY_STATUS.get(exc.status, "other")


class BatchHistogram(Collector):
    """A histogram fed a batch of values at once: ingest observes the age of every result of
    a batch, and prometheus_client's Histogram takes a lock per value, which cost a tenth of
    the ingest rate."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self._name, self._doc, self._bounds = name, documentation, buckets
        self._counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe_many(self, values: Iterable[float]) -> None:
        bounds = self._bounds
        counts = [0] * (len(bounds) + 1)
        total = 0.0
        for v in values:
            counts[bisect_left(bounds, v)] += 1  # the first bucket whose bound is >= v
            total += v
        with self._lock:
            self._counts = [a + b for a, b in zip(self._counts, counts, strict=True)]
            self._sum += total

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, buckets = 0, []
        for bound, n in zip((*self._bounds, float("inf")), counts, strict=True):
            cumulative += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        yield HistogramMetricFamily(self._name, self._doc, buckets=buckets, sum_value=total)


class SelfMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)
        self.requests = Counter(
            "wardready_collector_ingest_requests",
            "Ingest requests answered, by HTTP status code.",
            ["code"],
            registry=r,
        )
        self.results = Counter(
            "wardready_collector_ingest_results",
            "Results stored by ingest (replays of results already held are not counted).",
            registry=r,
        )
        self.duplicates = Counter(
            "wardready_collector_ingest_duplicates",
            "Results received again that were already stored (an agent replaying its spool).",
            registry=r,
        )
        self.rejected = Counter(
            "wardready_collector_ingest_rejected_results",
            "Results refused at ingest, by reason; a batch refused before its results were "
            "read (auth, too_large, rate_limited, unreadable JSON), or holding none, counts "
            "as one.",
            ["reason"],
            registry=r,
        )
        for reason in REASONS:
            self.rejected.labels(reason)
        self.judge_duration = Histogram(
            "wardready_collector_judge_duration_seconds",
            "Time taken to judge every ward once.",
            buckets=_JUDGE_BUCKETS,
            registry=r,
        )
        self.judge_cpu = Counter(
            "wardready_collector_judge_cpu_seconds",
            "CPU time spent judging every ward (the judging thread's own, user and system).",
            registry=r,
        )
        self.judge_last_success = Gauge(
            "wardready_collector_judge_last_success_timestamp_seconds",
            "When the last judgement of every ward finished (Unix time); 0 before the first.",
            registry=r,
        )
        self.judge_errors = Counter(
            "wardready_collector_judge_errors",
            "Errors while judging: one per ward whose judging raised (that ward is then "
            "unknown with reason judge_error), and one per failed judgement of all wards.",
            registry=r,
        )
        self.commit_duration = Histogram(
            "wardready_collector_db_commit_duration_seconds",
            "Time taken to store one group of ingest batches in the database, commit included.",
            buckets=_COMMIT_BUCKETS,
            registry=r,
        )
        self.commit_batches = Histogram(
            "wardready_collector_db_commit_batches",
            "Ingest batches made durable by one commit (group commit: every batch waiting "
            "is stored in one transaction).",
            buckets=_GROUP_BUCKETS,
            registry=r,
        )
        self.result_age = BatchHistogram(
            "wardready_collector_result_age_seconds",
            "Age of each stored result when it arrived (arrival time minus the result's "
            "start): large values are agents replaying their spool.",
            _AGE_BUCKETS,
        )
        r.register(self.result_age)

    def refused(self, exc: IngestError, results: int = 1) -> None:
        self.rejected.labels(reason_of(exc)).inc(results)

    def render(self) -> bytes:
        return generate_latest(self.registry)
