"""The in-memory recent-results state: order, retention, snapshots and concurrent use."""

from __future__ import annotations

import random
import threading
import time

import pytest

from collector.profile import load_profile
from collector.readiness import evaluate
from collector.state import State
from shared.wire import ResultRecord
from tests.collector.test_readiness import PROFILE, make_profile

WARD = "ward-ben-thanh"
T0 = 1_750_000_000.0


def rec(
    seq: int,
    started: float,
    *,
    name: str = "wan-city",
    labels: dict[str, str] | None = None,
    metrics: dict[str, float] | None = None,
    check: str = "icmp",
    interval: float = 10.0,
) -> ResultRecord:
    return ResultRecord(
        seq=seq,
        check=check,
        name=name,
        target="10.0.0.1",
        address="10.0.0.1",
        labels={"role": "wan"} if labels is None else labels,
        interval_seconds=interval,
        started=started,
        duration_seconds=0.2,
        success=True,
        reason="ok",
        metrics={"loss_ratio": 0.0} if metrics is None else metrics,
    )


def started_times(state: State, ward: str = WARD) -> list[float]:
    (series,) = state.ward(ward).series
    return [s.started for s in series.samples]


def test_out_of_order_results_are_inserted_in_time_order() -> None:
    state = State(10_000)
    times = [T0 + 10 * i for i in range(40)]
    shuffled = times[:]
    random.Random(7).shuffle(shuffled)
    # A spool replay: batches of mixed age, some overlapping what already arrived.
    for chunk in (shuffled[:15], shuffled[15:30], shuffled[30:], shuffled[5:20]):
        state.add(WARD, "pc-01", [rec(int((t - T0) / 10) + 1, t) for t in chunk])
    assert started_times(state) == times


def test_retention_prunes_relative_to_the_newest_sample() -> None:
    state = State(100, keep_last=1)
    state.add(WARD, "pc-01", [rec(i + 1, T0 + 10 * i) for i in range(30)])
    # Newest is T0 + 290: kept are samples no older than T0 + 190.
    assert started_times(state) == [T0 + 10 * i for i in range(19, 30)]
    # A late result older than the retention is dropped at once.
    state.add(WARD, "pc-01", [rec(99, T0 + 50)])
    assert started_times(state)[0] == T0 + 190


def test_the_newest_results_are_kept_whatever_their_age() -> None:
    # An hourly check: `last: 3` needs three hours of it, more than the retention.
    state = State(600, keep_last=3)
    state.add(WARD, "pc-01", [rec(i + 1, T0 + 3600 * i, interval=3600) for i in range(6)])
    assert started_times(state) == [T0 + 3600 * i for i in (3, 4, 5)]


def test_count_bound() -> None:
    state = State(1e6, max_samples_per_series=50)
    state.add(WARD, "pc-01", [rec(i + 1, T0 + i) for i in range(200)])
    assert started_times(state) == [T0 + i for i in range(150, 200)]


def test_series_are_per_agent_name_and_target_and_follow_the_newest_identity() -> None:
    state = State(1000)
    state.add(WARD, "pc-01", [rec(1, T0, labels={"role": "wan", "line": "fibre"})])
    state.add(WARD, "pc-01", [rec(2, T0 + 10, labels={"role": "wan", "line": "backup"})])
    state.add(WARD, "pc-01", [rec(3, T0 - 10, labels={"role": "old"})])
    state.add(WARD, "pc-02", [rec(1, T0)])
    state.add(WARD, "pc-01", [rec(4, T0, name="wan-4g")])
    series = {(s.agent, s.name): s for s in state.ward(WARD).series}
    assert sorted(series) == [("pc-01", "wan-4g"), ("pc-01", "wan-city"), ("pc-02", "wan-city")]
    line = series[("pc-01", "wan-city")]
    assert dict(line.labels) == {"role": "wan", "line": "backup"}
    assert [s.started for s in line.samples] == [T0 - 10, T0, T0 + 10]
    assert line.id == "pc-01/wan-city→10.0.0.1"
    assert line.ward == WARD and line.interval_seconds == 10.0


def test_heard_keeps_the_latest_time() -> None:
    state = State(1000)
    state.heard(WARD, "pc-01", T0 + 5)
    state.heard(WARD, "pc-01", T0)
    state.heard(WARD, "pc-02", T0 + 1)
    assert state.ward(WARD).agents_last_seen == {"pc-01": T0 + 5, "pc-02": T0 + 1}
    assert state.ward(WARD).series == []
    assert sorted(state.wards()) == [WARD]


def test_unknown_ward_is_empty() -> None:
    state = State(1000)
    ward = state.ward("ward-nowhere")
    assert (ward.ward, dict(ward.agents_last_seen), list(ward.series)) == ("ward-nowhere", {}, [])
    assert state.latest("ward-nowhere") == []
    assert list(state.wards()) == []


def test_ward_returns_a_snapshot() -> None:
    state = State(1000)
    state.add(WARD, "pc-01", [rec(1, T0)])
    snap = state.ward(WARD)
    state.add(WARD, "pc-01", [rec(2, T0 + 10)])
    state.heard(WARD, "pc-01", T0 + 11)
    assert [s.started for s in snap.series[0].samples] == [T0]
    assert dict(snap.agents_last_seen) == {}
    assert started_times(state) == [T0, T0 + 10]


