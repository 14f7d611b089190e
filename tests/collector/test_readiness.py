"""Readiness evaluation on hand-built ward states (real wire records through State.add)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pytest
import yaml

from collector.profile import Profile, default_profile_path, load_profile
from collector.readiness import (
    Evidence,
    Verdict,
    aggregate,
    evaluate,
    evaluate_all,
    format_age,
)
from collector.state import State
from shared.wire import ResultRecord

NOW = 1_750_000_000.0
WARD = "ward-minh-phung"
LINE = {"check": "icmp", "name": "wan-city", "target": "10.0.0.1", "labels": {"role": "wan"}}
BACKUP = {"check": "icmp", "name": "wan-4g", "target": "10.9.0.1", "labels": {"role": "wan"}}
DMS = {
    "check": "http",
    "name": "dms",
    "target": "https://dms.example.gov.vn/",
    "labels": {"role": "shared_system"},
}

PROFILE = """\
version: 1
silence_seconds: 180
criteria:
  - id: wan_up
    title: WAN line answers
    severity: blocker
    select: {check: icmp, labels: {role: wan}}
    condition: {metric: success, agg: min, last: 3, op: ">=", threshold: 1}
  - id: wan_loss
    title: WAN line loss under 1% over 15 min
    severity: blocker
    select: {check: icmp, labels: {role: wan}}
    condition: {metric: loss_ratio, agg: avg, window: 15m, op: "<", threshold: 0.01}
  - id: wan_jitter
    title: WAN jitter under 30 ms
    severity: warning
    select: {check: icmp, labels: {role: wan}}
    condition: {metric: jitter_seconds, agg: avg, window: 15m, op: "<", threshold: 0.030}
  - id: dms_up
    title: Document Management System answers
    severity: blocker
    select: {check: http, labels: {role: shared_system}}
    condition: {metric: success, agg: min, last: 3, op: ">=", threshold: 1}
