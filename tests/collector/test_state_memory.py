"""What State holds per result, counted: no object per result, only the profile's metrics,
shared names, and bounds that hold whatever arrives."""

from __future__ import annotations

import gc

from collector.profile import default_profile_path, load_profile
from collector.state import State
from shared.wire import ResultRecord

T0 = 1_750_000_000.0
WARD = "ward-ben-thanh"
ICMP = {
    "rtt_avg_seconds": 0.02,
    "rtt_min_seconds": 0.01,
    "jitter_seconds": 0.002,
    "loss_ratio": 0.0,
    "packets_sent": 5.0,
    "packets_received": 5.0,
}


def rec(name: str, started: float, metrics: dict[str, float] | None = None) -> ResultRecord:
    return ResultRecord(
        seq=1,
        check="icmp",
        name=name,
        target="10.0.0.1",
        address="10.0.0.1",
        labels={"role": "wan"},
        interval_seconds=30.0,
        started=started,
        duration_seconds=0.05,
        success=True,
        reason="ok",
        metrics=dict(ICMP) if metrics is None else metrics,
    )


def tracked() -> int:
    gc.collect()
    return len(gc.get_objects())


def test_history_holds_no_object_per_result() -> None:
    state = State.for_profile(load_profile(default_profile_path()))
    state.add(WARD, "pc-01", [rec("wan-fibre", T0)])
    pending = [rec("wan-fibre", T0 + 30 * i) for i in range(1, 41)]
    before = tracked()
    for r in pending:
        state.add(WARD, "pc-01", [r])
    del r
    grown = tracked() - before
    (series,) = state.ward(WARD).series
    assert len(series.history.started) == 41
    # 40 more results held; a Sample and a metrics dict each would be 80 more objects.
    assert grown < 10, grown


def test_history_keeps_only_the_profiles_metrics_as_columns_of_numbers() -> None:
    profile = load_profile(default_profile_path())
    state = State.for_profile(profile)
    state.add(WARD, "pc-01", [rec("wan-fibre", T0 + 30 * i) for i in range(40)])
    (series,) = state.ward(WARD).series
    h = series.history
    assert set(h.names) == {"rtt_avg_seconds", "jitter_seconds", "loss_ratio"}
    assert set(h.names) <= profile.metrics_used()
    for column in (h.started, h.durations, *h.columns):
        assert column.typecode == "d" and len(column) == 40
    assert len(h.success) == len(h.reasons) == 40
    # The newest result keeps every metric, for /metrics.
    ((_, newest),) = state.latest(WARD)
    assert dict(newest.metrics) == ICMP


def test_names_reasons_and_labels_are_shared_between_series_and_wards() -> None:
    state = State.for_profile(load_profile(default_profile_path()))
    for ward in ("ward-a", "ward-b"):
        for name in ("wan-fibre", "wan-4g"):
            state.add(ward, "pc-01", [rec(name, T0 + 30 * i) for i in range(3)])
    series = [s for w in ("ward-a", "ward-b") for s in state.ward(w).series]
    histories = [s.history for s in series]
    assert len(histories) == 4
    assert len({id(s.labels) for s in series}) == 1
    assert len({id(h.names) for h in histories}) == 1
    assert len({id(reason) for h in histories for reason in h.reasons}) == 1


def test_a_series_holds_at_most_its_window_or_its_count_bound() -> None:
    profile = load_profile(default_profile_path())
    state = State.for_profile(profile, max_samples_per_series=30)
    # Two days of results every 10 s, in batches, some replayed out of order.
    for day_batch in range(0, 2 * 8640, 360):
        batch = [rec("wan-fibre", T0 + 10 * (day_batch + i)) for i in range(360)]
        state.add(WARD, "pc-01", batch[::-1] if day_batch % 720 else batch)
    (series,) = state.ward(WARD).series
    h = series.history
    assert len(h.started) == 30
    assert all(len(c) == 30 for c in (h.durations, h.success, h.reasons, *h.columns))
    # Within the time bound too: results every 10 s over the retention would be 120.
    wide = State.for_profile(profile, max_samples_per_series=10_000)
    for day_batch in range(0, 8640, 360):
        wide.add(WARD, "pc-01", [rec("wan-fibre", T0 + 10 * (day_batch + i)) for i in range(360)])
    (series,) = wide.ward(WARD).series
    assert len(series.history.started) == int(profile.retention_seconds() / 10) + 1
