"""Recent results of every ward, in memory, so judging every ward needs no database.

One series is one (agent, check name, target) of a ward; it keeps its samples in ascending
order of start time, bounded by time (the profile's longest window plus a margin) and by
count. Results may arrive out of order (an agent replays its spool after an outage), so they
are inserted in place; a result with the start time of one already held is a replay and is
dropped.

A series' history is a :class:`History`: parallel columns (start times, outcomes, durations,
reasons, one column per metric the profile reads) in flat arrays rather than an object per
result, which holds a national fleet's full window in a fraction of the memory. A History is
never changed once a series holds it: an add builds a new one and swaps it in, so a reader
keeps a consistent history without copying it or holding the lock.

Memory is bounded per ward whatever its agents send. Each agent and each ward has a budget of
series: :meth:`State.admit` names the results of a batch that would create series past it
(ingest refuses the batch), and :meth:`State.add` skips them (a rebuild from a database that
holds more than the budget). Series that stop reporting are forgotten by :meth:`State.expire`.

Everything goes through one lock: ingest threads add while the evaluator reads.
:meth:`State.ward` hands out a snapshot, so evaluation never holds the lock. Each ward has a
version that grows with every change to what a verdict reads (results, contact, forgotten
series), so a judge can tell which wards changed since it last judged them.
"""

from __future__ import annotations

import bisect
import math
import threading
from array import array
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, NamedTuple, overload

from shared.wire import ResultRecord

if TYPE_CHECKING:
    from collector.profile import Profile

# Enough for any `last: N` a profile may ask for (collector.profile.MAX_LAST).
DEFAULT_KEEP_LAST = 64

_EMPTY: Mapping[str, float] = MappingProxyType({})

# Metric names and reasons are agent-chosen words: stop sharing new ones past this many, so a
# misbehaving agent cannot grow the table without end.
_MAX_NAMES = 4096

# A real ward PC runs a few dozen checks; these leave room for a hundred times that while
# keeping one ward's memory within tens of megabytes.
DEFAULT_AGENT_SERIES = 2000
DEFAULT_WARD_SERIES = 4000
# How much longer than it could matter to a verdict a silent series is still held: an agent
# whose clock runs late, or that replays its spool, still shows as stale with its figures
# rather than vanishing between two batches.
AGE_OUT_MARGIN_SECONDS = 3600.0

# A metric a result did not report, in a metric column. The wire refuses NaN, so no
# reported value is mistaken for it.
MISSING = math.nan


@dataclass(frozen=True, slots=True)
class Sample:
    started: float
    success: bool
    reason: str
    metrics: Mapping[str, float]
    duration_seconds: float


class History(NamedTuple):
    """A series' samples, oldest first, as parallel columns; never changed once built.

    ``columns[i]`` holds metric ``names[i]`` of each sample, :data:`MISSING` where that
    result did not report it.
    """

    started: array[float]
    success: bytes
    durations: array[float]
    reasons: tuple[str, ...]
    names: tuple[str, ...]
    columns: tuple[array[float], ...]

    def sample(self, i: int) -> Sample:
        metrics = {n: v for n, c in zip(self.names, self.columns, strict=True) if (v := c[i]) == v}
        return Sample(
            self.started[i], bool(self.success[i]), self.reasons[i], metrics, self.durations[i]
        )

    def column(self, metric: str) -> array[float] | None:
        try:
            return self.columns[self.names.index(metric)]
        except ValueError:
            return None


EMPTY_HISTORY = History(array("d"), b"", array("d"), (), (), ())


class Samples(Sequence[Sample]):
    """A History read as a sequence of :class:`Sample` (built on demand)."""

    __slots__ = ("_h",)

    def __init__(self, history: History) -> None:
        self._h = history

    def __len__(self) -> int:
        return len(self._h.started)

    @overload
    def __getitem__(self, i: int) -> Sample: ...
    @overload
    def __getitem__(self, i: slice) -> list[Sample]: ...
    def __getitem__(self, i: int | slice) -> Sample | list[Sample]:
        h = self._h
        if isinstance(i, slice):
            return [h.sample(j) for j in range(*i.indices(len(h.started)))]
        n = len(h.started)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("sample index out of range")
        return h.sample(i)

    def __iter__(self) -> Iterator[Sample]:
        h = self._h
        return (h.sample(j) for j in range(len(h.started)))