"""


def make_profile(text: str = PROFILE) -> Profile:
    return Profile.model_validate(yaml.safe_load(text))


def record(
    series: Mapping[str, Any],
    seq: int,
    started: float,
    *,
    success: bool = True,
    metrics: Mapping[str, float] | None = None,
    interval: float = 30.0,
) -> ResultRecord:
    return ResultRecord(
        seq=seq,
        check=series["check"],
        name=series["name"],
        target=series["target"],
        address=series["target"],
        labels=series["labels"],
        interval_seconds=interval,
        started=started,
        duration_seconds=0.5,
        success=success,
        reason="ok" if success else "no_reply",
        metrics=dict(metrics or {}),
    )


def line_runs(
    series: Mapping[str, Any],
    count: int,
    *,
    end: float = NOW - 10,
    every: float = 30.0,
    loss: float = 0.0,
    jitter: float = 0.002,
    success: bool = True,
) -> list[ResultRecord]:
    """``count`` icmp runs every ``every`` seconds, the newest started at ``end``."""
    return [
        record(
            series,
            i + 1,
            end - (count - 1 - i) * every,
            success=success,
            metrics={"loss_ratio": loss, "jitter_seconds": jitter, "rtt_avg_seconds": 0.02},
            interval=every,
        )
        for i in range(count)
    ]


def http_runs(count: int, *, end: float = NOW - 5, success: bool = True) -> list[ResultRecord]:
    return [record(DMS, i + 1, end - (count - 1 - i) * 30.0, success=success) for i in range(count)]


def build(*batches: Iterable[ResultRecord], heard: float | None = NOW - 2) -> State:
    state = State(3600)
    for records in batches:
        state.add(WARD, "pc-01", list(records))
    if heard is not None:
        state.heard(WARD, "pc-01", heard)
    return state


def judge(state: State, profile: Profile | None = None, now: float = NOW) -> Verdict:
    return evaluate(profile or make_profile(), state.ward(WARD), now)


def criterion(verdict: Verdict, cid: str) -> tuple[str, list[Evidence]]:
    (found,) = [c for c in verdict.criteria if c.id == cid]
    return found.status, found.evidence


def test_healthy_ward_is_ready() -> None:
    v = judge(build(line_runs(LINE, 30), http_runs(5)))
    assert v.verdict == "ready"
    assert v.reasons == []
    assert v.ward == WARD and v.evaluated_at == NOW
    assert [(c.id, c.status) for c in v.criteria] == [
        ("wan_up", "ok"), ("wan_loss", "ok"), ("wan_jitter", "ok"), ("dms_up", "ok"),
    ]  # fmt: skip
    _, (loss,) = criterion(v, "wan_loss")
    assert loss.series == "pc-01/wan-city→10.0.0.1"
    assert (loss.observed, loss.samples, loss.window, loss.agg, loss.op) == (
        0.0,
        30,
        "15m",
        "avg",
        "<",
    )
    assert loss.at == NOW - 10
    assert loss.detail == "loss_ratio avg 0 over 15m (30 samples) < 0.01"


def test_loss_over_threshold_makes_the_ward_not_ready_with_evidence() -> None:
    v = judge(build(line_runs(LINE, 30, loss=0.12), http_runs(5)))
    assert v.verdict == "not_ready"
    status, (ev,) = criterion(v, "wan_loss")
    assert status == "failed"
    assert ev.status == "failed"
    assert ev.observed == pytest.approx(0.12)
    assert (ev.threshold, ev.samples, ev.at) == (0.01, 30, NOW - 10)
    assert v.reasons == [
        "wan_loss: WAN line loss under 1% over 15 min — pc-01/wan-city→10.0.0.1: "
        "loss_ratio avg 0.12 over 15m (30 samples) ≥ 0.01"
    ]


def test_window_drops_samples_older_than_it() -> None:
    # 40 runs every 30 s: the 10 oldest (lossy) fall outside 15 min and must not count.
    old = line_runs(LINE, 10, end=NOW - 10 - 30 * 30, loss=1.0)
    recent = [
        record(LINE, 100 + i, NOW - 10 - (29 - i) * 30, metrics={"loss_ratio": 0.0})
        for i in range(30)
    ]
    v = judge(build(old, recent, http_runs(3)))
    _, (ev,) = criterion(v, "wan_loss")
    assert (ev.observed, ev.samples) == (0.0, 30)


def test_stale_line_fails_naming_the_age() -> None:
    v = judge(build(line_runs(LINE, 30, end=NOW - 600), http_runs(3)))
    assert v.verdict == "not_ready"
    status, (ev,) = criterion(v, "wan_up")
    assert status == "failed"
    assert ev.status == "stale"
    assert ev.at == NOW - 600 and ev.observed is None
    assert ev.detail == "stale: newest result 10m old, over 3 × 30s interval"
    assert v.reasons[0] == (
        "wan_up: WAN line answers — pc-01/wan-city→10.0.0.1: "
        "stale: newest result 10m old, over 3 × 30s interval"
    )


def test_max_age_intervals_is_per_criterion() -> None:
    first = "threshold: 1}\n"
    profile = make_profile(PROFILE.replace(first, first + "    max_age_intervals: 30\n", 1))
    v = judge(build(line_runs(LINE, 30, end=NOW - 600), http_runs(3)), profile)
    assert criterion(v, "wan_up")[0] == "ok"
    assert criterion(v, "wan_loss")[1][0].status == "stale"


def test_no_data_at_all() -> None:
    state = State(3600)
    v = evaluate_all(make_profile(), state, [WARD], NOW)[WARD]
    assert v.verdict == "not_ready"
    assert v.reasons == ["no_data: no agent has reported"]
    assert len(v.criteria) == 4


def test_silent_agent_makes_the_ward_not_ready_and_still_lists_criteria() -> None:
    state = build(line_runs(LINE, 30, end=NOW - 700), http_runs(3, end=NOW - 700), heard=NOW - 620)
    v = judge(state)
    assert v.verdict == "not_ready"
    assert v.reasons[0] == "agent_silent: pc-01 last heard 10m 20s ago (limit 3m)"
    assert [c.id for c in v.criteria] == ["wan_up", "wan_loss", "wan_jitter", "dms_up"]
    assert all(c.status == "failed" for c in v.criteria)


def test_results_count_as_contact_when_no_heartbeat_was_recorded() -> None:
    v = judge(build(line_runs(LINE, 30), http_runs(3), heard=None))
    assert v.verdict == "ready"


def test_one_silent_agent_of_two_is_only_a_warning() -> None:
    state = build(line_runs(LINE, 30), http_runs(3))
    state.heard(WARD, "pc-02", NOW - 400)
    v = judge(state)
    assert v.verdict == "ready"
    assert v.reasons == ["warning: agent_silent: pc-02 last heard 6m 40s ago (limit 3m)"]


def test_missing_check_fails_the_criterion() -> None:
    v = judge(build(line_runs(LINE, 30)))
    assert v.verdict == "not_ready"
    status, (ev,) = criterion(v, "dms_up")
    assert status == "failed"
    assert (ev.series, ev.observed, ev.samples, ev.at) == ("", None, 0, None)
    assert ev.detail == "no check matches check=http role=shared_system"
    assert v.reasons == [
        "dms_up: Document Management System answers — no check matches check=http "
        "role=shared_system"
    ]


def test_failed_warning_does_not_change_the_verdict() -> None:
    v = judge(build(line_runs(LINE, 30, jitter=0.05), http_runs(3)))
    assert v.verdict == "ready"
    assert criterion(v, "wan_jitter")[0] == "failed"
    assert v.reasons == [
        "warning: wan_jitter: WAN jitter under 30 ms — pc-01/wan-city→10.0.0.1: "
        "jitter_seconds avg 0.05 over 15m (30 samples) ≥ 0.03"
    ]


def test_blockers_come_before_warnings_in_reasons() -> None:
    v = judge(build(line_runs(LINE, 30, jitter=0.05), http_runs(3, success=False)))
    assert v.verdict == "not_ready"
    assert [r.split(":")[0] for r in v.reasons] == ["dms_up", "warning"]
    assert all(type(r) is str for r in v.reasons)


UP = "    condition: {metric: success, agg: min, last: 3"
ANY_PROFILE = PROFILE.replace(UP, "    require: any\n" + UP, 1)


def test_require_any_passes_with_one_of_two_lines_down() -> None:
    profile = make_profile(ANY_PROFILE)
    assert profile.criteria[0].require == "any"
    down = line_runs(BACKUP, 5, success=False)
    v = judge(build(line_runs(LINE, 30), down, http_runs(3)), profile)
    status, evidence = criterion(v, "wan_up")
    assert status == "ok"
    assert sorted(e.status for e in evidence) == ["failed", "ok"]
    # The same state under require: all (the default) fails.
    v_all = judge(build(line_runs(LINE, 30), down, http_runs(3)))
    assert criterion(v_all, "wan_up")[0] == "failed"
    assert v_all.reasons[0] == (
        "wan_up: WAN line answers — pc-01/wan-4g→10.9.0.1: "
        "success min 0 over last 3 (3 samples) < 1; latest run: no_reply"
    )


def test_require_any_fails_when_every_line_is_down() -> None:
    both = [line_runs(LINE, 5, success=False), line_runs(BACKUP, 5, success=False)]
    v = judge(build(*both, http_runs(3)), make_profile(ANY_PROFILE))
    assert criterion(v, "wan_up")[0] == "failed"
    assert v.reasons[0].endswith("(3 samples) < 1; latest run: no_reply (+1 more)")


def test_last_n_uses_only_the_newest_results() -> None:
    # Runs 1-7 failed, 8-10 succeeded: the last 3 are all good.
    runs = [record(LINE, i, NOW - 10 - (10 - i) * 30, success=i > 7) for i in range(1, 11)]
    v = judge(build(runs, http_runs(3)))
    status, (ev,) = criterion(v, "wan_up")
    assert (status, ev.observed, ev.samples, ev.window, ev.at) == ("ok", 1.0, 3, "last 3", NOW - 10)
    # One more failure and the last 3 hold one failure.
    state = build(runs, http_runs(3))
    state.add(WARD, "pc-01", [record(LINE, 11, NOW - 5, success=False)])
    assert criterion(judge(state), "wan_up")[1][0].observed == 0.0


@pytest.mark.parametrize(
    ("agg", "expected"),
    [("avg", 50.5), ("min", 1.0), ("max", 100.0), ("p50", 50.0), ("p95", 95.0),
     ("p99", 99.0), ("last", 37.0), ("count", 100.0)],
)  # fmt: skip
def test_aggregation_over_a_window(agg: str, expected: float) -> None:
    # Values 1..100 in a shuffled order of time; the newest sample carries 37.
    values = [float(v) for v in range(1, 101)]
    order = sorted(values, key=lambda v: (v * 7919) % 101)
    order.remove(37.0)
    order.append(37.0)
    runs = [
        record(LINE, i + 1, NOW - 10 - (99 - i) * 5, metrics={"rtt_avg_seconds": v}, interval=5)
        for i, v in enumerate(order)
    ]
    text = f"""\
