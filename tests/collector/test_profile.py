"""Readiness profiles: the shipped ones load and make sense; each broken file in
tests/collector/profiles/ fails with exactly the messages below."""

from __future__ import annotations

from pathlib import Path

import pytest

from checks.registry import REGISTRY
from collector.profile import (
    DURATION,
    SUCCESS,
    Profile,
    ProfileError,
    default_profile_path,
    format_duration,
    load_profile,
    read_profile,
)
from tests.gadget import GADGET

BROKEN = Path(__file__).parent / "profiles"
DEMO = default_profile_path().parent / "demo.yaml"
KNOWN = ", ".join(sorted(REGISTRY))

# file -> messages after "<path>:", in order.
INVALID: dict[str, list[str]] = {
    "bad_op.yaml": [
        "11: criteria[0].condition.op: Input should be '<', '<=', '>', '>=', '==' or '!='",
    ],
    "duplicate_id.yaml": [
        "13: criteria[2].id: duplicate id 'wan_up', first used by criteria[0]",
    ],
    "window_and_last.yaml": [
        "7: criteria[0].condition: give exactly one of window or last",
    ],
    "neither_window_nor_last.yaml": [
        "7: criteria[0].condition: give exactly one of window or last",
    ],
    "misspelt_key.yaml": [
        "7: criteria[0].condition.threshold: Field required",
        "12: criteria[0].condition.treshold: unknown key (did you mean 'threshold'?)",
    ],
    "bad_window.yaml": [
        "7: criteria[0].condition.window: expected a duration like 90s, 15m or 1h",
    ],
    "bad_severity.yaml": [
        "5: criteria[0].severity: Input should be 'blocker' or 'warning'",
    ],
    "empty_select.yaml": [
        "6: criteria[0].select: give at least one of check, name, labels",
    ],
    "duplicate_key.yaml": [
        "13: criteria[0].condition.op: duplicate key (first at line 11)",
    ],
    "bad_version.yaml": [
        "1: version: unsupported profile version 2; this collector reads 1",
    ],
    "threshold_text.yaml": [
        "7: criteria[0].condition.threshold: Input should be a valid number",
    ],
    "no_criteria.yaml": [
        "3: criteria: List should have at least 1 item after validation, not 0",
    ],
    "bad_label_and_agg.yaml": [
        "8: criteria[0].select.labels: key 'Role': String should match pattern "
        "'^[a-z][a-z0-9_]{0,63}$'",
        "12: criteria[0].condition.agg: Input should be 'avg', 'min', 'max', 'p50', 'p95', "
        "'p99', 'last' or 'count'",
    ],
    "bad_numbers.yaml": [
        "2: silence_seconds: Input should be greater than 0",
        "8: criteria[0].condition.last: Input should be greater than or equal to 1",
        "8: criteria[0].condition.min_samples: Input should be a valid integer",
        "9: criteria[0].max_age_intervals: Input should be greater than 0",
    ],
    "unquoted_op.yaml": [
        "11: invalid YAML: expected chomping or indentation indicators, but found '=' "
        '(quote comparison operators: op: ">=")',
    ],
    "min_samples_over_last.yaml": [
        "9: criteria[0].condition: min_samples (3) is more than last (2): it could never be judged",
        "14: criteria[1].condition.window: must be at most 1d",
    ],
    "not_a_mapping.yaml": ["1: the profile must be a mapping of keys to values"],
    "empty.yaml": [" the profile is empty"],
}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_profile_reports_file_line_and_field(name: str) -> None:
    path = BROKEN / name
    with pytest.raises(ProfileError) as caught:
        load_profile(path)
    assert caught.value.messages == [f"{path}:{m}" for m in INVALID[name]]
    assert str(caught.value) == "\n".join(caught.value.messages)


def test_every_fixture_is_in_the_table() -> None:
    assert sorted(p.name for p in BROKEN.glob("*.yaml")) == sorted(INVALID)


