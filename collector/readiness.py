"""Judging a ward against a profile: pure functions of (profile, ward state, now).

Per criterion, each matching series is judged on its own, then combined by ``require``:

- stale: the newest result is older than ``max_age_intervals`` × the series' interval;
  judged as failed, because a check that stopped reporting is no evidence of anything.
- unknown: fewer than ``min_samples`` values of the metric in the window (or last N).
- ok / failed: the aggregate compared with the threshold.

``require: all`` fails if any series fails, else is unknown if any is unknown;
``require: any`` passes if any series passes, else is unknown if any is unknown. A criterion
that matches no series fails: a missing check is not evidence of readiness.

The ward is not_ready when no agent ever reported (``no_data``), every agent is silent
(``agent_silent``) or a blocker failed; unknown when a blocker is unknown; ready otherwise.
Warnings never change the verdict; they are listed after the blockers.

Percentiles use the nearest-rank method: p95 of n values is the ceil(0.95·n)-th smallest, so
the figure shown is always one that was measured.

Every value the wire accepts is judged without raising: an average of finite values near the
float limit is taken without overflowing, and an error judging one ward anyway (a bug) makes
that ward ``unknown`` with the reason ``judge_error: ...`` while every other ward is judged
(:func:`evaluate_all`).
"""

from __future__ import annotations

import gc
import logging
import math
import operator
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import NamedTuple

from collector.profile import DURATION, SUCCESS, Condition, Criterion, Profile, format_duration
from collector.state import History, Series, State, WardState

log = logging.getLogger(__name__)

OK = "ok"
FAILED = "failed"
UNKNOWN = "unknown"
STALE = "stale"

READY = "ready"
NOT_READY = "not_ready"

NO_DATA = "no_data"
AGENT_SILENT = "agent_silent"
JUDGE_ERROR = "judge_error"