version: 1
criteria:
  - id: rtt
    title: RTT
    severity: blocker
    select: {{check: icmp}}
    condition: {{metric: rtt_avg_seconds, agg: {agg}, window: 1h, op: "<", threshold: 1000}}
"""
    v = judge(build(runs), make_profile(text))
    (ev,) = v.criteria[0].evidence
    assert (ev.observed, ev.samples) == (expected, 100)


@pytest.mark.parametrize(
    ("agg", "values", "expected"),
    [
        ("p95", [5.0], 5.0),
        ("p50", [1.0, 2.0], 1.0),
        ("p50", [3.0, 1.0, 2.0], 2.0),
        ("p50", [5.0, 4.0, 3.0, 2.0, 1.0], 3.0),
        ("p95", [float(v) for v in range(30, 0, -1)], 29.0),
        ("p99", [float(v) for v in range(1, 151)], 149.0),
        ("p95", [float(v) for v in range(1, 21)], 19.0),
        ("p99", [float(v) for v in range(1, 21)], 20.0),
        ("avg", [0.1, 0.2, 0.3], 0.2),
        ("last", [4.0, 9.0, 2.0], 2.0),
    ],
)
def test_aggregate_nearest_rank(agg: str, values: Sequence[float], expected: float) -> None:
    assert aggregate(agg, values) == pytest.approx(expected)


def test_samples_without_the_metric_are_skipped() -> None:
    # A cut line reports no rtt; the p95 is over the runs that had one.
    ok = [record(LINE, i, NOW - 300 + i * 30, metrics={"rtt_avg_seconds": 0.01 * i})
          for i in range(1, 6)]  # fmt: skip
    cut = [record(LINE, i, NOW - 300 + i * 30, success=False, metrics={"loss_ratio": 1.0})
           for i in range(6, 10)]  # fmt: skip
    text = """\