def test_missing_file_is_a_profile_error(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"
    with pytest.raises(ProfileError) as caught:
        load_profile(path)
    assert caught.value.messages == [f"{path}: cannot read: No such file or directory"]


def test_default_profile_loads_and_covers_a_center() -> None:
    profile = load_profile(default_profile_path())
    by_id = {c.id: c for c in profile.criteria}
    blockers = {c.id for c in profile.criteria if c.severity == "blocker"}
    assert {"wan_up", "wan_loss", "wan_rtt", "shared_systems", "official_mail", "dns"} <= blockers
    assert {"wan_jitter", "host", "tls_certificates"} <= set(by_id) - blockers
    loss = by_id["wan_loss"].condition
    assert (loss.metric, loss.agg, loss.window, loss.op, loss.threshold) == (
        "loss_ratio", "avg", 900.0, "<", 0.01,
    )  # fmt: skip
    rtt = by_id["wan_rtt"].condition
    assert (rtt.metric, rtt.agg, rtt.op, rtt.threshold) == ("rtt_avg_seconds", "p95", "<", 0.15)
    assert by_id["wan_jitter"].condition.threshold == 0.030
    up = by_id["wan_up"].condition
    assert (up.metric, up.agg, up.last, up.op, up.threshold) == ("success", "min", 3, ">=", 1.0)
    assert by_id["shared_systems"].select.labels == {"role": "shared_system"}
    assert by_id["official_mail"].select.check == "tcp"
    assert by_id["tls_certificates"].condition.threshold == 14 * 86400
    for system in ("Document Management System", "1022", "TTHC", "VBDLIS", "civil status"):
        assert system in by_id["shared_systems"].title
    assert profile.silence_seconds == 180
    assert profile.retention_seconds() == 15 * 60 + 300


def test_shipped_profiles_read_metrics_their_checks_declare() -> None:
    # A typo in a metric name would leave a criterion unknown forever, never failed.
    for path in (default_profile_path(), DEMO):
        profile, warnings = read_profile(path)
        assert warnings == [], warnings
        for c in profile.criteria:
            metric, check = c.condition.metric, c.select.check
            # Selected by labels alone (a printer may be probed by SNMP or IPP): some check
            # type must still declare the metric.
            words = [check] if check is not None else sorted(REGISTRY)
            if metric in (SUCCESS, DURATION):
                continue
            assert any(REGISTRY[w].metric(metric) for w in words), (path.name, c.id, metric)


def test_demo_profile_turns_within_a_minute() -> None:
    profile = load_profile(DEMO)
    assert profile.silence_seconds == 30
    assert [c.id for c in profile.criteria] == ["wan_up", "wan_loss", "shared_system"]
    for c in profile.criteria:
        assert c.severity == "blocker"
        assert c.condition.last is not None or (c.condition.window or 0) <= 60


def test_profile_helpers_follow_the_criteria() -> None:
    profile = Profile.model_validate(
        {
            "version": 1,
            "criteria": [
                {"id": "a", "title": "A", "severity": "blocker", "select": {"check": "icmp"},
                 "condition": {"metric": "loss_ratio", "agg": "avg", "window": "90s",
                               "op": "<", "threshold": 0.1}},
                {"id": "b", "title": "B", "severity": "warning", "select": {"name": "x"},
                 "condition": {"metric": "success", "agg": "min", "last": 7,
                               "op": ">=", "threshold": 1}},
                {"id": "c", "title": "C", "severity": "warning", "select": {"labels": {"r": "s"}},
                 "condition": {"metric": "rtt_avg_seconds", "agg": "p95", "window": 1800,
                               "op": "<", "threshold": 0.2}},
            ],
        }
    )  # fmt: skip
    assert profile.silence_seconds == 180
    assert profile.retention_seconds() == 1800 + 300
    assert profile.keep_last() == 7
    assert profile.metrics_used() == {"loss_ratio", "rtt_avg_seconds"}
    assert [c.condition.span for c in profile.criteria] == ["90s", "last 7", "30m"]
    assert [c.require for c in profile.criteria] == ["all", "all", "all"]
    assert [c.max_age_intervals for c in profile.criteria] == [3.0, 3.0, 3.0]


def test_titles_are_one_line(tmp_path: Path) -> None:
    text = (BROKEN / "min_samples_over_last.yaml").read_text()
    path = tmp_path / "ok.yaml"
    path.write_text(text.replace("min_samples: 3", "min_samples: 2").replace("2d", "1d"))
    profile = load_profile(path)
    assert profile.criteria[0].title == "WAN line answers"
    assert profile.criteria[1].condition.window == 86400.0


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(90, "90s"), (900, "15m"), (3600, "1h"), (5400, "90m"), (86400, "1d"), (1.5, "1.5s")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


CRITERION = """\
  - id: {id}
    title: Gadget
    severity: blocker
    select: {{check: {check}}}
    condition: {{metric: {metric}, agg: avg, window: 5m, op: "<", threshold: 0.5}}
"""


def _profile(tmp_path: Path, *criteria: tuple[str, str]) -> Path:
    path = tmp_path / "profile.yaml"
    text = "version: 1\ncriteria:\n" + "".join(
        CRITERION.format(id=f"c{i}", check=check, metric=metric)
        for i, (check, metric) in enumerate(criteria)
    )
    path.write_text(text, encoding="utf-8")
    return path


def test_a_metric_its_check_type_does_not_declare_is_an_error(tmp_path: Path) -> None:
    path = _profile(
        tmp_path,
        ("gadget", "loss_ratio"),
        ("gadget", "los_ratio"),
        ("gadget", "free_ratio__var_lib"),
        ("gadget", "free_ratio"),
        ("gadget", "loss_ratio__wan"),
        ("gadget", "temperature_celsius"),
        ("gadget", "success"),
        ("gadget", "duration_seconds"),
    )
    with pytest.raises(ProfileError) as caught:
        read_profile(path, {"gadget": GADGET})
    assert caught.value.messages == [
        f"{path}:12: criteria[1].condition.metric: gadget reports no metric 'los_ratio' "
        "(did you mean 'loss_ratio'?); it reports success, duration_seconds, errors_total, "
        "free_ratio__<item>, loss_ratio, rtt_avg_seconds",
        f"{path}:22: criteria[3].condition.metric: gadget reports free_ratio once per item: "
        "name one, as free_ratio__<item>",
        f"{path}:27: criteria[4].condition.metric: gadget reports loss_ratio without items: "
        "name it 'loss_ratio'",
        f"{path}:32: criteria[5].condition.metric: gadget reports no metric 'temperature_celsius'; "
        "it reports success, duration_seconds, errors_total, free_ratio__<item>, loss_ratio, "
        "rtt_avg_seconds",
    ]
    assert caught.value.warnings == []


def test_the_registry_declarations_catch_a_misspelt_metric(tmp_path: Path) -> None:
    word = "icmp"
    name = sorted(REGISTRY[word].metrics)[0]
    path = _profile(tmp_path, (word, name.replace("_", "", 1)))
    with pytest.raises(ProfileError) as caught:
        load_profile(path)
    (message,) = caught.value.messages
    assert message.startswith(f"{path}:7: criteria[0].condition.metric: {word} reports no metric")


def test_an_unknown_check_type_is_a_warning_not_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _profile(tmp_path, ("telepathy", "aura_ratio"), ("gadget", "loss_ratio"))
    profile, warnings = read_profile(path, {"gadget": GADGET})
    assert [c.select.check for c in profile.criteria] == ["telepathy", "gadget"]
    assert warnings == [
        f"{path}:6: criteria[0].select.check: unknown check type 'telepathy': its metrics "
        "cannot be verified (this collector knows gadget)"
    ]
    # Reported with the errors too, so one run shows everything.
    bad = _profile(tmp_path, ("telepathy", "aura_ratio"), ("gadget", "los_ratio"))
    with pytest.raises(ProfileError) as caught:
        read_profile(bad, {"gadget": GADGET})
    assert caught.value.warnings == warnings and len(caught.value.messages) == 1
    # The collector itself logs them when it loads the profile.
    assert "telepathy" not in REGISTRY
    with caplog.at_level("WARNING", logger="collector.profile"):
        load_profile(path)
    assert "unknown check type 'telepathy'" in caplog.text
