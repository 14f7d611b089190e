"""The scheduler with real checks: a tcp check against a local socket, and slow probes."""

from __future__ import annotations

import itertools
import logging
import random
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from agent.scheduler import CheckSpec, Scheduler
from checks.core import CheckType, Outcome, Params, Result, Target, seconds
from checks.registry import REGISTRY


@pytest.fixture
def listening() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield s.getsockname()[1]


class Collected:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[tuple[CheckSpec, Result]] = []

    def __call__(self, spec: CheckSpec, result: Result) -> None:
        with self.lock:
            self.items.append((spec, result))

    def results(self, name: str | None = None) -> list[Result]:
        with self.lock:
            return [r for s, r in self.items if name is None or s.name == name]


class SlowProbe:
    """Sleeps, and remembers how many runs were in flight at once."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0
        self.started = 0

    def __call__(self, target: Target, params: Params, timeout: float) -> Outcome:
        with self.lock:
            self.active += 1
            self.started += 1
            self.max_active = max(self.max_active, self.active)
        time.sleep(self.seconds)
        with self.lock:
            self.active -= 1
        return Outcome(True, metrics={"slept_seconds": self.seconds})


def slow_spec(probe: SlowProbe, name: str, interval: float, timeout: float) -> CheckSpec:
    kind = CheckType(
        params=Params,
        probe=probe,
        reasons=frozenset(),
        metrics={"slept_seconds": seconds("How long the probe slept.")},
    )
    return CheckSpec(
        name=name,
        check="slow",
        kind=kind,
        target=Target(name, "nowhere"),
        params=Params(),
        interval=interval,
        timeout=timeout,
    )


def test_tcp_check_runs_every_interval(listening: int) -> None:
    kind = REGISTRY["tcp"]
    spec = CheckSpec(
        name="collector-port",
        check="tcp",
        kind=kind,
        target=Target("local", f"127.0.0.1:{listening}", {"ward": "ward-1"}),
        params=kind.params(),
        interval=1.0,
        timeout=0.5,
    )
    sink = Collected()
    scheduler = Scheduler([spec], sink, workers=2)
    scheduler.start()
    try:
        time.sleep(3.3)
    finally:
        scheduler.stop()
    results = sink.results()
    assert len(results) >= 2
    assert all(r.success and r.reason == "ok" and r.check == "tcp" for r in results)
    assert all(r.name == "collector-port" and "connect_seconds" in r.metrics for r in results)
    starts = [r.started for r in results]
    assert all(b - a >= 0.8 for a, b in itertools.pairwise(starts))
    assert not scheduler.running


def test_a_slow_check_never_overlaps_itself(caplog: pytest.LogCaptureFixture) -> None:
    probe = SlowProbe(1.6)
    sink = Collected()
    # Four workers: only max_instances=1 keeps the 1 s schedule from stacking 1.6 s runs.
    scheduler = Scheduler([slow_spec(probe, "slow", 1.0, 0.9)], sink, workers=4, start_spread=0)
    with caplog.at_level(logging.WARNING):
        scheduler.start()
        try:
            time.sleep(3.6)
        finally:
            scheduler.stop()
    assert probe.max_active == 1
    assert 2 <= probe.started <= 3
    assert len(sink.results()) == probe.started  # every run, in flight at stop too, was kept
    assert "maximum number of running instances" in caplog.text


def test_stop_waits_for_runs_in_flight() -> None:
    probe = SlowProbe(1.0)
    sink = Collected()
    scheduler = Scheduler([slow_spec(probe, "a", 5.0, 2.0)], sink, start_spread=0)
    scheduler.start()
    deadline = time.monotonic() + 5
    while probe.started == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert probe.started == 1
    scheduler.stop()
    (result,) = sink.results()
    assert result.success and result.metrics == {"slept_seconds": 1.0}


def test_first_runs_are_spread_over_the_interval() -> None:
    seed, interval = 40, 2.0
    rng = random.Random(seed)
    planned = [rng.uniform(0, interval) for _ in range(4)]
    # This seed spreads them well apart, so the order below is not down to thread timing.
    ordered = sorted(planned)
    assert min(b - a for a, b in itertools.pairwise(ordered)) > 0.25

    probe = SlowProbe(0.0)
    specs = [slow_spec(probe, f"c{i}", interval, 1.0) for i in range(4)]
    sink = Collected()
    scheduler = Scheduler(specs, sink, rng=random.Random(seed))
    scheduler.start()
    try:
        deadline = time.monotonic() + 5
        while len({s.name for s, _ in sink.items}) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        scheduler.stop()
    first = {f"c{i}": min(r.started for r in sink.results(f"c{i}")) for i in range(4)}
    spread = max(first.values()) - min(first.values())
    assert spread > 0.5
    order = sorted(first, key=first.__getitem__)
    assert order == sorted(first, key=lambda n: planned[int(n[1])])


def test_a_failing_sink_is_logged_and_scheduling_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []

    def broken(spec: CheckSpec, result: Result) -> None:
        calls.append(spec.name)
        raise OSError("disk full")

    probe = SlowProbe(0.0)
    scheduler = Scheduler([slow_spec(probe, "a", 0.5, 0.2)], broken, start_spread=0)
    with caplog.at_level(logging.ERROR, logger="agent.scheduler"):
        scheduler.start()
        try:
            deadline = time.monotonic() + 5
            while len(calls) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            scheduler.stop()
    assert len(calls) >= 2
    assert "result of check a could not be stored" in caplog.text


def test_duplicate_names_are_refused() -> None:
    probe = SlowProbe(0.0)
    with pytest.raises(ValueError, match="unique"):
        Scheduler([slow_spec(probe, "a", 1, 0.5), slow_spec(probe, "a", 2, 0.5)], Collected())