version: 1
criteria:
  - id: wan_rtt
    title: RTT
    severity: blocker
    select: {check: icmp}
    condition: {metric: rtt_avg_seconds, agg: p95, window: 15m, op: "<", threshold: 0.15}
"""
    (ev,) = judge(build(ok, cut), make_profile(text)).criteria[0].evidence
    assert ev.samples == 5
    assert ev.observed == pytest.approx(0.05)
    assert ev.at == NOW - 300 + 5 * 30


def test_too_few_samples_is_unknown() -> None:
    text = PROFILE.replace("threshold: 0.01}", "threshold: 0.01, min_samples: 5}")
    v = judge(build(line_runs(LINE, 3), http_runs(3)), make_profile(text))
    assert v.verdict == "unknown"
    status, (ev,) = criterion(v, "wan_loss")
    assert (status, ev.status, ev.samples, ev.observed) == ("unknown", "unknown", 3, None)
    assert v.reasons == [
        "wan_loss: WAN line loss under 1% over 15 min — pc-01/wan-city→10.0.0.1: "
        "not enough data: 3 loss_ratio samples over 15m, need 5"
    ]


def test_failed_blocker_outranks_unknown_blocker() -> None:
    text = PROFILE.replace("threshold: 0.01}", "threshold: 0.01, min_samples: 5}")
    v = judge(build(line_runs(LINE, 3), http_runs(3, success=False)), make_profile(text))
    assert v.verdict == "not_ready"
    assert [r.split(":")[0] for r in v.reasons] == ["dms_up", "wan_loss"]


def test_require_all_with_one_unknown_series_is_unknown() -> None:
    text = PROFILE.replace("threshold: 0.01}", "threshold: 0.01, min_samples: 5}")
    v = judge(build(line_runs(LINE, 30), line_runs(BACKUP, 2), http_runs(3)), make_profile(text))
    assert criterion(v, "wan_loss")[0] == "unknown"
    assert v.verdict == "unknown"


def test_duration_and_count() -> None:
    text = """\
version: 1
criteria:
  - id: fast
    title: Answers fast
    severity: blocker
    select: {check: http}
    condition: {metric: duration_seconds, agg: max, window: 15m, op: "<=", threshold: 0.5}
  - id: enough
    title: Enough runs
    severity: warning
    select: {check: http}
    condition: {metric: success, agg: count, window: 2m, op: ">=", threshold: 5}
