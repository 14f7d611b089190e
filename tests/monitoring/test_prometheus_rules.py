"""prometheus/: the scrape config and rules pass promtool, and every alert has unit tests that
show it firing and not firing, with labels on-call can route on and annotations to act on."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import need_program
from tests.monitoring import PROMETHEUS_DIR, RULE_TESTS, RULES, run

# Alerts about one ward route on working_group and are inhibited per ward; fleet alerts go to
# the Digital Transformation Center.
WARD_LABELS = {"ward", "ward_name", "working_group"}
ANNOTATIONS = {"summary", "description", "runbook"}
# Ward alerts also carry reason: the one line a notification listing many wards shows for each.
WARD_ANNOTATIONS = {*ANNOTATIONS, "reason"}
SEVERITIES = {"critical", "warning"}


def load(path: Any) -> Any:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def alert_rules() -> dict[str, dict[str, Any]]:
    out = {}
    for path in RULES:
        for group in load(path)["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    out[rule["alert"]] = rule
    return out


def rule_test_cases() -> list[dict[str, Any]]:
    """Every alert_rule_test case of every promtool test file."""
    cases = []
    for path in RULE_TESTS:
        for test in load(path)["tests"]:
            cases.extend(test.get("alert_rule_test", []))
    return cases


def test_promtool_check_config(tmp_path: Path) -> None:
    promtool = need_program("promtool")
    # Installed as the README says: the config, its rules, and the scrape token beside it.
    shutil.copytree(PROMETHEUS_DIR, tmp_path / "prometheus")
    (tmp_path / "prometheus" / "prometheus.token").write_text("a-viewer-token\n")
    done = run([promtool, "check", "config", str(tmp_path / "prometheus" / "prometheus.yml")])
    assert done.returncode == 0, done.stdout + done.stderr
    # The rule files the config names are the ones in rules/, all of them.
    assert "SUCCESS: 2 rule files found" in done.stdout + done.stderr
    assert "WARNING" not in done.stdout + done.stderr


def test_promtool_check_rules() -> None:
    promtool = need_program("promtool")
    assert RULES, "no rule files in prometheus/rules"
    done = run([promtool, "check", "rules", *map(str, RULES)])
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_unit_tests_pass() -> None:
    promtool = need_program("promtool")
    assert RULE_TESTS, "no promtool tests in prometheus/tests"
    done = run([promtool, "test", "rules", *map(str, RULE_TESTS)])
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("SUCCESS") == len(RULE_TESTS), done.stdout


def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    # The same tests with one expected label changed must fail: promtool compares them.
    promtool = need_program("promtool")
    shutil.copytree(PROMETHEUS_DIR / "rules", tmp_path / "rules")
    (tmp_path / "tests").mkdir()
    source = (PROMETHEUS_DIR / "tests" / "wardready-alerts.test.yml").read_text(encoding="utf-8")
    broken = source.replace("ward_name: Phường Bến Thành", "ward_name: Phường Bến Nghé", 1)
    assert broken != source
    copy = tmp_path / "tests" / "broken.yml"
    copy.write_text(broken, encoding="utf-8")
    done = run([promtool, "test", "rules", str(copy)])
    assert done.returncode != 0
    assert "Phường Bến Nghé" in done.stdout + done.stderr


def test_every_alert_is_tested_firing_and_silent() -> None:
    rules = alert_rules()
    assert set(rules) == {
        "WardNotReady",
        "WardSilent",
        "LineLossHigh",
        "LineLatencyHigh",
        "VCQualityLow",
        "PrinterOrScannerDown",
        "TLSCertExpiringSoon",
        "ReadinessDropped",
        "CollectorDown",
        "WardreadyJudgeStale",
        "WardreadyIngestRejectionsSpike",
    }
    fires: dict[str, list[dict[str, Any]]] = {}
    silent: set[str] = set()
    for case in rule_test_cases():
        name = case["alertname"]
        if case.get("exp_alerts"):
            fires.setdefault(name, []).extend(case["exp_alerts"])
        else:
            silent.add(name)
    assert set(fires) == set(rules), f"never shown firing: {set(rules) - set(fires)}"
    assert silent == set(rules), f"never shown not firing: {set(rules) - silent}"
    # Every firing case spells out the labels and all three annotations on-call receives.
    for name, alerts in fires.items():
        for alert in alerts:
            labels = alert["exp_labels"]
            assert labels["severity"] in SEVERITIES, name
            if labels.get("scope") == "fleet":
                assert "ward" not in labels, name
                assert set(alert["exp_annotations"]) == ANNOTATIONS, name
            else:
                assert set(labels) >= WARD_LABELS, f"{name}: {labels}"
                assert set(alert["exp_annotations"]) == WARD_ANNOTATIONS, name


@pytest.mark.parametrize("name", sorted(alert_rules()))
def test_alert_has_severity_and_runbook(name: str) -> None:
    rule = alert_rules()[name]
    assert rule["labels"]["severity"] in SEVERITIES
    fleet = rule["labels"].get("scope") == "fleet"
    assert set(rule["annotations"]) == (ANNOTATIONS if fleet else WARD_ANNOTATIONS)
    runbook = rule["annotations"]["runbook"]
    # A runbook is steps to take, not one line restating the summary.
    assert runbook.startswith("1. ") and "\n2. " in runbook, runbook


def test_recording_rules_are_named_level_metric_operation() -> None:
    names = [
        rule["record"]
        for path in RULES
        for group in load(path)["groups"]
        for rule in group["rules"]
        if "record" in rule
    ]
    assert "wardready:wards_ready:ratio" in names
    assert "wardready:wards_ready:ratio_by_group" in names
    for name in names:
        assert name.startswith("wardready:") and name.count(":") == 2, name
