"""GET /metrics: parses, every family has help, Unicode ward names, bounded labels."""

from __future__ import annotations

import math
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from checks.registry import REGISTRY
from collector import exposition, tokens, wards
from collector.service import Service
from tests.promlint import (
    assert_clean_and_declared,
    declared_metrics,
    promtool_complaints,
    stand_ins,
)

from .conftest import BROKEN, READY, auth, batch, body, broken_results, healthy_results, result


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
        "wardready_check_success",
        "wardready_check_duration_seconds",
        "wardready_icmp_loss_ratio",
        "wardready_icmp_rtt_avg_seconds",
        "wardready_host_disk_free_ratio_min",
        "wardready_http_status_code",
    }
    assert expected <= set(families)
    for f in families.values():
        assert f.documentation.strip(), f"{f.name} has no help text"
        # The collector's metrics about itself have counters and histograms; readiness is
        # all gauges.
        if not f.name.startswith(("wardready_collector_", "process_")):
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
    success = families["wardready_check_success"].samples
    assert {s.labels["check"] for s in success} == {"icmp", "http", "host"}
    assert all(s.value == 1.0 for s in success)


def test_only_the_fixed_label_set_is_exported(client: TestClient, service: Service) -> None:
    token = tokens.create(service.engine, READY)
    labels = {"role": "wan", "line": "backup", "zone": "north", "vendor": "vnpt"}
    doc = batch(READY, results=[result(1, labels=labels)])
    assert client.post("/api/v1/ingest", content=body(doc), headers=auth(token)).status_code == 200
    families = scrape(client)
    (sample,) = families["wardready_icmp_loss_ratio"].samples
    assert set(sample.labels) == set(exposition.SERIES_LABELS)
    assert sample.labels["line"] == "backup"
    (success,) = families["wardready_check_success"].samples
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


def test_agent_info_version_memory_and_dropped(client: TestClient, service: Service) -> None:
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
    (memory,) = families["wardready_agent_resident_memory_bytes"].samples
    assert memory.value == 51_000_000
    (dropped,) = families["wardready_agent_spool_dropped_results"].samples
    assert dropped.value == 42


def test_failure_reason_only_for_failing_checks(client: TestClient, service: Service) -> None:
    token = tokens.create(service.engine, READY)
    failing = result(
        2,
        check="http",
        name="dms",
        target="dms",
        address="http://127.0.0.1/",
        labels={"role": "shared_system"},
        success=False,
        reason="tls_expired",
        metrics={},
    )
    doc = batch(READY, results=[result(1), failing])
    assert client.post("/api/v1/ingest", content=body(doc), headers=auth(token)).status_code == 200
    (sample,) = scrape(client)["wardready_check_failure_reason"].samples
    assert sample.value == 1.0
    assert sample.labels == {
        "ward": READY,
        "agent": "pc-01",
        "check": "http",
        "name": "dms",
        "target": "dms",
        "role": "shared_system",
        "line": "",
        "reason": "tls_expired",
    }

    # The next run passes: the reason is gone, not left behind at 0.
    passing = {**failing, "seq": 3, "started": failing["started"] + 1, "success": True}
    passing["reason"] = "ok"
    doc = batch(READY, results=[passing])
    assert client.post("/api/v1/ingest", content=body(doc), headers=auth(token)).status_code == 200
    families = scrape(client)
    assert "wardready_check_failure_reason" not in families or not (
        families["wardready_check_failure_reason"].samples
    )