"""
    v = judge(build(http_runs(10)), make_profile(text))
    fast, enough = v.criteria
    assert (fast.status, fast.evidence[0].observed) == ("ok", 0.5)
    assert fast.evidence[0].detail == "duration_seconds max 0.5 over 15m (10 samples) ≤ 0.5"
    # Runs every 30 s ending 5 s ago: 4 start within the last 2 minutes.
    assert (enough.status, enough.evidence[0].observed) == ("failed", 4.0)
    assert v.verdict == "ready"


def _series(check: str, name: str, target: str, **labels: str) -> dict[str, Any]:
    return {"check": check, "name": name, "target": target, "labels": labels}


# Every check the shipped profile asks of a center, with healthy figures, 3 runs each.
FULL_WARD = [
    (_series("tcp", "mail", "mail.gov.vn:587", role="mail"), {}),
    (_series("dns", "dns", "dichvucong.gov.vn", role="dns"), {}),
    (_series("host", "host", "localhost"), {}),
    (_series("stream", "vc-stream", "reflector.city:862", role="vc"),
     {"mos": 4.35, "loss_ratio": 0.0, "rtt_p95_seconds": 0.03, "jitter_seconds": 0.002}),
    (_series("sip", "mcu", "mcu.city", role="vc"), {"status_code": 200.0}),
    (_series("stun", "stun", "turn.city", role="vc"), {}),
    (_series("turn", "turn", "turn.city", role="vc"), {}),
    (_series("printer_ipp", "counter-1-printer", "ipp://printer-1/ipp/print",
             role="counter_device", device="printer"), {"toner_min_ratio": 0.6}),
    (_series("scanner_escl", "counter-1-scanner", "http://scanner-1", role="counter_device"), {}),
    (_series("bandwidth", "bw-fibre", "iperf.city:5201", role="wan"),
     {"upload_bytes_per_second": 9e6 / 8, "download_bytes_per_second": 9.5e6 / 8}),
    (_series("pmtu", "mtu-fibre", "10.0.0.1", role="wan"), {"path_mtu_bytes": 1500.0}),
    (_series("link", "nics", "localhost", role="wan"), {}),
    (_series("traceroute", "path-fibre", "10.0.0.1", role="wan"), {"path_changed": 0.0}),
]  # fmt: skip


def test_shipped_default_profile_on_a_full_ward() -> None:
    profile = load_profile(default_profile_path())
    line = [
        record(LINE, i + 1, NOW - 10 - (29 - i) * 30,
               metrics={"loss_ratio": 0.0, "rtt_avg_seconds": 0.03, "jitter_seconds": 0.004})
        for i in range(30)
    ]  # fmt: skip
    https = [
        record(DMS, i + 1, NOW - 5 - (2 - i) * 30, metrics={"cert_expiry_seconds": 80 * 86400.0})
        for i in range(3)
    ]
    others = [
        record(series, i + 1, NOW - 5 - (2 - i) * 30, metrics=metrics)
        for series, metrics in FULL_WARD
        for i in range(3)
    ]
    state = build(line, https, others)
    v = judge(state, profile)
    assert (v.verdict, v.reasons) == ("ready", [])
    assert {c.id for c in v.criteria} == {c.id for c in profile.criteria}
    expiring = record(DMS, 9, NOW - 1, metrics={"cert_expiry_seconds": 5 * 86400.0})
    state.add(WARD, "pc-01", [expiring])
    v = judge(state, profile)
    assert v.verdict == "ready"
    assert v.reasons == [
        "warning: tls_certificates: TLS certificates of the shared systems valid for at least "
        "14 more days — pc-01/dms→https://dms.example.gov.vn/: cert_expiry_seconds min 432000 over "
        "last 3 (3 samples) < 1209600"
    ]


def test_shipped_default_profile_without_a_printer_only_misses_the_toner_criterion() -> None:
    # The same ward without its printer: the counter criteria fail, nothing else does.
    profile = load_profile(default_profile_path())
    line = [record(LINE, i + 1, NOW - 10 - (29 - i) * 30,
                   metrics={"loss_ratio": 0.0, "rtt_avg_seconds": 0.03, "jitter_seconds": 0.004})
            for i in range(30)]  # fmt: skip
    valid = {"cert_expiry_seconds": 80 * 86400.0}
    https = [record(DMS, i + 1, NOW - 5 - (2 - i) * 30, metrics=valid) for i in range(3)]
    others = [
        record(series, i + 1, NOW - 5 - (2 - i) * 30, metrics=metrics)
        for series, metrics in FULL_WARD
        if series["check"] != "printer_ipp"
        for i in range(3)
    ]
    v = judge(build(line, https, others), profile)
    failing = sorted(c.id for c in v.criteria if c.status != "ok")
    assert failing == ["counter_toner"]
    assert v.verdict == "ready"  # the scanner still counts as a counter device; toner is a warning


def test_evaluate_all_judges_each_listed_ward() -> None:
    state = build(line_runs(LINE, 30), http_runs(3))
    verdicts = evaluate_all(make_profile(), state, [WARD, "ward-binh-thoi"], NOW)
    assert {w: v.verdict for w, v in verdicts.items()} == {
        WARD: "ready",
        "ward-binh-thoi": "not_ready",
    }
    assert verdicts["ward-binh-thoi"].reasons == ["no_data: no agent has reported"]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (45.4, "45s"), (60, "1m"), (725, "12m 5s"), (7380, "2h 3m"), (7200, "2h"),
     (273600, "3d 4h"), (-3, "0s")],
)  # fmt: skip
def test_format_age(seconds: float, text: str) -> None:
    assert format_age(seconds) == text
