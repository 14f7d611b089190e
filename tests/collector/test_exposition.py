"""GET /metrics: parses, every family has help, Unicode ward names, bounded labels, each ward
held to its series budget, and shards."""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from checks.registry import REGISTRY
from collector import exposition, tokens, wards
from collector.api import create_app
from collector.auth import COOKIE
from collector.profile import load_profile
from collector.service import Service
from tests.promlint import declared_metrics, promtool_complaints

from .conftest import (
    BROKEN,
    PROFILE,
    READY,
    auth,
    batch,
    body,
    broken_results,
    healthy_results,
    result,
)

# The stream and bandwidth checks judged too (as warnings, so READY stays ready): only
# series a criterion selects export their line quality.
LINE_PROFILE = (
    PROFILE
    + """\
  - id: vc_mos
    title: Calls sound good
    severity: warning
    select: {check: stream, labels: {role: wan}}
    condition: {metric: mos, agg: avg, window: 15m, op: ">=", threshold: 4}
  - id: bw_up
    title: Upload fast enough
    severity: warning
    select: {check: bandwidth, labels: {role: wan}}
    condition: {metric: upload_bytes_per_second, agg: last, last: 1, op: ">=", threshold: 1}
"""
)
# Check types whose series /metrics exports: line quality and devices.
EXPORTED = sorted(
    w for w in REGISTRY if w in exposition.LINE_METRICS or w.startswith(exposition.DEVICE_PREFIXES)
)


@pytest.fixture
def line_client(engine: Any, viewer: str, tmp_path: Path) -> Iterator[TestClient]:
    """A viewer's client of a service whose profile judges stream and bandwidth too."""
    path = tmp_path / "line.yaml"
    path.write_text(LINE_PROFILE, encoding="utf-8")
    svc = Service(engine, load_profile(path), verdict_seconds=0.0)
    svc.rebuild()
    with TestClient(create_app(svc), base_url="http://127.0.0.1") as c:
        c.cookies.set(COOKIE, viewer)
        yield c


def _dms_failing(seq: int, **over: Any) -> dict[str, Any]:
    """A run of the shared Document Management System's check that failed."""
    fields: dict[str, Any] = {"check": "http", "name": "dms", "target": "dms"}
    fields.update(labels={"role": "shared_system"}, success=False, reason="tls_expired")
    return result(seq, **{**fields, **over})


def _key(**labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def scrape(client: TestClient) -> dict[str, Any]:
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"] == exposition.CONTENT_TYPE
    return {f.name: f for f in text_string_to_metric_families(r.content.decode("utf-8"))}


def values(family: Any) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value for s in family.samples}


def feed(client: TestClient, service: Service) -> None:
    good = tokens.create(service.engine, READY)
    bad = tokens.create(service.engine, BROKEN)
    ok = client.post(
        "/api/v1/ingest", content=body(batch(READY, results=healthy_results())), headers=auth(good)
    )
    assert ok.status_code == 200
    broken = broken_results()
    broken[-1]["metrics"] = {}  # the host check sent no disk figure: disk_free is unknown
    r = client.post(
        "/api/v1/ingest", content=body(batch(BROKEN, results=broken)), headers=auth(bad)
    )
    assert r.status_code == 200


def test_metrics_parse_and_every_family_has_help(client: TestClient, service: Service) -> None:
    feed(client, service)
    families = scrape(client)
    expected = {
        "wardready_ward_ready",
        "wardready_ward_verdict",
        "wardready_ward_criterion_ok",
        "wardready_wards",
        "wardready_agent_last_seen_timestamp_seconds",
        "wardready_agent_spool_depth",
        "wardready_icmp_loss_ratio",
        "wardready_icmp_rtt_avg_seconds",
        "wardready_shared_check_wards",
        "wardready_metrics_ward_series_budget",
    }
    assert expected <= set(families)
    # What the budget leaves to the ward page and the agent's own /metrics.
    left_out = {
        "wardready_check_duration_seconds",
        "wardready_check_started_timestamp_seconds",
        "wardready_host_disk_free_ratio_min",
        "wardready_http_status_code",
        "wardready_http_duration_seconds",
        "wardready_agent_resident_memory_bytes",
    }
    assert not left_out & set(families)
    for f in families.values():
        assert f.documentation.strip(), f"{f.name} has no help text"
        # The collector's metrics about itself have counters and histograms; readiness is
        # all gauges.
        if not f.name.startswith(("wardready_collector_", "process_", "python_")):
            assert f.type == "gauge", f.name