def test_item_metrics_become_one_family_with_an_item_label(
    client: TestClient, service: Service
) -> None:
    token = tokens.create(service.engine, READY)
    host = result(
        1,
        check="host",
        name="host",
        target="localhost",
        address="localhost",
        labels={},
        metrics={"disk_free_ratio__": 0.4, "disk_free_ratio__var_lib": 0.2, "cpu_ratio": 0.1},
    )
    doc = batch(READY, results=[host])
    assert client.post("/api/v1/ingest", content=body(doc), headers=auth(token)).status_code == 200
    families = scrape(client)
    disk = {s.labels["item"]: s.value for s in families["wardready_host_disk_free_ratio"].samples}
    assert disk == {"/": 0.4, "var_lib": 0.2}
    assert not any("__" in name for name in families)
    (cpu,) = families["wardready_host_cpu_ratio"].samples
    assert "item" not in cpu.labels and cpu.value == 0.1
    (sample,) = [
        s for s in families["wardready_host_disk_free_ratio"].samples if s.labels["item"] == "/"
    ]
    assert set(sample.labels) == {*exposition.SERIES_LABELS, "item"}


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
        labels={"role": 'Máy "chủ" \\ số 1', "line": "cáp quang"},
        success=False,
        reason="timeout",
    )
    host = result(
        2,
        check="host",
        name="host",
        target="localhost",
        address="localhost",
        labels={},
        metrics={"disk_free_ratio__": 0.4, "disk_free_ratio__var_lib": 0.2, "cpu_ratio": 0.1},
    )
    doc = batch(READY, results=[odd, host])
    assert client.post("/api/v1/ingest", content=body(doc), headers=auth(token)).status_code == 200
    registry = exposition.registry_for(service)
    ours = exposition.render(registry).decode("utf-8")
    theirs = generate_latest(registry).decode("utf-8")

    def checks(text: str) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
        return {
            (s.name, tuple(sorted(s.labels.items())), s.value)
            for f in text_string_to_metric_families(text)
            if f.name.startswith(("wardready_check_", "wardready_icmp_", "wardready_host_"))
            for s in f.samples
        }

    got = checks(ours)
    assert got == checks(theirs)
    series = {
        "ward": READY,
        "agent": "pc-01",
        "name": "dms",
        "target": "dms.city:443",
        "role": 'Máy "chủ" \\ số 1',
        "line": "cáp quang",
    }
    with_check = {**series, "check": "icmp"}
    assert ("wardready_check_success", tuple(sorted(with_check.items())), 0.0) in got
    reason = {**with_check, "reason": "timeout"}
    assert ("wardready_check_failure_reason", tuple(sorted(reason.items())), 1.0) in got
    rtt = [s for s in got if s[0] == "wardready_icmp_loss_ratio" and ("name", "dms") in s[1]]
    assert [dict(s[1]) for s in rtt] == [series]
    items = {dict(s[1])["item"] for s in got if s[0] == "wardready_host_disk_free_ratio"}
    assert items == {"/", "var_lib"}


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


@pytest.mark.sqlite_only("the text each check type renders is under test (all at once: on both)")
@pytest.mark.parametrize("word", sorted(REGISTRY))
def test_promtool_finds_nothing_wrong_with_any_check_type(
    word: str, client: TestClient, service: Service
) -> None:
    kind = REGISTRY[word]
    text = _scraped(client, service, _results(word, stand_ins(kind)))
    assert_clean_and_declared(text, word, kind)


def test_promtool_finds_nothing_wrong_with_every_check_type_at_once(
    client: TestClient, service: Service
) -> None:
    results = []
    for word, kind in sorted(REGISTRY.items()):
        results += _results(word, declared_metrics(kind), len(results) + 1)
    unknown = {"aura_ratio": 0.5, "visions_total": 3.0, "glow__left": 1.0, "glow__": 2.0}
    results += _results("telepathy", unknown, len(results) + 1)
    text = _scraped(client, service, results)
    assert promtool_complaints(text) == ""
    families = {f.name: f for f in text_string_to_metric_families(text)}
    # A check type this collector does not know: shown, as gauges and counters by name.
    aura = families["wardready_telepathy_aura_ratio"]
    assert aura.type == "gauge" and "not declared" in aura.documentation
    visions = families["wardready_telepathy_visions"]
    assert visions.type == "counter"
    assert {s.name for s in visions.samples} == {"wardready_telepathy_visions_total"}
    glow = families["wardready_telepathy_glow"]
    assert sorted(s.labels["item"] for s in glow.samples) == ["/", "/", "left", "left"]
    assert "_total gauge" not in text


def test_fast_renderer_matches_generate_latest_for_counters(
    client: TestClient, service: Service
) -> None:
    text = _scraped(client, service, _results("telepathy", {"visions_total": 3.0, "a_ratio": 1.0}))
    assert "# TYPE wardready_telepathy_visions_total counter\n" in text
    registry = exposition.registry_for(service)
    theirs = generate_latest(registry).decode("utf-8")
    assert "# TYPE wardready_telepathy_visions_total counter\n" in theirs

    def visions(text: str) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
        return sorted(
            (s.name, tuple(sorted(s.labels.items())), s.value)
            for f in text_string_to_metric_families(text)
            if f.name == "wardready_telepathy_visions"
            for s in f.samples
        )

    assert visions(text) == visions(theirs)
    assert len(visions(text)) == 2