_COMPARE: Mapping[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
# How a comparison reads in a sentence when it holds, and when it does not.
_HOLDS = {"<": "<", "<=": "≤", ">": ">", ">=": "≥", "==": "=", "!=": "≠"}
_FAILS = {"<": "≥", "<=": ">", ">": "≤", ">=": "<", "==": "≠", "!=": "="}
_RANK = {"p50": 0.50, "p95": 0.95, "p99": 0.99}


@dataclass
class Evidence:
    series: str
    observed: float | None
    threshold: float
    op: str
    agg: str
    window: str
    samples: int
    at: float | None
    status: str
    detail: str


@dataclass
class CriterionResult:
    id: str
    title: str
    severity: str
    status: str
    evidence: list[Evidence]


@dataclass
class Verdict:
    ward: str
    verdict: str
    reasons: list[str]
    criteria: list[CriterionResult]
    evaluated_at: float


def format_age(seconds: float) -> str:
    """'45s', '12m 5s', '2h 3m', '3d 4h'."""
    if not math.isfinite(seconds):
        return "forever" if seconds > 0 else "0s"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s" if s % 60 else f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m" if s % 3600 // 60 else f"{s // 3600}h"
    return f"{s // 86400}d {s % 86400 // 3600}h" if s % 86400 // 3600 else f"{s // 86400}d"


def aggregate(agg: str, values: Sequence[float]) -> float:
    """``values`` oldest first, at least one."""
    if agg == "avg":
        return mean(values)
    if agg == "min":
        return min(values)
    if agg == "max":
        return max(values)
    if agg == "last":
        return values[-1]
    if agg == "count":
        return float(len(values))
    ordered = sorted(values)
    rank = math.ceil(_RANK[agg] * len(ordered))
    return ordered[max(rank, 1) - 1]


def mean(values: Sequence[float]) -> float:
    """The exact mean of finite values, even where their sum would overflow a float."""
    n = len(values)
    try:
        return math.fsum(values) / n
    except OverflowError:
        pass
    # Every partial sum of the v/2n is at most half the largest |v|, so this cannot overflow;
    # doubling is exact, or rounds past the float limit, which the clamp brings back to what
    # was measured. Only reached near ±1.8e308, where rounding each division does not matter.
    m = math.fsum(v / (2 * n) for v in values) * 2
    return min(max(m, min(values)), max(values))


def _values(
    history: History, metric: str, window: float | None, last: int | None, now: float
) -> tuple[list[float], float | None, int]:
    """The metric's values in the window (or the last N results), oldest first, the start
    time of the newest result that gave one, and the index of the first result looked at."""
    started = history.started
    n = len(started)
    first = bisect_left(started, now - window) if window is not None else max(0, n - (last or 0))
    if first >= n:
        return [], None, first
    newest = started[-1]
    if metric == SUCCESS:
        return [1.0 if ok else 0.0 for ok in history.success[first:]], newest, first
    if metric == DURATION:
        return history.durations[first:].tolist(), newest, first
    column = history.column(metric)
    if column is None:
        return [], None, first
    values = column[first:].tolist()
    # MISSING is NaN, the one value unequal to itself; a sum is NaN when any term is (or
    # when infinities cancel, which the slow path below handles as well).
    total = sum(values)
    if total == total:
        return values, newest, first
    at = None
    for i in range(n - 1, first - 1, -1):
        if column[i] == column[i]:
            at = started[i]
            break
    return [v for v in values if v == v], at, first


def _figure(value: float, small: str) -> str:
    # Base units make big plain numbers (14 days is 1209600 seconds, 3 Mbit/s 375000 bytes/s):
    # written out whole they read better than 1.21e+06.
    if 1e4 <= abs(value) < 1e15:
        return f"{value:.0f}"
    return format(value, small)


# The figures most criteria show (success is 0 or 1), formatted once.
_FIGURES = {0.0: "0", 1.0: "1"}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# Verdicts are reused until a moment this much before the one they could change at, so
# float rounding of "now - window" never keeps a verdict past its true end.
_SLACK = 1e-3


_SelectKey = tuple[str | None, str | None, tuple[tuple[str, str], ...]]


def _select_key(c: Criterion) -> _SelectKey:
    sel = c.select
    return sel.check, sel.name, tuple(sorted(sel.labels.items()))


class _Rule(NamedTuple):
    """A criterion with what judging it needs worked out once, not once per series."""

    criterion: Criterion
    key: _SelectKey
    metric: str
    agg: str
    window: float | None
    last: int | None
    compare: Callable[[float, float], bool]
    threshold: float
    span: str
    min_samples: int
    max_age: float
    # The metric is success and the aggregate one of its values: read from the flags.
    flag: Callable[[bytes], int] | None
    # Detail text around the figures.
    head: str
    holds: str
    fails: str
    short: str
    # An earlier rule that selects the same series with the same condition (e.g. "any line
    # up" and "every line up"): this one shares its evidence. -1: none.
    twin: int


_FLAG_AGGS: Mapping[str, Callable[[bytes], int]] = {
    "min": min,
    "max": max,
    "last": operator.itemgetter(-1),
}


def _rules(profile: Profile) -> list[_Rule]:
    rules: list[_Rule] = []
    first: dict[tuple[_SelectKey, Condition, float], int] = {}
    for i, c in enumerate(profile.criteria):
        twin = first.setdefault((_select_key(c), c.condition, c.max_age_intervals), i)
        rules.append(_rule(c, twin if twin != i else -1))
    return rules


def _rule(c: Criterion, twin: int) -> _Rule:
    cond = c.condition
    thr = _figure(cond.threshold, "g")
    return _Rule(
        c,
        _select_key(c),
        cond.metric,
        cond.agg,
        cond.window,
        cond.last,
        _COMPARE[cond.op],
        cond.threshold,
        cond.span,
        cond.min_samples,
        c.max_age_intervals,
        _FLAG_AGGS.get(cond.agg) if cond.metric == SUCCESS else None,
        f"{cond.metric} {cond.agg} ",
        f" {_HOLDS[cond.op]} {thr}",
        f" {_FAILS[cond.op]} {thr}",
        f"not enough data: {{}} over {cond.span}, need {cond.min_samples}",
        twin,
    )


def _judge(rule: _Rule, series: Series, now: float) -> tuple[Evidence, float]:
    """The evidence of one series, and until when it holds if no result arrives (-inf: it
    tells an age, so it changes with every judgement)."""
    c = rule.criterion
    cond = c.condition
    span, sid, thr, op, agg = rule.span, series.id, rule.threshold, cond.op, rule.agg
    history = series.history
    started = history.started
    if not started:
        ev = Evidence(sid, None, thr, op, agg, span, 0, None, UNKNOWN, "no results yet")
        return ev, math.inf
    newest = started[-1]
    age = now - newest
    limit = rule.max_age * series.interval_seconds
    if age > limit:
        detail = (
            f"stale: newest result {format_age(age)} old, over {c.max_age_intervals:g} × "
            f"{format_duration(series.interval_seconds)} interval"
        )
        return Evidence(sid, None, thr, op, agg, span, 0, newest, STALE, detail), -math.inf
    window = rule.window
    flag = rule.flag
    if flag is not None:
        # Most criteria: the last few runs succeeded. No list of values is needed.
        size = len(started)
        first = (
            bisect_left(started, now - window) if window is not None else size - (rule.last or 0)
        )
        first = max(first, 0)
        flags = history.success[first:]
        n = len(flags)
        at: float | None = newest if n else None
        observed = float(flag(flags)) if n >= rule.min_samples else 0.0
    else:
        values, at, first = _values(history, rule.metric, window, rule.last, now)
        n = len(values)
        observed = aggregate(agg, values) if n >= rule.min_samples else 0.0
    until = newest + limit
    if window is not None and first < len(started):
        # The oldest result in the window leaves it then.
        until = min(until, started[first] + window)
    until -= _SLACK
    if n < rule.min_samples:
        detail = rule.short.format(_plural(n, rule.metric + " sample"))
        return Evidence(sid, None, thr, op, agg, span, n, at, UNKNOWN, detail), until
    if not math.isfinite(observed):
        # Not from the wire (it refuses inf and nan), but a database edited by hand could
        # hold one; a verdict cannot rest on it, and JSON cannot carry it.
        detail = f"{rule.metric} {agg} over {span} is not a finite number"
        return Evidence(sid, None, thr, op, agg, span, n, at, UNKNOWN, detail), until
    ok = rule.compare(observed, thr)
    figure = _FIGURES.get(observed) or _figure(observed, ".4g")
    detail = (
        f"{rule.head}{figure} over {span} ({_plural(n, 'sample')})"
        f"{rule.holds if ok else rule.fails}"
    )
    if not ok and not history.success[-1]:
        # What the agent saw is what the officer on site acts on: refused, no_reply, ...
        detail += f"; latest run: {history.reasons[-1]}"
    status = OK if ok else FAILED
    return Evidence(sid, observed, thr, op, agg, span, n, at, status, detail), until


def _combine(require: str, evidence: list[Evidence]) -> str:
    statuses = {e.status for e in evidence}
    if require == "all":
        if FAILED in statuses or STALE in statuses:
            return FAILED
        return UNKNOWN if UNKNOWN in statuses else OK
    if OK in statuses:
        return OK
    return UNKNOWN if UNKNOWN in statuses else FAILED


def _matching(key: _SelectKey, series: Sequence[Series]) -> list[Series]:
    check, name, labels = key
    out = []
    for s in series:
        if check is not None and s.check != check:
            continue
        if name is not None and s.name != name:
            continue
        have = s.labels
        for k, v in labels:
            if have.get(k) != v:
                break
        else:
            out.append(s)
    return out


# Evidence judged before, by (criterion id, id of the series' history): the history it was
# judged from (kept, so the id stays its own), the evidence, and until when it holds.
_Known = dict[tuple[str, int], tuple[History, Evidence, float]]


def _criterion(
    rule: _Rule,
    matched: list[Series],
    now: float,
    twin: tuple[list[Evidence], float] | None,
    known: _Known | None = None,
    learned: _Known | None = None,
) -> tuple[CriterionResult, float]:
    c = rule.criterion
    if not matched:
        cond = c.condition
        detail = f"no check matches {c.select.describe()}"
        ev = Evidence(
            "", None, cond.threshold, cond.op, cond.agg, cond.span, 0, None, FAILED, detail
        )
        return CriterionResult(c.id, c.title, c.severity, FAILED, [ev]), math.inf
    if twin is not None:
        evidence, until = list(twin[0]), twin[1]
    else:
        evidence = []
        until = math.inf
        cid = c.id
        for s in matched:
            history = s.history
            hit = None if known is None else known.get((cid, id(history)))
            if hit is not None and hit[0] is history and now <= hit[2]:
                # A history never changes: its evidence holds until its own end.
                ev, holds = hit[1], hit[2]
            else:
                ev, holds = _judge(rule, s, now)
            # The one empty history is every new series': never keyed by.
            if learned is not None and holds > -math.inf and history.started:
                learned[(cid, id(history))] = (history, ev, holds)
            evidence.append(ev)
            if holds < until:
                until = holds
    result = CriterionResult(c.id, c.title, c.severity, _combine(c.require, evidence), evidence)
    return result, until


def _reason(r: CriterionResult) -> str:
    wanted = (FAILED, STALE) if r.status == FAILED else (UNKNOWN,)
    bad = [e for e in r.evidence if e.status in wanted]
    first = bad[0]
    line = f"{r.id}: {r.title} — " + (
        f"{first.series}: {first.detail}" if first.series else first.detail
    )
    if len(bad) > 1:
        line += f" (+{len(bad) - 1} more)"
    return line if r.severity == "blocker" else f"warning: {line}"


def _last_seen(ward: WardState) -> dict[str, float]:
    """When each agent was last heard from: a heartbeat, or the end of its newest result."""
    seen = dict(ward.agents_last_seen)
    for s in ward.series:
        h = s.history
        if h.started:
            end = h.started[-1] + h.durations[-1]
            if end > seen.get(s.agent, -math.inf):
                seen[s.agent] = end
    return seen


def _evaluate(
    profile: Profile,
    rules: list[_Rule],
    ward: WardState,
    now: float,
    known: _Known | None = None,
    learned: _Known | None = None,
) -> tuple[Verdict, float]:
    """The verdict, and until when it holds if nothing about the ward changes (-inf: its
    words tell an age, so it is new at every judgement)."""
    matches: dict[_SelectKey, list[Series]] = {}
    results: list[CriterionResult] = []
    held: list[float] = []
    until = math.inf
    for rule in rules:
        key = rule.key
        matched = matches.get(key)
        if matched is None:
            matched = matches[key] = _matching(key, ward.series)
        twin = rule.twin
        shared = (results[twin].evidence, held[twin]) if twin >= 0 else None
        result, holds = _criterion(rule, matched, now, shared, known, learned)
        results.append(result)
        held.append(holds)
        if holds < until:
            until = holds

    seen = _last_seen(ward)
    if not seen:
        reasons = [f"{NO_DATA}: no agent has reported"]
        return Verdict(ward.ward, NOT_READY, reasons, results, now), until

    limit = profile.silence_seconds
    silent = sorted((a, now - t) for a, t in seen.items() if now - t > limit)
    # An agent falls silent a silence limit after it was last heard from.
    until = -math.inf if silent else min(until, min(seen.values()) + limit - _SLACK)
    heard = ", ".join(f"{a} last heard {format_age(age)} ago" for a, age in silent)
    first: list[str] = []
    notes: list[str] = []
    if silent and len(silent) == len(seen):
        first.append(f"{AGENT_SILENT}: {heard} (limit {format_age(limit)})")
    elif silent:
        notes.append(f"warning: {AGENT_SILENT}: {heard} (limit {format_age(limit)})")

    blockers = [r for r in results if r.severity == "blocker"]
    warnings = [r for r in results if r.severity != "blocker"]
    failed = [r for r in blockers if r.status == FAILED]
    unknown = [r for r in blockers if r.status == UNKNOWN]
    reasons = first + [_reason(r) for r in failed] + [_reason(r) for r in unknown]
    reasons += notes
    reasons += [_reason(r) for r in warnings if r.status == FAILED]
    reasons += [_reason(r) for r in warnings if r.status == UNKNOWN]
    if first or failed:
        verdict = NOT_READY
    elif unknown:
        verdict = UNKNOWN
    else:
        verdict = READY
    return Verdict(ward.ward, verdict, reasons, results, now), until


def evaluate(profile: Profile, ward: WardState, now: float) -> Verdict:
    """Judge one ward at time ``now`` (epoch seconds)."""
    return _evaluate(profile, _rules(profile), ward, now)[0]


def judge_error(ward: str, exc: BaseException, now: float) -> Verdict:
    """The verdict of a ward whose judging raised: unknown, with the error as its reason."""
    text = " ".join(str(exc).split())[:200]
    reason = f"{JUDGE_ERROR}: {type(exc).__name__}" + (f": {text}" if text else "")
    return Verdict(ward, UNKNOWN, [reason], [], now)


def evaluate_all(
    profile: Profile,
    state: State,
    ward_ids: Iterable[str],
    now: float,
    on_error: Callable[[str, Exception], None] | None = None,
) -> dict[str, Verdict]:
    """Judge every ward in ``ward_ids``; a ward the state never heard of is no_data.

    A ward whose judging raises is ``unknown`` with a ``judge_error`` reason, logged with its
    id and passed to ``on_error``; the other wards are judged as ever.
    """
    rules = _rules(profile)
    out = {}
    with collection_paused():
        for w in ward_ids:
            judged = _judge_ward(profile, rules, state, w, now, on_error)
            out[w] = judged if isinstance(judged, Verdict) else judged[0]
    return out


@contextmanager
def collection_paused() -> Iterator[None]:
    """Pause Python's cycle collector while judging many wards.

    Judging every ward keeps some 90 new container objects per ward (its verdict), a third
    of a million at national scale: on the way they set off several collections of the
    whole heap, each visiting every object held. Verdicts hold no reference cycles, so
    nothing is lost by collecting once afterwards (the collector's own thresholds do, at the
    next allocations), which visits each object fewer times. Cyclic garbage other threads
    make meanwhile waits for that collection.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _judge_ward(
    profile: Profile,
    rules: list[_Rule],
    state: State,
    ward: str,
    now: float,
    on_error: Callable[[str, Exception], None] | None,
    known: _Known | None = None,
    learned: _Known | None = None,
) -> Verdict | tuple[Verdict, float, int]:
    """(verdict, until when it holds, the ward's version judged), or the judge_error
    verdict of a ward whose judging raised."""
    try:
        snapshot = state.ward(ward)
        verdict, until = _evaluate(profile, rules, snapshot, now, known, learned)
    except Exception as exc:
        log.exception("judging ward %s failed; it is unknown until judged again", ward)
        if on_error is not None:
            on_error(ward, exc)
        return judge_error(ward, exc, now)
    return verdict, until, snapshot.version


@dataclass(slots=True)
class _Held:
    """A ward's last verdict, the ward's version it was judged from, and until when it
    holds."""

    verdict: Verdict
    version: int
    until: float
    # The evidence it rests on, for judging the ward again: series whose history did not
    # change keep theirs.
    known: _Known


def _handed(v: Verdict, now: float) -> Verdict:
    """``v`` as judged at ``now``, for a caller that may annotate it: its reasons and criteria
    lists, and the evidence without a series ("no check matches"), which callers reword, are
    its own; the rest is shared with the verdict held here and must not be changed."""
    criteria = [
        c
        if all(e.series for e in c.evidence)
        else CriterionResult(
            c.id, c.title, c.severity, c.status, [e if e.series else replace(e) for e in c.evidence]
        )
        for c in v.criteria
    ]
    return Verdict(v.ward, v.verdict, list(v.reasons), criteria, now)


class Judge:
    """Judges wards again only when their verdict may have changed.

    A ward is judged again when its version in the state grew (a result, a contact, a
    forgotten series), when the time its last verdict holds until has passed (a result leaves
    a window, a series or an agent falls silent), or when its verdict tells an age (stale
    evidence, a silent agent), which changes with every judgement. Every other ward keeps its
    verdict, handed out afresh as of ``now``: the same verdict a full judgement would give.
    A ward judged again keeps the evidence of each series whose history did not change
    (histories never change in place) while that evidence holds. A full judgement
    (``full=True``, a new state, or a moment before the last one asked about) judges every
    series of every ward.
    """

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self._rules = _rules(profile)
        self._held: dict[str, _Held] = {}
        self._state: State | None = None
        self._now = -math.inf
        # How many wards the last judgement judged (the rest kept their verdict).
        self.judged = 0

    def judge(
        self,
        state: State,
        ward_ids: Iterable[str],
        now: float,
        on_error: Callable[[str, Exception], None] | None = None,
        *,
        full: bool = False,
    ) -> dict[str, Verdict]:
        """The verdict of every ward in ``ward_ids`` at ``now``, each a new object the caller
        may change. A ward whose judging raises is ``unknown`` with a ``judge_error`` reason,
        logged and passed to ``on_error``, and judged again the next time."""
        if state is not self._state or now < self._now:
            self._state, self._held, full = state, {}, True
        self._now = now
        with collection_paused():
            return self._judge(state, ward_ids, now, on_error, full)

    def _judge(
        self,
        state: State,
        ward_ids: Iterable[str],
        now: float,
        on_error: Callable[[str, Exception], None] | None,
        full: bool,
    ) -> dict[str, Verdict]:
        held = self._held
        versions = {} if full else state.versions()
        out: dict[str, Verdict] = {}
        judged = 0
        fresh: dict[str, _Held] = {}
        for w in ward_ids:
            h = held.get(w)
            if (
                h is not None
                and not full
                and now <= h.until
                and now >= h.verdict.evaluated_at
                and versions.get(w, 0) == h.version
            ):
                fresh[w] = h
                out[w] = _handed(h.verdict, now)
                continue
            judged += 1
            # A full judgement judges every series afresh: the safety net trusts nothing kept.
            known = None if full or h is None else h.known
            learned: _Known = {}
            got = _judge_ward(self.profile, self._rules, state, w, now, on_error, known, learned)
            if isinstance(got, Verdict):
                out[w] = got
                continue
            verdict, until, version = got
            fresh[w] = _Held(verdict, version, until, learned)
            out[w] = _handed(verdict, now)
        # Wards no longer asked for are forgotten.
        self._held = fresh
        self.judged = judged
        return out
