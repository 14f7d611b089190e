"""The collector's plan on the agent: polled with If-None-Match, validated like a config file,
hot-reloaded into the scheduler without touching unchanged checks, refused when bad while the
last good plan keeps running, and reported in the batch status and the metrics."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from agent.cli import Agent, merge_checks
from agent.config import Config, load_config
from agent.metrics import AgentCollector, Board
from agent.plan import Plan, PlanPoller, cache_path, load_cached, parse
from agent.scheduler import Scheduler
from checks.core import Result
from tests.agent.test_agent_scheduler import Collected, SlowProbe, slow_spec

WARD = "ward-minh-phung"


def config(tmp_path: Path, local: str = "") -> Config:
    path = tmp_path / "agent.yaml"
    path.write_text(
        f"ward: {WARD}\nagent: pc-01\n"
        "collector: {url: 'http://collector.test', token: t0k, plan: true, plan_interval: 1s}\n"
        f"spool: {{path: {tmp_path / 'spool.db'}}}\nmetrics: {{listen: ''}}\n"
        + (f"checks:\n{local}" if local else ""),
        encoding="utf-8",
    )
    return load_config(path)


def tcp(name: str, port: int = 9, interval: str = "30s") -> dict[str, Any]:
    return {
        "name": name,
        "type": "tcp",
        "target": f"127.0.0.1:{port}",
        "interval": interval,
        "timeout": "1s",
        "labels": {"role": "lan"},
    }


def doc(version: int, *checks: dict[str, Any]) -> dict[str, Any]:
    return {"ward": WARD, "version": version, "checks": list(checks)}


class FakeCollector:
    """Serves ``plan`` at /api/v1/plan with ETag and 304, as the collector does."""

    def __init__(self) -> None:
        self.plan: dict[str, Any] | None = None
        self.asked: list[str | None] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer t0k"
        self.asked.append(request.headers.get("if-none-match"))
        if self.plan is None:
            return httpx.Response(404, json={"detail": "no plan"})
        etag = f'"v{self.plan["version"]}"'
        if request.headers.get("if-none-match") == etag:
            return httpx.Response(304, headers={"ETag": etag})
        return httpx.Response(200, json=self.plan, headers={"ETag": etag})


def poller(cfg: Config, fake: FakeCollector, apply: Callable[[Plan], None]) -> PlanPoller:
    return PlanPoller(cfg, apply, client=httpx.Client(transport=httpx.MockTransport(fake)))


def test_poll_applies_a_new_plan_then_gets_304s(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    fake = FakeCollector()
    applied: list[Plan] = []
    p = poller(cfg, fake, applied.append)
    assert p.poll_once() == "not_modified"  # 404: no plan for this ward yet
    fake.plan = doc(1, tcp("a"))
    assert p.poll_once() == "changed"
    assert [x.version for x in applied] == [1] and applied[0].checks[0].name == "a"
    assert p.poll_once() == "not_modified" and p.poll_once() == "not_modified"
    assert fake.asked[-1] == '"v1"'
    assert p.polls == {"changed": 1, "not_modified": 3, "invalid": 0, "failed": 0}
    # kept on disk, owner-only (a plan may carry an SNMP community), and read back at start
    assert cache_path(cfg).stat().st_mode & 0o777 == 0o600
    cached = load_cached(cfg)
    assert cached is not None and cached.version == 1


def test_a_bad_plan_keeps_the_last_good_one_and_is_reported_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config(tmp_path)
    fake = FakeCollector()
    applied: list[Plan] = []
    p = poller(cfg, fake, applied.append)
    fake.plan = doc(1, tcp("a"))
    p.poll_once()
    bad = {**tcp("b"), "params": {"count": 3}}
    fake.plan = doc(2, tcp("a"), bad)
    with caplog.at_level(logging.ERROR, logger="agent.plan"):
        assert p.poll_once() == "invalid"
        assert p.poll_once() == "not_modified"  # the bad version's ETag: asked once only
    assert p.version == 1 and [x.version for x in applied] == [1]
    assert p.error is not None
    assert p.error.startswith("plan v2:") and "checks[1].params.count: unknown key" in p.error
    assert p.errors_total == 1
    refused = [r for r in caplog.records if "plan refused" in r.getMessage()]
    assert len(refused) == 1 and "keeping v1" in refused[0].getMessage()
    fake.plan = doc(3, tcp("a"), tcp("b"))
    assert p.poll_once() == "changed" and p.error is None and p.version == 3


def test_plan_for_another_ward_is_refused(tmp_path: Path) -> None:
    from agent.config import ConfigError

    with pytest.raises(ConfigError, match="is for ward 'ward-x'"):
        parse(config(tmp_path), {"ward": "ward-x", "version": 1, "checks": []})


def test_local_checks_win_a_name_clash_and_say_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config(tmp_path, "  - {name: a, type: tcp, target: '127.0.0.1:7', labels: {x: local}}\n")
    plan = parse(cfg, doc(1, tcp("a"), tcp("b")))
    with caplog.at_level(logging.WARNING, logger="agent"):
        merged = merge_checks(cfg.checks, plan.checks)
    assert [(s.name, s.target.address) for s in merged] == [
        ("b", "127.0.0.1:9"),
        ("a", "127.0.0.1:7"),
    ]
    assert "replaces the plan's check(s) of the same name: a" in caplog.text


def test_scheduler_update_keeps_unchanged_jobs_and_in_flight_results() -> None:
    fast, slow = SlowProbe(0.0), SlowProbe(0.6)
    keep = slow_spec(fast, "keep", interval=0.2, timeout=0.15)
    going = slow_spec(slow, "going", interval=1.0, timeout=0.9)
    sink = Collected()
    sched = Scheduler([keep, going], sink, workers=4, start_spread=0.0)
    sched.start()
    try:
        deadline = time.monotonic() + 5
        while slow.active == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert slow.active == 1, "the slow check should be in flight"
        job = sched._scheduler.get_job("keep")
        before = job.next_run_time if job else None
        new = slow_spec(fast, "new", interval=0.2, timeout=0.15)
        added, changed, removed = sched.update([keep, new])
        job = sched._scheduler.get_job("keep")
        assert (added, changed, removed) == (["new"], [], ["going"])
        assert job is not None and job.next_run_time == before
        assert sched._scheduler.get_job("going") is None
        deadline = time.monotonic() + 5
        while not (sink.results("going") and sink.results("new")) and time.monotonic() < deadline:
            time.sleep(0.05)
        # the run in flight when "going" was removed still delivered its result, once
        assert len(sink.results("going")) == 1
        assert sink.results("new")
        assert slow.started == 1
    finally:
        sched.stop()


def test_agent_apply_plan_keeps_counters_of_unchanged_checks(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    agent = Agent(cfg)
    try:
        v1 = parse(cfg, doc(1, tcp("a"), tcp("b")))
        agent.apply_plan(v1)
        spec_a, spec_b = v1.checks
        for spec in (spec_a, spec_a, spec_b):
            result = Result(
                check="tcp",
                name=spec.name,
                target=spec.target,
                started=time.time(),
                duration_seconds=0.1,
                success=False,
                reason="refused",
            )
            agent._sink(spec, result)
        v2 = parse(cfg, doc(2, tcp("a"), tcp("c")))
        agent.apply_plan(v2)
        entries, failures = agent.board.snapshot()
        runs = {e.spec.name: e.runs for e in entries}
        assert runs == {"a": 2}, runs
        assert failures == {("a", "refused"): 2}
        assert [s.name for s in agent.scheduler.specs] == ["a", "c"]
        assert agent.shipper.checks == 2
    finally:
        agent.spool.close()
        agent.shipper.close()


def test_status_and_metrics_carry_the_plan_version_and_error(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    agent = Agent(cfg)
    try:
        assert agent.poller is not None
        agent.poller.current = parse(cfg, doc(4, tcp("a")))
        agent.poller.error = "plan v5:3: checks[0].type: unknown check type 'x'"
        agent.poller.errors_total = 1
        status = agent.shipper.status()
        assert status.plan_version == 4 and status.plan_error == agent.poller.error
        registry = CollectorRegistry(auto_describe=False)
        registry.register(
            AgentCollector(Board([]), ward=WARD, agent="pc-01", version="t", plan=agent.poller)
        )
        assert registry.get_sample_value("wardready_agent_plan_version") == 4
        assert registry.get_sample_value("wardready_agent_plan_errors_total") == 1
        polls = registry.get_sample_value(
            "wardready_agent_plan_polls_total", {"outcome": "not_modified"}
        )
        assert polls == 0
    finally:
        agent.spool.close()
        agent.shipper.close()


def test_cached_plan_for_the_wrong_ward_is_ignored(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    cache_path(cfg).write_text(json.dumps({"ward": "ward-x", "version": 1, "checks": []}))
    assert load_cached(cfg) is None


def test_scheduler_update_refuses_duplicate_names() -> None:
    spec = slow_spec(SlowProbe(0), "a", 1.0, 0.5)
    sched = Scheduler([spec], Collected())
    with pytest.raises(ValueError, match="unique"):
        sched.update([spec, spec])


def test_the_plan_comes_from_the_next_collector_when_the_first_is_down(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(
        f"ward: {WARD}\nagent: pc-01\n"
        "collector:\n  urls: ['http://down.test', 'http://failing.test', 'http://collector.test']\n"
        "  token: t0k\n  plan: true\n  plan_interval: 1s\n"
        f"spool: {{path: {tmp_path / 'spool.db'}}}\nmetrics: {{listen: ''}}\n",
        encoding="utf-8",
    )
    cfg = load_config(path)
    fake = FakeCollector()
    fake.plan = doc(3, tcp("a"))
    tried: list[str] = []

    def route(request: httpx.Request) -> httpx.Response:
        tried.append(request.url.host)
        if request.url.host == "down.test":
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.host == "failing.test":
            return httpx.Response(503, json={"detail": "judge stale"})
        return fake(request)

    applied: list[Plan] = []
    p = PlanPoller(cfg, applied.append, client=httpx.Client(transport=httpx.MockTransport(route)))
    assert p.poll_once() == "changed"
    assert [x.version for x in applied] == [3]
    assert tried == ["down.test", "failing.test", "collector.test"]
    # Every collector down: the poll fails and the last good plan stays.
    fake.plan = None
    tried.clear()

    def all_down(request: httpx.Request) -> httpx.Response:
        tried.append(request.url.host)
        raise httpx.ConnectError("connection refused", request=request)

    p = PlanPoller(cfg, applied.append, current=applied[0],
                   client=httpx.Client(transport=httpx.MockTransport(all_down)))  # fmt: skip
    assert p.poll_once() == "failed"
    assert len(tried) == 3 and p.version == 3
