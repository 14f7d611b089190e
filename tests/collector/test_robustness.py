"""One ward cannot blind or fill the collector: judge isolation and supervision, /healthz on a
stale judge, series budgets and age-out (also across a rebuild), and the collector's metrics
about itself."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fleet import wait_until
from prometheus_client.parser import text_string_to_metric_families

from collector import tokens, wards
from collector.api import create_app
from collector.auth import COOKIE
from collector.profile import load_profile
from collector.service import Service
from collector.state import AGE_OUT_MARGIN_SECONDS

from .conftest import BROKEN, READY, auth, batch, body, broken_results, healthy_results, result

OTHER = "ward-binh-thoi"


def sample(service: Service, name: str, **labels: str) -> float:
    value = service.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def series_results(count: int, start_seq: int = 1, prefix: str = "probe") -> list[dict[str, Any]]:
    """``count`` results, each of a series of its own (a target per result)."""
    return [
        result(start_seq + i, name=prefix, target=f"{prefix}-{start_seq + i}") for i in range(count)
    ]


def opened(engine: Any, profile_path: Path, units_csv: Path, **options: Any) -> Service:
    """A service over the test database with the ward list imported and its state built."""
    wards.import_csv(engine, units_csv)
    svc = Service(engine, load_profile(profile_path), **options)
    svc.rebuild()
    return svc


@pytest.fixture
def small(engine: Any, profile_path: Path, units_csv: Path) -> Service:
    """A service whose budgets a test reaches quickly: 3 series per agent, 4 per ward."""
    return opened(
        engine,
        profile_path,
        units_csv,
        verdict_seconds=0.0,
        agent_series_budget=3,
        ward_series_budget=4,
    )


@pytest.fixture
def small_client(small: Service) -> Iterator[TestClient]:
    viewer = tokens.create(small.engine, role="viewer", name="Tổ giám sát")
    with TestClient(create_app(small), base_url="http://127.0.0.1") as c:
        c.cookies.set(COOKIE, viewer)
        yield c


# -- isolation ----------------------------------------------------------------------------


def test_values_that_once_crashed_the_judge_leave_every_ward_judged(
    client: TestClient, service: Service, engine: Any
) -> None:
    ready_token = tokens.create(engine, READY, "pc-01")
    bad_token = tokens.create(engine, BROKEN, "pc-01")
    r = client.post(
        "/api/v1/ingest",
        content=body(batch(READY, results=healthy_results())),
        headers=auth(ready_token),
    )
    assert r.status_code == 200
    # The values that once stopped the judge: now refused at the door, since loss_ratio is a
    # ratio (its declared range), naming the field.
    hostile = [
        result(i, metrics={"loss_ratio": v, "rtt_avg_seconds": 0.01})
        for i, v in enumerate([1.7976931348623157e308, 1e308, -1e308, 1e308], start=1)
    ]
    r = client.post(
        "/api/v1/ingest", content=body(batch(BROKEN, results=hostile)), headers=auth(bad_token)
    )
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == "results.0.metrics.loss_ratio"
    # Extreme values a metric's range allows (a duration has no upper bound) still arrive,
    # and every ward is still judged.
    extreme = [
        result(i, metrics={"loss_ratio": 1.0, "rtt_avg_seconds": v})
        for i, v in enumerate([1.7976931348623157e308, 1e308, 1e308, 1e308], start=1)
    ]
    r = client.post(
        "/api/v1/ingest", content=body(batch(BROKEN, results=extreme)), headers=auth(bad_token)
    )
    assert r.status_code == 200, r.text
    listed = client.get("/api/v1/wards")
    assert listed.status_code == 200
    verdicts = {w["id"]: w for w in listed.json()}
    assert verdicts[READY]["verdict"] == "ready"
    assert verdicts[BROKEN]["verdict"] == "not_ready"
    assert any(x.startswith("wan_loss:") for x in verdicts[BROKEN]["reasons"])
    assert client.get(f"/api/v1/wards/{BROKEN}").status_code == 200
    assert client.get("/metrics").status_code == 200
    # A restart rebuilds the same state and judges it the same way.
    service.rebuild()
    assert service.verdicts()[BROKEN].verdict == "not_ready"


def test_a_ward_whose_judging_raises_is_unknown_and_the_others_are_judged(
    client: TestClient, service: Service, engine: Any, caplog: pytest.LogCaptureFixture
) -> None:
    for ward, results in ((READY, healthy_results()), (BROKEN, broken_results())):
        token = tokens.create(engine, ward, "pc-01")
        r = client.post(
            "/api/v1/ingest", content=body(batch(ward, results=results)), headers=auth(token)
        )
        assert r.status_code == 200
    # Poison one ward's state with something no judging code expects.
    poisoned = next(iter(service.state._wards[BROKEN].series.values()))
    poisoned.history = object()  # type: ignore[assignment]
    with caplog.at_level(logging.ERROR, logger="collector.readiness"):
        listed = client.get("/api/v1/wards")
    assert listed.status_code == 200
    verdicts = {w["id"]: w for w in listed.json()}
    assert verdicts[READY]["verdict"] == "ready"
    assert verdicts[BROKEN]["verdict"] == "unknown"
    (reason,) = verdicts[BROKEN]["reasons"]
    assert reason.startswith("judge_error: AttributeError")
    assert verdicts["commune-can-gio"]["verdict"] == "not_ready"  # no_data, judged as ever
    assert any(BROKEN in rec.getMessage() for rec in caplog.records)
    assert sample(service, "wardready_collector_judge_errors_total") == 1.0
    detail = client.get(f"/api/v1/wards/{BROKEN}")
    assert detail.status_code == 200 and detail.json()["verdict"] == "unknown"
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert f'wardready_ward_verdict{{ward="{BROKEN}",verdict="unknown"}} 1.0' in metrics.text


def start(target: Callable[[threading.Event], None]) -> tuple[threading.Event, threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(target=target, args=(stop,), daemon=True)
    thread.start()
    return stop, thread


def test_healthz_fails_while_the_judge_is_stale_and_recovers(
    engine: Any, profile_path: Path, units_csv: Path
) -> None:
    svc = opened(engine, profile_path, units_csv, verdict_seconds=0.05)
    svc.min_stale_seconds = 0.0
    client = TestClient(create_app(svc), base_url="http://127.0.0.1")
    assert client.get("/healthz").json() == {"status": "ok"}  # no judge thread: nothing to say
    stop, thread = start(svc.judge_forever)
    try:
        wait_until(lambda: svc._last_judged is not None, 10)
        assert client.get("/healthz").status_code == 200
        real = svc.wards

        def broken(refresh: bool = False) -> dict[str, wards.Ward]:
            raise RuntimeError("ward list unreadable")

        svc.wards = broken  # type: ignore[method-assign]
        r = wait_until(lambda: (r := client.get("/healthz")).status_code == 503 and r, 10)
        assert r.json()["status"] == "unhealthy"
        assert r.json()["reason"].startswith("judge stale: last full judgement")
        assert sample(svc, "wardready_collector_judge_errors_total") >= 1
        assert thread.is_alive()  # the failure was caught, the loop goes on
        svc.wards = real  # type: ignore[method-assign]
        wait_until(lambda: client.get("/healthz").status_code == 200, 10)
    finally:
        stop.set()
        thread.join(5)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_judge_thread_is_restarted(engine: Any, profile_path: Path, units_csv: Path) -> None:
    svc = opened(engine, profile_path, units_csv, verdict_seconds=0.05)
    real = svc.judge_forever
    calls: list[int] = []

    def dies_once(stop: threading.Event) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("judge thread killed")
        real(stop)

    svc.judge_forever = dies_once  # type: ignore[method-assign]
    stop, supervisor = start(svc.supervise_judge)
    try:
        wait_until(lambda: svc._last_judged is not None, 10)
        assert len(calls) == 2
        assert sample(svc, "wardready_collector_judge_errors_total") == 1.0
        assert sample(svc, "wardready_collector_judge_last_success_timestamp_seconds") > 0
    finally:
        stop.set()
        supervisor.join(5)
    assert not supervisor.is_alive()


# -- series budgets -------------------------------------------------------------------------


def post(client: TestClient, token: str, doc: dict[str, Any]) -> Any:
    return client.post("/api/v1/ingest", content=body(doc), headers=auth(token))


def test_series_past_the_agent_budget_are_refused_and_existing_ones_keep_working(
    small_client: TestClient, small: Service, engine: Any
) -> None:
    token = tokens.create(engine, READY, "pc-01")
    assert post(small_client, token, batch(results=series_results(3))).status_code == 200
    r = post(small_client, token, batch(results=series_results(2, start_seq=10)))
    assert r.status_code == 422
    assert r.json()["detail"] == (
        f"results.0: series budget of agent pc-01 of ward {READY} reached (3 series); "
        "existing series keep working (and 1 more)"
    )
    assert [e["field"] for e in r.json()["errors"]] == ["results.0", "results.1"]
    # The same three series, newer results: accepted.
    again = [
        result(20 + i, name="probe", target=f"probe-{1 + i}", started=time.time() - 5)
        for i in range(3)
    ]
    r = post(small_client, token, batch(results=again))
    assert r.status_code == 200 and r.json()["accepted"] == 3
    assert (
        sample(small, "wardready_collector_ingest_rejected_results_total", reason="series_budget")
        == 2.0
    )
    series = small_client.get(f"/api/v1/wards/{READY}").json()["series"]
    assert series == {
        "used": 3,
        "budget": 4,
        "agent_budget": 3,
        "refused": 2,
        "agents": {"pc-01": 3},
    }


def test_series_past_the_ward_budget_are_refused_naming_the_ward(
    small_client: TestClient, small: Service, engine: Any
) -> None:
    first = tokens.create(engine, READY, "pc-01")
    second = tokens.create(engine, READY, "pc-02")
    assert post(small_client, first, batch(results=series_results(3))).status_code == 200
    doc = batch(agent="pc-02", results=series_results(1, prefix="other"))
    assert post(small_client, second, doc).status_code == 200
    r = post(small_client, second, batch(agent="pc-02", results=series_results(1, 5, "more")))
    assert r.status_code == 422
    assert r.json()["detail"] == (
        f"results.0: series budget of ward {READY} reached (4 series); existing series keep working"
    )
    # Another ward has its own budget.
    other = tokens.create(engine, BROKEN, "pc-01")
    assert post(small_client, other, batch(BROKEN, results=series_results(3))).status_code == 200


def test_stale_series_age_out_and_free_their_budget(small: Service, engine: Any) -> None:
    client = TestClient(create_app(small), base_url="http://127.0.0.1")
    token = tokens.create(engine, READY, "pc-01")
    assert post(client, token, batch(results=series_results(3))).status_code == 200
    assert small.series_usage(READY).used == 3
    # Still within the profile's longest window plus margin: kept.
    assert small.state.expire(time.time() + 60) == 0
    horizon = small.profile.retention_seconds() + AGE_OUT_MARGIN_SECONDS
    assert small.state.age_out_seconds(30.0) == horizon
    # series_results started about a minute ago.
    assert small.state.expire(time.time() + horizon - 120) == 0
    assert small.state.expire(time.time() + horizon + 1) == 3
    assert small.series_usage(READY).used == 0
    assert small.state.newest(READY) == []
    assert post(client, token, batch(results=series_results(3, 50))).status_code == 200


def test_a_rebuild_keeps_the_budget_and_drops_old_series(
    engine: Any, profile_path: Path, units_csv: Path
) -> None:
    roomy = opened(engine, profile_path, units_csv, verdict_seconds=0.0)
    client = TestClient(create_app(roomy), base_url="http://127.0.0.1")
    token = tokens.create(engine, READY, "pc-01")
    assert post(client, token, batch(results=series_results(10))).status_code == 200
    old = [
        result(100 + i, name="old", target=f"old-{i}", started=time.time() - 3 * 86400)
        for i in range(5)
    ]
    assert post(client, token, batch(results=old)).status_code == 200
    assert roomy.series_usage(READY).used == 15

    tight = Service(
        engine,
        load_profile(profile_path),
        verdict_seconds=0.0,
        agent_series_budget=4,
        ward_series_budget=6,
    )
    tight.rebuild()
    usage = tight.series_usage(READY)
    assert usage.used == 4 and usage.agents == {"pc-01": 4}
    assert {n.name for n in tight.state.newest(READY)} == {"probe"}
    assert tight.verdicts()[READY].verdict == "not_ready"


# -- self-metrics ---------------------------------------------------------------------------


def test_ingest_and_judge_are_counted_on_metrics(
    client: TestClient, service: Service, token: str
) -> None:
    doc = batch(results=healthy_results())
    assert post(client, token, doc).status_code == 200
    assert post(client, token, doc).status_code == 200  # a replay: all duplicates
    assert post(client, "not-a-token", doc).status_code == 401
    assert client.post("/api/v1/ingest", content=b"{", headers=auth(token)).status_code == 422
    assert post(client, token, batch(BROKEN, results=healthy_results())).status_code == 403
    assert client.get("/api/v1/wards").status_code == 200

    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    for name in (
        "process_resident_memory_bytes",
        "wardready_collector_ingest_requests",
        "wardready_collector_ingest_results",
        "wardready_collector_ingest_duplicates",
        "wardready_collector_ingest_rejected_results",
        "wardready_collector_judge_duration_seconds",
        "wardready_collector_judge_last_success_timestamp_seconds",
        "wardready_collector_judge_cpu_seconds",
        "wardready_collector_judge_errors",
        "wardready_collector_db_commit_duration_seconds",
        "wardready_collector_result_age_seconds",
    ):
        assert name in families, name
        assert families[name].documentation.strip(), name

    def value(name: str, **labels: str) -> float:
        return sample(service, name, **labels)

    assert value("wardready_collector_ingest_requests_total", code="200") == 2
    assert value("wardready_collector_ingest_requests_total", code="401") == 1
    assert value("wardready_collector_ingest_requests_total", code="422") == 1
    assert value("wardready_collector_ingest_requests_total", code="403") == 1
    assert value("wardready_collector_ingest_results_total") == 5
    assert value("wardready_collector_ingest_duplicates_total") == 5
    rejected = "wardready_collector_ingest_rejected_results_total"
    assert value(rejected, reason="auth") == 1 + 5  # no token; a batch for another ward
    assert value(rejected, reason="schema") == 1
    assert value(rejected, reason="series_budget") == 0
    assert value("wardready_collector_db_commit_duration_seconds_count") == 2
    assert value("wardready_collector_result_age_seconds_count") == 5
    # healthy_results started 10-20 s ago.
    assert value("wardready_collector_result_age_seconds_bucket", le="5.0") == 0
    assert value("wardready_collector_result_age_seconds_bucket", le="30.0") == 5
    assert value("wardready_collector_judge_duration_seconds_count") >= 1
    assert value("wardready_collector_judge_last_success_timestamp_seconds") > time.time() - 60


def test_a_too_large_body_is_counted(client: TestClient, service: Service, token: str) -> None:
    r = client.post("/api/v1/ingest", content=b"x" * (9 * 1024 * 1024), headers=auth(token))
    assert r.status_code == 413
    assert (
        sample(service, "wardready_collector_ingest_rejected_results_total", reason="too_large")
        == 1
    )
    assert sample(service, "wardready_collector_ingest_requests_total", code="413") == 1


def test_a_wrong_clock_is_said_in_words() -> None:
    from collector.clocks import describe

    assert describe(-600) == "10 min fast"
    assert describe(7200) == "2 h slow"
    assert describe(-45) == "45 s fast"
    assert describe(9000) == "2.5 h slow"
    assert describe(-3 * 86400) == "3.0 days fast"