def test_profile_state_keeps_only_read_metrics_but_latest_has_all() -> None:
    profile = make_profile()
    state = State.for_profile(profile)
    assert state.retention_seconds == profile.retention_seconds()
    assert state.keep_last == 3
    assert state.keep_metrics == frozenset({"loss_ratio", "jitter_seconds"})
    full = {"loss_ratio": 0.1, "rtt_avg_seconds": 0.02, "packets_sent": 10.0}
    state.add(WARD, "pc-01", [rec(1, T0, metrics=full), rec(2, T0 + 10, metrics=full)])
    (series,) = state.ward(WARD).series
    assert [dict(s.metrics) for s in series.samples] == [{"loss_ratio": 0.1}] * 2
    ((latest_series, latest),) = state.latest(WARD)
    assert dict(latest.metrics) == full
    assert latest.started == T0 + 10
    assert [s.started for s in latest_series.samples] == [T0 + 10]
    assert (latest_series.name, latest_series.check) == ("wan-city", "icmp")


def test_default_profile_state_keeps_its_windows() -> None:
    from collector.profile import default_profile_path

    state = State.for_profile(load_profile(default_profile_path()))
    assert state.retention_seconds == 15 * 60 + 300
    assert state.keep_last == 3


def test_invalid_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="retention_seconds"):
        State(0)
    with pytest.raises(ValueError, match="at least 1"):
        State(10, max_samples_per_series=0)


def test_concurrent_adds_while_evaluating() -> None:
    """Two ingest threads add (in and out of order) while a third evaluates; bounded run."""
    profile = make_profile(PROFILE)
    state = State(3600, max_samples_per_series=2000)
    batches, per_batch = 60, 20
    errors: list[BaseException] = []
    verdicts: list[str] = []
    done = threading.Event()

    def ingest(agent: str, seed: int) -> None:
        rng = random.Random(seed)
        try:
            for b in range(batches):
                times = [T0 + (b * per_batch + i) * 0.5 for i in range(per_batch)]
                rng.shuffle(times)
                state.add(WARD, agent, [rec(1, t, name="wan-city") for t in times])
                state.heard(WARD, agent, times[-1])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    def judge() -> None:
        try:
            deadline = time.monotonic() + 20
            while not done.is_set() and time.monotonic() < deadline:
                v = evaluate(profile, state.ward(WARD), T0 + batches * per_batch * 0.5)
                verdicts.append(v.verdict)
                for series in state.ward(WARD).series:
                    starts = [s.started for s in series.samples]
                    assert starts == sorted(starts)
        except BaseException as exc:
            errors.append(exc)

    workers = [
        threading.Thread(target=ingest, args=(a, i)) for i, a in enumerate(["pc-01", "pc-02"])
    ]
    reader = threading.Thread(target=judge)
    reader.start()
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=30)
    done.set()
    reader.join(timeout=30)
    assert not any(t.is_alive() for t in [*workers, reader])
    assert errors == []
    assert verdicts, "the evaluator never ran"
    ward = state.ward(WARD)
    assert sorted(s.agent for s in ward.series) == ["pc-01", "pc-02"]
    for series in ward.series:
        assert len(series.samples) == batches * per_batch
        starts = [s.started for s in series.samples]
        assert starts == sorted(starts) and len(set(starts)) == len(starts)


def test_newest_tells_the_newest_result_of_each_series_with_its_identity() -> None:
    profile = make_profile()
    state = State.for_profile(profile)
    assert state.newest("ward-nowhere") == []
    full = {"loss_ratio": 0.1, "rtt_avg_seconds": 0.02}
    state.add(WARD, "pc-01", [rec(2, T0 + 10, metrics=full), rec(1, T0, metrics={})])
    state.add(WARD, "pc-01", [rec(3, T0 + 5, name="dms", check="http", labels={"role": "x"})])
    state.add(WARD, "pc-01", [rec(4, T0 + 20, labels={"role": "wan", "line": "fibre"})])
    got = {n.name: n for n in state.newest(WARD)}
    assert set(got) == {"wan-city", "dms"}
    wan = got["wan-city"]
    # The newest result came last, and its labels are what the series now carries.
    assert (wan.agent, wan.check, wan.target) == ("pc-01", "icmp", "10.0.0.1")
    assert dict(wan.labels) == {"role": "wan", "line": "fibre"}
    assert wan.sample.started == T0 + 20 and dict(wan.sample.metrics) == {"loss_ratio": 0.0}
    assert (got["dms"].check, dict(got["dms"].labels)) == ("http", {"role": "x"})
    # The same results latest() tells, series by series.
    assert sorted((s.name, smp) for s, smp in state.latest(WARD)) == sorted(
        (n.name, n.sample) for n in got.values()
    )


def test_history_keeps_the_profiles_metrics_whatever_the_set_of_names() -> None:
    state = State(1000, keep_metrics={"loss_ratio", "jitter_seconds"})
    a = {"loss_ratio": 0.1, "rtt_avg_seconds": 0.02}
    b = {"rtt_avg_seconds": 0.03, "jitter_seconds": 0.004, "loss_ratio": 0.2}
    c = {"rtt_avg_seconds": 0.04}
    state.add(
        WARD,
        "pc-01",
        [rec(1, T0, metrics=a), rec(2, T0 + 10, metrics=b), rec(3, T0 + 20, metrics=c)],
    )
    state.add(WARD, "pc-01", [rec(4, T0 + 30, metrics=dict(a, loss_ratio=0.5))])
    (series,) = state.ward(WARD).series
    assert [dict(s.metrics) for s in series.samples] == [
        {"loss_ratio": 0.1},
        {"jitter_seconds": 0.004, "loss_ratio": 0.2},
        {},
        {"loss_ratio": 0.5},
    ]
    everything = State(1000)
    everything.add(WARD, "pc-01", [rec(1, T0, metrics=b), rec(2, T0 + 10, metrics=b)])
    (series,) = everything.ward(WARD).series
    assert [dict(s.metrics) for s in series.samples] == [b, b]
