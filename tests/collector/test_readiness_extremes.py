"""Readiness never raises and always gives a verdict, for every value the wire accepts.

Hypothesis draws finite floats across the whole range (up to ±1.8e308), counts up to the
state's bounds, every aggregation and every comparison; whatever it finds must be judged.
The first test is the batch that once stopped the judging of the whole fleet.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.profile import Profile
from collector.readiness import NOT_READY, READY, UNKNOWN, aggregate, evaluate, format_age, mean
from collector.state import State
from shared.wire import ResultRecord

NOW = 1_750_000_000.0
WARD = "ward-ben-thanh"
AGGS = ("avg", "min", "max", "p50", "p95", "p99", "last", "count")
OPS = ("<", "<=", ">", ">=", "==", "!=")
BIG = 1.7976931348623157e308

finite = st.floats(allow_nan=False, allow_infinity=False)
# Extreme values are drawn often, not only when Hypothesis happens on them.
extreme = st.one_of(
    finite,
    st.sampled_from([BIG, -BIG, 1e308, -1e308, 5e-324, -5e-324, 0.0, -0.0, 2.0**1023]),
)


# A check type no registry declares: the profile takes any metric name of it, and the values
# reach the judge without the plausible ranges ingest would apply to a known type.
def profile(agg: str, op: str, threshold: float, span: dict[str, Any]) -> Profile:
    cond = {"metric": "value", "agg": agg, "op": op, "threshold": threshold, **span}
    return Profile.model_validate(
        {
            "version": 1,
            "criteria": [
                {
                    "id": "probe",
                    "title": "a probe",
                    "severity": "blocker",
                    "select": {"check": "extreme"},
                    "condition": cond,
                },
                {
                    "id": "duration",
                    "title": "runs quickly",
                    "severity": "warning",
                    "select": {"check": "extreme"},
                    "condition": {
                        "metric": "duration_seconds",
                        "agg": agg,
                        "op": op,
                        "threshold": threshold,
                        **span,
                    },
                },
            ],
        }
    )


def record(seq: int, started: float, value: float, **over: Any) -> ResultRecord:
    fields: dict[str, Any] = {
        "seq": seq,
        "check": "extreme",
        "name": "wan",
        "target": "gw",
        "address": "10.0.0.1",
        "interval_seconds": 30.0,
        "started": started,
        "duration_seconds": 0.5,
        "success": True,
        "reason": "ok",
        "metrics": {"value": value},
    }
    fields.update(over)
    return ResultRecord.model_validate(fields)


def assert_judged(p: Profile, state: State, now: float = NOW) -> str:
    v = evaluate(p, state.ward(WARD), now)
    assert v.verdict in (READY, NOT_READY, UNKNOWN)
    assert all(isinstance(r, str) and r for r in v.reasons)
    # What the API sends: JSON refuses inf and nan, so every figure must be finite.
    json.dumps(dataclasses.asdict(v), allow_nan=False)
    return v.verdict


@pytest.mark.parametrize("agg", ["avg", "p95", "max"])
def test_the_batch_that_stopped_the_fleet_is_judged(agg: str) -> None:
    # Two finite values whose sum overflows a float: math.fsum raised OverflowError.
    state = State(3600)
    state.add(WARD, "pc-01", [record(1, NOW - 20, 1e308), record(2, NOW - 10, 1e308)])
    state.heard(WARD, "pc-01", NOW - 1)
    p = profile(agg, "<", 0.01, {"window": "15m"})
    assert assert_judged(p, state) == NOT_READY
    (probe, _) = evaluate(p, state.ward(WARD), NOW).criteria
    assert probe.evidence[0].observed == 1e308


def test_mean_of_values_near_the_float_limit() -> None:
    assert mean([BIG, BIG]) == BIG
    assert mean([BIG, -BIG, BIG]) == pytest.approx(BIG / 3)
    assert mean([1e308] * 1000) == pytest.approx(1e308)
    assert mean([0.1, 0.2, 0.3]) == math.fsum([0.1, 0.2, 0.3]) / 3


@given(agg=st.sampled_from(AGGS), values=st.lists(extreme, min_size=1, max_size=600))
@settings(max_examples=400, deadline=None)
def test_every_aggregation_of_finite_values_is_finite(agg: str, values: list[float]) -> None:
    got = aggregate(agg, values)
    assert math.isfinite(got)
    lo, hi = min(values), max(values)
    if agg == "count":
        assert got == len(values)
    elif agg == "avg":
        # Within what was measured, give or take the rounding of one division.
        assert math.nextafter(lo, -math.inf) <= got <= math.nextafter(hi, math.inf)
    else:
        assert lo <= got <= hi


@given(seconds=st.floats(allow_nan=True))
def test_format_age_takes_any_float(seconds: float) -> None:
    assert isinstance(format_age(seconds), str)


@given(
    agg=st.sampled_from(AGGS),
    op=st.sampled_from(OPS),
    threshold=extreme,
    span=st.one_of(
        st.builds(lambda w: {"window": w}, st.sampled_from(["1s", "90s", "15m", "1h", "1d"])),
        st.builds(lambda n: {"last": n}, st.integers(1, 64)),
    ),
    runs=st.lists(
        st.tuples(
            extreme,  # the metric's value
            st.floats(0, 3600),  # duration_seconds, as the wire bounds it
            st.floats(1e-9, 86400),  # interval_seconds
            st.floats(-7 * 86400, 300),  # start, relative to now
            st.booleans(),  # success
        ),
        min_size=0,
        max_size=80,
    ),
    heard=st.one_of(st.none(), st.floats(-7 * 86400, 0)),
)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_every_condition_gives_a_verdict(
    agg: str,
    op: str,
    threshold: float,
    span: dict[str, Any],
    runs: list[tuple[float, float, float, float, bool]],
    heard: float | None,
) -> None:
    state = State(3600, max_samples_per_series=512)
    records = [
        record(
            i + 1,
            NOW + start,
            value,
            duration_seconds=duration,
            interval_seconds=interval,
            success=ok,
            reason="ok" if ok else "no_reply",
            name=f"wan-{i % 3}",
        )
        for i, (value, duration, interval, start, ok) in enumerate(runs)
    ]
    state.add(WARD, "pc-01", records)
    if heard is not None:
        state.heard(WARD, "pc-01", NOW + heard)
    assert_judged(profile(agg, op, threshold, span), state)


@given(values=st.lists(extreme, min_size=1, max_size=50))
@settings(max_examples=100, deadline=None)
def test_many_series_of_extreme_values(values: list[float]) -> None:
    # One series per value, all selected by the criterion, combined by require.
    state = State(3600)
    state.add(
        WARD,
        "pc-01",
        [record(i + 1, NOW - 10, v, name=f"wan-{i}") for i, v in enumerate(values)],
    )
    state.heard(WARD, "pc-01", NOW)
    for agg in AGGS:
        assert_judged(profile(agg, ">=", -BIG, {"last": 1}), state)
