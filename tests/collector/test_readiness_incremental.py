"""Incremental judging (readiness.Judge): it re-judges only the wards whose verdict may have
changed, and gives at every moment the verdicts a full judgement gives."""

from __future__ import annotations

import gc
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.profile import Profile
from collector.readiness import STALE, Judge, evaluate_all
from collector.state import State
from shared.wire import ResultRecord
from tests.collector.test_readiness import make_profile, record

T0 = 1_750_000_000.0
WARDS = ["ward-a", "ward-b", "ward-c"]
AGENTS = ["pc-01", "pc-02"]
INTERVAL = 30.0

# Short spans, so that time steps of a few minutes slide windows, make series stale and
# agents silent; staleness and silence (whose words tell an age, so such a ward is judged
# every time) come late enough that windows slide first.
PROFILE = """\
version: 1
silence_seconds: 400
criteria:
  - id: wan_up
    title: WAN line answers
    severity: blocker
    select: {check: icmp, labels: {role: wan}}
    require: any
    condition: {metric: success, agg: min, last: 3, op: ">=", threshold: 1}
  - id: wan_loss
    title: WAN loss under 1% over 2 min
    severity: blocker
    select: {check: icmp, labels: {role: wan}}
    require: any
    condition: {metric: loss_ratio, agg: avg, window: 2m, op: "<", threshold: 0.01,
                min_samples: 2}
    max_age_intervals: 5
  - id: wan_rtt
    title: WAN round trip p95 under 150 ms over 1 min
    severity: warning
    select: {check: icmp, labels: {role: wan}}
    condition: {metric: rtt_avg_seconds, agg: p95, window: 1m, op: "<", threshold: 0.15}
    max_age_intervals: 6
  - id: dms_up
    title: Document Management System answers
    severity: blocker
    select: {check: http, labels: {role: shared_system}}
    condition: {metric: success, agg: min, last: 2, op: ">=", threshold: 1}
    max_age_intervals: 5
  - id: vc
    title: A video-conference check exists
    severity: warning
    select: {check: stream}
    condition: {metric: mos, agg: last, last: 1, op: ">=", threshold: 4}
"""

SERIES: list[dict[str, Any]] = [
    {"check": "icmp", "name": "wan-fibre", "target": "10.0.0.1", "labels": {"role": "wan"}},
    {"check": "icmp", "name": "wan-4g", "target": "10.9.0.1", "labels": {"role": "wan"}},
    {"check": "http", "name": "dms", "target": "https://dms/", "labels": {"role": "shared_system"}},
]


def result(series: int, started: float, success: bool, loss: float | None) -> ResultRecord:
    s = SERIES[series]
    metrics = {"rtt_avg_seconds": 0.02 + (loss or 0.0)}
    if loss is not None:
        metrics["loss_ratio"] = loss
    icmp = s["check"] == "icmp"
    return record(s, 1, started, success=success, metrics=metrics if icmp else {})


adds = st.tuples(
    st.just("add"),
    st.sampled_from(WARDS),
    st.sampled_from(AGENTS),
    st.integers(0, len(SERIES) - 1),
    # How long before now the result started (negative: an agent clock a little ahead).
    st.floats(-20, 300),
    st.booleans(),
    st.one_of(st.none(), st.sampled_from([0.0, 0.005, 0.2])),
)
heards = st.tuples(st.just("heard"), st.sampled_from(WARDS), st.sampled_from(AGENTS),
                   st.floats(0, 200))  # fmt: skip
# Mostly short steps, so windows slide between results; now and then a long one.
ticks = st.tuples(st.just("tick"), st.one_of(st.floats(0, 40), st.floats(0, 240)))
expires = st.tuples(st.just("expire"))
operations = st.lists(st.one_of(adds, adds, ticks, ticks, heards, expires), min_size=1, max_size=80)


def apply(state: State, now: float, op: tuple[Any, ...]) -> float:
    """Carry out one operation; returns the new time."""
    kind = op[0]
    if kind == "add":
        _, ward, agent, series, back, success, loss = op
        state.add(ward, agent, [result(series, now - back, success, loss)])
    elif kind == "heard":
        _, ward, agent, back = op
        state.heard(ward, agent, now - back)
    elif kind == "tick":
        now += op[1]
    else:
        # Far enough ahead that series do go; the judge must notice they went.
        state.expire(now + 5000)
    return now


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations)
def test_incremental_judging_gives_the_full_verdicts_at_every_step(
    ops: list[tuple[Any, ...]],
) -> None:
    profile = make_profile(PROFILE)
    state = State.for_profile(profile)
    judge = Judge(profile)
    now = T0
    wards = [*WARDS, "ward-never-heard"]
    for op in ops:
        now = apply(state, now, op)
        got = judge.judge(state, wards, now)
        assert got == evaluate_all(profile, state, wards, now), op
        # What the caller does to a verdict handed out stays with the caller.
        for v in got.values():
            v.reasons.append("annotated by the caller")
            for c in v.criteria:
                for e in c.evidence:
                    if not e.series:
                        e.detail = "reworded by the caller"