@dataclass(slots=True)
class Series:
    """One (agent, check name, target) of a ward; identity fields follow its newest result."""

    ward: str
    agent: str
    check: str
    name: str
    target: str
    labels: Mapping[str, str]
    interval_seconds: float
    history: History = EMPTY_HISTORY

    @property
    def samples(self) -> Samples:
        return Samples(self.history)

    @property
    def id(self) -> str:
        """The readable id shown in evidence: 'agent/name→target', or 'agent/name' when the
        target carries the check's own name."""
        if self.target == self.name:
            return f"{self.agent}/{self.name}"
        return f"{self.agent}/{self.name}→{self.target}"


class Newest(NamedTuple):
    """The newest result of one series, with the identity it was exported under."""

    agent: str
    check: str
    name: str
    target: str
    labels: Mapping[str, str]
    sample: Sample


@dataclass
class WardState:
    ward: str
    agents_last_seen: Mapping[str, float]
    series: Sequence[Series]
    # The ward's version when this snapshot was taken (see State.versions).
    version: int = 0


@dataclass(slots=True)
class _Ward:
    agents: dict[str, float] = field(default_factory=dict)
    series: dict[tuple[str, str, str], Series] = field(default_factory=dict)
    # The newest result of each series with all its metrics, for re-export, when the
    # history keeps only the metrics the profile reads.
    latest: dict[tuple[str, str, str], Sample] = field(default_factory=dict)
    # Series held per agent, for its budget.
    per_agent: dict[str, int] = field(default_factory=dict)
    # Results refused because they would have created a series past a budget.
    refused: int = 0
    version: int = 0


@dataclass(frozen=True)
class SeriesUsage:
    """What a ward holds against its series budgets, as the ward page shows it."""

    used: int
    budget: int
    agent_budget: int
    refused: int
    agents: Mapping[str, int]


# One result as history keeps it: started, success, duration, reason, kept metrics.
_Row = tuple[float, bool, float, str, Mapping[str, float]]


