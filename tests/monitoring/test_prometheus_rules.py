"""prometheus/: the scrape config and rules pass promtool, and every alert has unit tests that
show it firing and not firing, with labels on-call can route on and annotations to act on."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

from collector.exposition import WARD_SERIES_BUDGET
from tests.helpers import ROOT, need_program
from tests.monitoring import PROMETHEUS_DIR, RULE_TESTS, RULES, run

NATIONAL_WARDS = 3321
ROLE = ROOT / "ansible" / "roles" / "wardready_monitoring"

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


def collector_job(config: dict[str, Any]) -> dict[str, Any]:
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "wardready-collector"]
    found: dict[str, Any] = job
    return found


def shard_targets(job: dict[str, Any]) -> list[int]:
    """The shard of each target, checking each is one collector address with ?shard=K."""
    shards = []
    for static in job["static_configs"]:
        assert len(static["targets"]) == 1, static
        shards.append(int(static["labels"]["shard"]))
    assert {"source_labels": ["shard"], "target_label": "__param_shard"} in job["relabel_configs"]
    return shards


def test_shipped_config_scrapes_every_shard_within_the_series_budget() -> None:
    job = collector_job(load(PROMETHEUS_DIR / "prometheus.yml"))
    shards = shard_targets(job)
    assert shards == list(range(len(shards))) and len(shards) > 1
    # A national fleet's shard, with room for an uneven hash, fits under sample_limit.
    per_shard = math.ceil(NATIONAL_WARDS / len(shards) * 1.2)
    assert job["sample_limit"] >= per_shard * WARD_SERIES_BUDGET
    assert job["label_limit"] >= 11 and job["label_value_length_limit"] >= 3 * 128


def remote_write_fragment() -> list[dict[str, Any]]:
    block: list[dict[str, Any]] = load(PROMETHEUS_DIR / "remote-write.yml")["remote_write"]
    return block


def test_remote_write_fragment_keeps_only_readiness_and_passes_promtool(tmp_path: Path) -> None:
    promtool = need_program("promtool")
    shutil.copytree(PROMETHEUS_DIR, tmp_path / "prometheus")
    config = tmp_path / "prometheus" / "prometheus.yml"
    (tmp_path / "prometheus" / "prometheus.token").write_text("a-viewer-token\n")
    fragment = (PROMETHEUS_DIR / "remote-write.yml").read_text(encoding="utf-8")
    config.write_text(config.read_text(encoding="utf-8") + "\n" + fragment, encoding="utf-8")
    done = run([promtool, "check", "config", str(config)])
    assert done.returncode == 0, done.stdout + done.stderr
    relabel = remote_write_fragment()[0]["write_relabel_configs"]
    (keep,) = [r for r in relabel if r.get("action") == "keep"]
    pattern = re.compile(f"^(?:{keep['regex']})$")
    for name in ("wardready_ward_ready", "wardready_ward_reason", "wardready:wards_ready:ratio"):
        assert pattern.match(name), name
    for name in ("wardready_icmp_loss_ratio", "wardready_check_success", "up"):
        assert not pattern.match(name), name
    done = run([promtool, "check", "config", str(PROMETHEUS_DIR / "long-term.yml")])
    assert done.returncode == 0, done.stdout + done.stderr


def render_role_config(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """The role's prometheus.yml.j2 with its defaults, checked by promtool."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["to_json"] = json.dumps
    defaults = load(ROLE / "defaults" / "main.yml")
    values = {k: v for k, v in defaults.items() if not str(v).startswith("{{")}
    values.update(ansible_managed="managed", **overrides)
    text = env.from_string((ROLE / "templates" / "prometheus.yml.j2").read_text("utf-8")).render(
        values
    )
    shutil.copytree(PROMETHEUS_DIR / "rules", tmp_path / "rules", dirs_exist_ok=True)
    token = tmp_path / "wardready.token"
    token.write_text("a-viewer-token\n")
    text = text.replace("/etc/prometheus/rules/", f"{tmp_path}/rules/")
    text = text.replace("/etc/prometheus/wardready.token", str(token))
    path = tmp_path / "prometheus.yml"
    path.write_text(text, encoding="utf-8")
    done = run([need_program("promtool"), "check", "config", str(path)])
    assert done.returncode == 0, done.stdout + done.stderr
    config: dict[str, Any] = yaml.safe_load(text)
    return config


def defaults_of_serve() -> Any:
    from collector.cli import build_parser

    return build_parser().parse_args(["serve"])


def test_role_config_scrapes_its_shards_and_sends_readiness_when_asked(tmp_path: Path) -> None:
    one = render_role_config(tmp_path, wardready_monitoring_metrics_shards=1)
    job = collector_job(one)
    assert shard_targets(job) == [0] and "remote_write" not in one
    assert job["sample_limit"] >= math.ceil(NATIONAL_WARDS * 1.2) * WARD_SERIES_BUDGET
    # The role's default scrapes as many shards as the collector serves by default.
    four = render_role_config(
        tmp_path, wardready_monitoring_remote_write_url="http://store.city:9091/api/v1/write"
    )
    assert defaults_of_serve().metrics_shards == 4
    job = collector_job(four)
    assert shard_targets(job) == [0, 1, 2, 3]
    assert job["sample_limit"] >= math.ceil(NATIONAL_WARDS / 4 * 1.2) * WARD_SERIES_BUDGET
    (sent,) = four["remote_write"]
    assert sent["url"] == "http://store.city:9091/api/v1/write"
    # The same series as the fragment the static config documents.
    assert sent["write_relabel_configs"] == remote_write_fragment()[0]["write_relabel_configs"]
    specs = load(ROLE / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]
    defaults = load(ROLE / "defaults" / "main.yml")
    for name in (
        "wardready_monitoring_metrics_shards",
        "wardready_monitoring_wards",
        "wardready_monitoring_ward_series_budget",
        "wardready_monitoring_remote_write_url",
    ):
        assert specs[name]["default"] == defaults[name], name
    assert defaults["wardready_monitoring_ward_series_budget"] == WARD_SERIES_BUDGET


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
        "WardreadyMetricsBudgetCut",
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