def ready_ward(profile: Profile, wards: list[str], now: float) -> State:
    state = State.for_profile(profile)
    for ward in wards:
        for agent in AGENTS:
            state.heard(ward, agent, now)
        for step in range(6):
            started = now - 170 + step * INTERVAL
            state.add(ward, "pc-01", [result(i, started, True, 0.0) for i in range(len(SERIES))])
    return state


def test_only_wards_whose_data_changed_are_judged_again() -> None:
    profile = make_profile(PROFILE)
    state = ready_ward(profile, WARDS, T0)
    judge = Judge(profile)
    first = judge.judge(state, WARDS, T0)
    assert judge.judged == len(WARDS)
    assert {v.verdict for v in first.values()} == {"ready"}
    again = judge.judge(state, WARDS, T0 + 1)
    assert judge.judged == 0
    assert again == evaluate_all(profile, state, WARDS, T0 + 1)
    # One ward's fibre and backup fail: only that ward is judged, and its verdict moves.
    state.add("ward-b", "pc-01", [result(0, T0 + 2, False, 1.0), result(1, T0 + 2, False, 1.0)])
    moved = judge.judge(state, WARDS, T0 + 3)
    assert judge.judged == 1
    assert moved["ward-b"].verdict == "not_ready"
    assert moved["ward-a"].verdict == moved["ward-c"].verdict == "ready"
    assert moved == evaluate_all(profile, state, WARDS, T0 + 3)


def test_a_ward_going_stale_by_time_alone_is_judged_again() -> None:
    profile = make_profile(PROFILE)
    state = ready_ward(profile, ["ward-a"], T0)
    judge = Judge(profile)
    assert judge.judge(state, ["ward-a"], T0)["ward-a"].verdict == "ready"
    # Agents keep calling in, but no result arrives: the newest result (T0 - 20) falls past
    # 2 × 30 s of wan_rtt at T0 + 40, then past 3 × 30 s of the others.
    state.heard("ward-a", "pc-01", T0 + 200)
    state.heard("ward-a", "pc-02", T0 + 200)
    judge.judge(state, ["ward-a"], T0 + 201)
    later = judge.judge(state, ["ward-a"], T0 + 202)
    assert judge.judged == 1, "a ward with stale evidence is judged at every judgement"
    verdict = later["ward-a"]
    assert verdict.verdict == "not_ready"
    statuses = {e.status for c in verdict.criteria for e in c.evidence}
    assert STALE in statuses
    assert later == evaluate_all(profile, state, ["ward-a"], T0 + 202)


def test_a_window_sliding_past_the_data_is_judged_without_new_data() -> None:
    profile = make_profile(PROFILE)
    state = ready_ward(profile, ["ward-a"], T0)
    judge = Judge(profile)
    judge.judge(state, ["ward-a"], T0)
    judge.judge(state, ["ward-a"], T0 + 1)
    assert judge.judged == 0
    # The oldest of the 1-minute window (started T0 - 50) leaves it after T0 + 10.
    v = judge.judge(state, ["ward-a"], T0 + 11)
    assert judge.judged == 1
    assert v == evaluate_all(profile, state, ["ward-a"], T0 + 11)
    (rtt,) = [c for c in v["ward-a"].criteria if c.id == "wan_rtt"]
    assert rtt.evidence[0].samples == 1


def test_a_new_state_or_full_judges_every_ward() -> None:
    profile = make_profile(PROFILE)
    judge = Judge(profile)
    judge.judge(ready_ward(profile, WARDS, T0), WARDS, T0)
    judge.judge(ready_ward(profile, WARDS, T0), WARDS, T0)
    assert judge.judged == len(WARDS)
    state = ready_ward(profile, WARDS, T0)
    judge.judge(state, WARDS, T0)
    judge.judge(state, WARDS, T0, full=True)
    assert judge.judged == len(WARDS)
    # Asked about an earlier moment, every ward is judged afresh.
    judge.judge(state, WARDS, T0 - 1)
    assert judge.judged == len(WARDS)


def test_judging_leaves_the_cycle_collector_as_it_found_it() -> None:
    profile = make_profile(PROFILE)
    state = ready_ward(profile, WARDS, T0)
    assert gc.isenabled()
    evaluate_all(profile, state, WARDS, T0)
    Judge(profile).judge(state, WARDS, T0)
    assert gc.isenabled()
    gc.disable()
    try:
        evaluate_all(profile, state, WARDS, T0)
        assert not gc.isenabled()
    finally:
        gc.enable()