class State:
    """Recent samples of every ward.

    ``retention_seconds``: samples older than this, counted back from the newest sample of
    their series, are dropped; the newest ``keep_last`` samples of a series are kept
    whatever their age, so `last: N` criteria work for slow checks.
    ``keep_metrics``: when given, history keeps only these metrics (the profile's; see
    :meth:`for_profile`), which cuts memory several times at national scale; the newest
    sample of each series keeps all its metrics for :meth:`latest`.
    ``agent_budget``, ``ward_budget``: the most series one agent, and one ward, may hold.
    ``stale_intervals``: a series is kept while its newest result is younger than twice this
    many of its intervals or than the retention, whichever is longer, plus
    AGE_OUT_MARGIN_SECONDS: a slow check is not forgotten between runs, and one that stopped
    is shown stale before it goes.
    """

    def __init__(
        self,
        retention_seconds: float,
        max_samples_per_series: int = 512,
        *,
        keep_last: int = DEFAULT_KEEP_LAST,
        keep_metrics: Collection[str] | None = None,
        agent_budget: int = DEFAULT_AGENT_SERIES,
        ward_budget: int = DEFAULT_WARD_SERIES,
        stale_intervals: float = 3.0,
    ) -> None:
        if retention_seconds <= 0:
            raise ValueError("retention_seconds must be greater than 0")
        if max_samples_per_series < 1 or keep_last < 1:
            raise ValueError("max_samples_per_series and keep_last must be at least 1")
        if agent_budget < 1 or ward_budget < 1:
            raise ValueError("series budgets must be at least 1")
        self.agent_budget = agent_budget
        self.ward_budget = ward_budget
        self.stale_intervals = float(stale_intervals)
        self.retention_seconds = float(retention_seconds)
        self.max_samples_per_series = max_samples_per_series
        self.keep_last = min(keep_last, max_samples_per_series)
        self.keep_metrics = None if keep_metrics is None else frozenset(keep_metrics)
        self._lock = threading.Lock()
        self._wards: dict[str, _Ward] = {}
        # One str object per metric name and reason across all samples, instead of one per
        # result.
        self._names: dict[str, str] = {}
        # A result's metric names -> those history keeps (see add); bounded like _names.
        self._kept_of: dict[tuple[str, ...], tuple[str, ...]] = {}
        # Shared tuples of kept metric names: most series of a check type hold the same ones.
        self._name_sets: dict[tuple[str, ...], tuple[str, ...]] = {}
        # Shared label mappings: wards label their checks alike (role: wan, line: fibre).
        self._label_sets: dict[tuple[tuple[str, str], ...], Mapping[str, str]] = {}

    @classmethod
    def for_profile(
        cls,
        profile: Profile,
        max_samples_per_series: int = 512,
        *,
        agent_budget: int = DEFAULT_AGENT_SERIES,
        ward_budget: int = DEFAULT_WARD_SERIES,
    ) -> State:
        """A state that keeps exactly what ``profile`` needs."""
        return cls(
            profile.retention_seconds(),
            max_samples_per_series,
            keep_last=profile.keep_last(),
            keep_metrics=profile.metrics_used(),
            agent_budget=agent_budget,
            ward_budget=ward_budget,
            stale_intervals=max(c.max_age_intervals for c in profile.criteria),
        )

    def _over_budget(self, w: _Ward, ward: str, agent: str, extra_agent: int, extra: int) -> str:
        """Why one more series of ``agent`` does not fit, or "" when it does."""
        if w.per_agent.get(agent, 0) + extra_agent >= self.agent_budget:
            return (
                f"series budget of agent {agent} of ward {ward} reached "
                f"({self.agent_budget} series); existing series keep working"
            )
        if len(w.series) + extra >= self.ward_budget:
            return (
                f"series budget of ward {ward} reached ({self.ward_budget} series); "
                "existing series keep working"
            )
        return ""

    def admit(
        self, ward: str, agent: str, records: Sequence[ResultRecord]
    ) -> list[tuple[int, str]]:
        """(index, why) of each result that would create a series past a budget.

        Callers that then add must hold the same write order (the service's write lock), so
        that what was admitted still fits.
        """
        with self._lock:
            w = self._wards.get(ward) or _Ward()
            held = w.series
            new: set[tuple[str, str, str]] = set()
            over = []
            for i, r in enumerate(records):
                key = (agent, r.name, r.target)
                if key in held or key in new:
                    continue
                why = self._over_budget(w, ward, agent, len(new), len(new))
                if why:
                    over.append((i, why))
                else:
                    new.add(key)
            return over

    def refuse(self, ward: str, results: int) -> None:
        """Count results of ``ward`` refused for its series budget (shown by :meth:`usage`)."""
        with self._lock:
            w = self._wards.get(ward)
            if w is None:
                w = self._wards[ward] = _Ward()
            w.refused += results

    def usage(self, ward: str) -> SeriesUsage:
        with self._lock:
            w = self._wards.get(ward) or _Ward()
            return SeriesUsage(
                len(w.series), self.ward_budget, self.agent_budget, w.refused, dict(w.per_agent)
            )

    def age_out_seconds(self, interval_seconds: float) -> float:
        """How long after its newest result a series of this interval is forgotten."""
        held = max(self.retention_seconds, 2 * self.stale_intervals * interval_seconds)
        return held + AGE_OUT_MARGIN_SECONDS

    def expire(self, now: float) -> int:
        """Forget series whose newest result is too old to matter; returns how many."""
        removed = 0
        with self._lock:
            wards = list(self._wards.values())
        # A ward at a time, so ingest never waits for a pass over every series.
        for w in wards:
            with self._lock:
                gone = [
                    key
                    for key, s in w.series.items()
                    if not s.history.started
                    or now - s.history.started[-1] > self.age_out_seconds(s.interval_seconds)
                ]
                for key in gone:
                    del w.series[key]
                    w.latest.pop(key, None)
                    agent = key[0]
                    left = w.per_agent.get(agent, 1) - 1
                    if left > 0:
                        w.per_agent[agent] = left
                    else:
                        w.per_agent.pop(agent, None)
                if gone:
                    w.version += 1
                removed += len(gone)
        return removed

    def _name(self, word: str) -> str:
        names = self._names
        return names.setdefault(word, word) if len(names) < _MAX_NAMES else names.get(word, word)

    def _kept_names(self, names: tuple[str, ...]) -> tuple[str, ...]:
        """Of a result's metric names, those history keeps, as the shared name objects."""
        keep = self.keep_metrics
        kept = tuple(self._name(k) for k in names if keep is None or k in keep)
        if len(self._kept_of) < _MAX_NAMES:
            self._kept_of[names] = kept
        return kept

    def _interned(self, metrics: Mapping[str, float]) -> Mapping[str, float]:
        return {self._name(k): v for k, v in metrics.items()} if metrics else _EMPTY

    def _labels(self, labels: Mapping[str, str]) -> Mapping[str, str]:
        """``labels`` as a mapping shared by every series labelled alike; never changed."""
        shared = self._label_sets
        key = tuple(labels.items())
        held = shared.get(key)
        if held is None:
            held = {self._name(k): self._name(v) for k, v in key}
            if len(shared) < _MAX_NAMES:
                shared[key] = held
        return held

    def _name_set(self, names: tuple[str, ...]) -> tuple[str, ...]:
        shared = self._name_sets
        if len(shared) < _MAX_NAMES:
            return shared.setdefault(names, names)
        return shared.get(names, names)

    def add(self, ward: str, agent: str, records: Sequence[ResultRecord]) -> int:
        """Insert results of one agent of ``ward``, in order of start time, then prune.

        Returns how many results were skipped because their series did not fit a budget.
        """
        skipped = 0
        with self._lock:
            w = self._wards.get(ward)
            if w is None:
                w = self._wards[ward] = _Ward()
            # New rows of each series touched, in the order they came.
            touched: dict[tuple[str, str, str], list[_Row]] = {}
            # Only the newest result of a series is exported whole, so only it keeps every
            # metric; building that for each result of a long replay would be wasted work.
            newest: dict[tuple[str, str, str], ResultRecord] = {}
            names, kept_of = self._names, self._kept_of
            for r in records:
                key = (agent, r.name, r.target)
                s = w.series.get(key)
                if s is None:
                    if self._over_budget(w, ward, agent, 0, 0):
                        skipped += 1
                        continue
                    s = w.series[key] = Series(
                        ward,
                        agent,
                        r.check,
                        r.name,
                        r.target,
                        self._labels(r.labels),
                        r.interval_seconds,
                    )
                    w.per_agent[agent] = w.per_agent.get(agent, 0) + 1
                metrics = r.metrics
                if metrics:
                    # A check reports the same metric names every time: which of them history
                    # keeps is worked out once per set of names, not once per result.
                    names_of = tuple(metrics)
                    kept_names = kept_of.get(names_of)
                    if kept_names is None:
                        kept_names = self._kept_names(names_of)
                    kept = {k: metrics[k] for k in kept_names} if kept_names else _EMPTY
                else:
                    kept = _EMPTY
                reason = names.get(r.reason) or self._name(r.reason)
                rows = touched.get(key)
                if rows is None:
                    rows = touched[key] = []
                rows.append((r.started, r.success, r.duration_seconds, reason, kept))
                held = s.history.started
                top = newest.get(key)
                if (not held or r.started > held[-1]) and (top is None or r.started > top.started):
                    newest[key] = r
            for key, r in newest.items():
                s = w.series[key]
                if s.check != r.check:
                    s.check = r.check
                if s.labels != r.labels:
                    s.labels = self._labels(r.labels)
                s.interval_seconds = r.interval_seconds
            changed = False
            for key, rows in touched.items():
                s = w.series[key]
                history = self._merged(s.history, rows)
                if history is not s.history:
                    s.history = history
                    changed = True
            for key, r in newest.items():
                w.latest[key] = Sample(
                    r.started, r.success, self._name(r.reason), self._interned(r.metrics),
                    r.duration_seconds,
                )  # fmt: skip
            if changed or newest:
                w.version += 1
        return skipped

    def _merged(self, old: History, rows: list[_Row]) -> History:
        """``old`` with ``rows`` inserted in order of start time (replays dropped), pruned.

        Returns ``old`` itself when nothing was kept.
        """
        held = old.started
        names = old.names
        added = tuple(k for row in rows for k in row[4] if k not in names)
        if added:
            names = self._name_set((*names, *dict.fromkeys(added)))
        in_order = all(rows[i][0] < rows[i + 1][0] for i in range(len(rows) - 1))
        if in_order and (not held or rows[0][0] > held[-1]):
            # The usual case: newer results at the end of the history.
            new = rows
            base = old
        else:
            seen = set(held)
            new = []
            for row in rows:
                if row[0] not in seen:
                    seen.add(row[0])
                    new.append(row)
            if not new:
                return old
            new.sort(key=lambda row: row[0])
            # Rare (replays): rebuild the whole history in order.
            merged = [
                (old.started[i], bool(old.success[i]), old.durations[i], old.reasons[i],
                 {n: v for n, c in zip(old.names, old.columns, strict=True)
                  if (v := c[i]) == v})
                for i in range(len(held))
            ] + new  # fmt: skip
            merged.sort(key=lambda row: row[0])
            new = merged
            base = EMPTY_HISTORY
        started = base.started + array("d", [row[0] for row in new])
        success = base.success + bytes([row[1] for row in new])
        durations = base.durations + array("d", [row[2] for row in new])
        reasons = base.reasons + tuple(row[3] for row in new)
        n_base = len(base.started)
        columns = []
        for i, name in enumerate(names):
            head = base.columns[i] if i < len(base.names) else array("d", [MISSING]) * n_base
            columns.append(head + array("d", [row[4].get(name, MISSING) for row in new]))
        cut = self._cut(started)
        if cut:
            started, success, durations = started[cut:], success[cut:], durations[cut:]
            reasons = reasons[cut:]
            columns = [c[cut:] for c in columns]
        return History(started, success, durations, reasons, names, tuple(columns))

    def _cut(self, started: array[float]) -> int:
        """How many of the oldest samples the retention and the count bound drop."""
        n = len(started)
        old = bisect.bisect_left(started, started[-1] - self.retention_seconds)
        cut = min(old, n - self.keep_last)
        return max(cut, n - self.max_samples_per_series, 0)

    def heard(self, ward: str, agent: str, at: float) -> None:
        """Record that ``agent`` of ``ward`` was heard from at ``at`` (any batch counts)."""
        with self._lock:
            w = self._wards.get(ward)
            if w is None:
                w = self._wards[ward] = _Ward()
            if at > w.agents.get(agent, float("-inf")):
                w.agents[agent] = at
                w.version += 1

    def ward(self, ward: str) -> WardState:
        """A snapshot of one ward's state, safe to read while results keep arriving.

        Histories are shared, not copied: they never change once held."""
        with self._lock:
            w = self._wards.get(ward)
            if w is None:
                return WardState(ward, {}, [])
            return WardState(
                ward,
                dict(w.agents),
                [
                    Series(
                        s.ward,
                        s.agent,
                        s.check,
                        s.name,
                        s.target,
                        s.labels,
                        s.interval_seconds,
                        s.history,
                    )
                    for s in w.series.values()
                ],
                w.version,
            )

    def wards(self) -> Iterable[str]:
        with self._lock:
            return list(self._wards)

    def versions(self) -> dict[str, int]:
        """Each ward's version: it grows whenever what a verdict reads of the ward changes."""
        with self._lock:
            return {ward: w.version for ward, w in self._wards.items()}

    def newest(self, ward: str) -> list[Newest]:
        """The newest result of each series of ``ward`` with its series' identity.

        What :meth:`latest` tells, without copying series: a /metrics scrape reads this for
        every ward, and a Series copy per series cost more than the rest of the scrape.
        Safe to keep: a series' labels mapping is replaced, never changed in place.
        """
        with self._lock:
            w = self._wards.get(ward)
            if w is None:
                return []
            latest = w.latest
            return [
                Newest(s.agent, s.check, s.name, s.target, s.labels, latest[key])
                for key, s in w.series.items()
            ]

    def latest(self, ward: str) -> list[tuple[Series, Sample]]:
        """The newest result of each series of ``ward`` with all its metrics.

        Each Series returned holds only that newest sample, not the history.
        """
        with self._lock:
            w = self._wards.get(ward)
            if w is None:
                return []
            out = []
            for key, s in w.series.items():
                newest = w.latest[key]
                names = tuple(newest.metrics)
                one = History(
                    array("d", [newest.started]), bytes([newest.success]),
                    array("d", [newest.duration_seconds]), (newest.reason,), names,
                    tuple(array("d", [newest.metrics[n]]) for n in names),
                )  # fmt: skip
                copy = Series(s.ward, s.agent, s.check, s.name, s.target, s.labels,
                              s.interval_seconds, one)  # fmt: skip
                out.append((copy, newest))
            return out