def test_ward_ready_carries_unicode_names_and_verdicts(
    client: TestClient, service: Service
) -> None:
    feed(client, service)
    families = scrape(client)
    ready = {s.labels["ward"]: s for s in families["wardready_ward_ready"].samples}
    assert ready[READY].value == 1.0
    assert ready[READY].labels["ward_name"] == "Phường Bến Thành"
    assert ready[READY].labels["working_group"] == "2"
    assert ready[BROKEN].value == 0.0 and ready[BROKEN].labels["ward_name"] == "Phường Minh Phụng"
    assert ready["commune-can-gio"].labels["ward_name"] == "Xã Cần Giờ"

    verdicts = {
        s.labels["ward"]: s.labels["verdict"] for s in families["wardready_ward_verdict"].samples
    }
    assert verdicts == {
        READY: "ready",
        BROKEN: "not_ready",
        "commune-can-gio": "not_ready",
        "ward-binh-thoi": "not_ready",
    }
    counts = {s.labels["verdict"]: s.value for s in families["wardready_wards"].samples}
    assert counts == {"ready": 1.0, "not_ready": 3.0, "unknown": 0.0}


def test_criteria_export_ok_and_failed_but_not_unknown(
    client: TestClient, service: Service
) -> None:
    feed(client, service)
    crit = values(scrape(client)["wardready_ward_criterion_ok"])
    assert crit[(("criterion", "wan_loss"), ("severity", "blocker"), ("ward", BROKEN))] == 0.0
    assert crit[(("criterion", "dms_up"), ("severity", "blocker"), ("ward", BROKEN))] == 1.0
    assert crit[(("criterion", "wan_loss"), ("severity", "blocker"), ("ward", READY))] == 1.0
    assert crit[(("criterion", "disk_free"), ("severity", "warning"), ("ward", READY))] == 1.0
    assert (("criterion", "disk_free"), ("severity", "warning"), ("ward", BROKEN)) not in crit
    assert service.verdicts()[BROKEN].criteria[2].status == "unknown"


def test_agent_and_check_series(client: TestClient, service: Service) -> None:
    feed(client, service)
    families = scrape(client)
    spool = values(families["wardready_agent_spool_depth"])
    assert spool == {
        (("agent", "pc-01"), ("ward", READY)): 7.0,
        (("agent", "pc-01"), ("ward", BROKEN)): 7.0,
    }
    seen = families["wardready_agent_last_seen_timestamp_seconds"].samples
    assert all(s.value > 1.7e9 for s in seen) and len(seen) == 2

    loss = values(families["wardready_icmp_loss_ratio"])
    key = (
        ("agent", "pc-01"),
        ("line", "fibre"),
        ("name", "wan-city"),
        ("role", "wan"),
        ("target", "gw"),
        ("ward", BROKEN),
    )
    assert loss[key] == 0.5
    # Success of the http and host checks shows in the criteria, not per check.
    assert "wardready_check_success" not in families
    shared = values(families["wardready_shared_check_wards"])
    assert (
        shared[_key(check="http", name="dms", role="shared_system", target="dms", state="ok")] == 2
    )
    assert (
        shared[_key(check="http", name="dms", role="shared_system", target="dms", state="failed")]
        == 0
    )


def test_only_the_fixed_label_set_is_exported(client: TestClient, service: Service) -> None:
    token = tokens.create(service.engine, READY)
    labels = {"role": "wan", "line": "backup", "zone": "north", "vendor": "vnpt"}
    doc = batch(READY, results=[result(1, labels=labels)])
    assert client.post("/api/v1/ingest", content=body(doc), headers=auth(token)).status_code == 200
    families = scrape(client)
    (sample,) = families["wardready_icmp_loss_ratio"].samples
    assert set(sample.labels) == set(exposition.SERIES_LABELS)
    assert sample.labels["line"] == "backup"
    printer = result(2, check="printer_ipp", name="p1", target="ipp://p1/", labels=labels)
    doc = batch(READY, results=[printer])
    assert client.post("/api/v1/ingest", content=body(doc), headers=auth(token)).status_code == 200
    (success,) = scrape(client)["wardready_check_success"].samples
    assert set(success.labels) == set(exposition.CHECK_LABELS)


