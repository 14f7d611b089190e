"""The agent's /metrics: values read back from a private registry, and over real HTTP."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent import __version__
from agent.metrics import AgentCollector, Board, MetricsServer, make_registry
from agent.scheduler import CheckSpec, run_spec
from agent.shipper import Shipper
from agent.spool import Spool
from checks.core import CheckType, Result, Target
from checks.registry import REGISTRY
from tests.gadget import GADGET
from tests.promlint import (
    assert_clean_and_declared,
    declared_metrics,
    promtool_complaints,
    stand_ins,
)

WARD = "ward-minh-phung"


@pytest.fixture
def listening() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def tcp_spec(name: str, port: int, labels: dict[str, str]) -> CheckSpec:
    kind = REGISTRY["tcp"]
    return CheckSpec(
        name=name,
        check="tcp",
        kind=kind,
        target=Target(name, f"127.0.0.1:{port}", {"ward": WARD, **labels}),
        params=kind.params(),
        interval=5.0,
        timeout=2.0,
    )


def test_latest_results_counters_and_agent_families(
    tmp_path: Path, listening: int, closed_port: int
) -> None:
    up = tcp_spec("up", listening, {"role": "svc"})
    down = tcp_spec("down", closed_port, {"role": "svc", "line": "fibre"})
    idle = tcp_spec("idle", listening, {})
    board = Board([up, down, idle])
    spool = Spool(tmp_path / "s.db")
    shipper = Shipper(
        spool,
        url=f"http://127.0.0.1:{closed_port}",
        token="t",
        ward=WARD,
        agent="pc-01",
        timeout=1.0,
        checks=3,
    )
    registry = make_registry(
        AgentCollector(
            board, ward=WARD, agent="pc-01", version=__version__, spool=spool, pushes=shipper
        )
    )
    value = registry.get_sample_value

    first = run_spec(up)
    board.record(up, first)
    board.record(up, run_spec(up))
    failed = run_spec(down)
    board.record(down, failed)
    spool.append(failed, down.interval)
    assert first.success and not failed.success and failed.reason == "refused"

    up_labels = {
        "check": "tcp",
        "name": "up",
        "target": "up",
        "ward": WARD,
        "role": "svc",
        "line": "",
    }
    down_labels = {**up_labels, "name": "down", "target": "down", "line": "fibre"}
    assert value("wardready_check_success", up_labels) == 1.0
    assert value("wardready_check_success", down_labels) == 0.0
    assert (
        value(
            "wardready_check_success", {**up_labels, "name": "idle", "target": "idle", "role": ""}
        )
        is None
    )
    duration = value("wardready_check_duration_seconds", down_labels)
    assert duration is not None and duration == pytest.approx(failed.duration_seconds)
    connect = value("wardready_tcp_connect_seconds", up_labels)
    assert connect is not None and 0 < connect < 2.0
    assert value("wardready_check_runs_total", {"check": "tcp", "name": "up"}) == 2.0
    assert value("wardready_check_runs_total", {"check": "tcp", "name": "idle"}) == 0.0
    assert (
        value(
            "wardready_check_failures_total", {"check": "tcp", "name": "down", "reason": "refused"}
        )
        == 1.0
    )
    assert (
        value("wardready_check_failures_total", {"check": "tcp", "name": "up", "reason": "refused"})
        is None
    )

    rss = value("wardready_agent_resident_memory_bytes")
    assert rss is not None and rss > 1_000_000
    cpu = value("wardready_agent_cpu_seconds_total")
    assert cpu is not None and cpu > 0
    assert value("wardready_agent_spool_depth") == 1.0
    assert value("wardready_agent_spool_dropped_total") == 0.0
    assert value("wardready_agent_last_push_success_timestamp_seconds") == 0.0
    assert value("wardready_agent_push_failures_total") == 0.0
    assert (
        value("wardready_agent_info", {"version": __version__, "ward": WARD, "agent": "pc-01"})
        == 1.0
    )

    assert not shipper.push_once().ok  # nobody listens on the collector port
    assert value("wardready_agent_push_failures_total") == 1.0

    board.retain(["up", "idle"])  # "down" removed from the config
    assert value("wardready_check_success", down_labels) is None
    assert value("wardready_check_runs_total", {"check": "tcp", "name": "down"}) is None
    # with "line" gone from every check, the label set shrinks with it
    assert (
        value("wardready_check_success", {k: v for k, v in up_labels.items() if k != "line"}) == 1.0
    )
    shipper.close()
    spool.close()


def test_served_over_http_with_help_on_every_family(tmp_path: Path, listening: int) -> None:
    spec = tcp_spec("dms", listening, {"site": "Phường Bình Thới"})
    board = Board([spec])
    board.record(spec, run_spec(spec))
    spool = Spool(tmp_path / "s.db")
    collector = AgentCollector(board, ward=WARD, agent="pc-01", version=__version__, spool=spool)
    server = MetricsServer(make_registry(collector), "127.0.0.1", 0)
    try:
        assert server.port > 0
        text = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5).text
    finally:
        server.close()
        spool.close()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert "wardready_check_success" in families
    assert "wardready_tcp_connect_seconds" in families
    assert families["wardready_check_runs"].type == "counter"
    assert all(f.documentation for f in families.values())
    (sample,) = families["wardready_check_success"].samples
    assert sample.labels["site"] == "Phường Bình Thới"
    assert sample.value == 1.0


def test_per_item_metrics_become_an_item_label() -> None:
    kind = REGISTRY["host"]
    spec = CheckSpec(
        "pc", "host", kind, Target("pc", "localhost", {"ward": WARD}), kind.params(), 30.0, 10.0
    )
    board = Board([spec])
    metrics = {"disk_free_bytes__": 5e9, "disk_free_bytes__var_lib": 7e9, "cpu_ratio": 0.25}
    board.record(spec, Result("host", "pc", spec.target, 1.0, 0.1, True, "ok", metrics))
    registry = make_registry(AgentCollector(board, ward=WARD, agent="pc-01", version="x"))
    labels = {"check": "host", "name": "pc", "target": "pc", "ward": WARD}
    value = registry.get_sample_value
    assert value("wardready_host_disk_free_bytes", {**labels, "item": "/"}) == 5e9
    assert value("wardready_host_disk_free_bytes", {**labels, "item": "var_lib"}) == 7e9
    assert value("wardready_host_cpu_ratio", labels) == 0.25
    assert value("wardready_host_disk_free_bytes__var_lib", labels) is None


def _exposition(tmp_path: Path, results: list[tuple[CheckSpec, Result]]) -> str:
    """The agent's /metrics after these runs, with every family the agent can export."""
    board = Board([spec for spec, _ in results])
    for spec, res in results:
        board.record(spec, res)
    spool = Spool(tmp_path / "promtool.db")
    shipper = Shipper(spool, url="http://127.0.0.1:9", token="t", ward=WARD, agent="pc-01")
    try:
        spool.append(results[0][1], 30.0)
        collector = AgentCollector(
            board, ward=WARD, agent="pc-01", version="0.1.0", spool=spool, pushes=shipper
        )
        return generate_latest(make_registry(collector)).decode("utf-8")
    finally:
        shipper.close()
        spool.close()


