"""Ward PCs as they really are: a clock minutes fast or hours slow (libfaketime), and a result
the collector refuses for good. Real collector, real agent processes."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from pathlib import Path

import pytest
from fleet import Agent, Collector, stopping, wait_until

from tests.helpers import need

pytestmark = pytest.mark.e2e

WARD = "ward-minh-phung"


def faketime(offset: str) -> dict[str, str]:
    """libfaketime preloaded into the agent itself (the `faketime` program would fork, and
    stopping it would leave the agent running). Its monotonic clock stalls Python's timed
    waits: the wall clock alone is faked, which is what a wrong CMOS clock is."""
    libs = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))
    need(bool(libs), "libfaketime is not installed (Debian faketime; scripts/setup.sh)")
    return {"LD_PRELOAD": str(libs[0]), "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}

PROFILE = """\
version: 1
silence_seconds: 30
criteria:
  - id: collector_port
    title: The collector's port answers
    severity: blocker
    select: {check: tcp}
    condition: {metric: success, agg: min, last: 2, op: ">=", threshold: 1}
    max_age_intervals: 3
"""


def stored(collector: Collector, agent: str) -> list[tuple[float, float]]:
    """(started, stored_at) of each result of ``agent`` in the collector's database."""
    with sqlite3.connect(collector.db.removeprefix("sqlite:///")) as conn:
        rows = conn.execute(
            "SELECT started, received_at FROM results WHERE agent = ?", (agent,)
        ).fetchall()
    return [(float(a), float(b)) for a, b in rows]


def agent_metric(agent: Agent, name: str) -> float | None:
    m = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", agent.metrics(), re.M)
    return float(m.group(1)) if m else None


@pytest.mark.parametrize(("skew", "label"), [(600, "10 min fast"), (-7200, "2 h slow")])
def test_a_wrong_clock_is_learned_corrected_and_shown(
    tmp_path: Path, skew: int, label: str
) -> None:
    profile = tmp_path / "profile.yaml"
    profile.write_text(PROFILE)
    collector = Collector(tmp_path, profile)
    collector.setup()
    check = {"name": "collector-port", "type": "tcp", "target": f"127.0.0.1:{collector.port}"}
    agent = Agent(tmp_path, WARD, "pc-01", collector, [check], interval="1s", timeout="900ms",
                  env=faketime(f"{skew:+d}s"))  # fmt: skip
    with stopping(collector, agent):
        collector.start()
        agent.start()
        wait_until(lambda: len(stored(collector, "pc-01")) >= 3, 30, what="results stored")
        rows = stored(collector, "pc-01")
        # Placed at the right time: within seconds of when they arrived, not `skew` away.
        worst = max(abs(received - started) for started, received in rows)
        assert worst < 10, (label, rows)
        offset = agent_metric(agent, "wardready_agent_clock_offset_seconds")
        assert offset is not None and abs(offset + skew) < 3, (label, offset)
        ward = wait_until(
            lambda: (w := collector.ward(WARD))["verdict"] == "ready"
            and any("clock_skew" in r for r in w["reasons"])
            and w,
            30,
            what="ready, with the wrong clock said",
        )
        # The collector shows the skew as its own reason and metric, in words an officer reads.
        (reason,) = [r for r in ward["reasons"] if "clock_skew" in r]
        assert reason.startswith(f"warning: clock_skew: pc-01's clock is {label}"), reason
        (shown,) = ward["agents"]
        assert abs(shown["clock_offset_seconds"] + skew) < 3, shown
        metrics = collector.get("/metrics")
        exported = [
            line
            for line in metrics.splitlines()
            if line.startswith("wardready_agent_clock_offset_seconds{") and 'agent="pc-01"' in line
        ]
        assert len(exported) == 1 and abs(float(exported[0].split()[-1]) + skew) < 3, exported


def test_a_result_refused_for_good_is_set_aside_and_the_rest_flows(tmp_path: Path) -> None:
    profile = tmp_path / "profile.yaml"
    profile.write_text(PROFILE)
    collector = Collector(tmp_path, profile)
    collector.setup()
    check = {"name": "collector-port", "type": "tcp", "target": f"127.0.0.1:{collector.port}"}
    agent = Agent(tmp_path, WARD, "pc-01", collector, [check], interval="1s", timeout="900ms")
    agent.write_config(collector.token(WARD, "pc-01"))
    # A spool carried over from a PC that stayed off for weeks: its oldest result is older
    # than any collector accepts, and it sits at the head of the queue.
    spool_path = tmp_path / f"{WARD}.pc-01.spool.db"
    from agent.spool import Spool
    from checks.core import Result, Target

    spool = Spool(spool_path)
    ancient = time.time() - 30 * 86400
    spool.append(Result("tcp", "collector-port", Target("collector-port", "127.0.0.1:1"),
                        ancient, 0.001, True, "ok", {"connect_seconds": 0.001}), 1.0)  # fmt: skip
    spool.close()
    with stopping(collector, agent):
        collector.start()
        agent.start()
        wait_until(lambda: len(stored(collector, "pc-01")) >= 3, 30, what="fresh results")
        assert all(started > ancient + 86400 for started, _ in stored(collector, "pc-01"))
        rejected = agent_metric(agent, "wardready_agent_results_rejected_total")
        assert rejected == 1.0
        log = (tmp_path / f"{WARD}.pc-01.log").read_text()
        assert log.count("refused 1 result(s) for good") == 1, log[-2000:]
    with sqlite3.connect(spool_path) as conn:
        reason, message = conn.execute("SELECT reason, message FROM rejected").fetchone()
    assert reason == "http_422"
    assert "older than" in message, json.dumps(message)