def test_two_agents_with_the_same_check_stay_two_series(
    client: TestClient, service: Service
) -> None:
    token = tokens.create(service.engine, READY)
    for agent, loss in (("pc-01", 0.0), ("pc-02", 0.25)):
        doc = batch(READY, agent=agent, results=[result(1, metrics={"loss_ratio": loss})])
        assert (
            client.post("/api/v1/ingest", content=body(doc), headers=auth(token)).status_code == 200
        )
    samples = scrape(client)["wardready_icmp_loss_ratio"].samples
    assert sorted((s.labels["agent"], s.value) for s in samples) == [
        ("pc-01", 0.0),
        ("pc-02", 0.25),
    ]


def test_fast_renderer_matches_generate_latest(
    client: TestClient, service: Service, tmp_path: Any
) -> None:
    # Names with the characters the text format must escape.
    path = tmp_path / "odd.csv"
    path.write_text(
        'id,name,kind,former_district,working_group\nward-odd,"Phường ""Mới"" \\ Bến",ward,,7\n',
        "utf-8",
    )
    wards.import_csv(service.engine, path)
    service.wards(refresh=True)  # as the running service does within DEFAULT_WARDS_SECONDS
    feed(client, service)
    registry = exposition.registry_for(service)
    ours = exposition.render(registry).decode("utf-8")
    theirs = generate_latest(registry).decode("utf-8")

    def flat(text: str) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
        return {
            (s.name, tuple(sorted(s.labels.items())), s.value)
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if not s.name.endswith("_timestamp_seconds")  # evaluated/seen times move on
        }

    assert flat(ours) == flat(theirs)
    docs = {f.name: f.documentation for f in text_string_to_metric_families(ours)}
    assert docs == {f.name: f.documentation for f in text_string_to_metric_families(theirs)}
    odd = [
        s
        for f in text_string_to_metric_families(ours)
        if f.name == "wardready_ward_ready"
        for s in f.samples
        if s.labels["ward"] == "ward-odd"
    ]
    assert odd[0].labels["ward_name"] == 'Phường "Mới" \\ Bến'