def _runs(word: str, kind: CheckType, metrics: dict[str, float]) -> list[tuple[CheckSpec, Result]]:
    """A passing and a failing run of a check of type ``word``, on two targets."""
    out = []
    reason = sorted(kind.reasons)[0] if kind.reasons else "error"
    for name, ok in ((f"{word}-a", True), (f"{word}-b", False)):
        labels = {"ward": WARD, "role": "wan", "site": "Phường Bình Thới"}
        target = Target(name, "192.0.2.1", labels)
        spec = CheckSpec(name, word, kind, target, kind.params.model_construct(), 30.0, 10.0)
        res = Result(word, name, target, 1.7e9, 0.2, ok, "ok" if ok else reason, dict(metrics))
        out.append((spec, res))
    return out


@pytest.mark.parametrize("word", sorted(REGISTRY))
def test_promtool_finds_nothing_wrong_with_any_check_type(word: str, tmp_path: Path) -> None:
    kind = REGISTRY[word]
    text = _exposition(tmp_path, _runs(word, kind, stand_ins(kind)))
    assert_clean_and_declared(text, word, kind)


def test_promtool_finds_nothing_wrong_with_every_check_type_at_once(tmp_path: Path) -> None:
    runs = [r for word, kind in REGISTRY.items() for r in _runs(word, kind, declared_metrics(kind))]
    text = _exposition(tmp_path, runs)
    assert promtool_complaints(text) == ""
    assert 'wardready_check_success{check="icmp"' in text


def test_declared_help_and_counters_undeclared_metrics_generic(tmp_path: Path) -> None:
    metrics = {
        "loss_ratio": 0.25,
        "free_ratio__": 0.5,
        "free_ratio__var_lib": 0.75,
        "errors_total": 7.0,
        "warmup_seconds": 1.5,
        "new_events_total": 2.0,
    }
    text = _exposition(tmp_path, _runs("gadget", GADGET, metrics))
    assert promtool_complaints(text) == ""
    families = {f.name: f for f in text_string_to_metric_families(text)}
    loss = families["wardready_gadget_loss_ratio"]
    assert (loss.type, loss.documentation) == ("gauge", "Share of probes lost.")
    errors = families["wardready_gadget_errors"]
    assert (errors.type, errors.documentation) == ("counter", "Errors since boot.")
    assert {s.name for s in errors.samples} == {"wardready_gadget_errors_total"}
    free = families["wardready_gadget_free_ratio"]
    assert free.documentation.startswith("Free share of a mount. Label item:")
    assert {s.labels["item"]: s.value for s in free.samples} == {"/": 0.5, "var_lib": 0.75}
    # A metric the type does not declare (an unconverted module, a newer one): still shown.
    seconds = families["wardready_gadget_warmup_seconds"]
    assert seconds.type == "gauge" and "not declared" in seconds.documentation
    assert families["wardready_gadget_new_events"].type == "counter"
    assert "_total gauge" not in text