def test_large_scrape_is_gzipped_when_asked(
    client: TestClient, service: Service, tmp_path: Any
) -> None:
    path = tmp_path / "many.csv"
    rows = [f"ward-{i:04d},Phường Thứ {i},ward,,{i % 20}" for i in range(1000)]
    path.write_text(
        "id,name,kind,former_district,working_group\n" + "\n".join(rows) + "\n", "utf-8"
    )
    wards.import_csv(service.engine, path)
    service.wards(refresh=True)
    plain = client.get("/metrics", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and len(plain.content) > 64 * 1024
    packed = client.get("/metrics", headers={"Accept-Encoding": "gzip"})
    assert packed.headers["content-encoding"] == "gzip"
    families = {f.name: f for f in text_string_to_metric_families(packed.text)}
    assert len(families["wardready_ward_ready"].samples) == 1004


def test_ward_info_carries_names_and_groups_for_every_ward(
    client: TestClient, service: Service
) -> None:
    feed(client, service)
    info = {s.labels["ward"]: s for s in scrape(client)["wardready_ward_info"].samples}
    # Every ward of the table, reported or not: dashboards list the silent ones too.
    assert set(info) == {READY, BROKEN, "commune-can-gio", "ward-binh-thoi"}
    assert all(s.value == 1.0 for s in info.values())
    assert info["commune-can-gio"].labels == {
        "ward": "commune-can-gio",
        "ward_name": "Xã Cần Giờ",
        "working_group": "2",
        "kind": "commune",
    }
    assert info[BROKEN].labels["ward_name"] == "Phường Minh Phụng"
    assert info[BROKEN].labels["working_group"] == "1"


def _reasons(client: TestClient) -> dict[str, set[tuple[str, str, str]]]:
    out: dict[str, set[tuple[str, str, str]]] = {}
    for s in scrape(client)["wardready_ward_reason"].samples:
        assert s.value == 1.0
        labels = s.labels
        out.setdefault(labels["ward"], set()).add(
            (labels["criterion"], labels["severity"], labels["status"])
        )
    return out


def test_ward_reason_lists_what_the_verdict_names(client: TestClient, service: Service) -> None:
    feed(client, service)
    reasons = _reasons(client)
    assert reasons[BROKEN] == {
        ("wan_loss", "blocker", "failed"),
        ("disk_free", "warning", "unknown"),
    }
    # Never reported: no_data alone, as the verdict says it, not every criterion it implies.
    assert reasons["commune-can-gio"] == {("no_data", "blocker", "failed")}
    assert reasons["ward-binh-thoi"] == {("no_data", "blocker", "failed")}
    assert READY not in reasons
    text = {r for v in service.verdicts().values() for r in v.reasons}
    assert any(t.startswith("wan_loss:") for t in text)


def test_ward_reason_tells_silent_wards_and_silent_agents(
    client: TestClient, service: Service
) -> None:
    import time

    feed(client, service)
    # A second PC of the ready ward last heard from twenty minutes ago: a warning only.
    token = tokens.create(service.engine, READY, "pc-02")
    heartbeat = body(batch(READY, agent="pc-02", results=[]))
    service.ingest(f"Bearer {token}", heartbeat, now=time.time() - 1200)
    reasons = _reasons(client)
    assert reasons[READY] == {("agent_silent", "warning", "failed")}
    assert service.verdicts()[READY].verdict == "ready"

    # Later, every agent silent: a blocker, and the criteria it left stale are listed too.
    service.clock = lambda: time.time() + 1000
    reasons = _reasons(client)
    assert ("agent_silent", "blocker", "failed") in reasons[READY]
    assert ("wan_loss", "blocker", "failed") in reasons[READY]
    assert ("agent_silent", "blocker", "failed") in reasons[BROKEN]
    assert ("agent_silent", "warning", "failed") not in reasons[READY]


def test_agent_info_version_and_dropped(client: TestClient, service: Service) -> None:
    token = tokens.create(service.engine, READY)
    doc = batch(READY, results=[result(1)])
    doc["status"].update(
        version="1.2.3+vn", spool_dropped_total=42, resident_memory_bytes=51_000_000
    )
    assert client.post("/api/v1/ingest", content=body(doc), headers=auth(token)).status_code == 200
    families = scrape(client)
    (info,) = families["wardready_agent_info"].samples
    assert info.labels == {"ward": READY, "agent": "pc-01", "version": "1.2.3+vn"}
    assert info.value == 1.0
    assert "wardready_agent_resident_memory_bytes" not in families  # the agent's own /metrics
    (dropped,) = families["wardready_agent_spool_dropped_results"].samples
    assert dropped.value == 42


def test_failure_reason_only_for_failing_checks(client: TestClient, service: Service) -> None:
    token = tokens.create(service.engine, READY)
    failing = result(
        2,
        check="printer_ipp",
        name="counter-1",
        target="ipp://p1/ipp/print",
        labels={"role": "counter_device"},
        success=False,
        reason="toner_empty",
        metrics={},
    )
    # A failing shared system: its reason is in the criteria and on the ward page.
    http = _dms_failing(3)
    doc = batch(READY, results=[result(1), failing, http])
    assert client.post("/api/v1/ingest", content=body(doc), headers=auth(token)).status_code == 200
    (sample,) = scrape(client)["wardready_check_failure_reason"].samples
    assert sample.value == 1.0
    assert sample.labels == {
        "ward": READY,
        "agent": "pc-01",
        "check": "printer_ipp",
        "name": "counter-1",
        "target": "ipp://p1/ipp/print",
        "role": "counter_device",
        "line": "",
        "reason": "toner_empty",
    }

    # The next run passes: the reason is gone, not left behind at 0.
    passing = {**failing, "seq": 4, "started": failing["started"] + 1, "success": True}
    passing["reason"] = "ok"
    doc = batch(READY, results=[passing])
    assert client.post("/api/v1/ingest", content=body(doc), headers=auth(token)).status_code == 200
    families = scrape(client)
    assert "wardready_check_failure_reason" not in families or not (
        families["wardready_check_failure_reason"].samples
    )


def test_only_line_quality_the_profile_judges_and_devices_are_exported(
    client: TestClient, service: Service
) -> None:
    token = tokens.create(service.engine, READY)
    host = result(
        1,
        check="host",
        name="host",
        target="localhost",
        labels={},
        metrics={"disk_free_ratio__": 0.4, "cpu_ratio": 0.1},
    )
    # An icmp check to the local router: no criterion selects it.
    lan = result(2, name="router", labels={"role": "lan"}, metrics={"loss_ratio": 0.3})
    wan = result(3, metrics={"loss_ratio": 0.0, "rtt_avg_seconds": 0.01, "packets_sent": 5.0})
    scanner = result(4, check="scanner_escl", name="s1", target="http://s1", labels={})
    doc = batch(READY, results=[host, lan, wan, scanner])
    assert client.post("/api/v1/ingest", content=body(doc), headers=auth(token)).status_code == 200
    families = scrape(client)
    assert not any(name.startswith("wardready_host_") for name in families)
    assert "wardready_icmp_packets_sent" not in families
    (loss,) = families["wardready_icmp_loss_ratio"].samples
    assert loss.labels["name"] == "wan-city"
    (success,) = families["wardready_check_success"].samples
    assert success.labels["check"] == "scanner_escl" and success.value == 1.0


def test_check_series_with_odd_labels_render_as_generate_latest(
    client: TestClient, service: Service
) -> None:
    # Check families are formatted once per series and shared across families: escaping,
    # the check label and the item label must still come out as prometheus_client writes them.
    token = tokens.create(service.engine, READY)
    odd = result(
        1,
        name="dms",
        target="dms.city:443",
        labels={"role": "wan", "line": 'cáp "quang" \\ số 1'},
    )
    printer = result(
        2,
        check="printer_snmp",
        name="may-in-1",
        target="udp://10.0.0.9",
        labels={"role": 'Máy "chủ" \\ số 1', "line": ""},
        success=False,
        reason="timeout",
    )
    doc = batch(READY, results=[odd, printer])
    assert client.post("/api/v1/ingest", content=body(doc), headers=auth(token)).status_code == 200
    registry = exposition.registry_for(service)
    ours = exposition.render(registry).decode("utf-8")
    theirs = generate_latest(registry).decode("utf-8")

    def checks(text: str) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
        return {
            (s.name, tuple(sorted(s.labels.items())), s.value)
            for f in text_string_to_metric_families(text)
            if f.name.startswith(("wardready_check_", "wardready_icmp_"))
            for s in f.samples
        }

    got = checks(ours)
    assert got == checks(theirs)
    series = {
        "ward": READY,
        "agent": "pc-01",
        "name": "dms",
        "target": "dms.city:443",
        "role": "wan",
        "line": 'cáp "quang" \\ số 1',
    }
    rtt = [s for s in got if s[0] == "wardready_icmp_loss_ratio" and ("name", "dms") in s[1]]
    assert [dict(s[1]) for s in rtt] == [series]
    device = {
        "ward": READY,
        "agent": "pc-01",
        "check": "printer_snmp",
        "name": "may-in-1",
        "target": "udp://10.0.0.9",
        "role": 'Máy "chủ" \\ số 1',
        "line": "",
    }
    assert ("wardready_check_success", tuple(sorted(device.items())), 0.0) in got
    reason = {**device, "reason": "timeout"}
    assert ("wardready_check_failure_reason", tuple(sorted(reason.items())), 1.0) in got


def test_family_samples_follow_what_was_added() -> None:
    family = exposition._Family("wardready_test_value", "A test family.")
    labels = {"ward": "w-1", "agent": "pc-01"}
    family.add(labels, 2)
    family.add({}, float("nan"))
    family.add(labels, float("-inf"), '{ward="w-1",agent="pc-01"}')
    assert family.lines == [
        'wardready_test_value{ward="w-1",agent="pc-01"} 2.0\n',
        "wardready_test_value NaN\n",
        'wardready_test_value{ward="w-1",agent="pc-01"} -Inf\n',
    ]
    assert [(s.name, s.labels) for s in family.samples] == [
        ("wardready_test_value", labels),
        ("wardready_test_value", {}),
        ("wardready_test_value", labels),
    ]
    assert family.samples[0].value == 2.0 and math.isnan(family.samples[1].value)
    with pytest.raises(TypeError, match="wardready_test_value"):
        family.samples = family.samples


def _results(word: str, metrics: dict[str, float], start: int = 1) -> list[dict[str, Any]]:
    """A passing and a failing result of a check of type ``word``, on two targets."""
    kind = REGISTRY.get(word)
    reason = sorted(kind.reasons)[0] if kind is not None and kind.reasons else "error"
    return [
        result(
            start + i,
            check=word,
            name=f"{word}-{i}",
            target=f"t{i}",
            labels={"role": "wan", "line": "cáp quang"},
            success=ok,
            reason="ok" if ok else reason,
            metrics=dict(metrics),
        )
        for i, ok in enumerate((True, False))
    ]


def _scraped(client: TestClient, service: Service, results: list[dict[str, Any]]) -> str:
    token = tokens.create(service.engine, READY)
    doc = body(batch(READY, results=results))
    r = client.post("/api/v1/ingest", content=doc, headers=auth(token))
    assert r.status_code == 200, r.text
    feed(client, service)  # and wards with verdicts, criteria, reasons: every fixed family
    text: str = client.get("/metrics").text
    return text


def test_promtool_finds_nothing_wrong_with_every_check_type_at_once(
    line_client: TestClient, service: Service
) -> None:
    results = []
    for word, kind in sorted(REGISTRY.items()):
        results += _results(word, declared_metrics(kind), len(results) + 1)
    unknown = {"aura_ratio": 0.5, "visions_total": 3.0}
    results += _results("telepathy", unknown, len(results) + 1)
    text = _scraped(line_client, service, results)
    assert promtool_complaints(text) == ""
    families = {f.name: f for f in text_string_to_metric_families(text)}
    exported = {n for n in families if n.startswith("wardready_") and "_" in n[10:]}
    for word in EXPORTED:
        kind = REGISTRY[word]
        if word in exposition.LINE_METRICS:
            for metric in exposition.LINE_METRICS[word]:
                declared = kind.metrics[metric]
                family = families[f"wardready_{word}_{metric}"]
                assert family.type == declared.kind, metric
                assert family.documentation.startswith(declared.help.strip()), metric
                # Both runs (one failing), on the two targets.
                ours = [s for s in family.samples if s.labels["name"].startswith(f"{word}-")]
                assert len(ours) == 2, metric
        else:
            ours = [
                s for s in families["wardready_check_success"].samples if s.labels["check"] == word
            ]
            assert sorted(s.value for s in ours) == [0.0, 1.0], word
    others = {w for w in REGISTRY if w not in EXPORTED} | {"telepathy"}
    assert not {n for n in exported if n.split("_")[1] in others}


def test_ward_past_its_budget_keeps_readiness_first_and_the_cut_is_counted(
    client: TestClient, service: Service
) -> None:
    token = tokens.create(service.engine, READY)
    now = __import__("time").time()
    lines = [
        result(i, name=f"wan-{i:02d}", target=f"gw{i}", started=now - 30 + i * 0.01)
        for i in range(1, 31)
    ]
    doc = batch(READY, results=lines + healthy_results(31))
    assert client.post("/api/v1/ingest", content=body(doc), headers=auth(token)).status_code == 200
    collector = exposition.ReadinessCollector(service, budget=12)
    text = exposition.render_families(collector.families(0, 1)).decode("utf-8")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    mine = [s for f in families.values() for s in f.samples if s.labels.get("ward") == READY]
    assert len(mine) == 12
    names = {s.name for s in mine}
    assert {"wardready_ward_ready", "wardready_ward_verdict", "wardready_ward_info"} <= names
    assert len([s for s in mine if s.name == "wardready_ward_criterion_ok"]) == 3
    # Info, ready, verdict, 3 criteria, 4 agent series: 2 line series are left.
    assert len([s for s in mine if s.name.startswith("wardready_icmp_")]) == 2
    # 31 lines (and the healthy wan-city) with loss and round trip, less the 2 kept; each
    # scrape counts its cut.
    cut = families["wardready_collector_metrics_series_cut"]
    assert cut.type == "counter"
    assert cut.samples[0].value == 60.0
    assert families["wardready_collector_metrics_wards_cut"].samples[0].value == 1.0
    assert families["wardready_metrics_ward_series_budget"].samples[0].value == 12.0
    again = exposition.render_families(collector.families(0, 1)).decode("utf-8")
    assert "wardready_collector_metrics_series_cut_total 120.0\n" in again
    # The default budget (64) cuts 8 of its 72.
    assert "wardready_collector_metrics_series_cut_total 8.0\n" in client.get("/metrics").text
    # The tightest budget keeps the verdict and when the agent was last heard (WardSilent
    # reads it) ahead of the reasons and criteria.
    tight = exposition.ReadinessCollector(service, budget=4)
    text = exposition.render_families(tight.families(0, 1)).decode("utf-8")
    mine = {
        s.name
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.labels.get("ward") == READY
    }
    assert mine == {
        "wardready_ward_info",
        "wardready_ward_ready",
        "wardready_ward_verdict",
        "wardready_agent_last_seen_timestamp_seconds",
    }
    with pytest.raises(ValueError, match="budget"):
        exposition.ReadinessCollector(service, budget=0)


def _ward_samples(text: str) -> tuple[set[tuple[str, tuple[tuple[str, str], ...]]], set[str]]:
    """(name, labels) of the samples with a ward label, and the names of those without."""
    per_ward, fleet = set(), set()
    for f in text_string_to_metric_families(text):
        for s in f.samples:
            if "ward" in s.labels:
                per_ward.add((s.name, tuple(sorted(s.labels.items()))))
            else:
                fleet.add(s.name)
    return per_ward, fleet


def test_shards_split_the_wards_by_crc32_and_fleet_metrics_come_on_shard_0(
    service: Service, viewer: str, tmp_path: Path
) -> None:
    path = tmp_path / "many.csv"
    rows = [f"ward-{i:03d},Phường Thứ {i},ward,,{i % 5}" for i in range(60)]
    path.write_text("id,name,kind,former_district,working_group\n" + "\n".join(rows) + "\n")
    wards.import_csv(service.engine, path)
    service.wards(refresh=True)
    with TestClient(create_app(service, metrics_shards=3), base_url="http://127.0.0.1") as c:
        c.cookies.set(COOKIE, viewer)
        feed(c, service)
        whole, fleet = _ward_samples(c.get("/metrics").text)
        union: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
        for k in range(3):
            r = c.get("/metrics", params={"shard": str(k)})
            assert r.status_code == 200
            mine, others = _ward_samples(r.text)
            ids = {dict(labels)["ward"] for _, labels in mine}
            assert ids and all(zlib.crc32(w.encode()) % 3 == k for w in ids)
            assert not union & mine
            union |= mine
            if k == 0:
                assert others == fleet
            else:
                assert others == set()
                assert "wardready_collector_" not in r.text and "process_" not in r.text
        assert union == whole
        assert "wardready_wards" in fleet and "wardready_shared_check_wards" in fleet
        assert any(n.startswith("wardready_collector_") for n in fleet)
        for bad in ("3", "-1", "x", "", "1.0"):
            r = c.get("/metrics", params={"shard": bad})
            assert r.status_code == 400, bad
            assert r.json()["detail"].startswith("shard: must be an integer from 0 to 2"), bad


def test_one_shard_serves_everything_and_shards_keep_the_token(
    client: TestClient, anon: TestClient, service: Service
) -> None:
    feed(client, service)
    assert _ward_samples(client.get("/metrics?shard=0").text) == _ward_samples(
        client.get("/metrics").text
    )
    r = client.get("/metrics?shard=1")
    assert r.status_code == 400 and "shard" in r.json()["detail"]
    assert anon.get("/metrics?shard=0").status_code == 401


def test_shared_systems_are_counted_once_for_the_fleet(
    client: TestClient, service: Service
) -> None:
    feed(client, service)
    tok = tokens.create(service.engine, "commune-can-gio")
    soon = _dms_failing(1, metrics={"cert_expiry_seconds": 86400.0})
    later = {**soon, "seq": 2, "name": "mail", "target": "mail:587", "check": "tcp"}
    later.update(labels={"role": "mail"}, success=True, reason="ok")
    later["metrics"] = {"cert_expiry_seconds": 90 * 86400.0}
    doc = batch("commune-can-gio", results=[soon, later])
    assert client.post("/api/v1/ingest", content=body(doc), headers=auth(tok)).status_code == 200
    families = scrape(client)
    wards_by = values(families["wardready_shared_check_wards"])
    dms = {"check": "http", "name": "dms", "role": "shared_system", "target": "dms"}
    assert wards_by[_key(**dms, state="ok")] == 2.0
    assert wards_by[_key(**dms, state="failed")] == 1.0
    expiry = values(families["wardready_shared_cert_expiry_seconds"])
    # The soonest any ward sees: the other wards' dms checks report no certificate.
    assert expiry[_key(**dms)] == 86400.0
    mail = _key(check="tcp", name="mail", role="mail", target="mail:587")
    assert expiry[mail] == 90 * 86400.0
