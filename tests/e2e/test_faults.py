"""kill -9, under load: the collector twice and the agent once, while two agents push many
results a second. Every result the agents took reaches the database once: per agent the
sequence numbers are contiguous from 1, and none is stored twice."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from fleet import Agent, Collector, stopping, wait_until

# The same one criterion (the collector's own port answers): only the stored rows matter here.
from tests.e2e.test_ward_pc_realities import PROFILE

pytestmark = pytest.mark.e2e

WARDS = ("ward-minh-phung", "ward-binh-thoi")



def rows(collector: Collector) -> list[tuple[str, str, int]]:
    path = collector.db.removeprefix("sqlite:///")
    with sqlite3.connect(path, timeout=10) as conn:
        found = conn.execute("SELECT ward_id, stream, seq FROM results").fetchall()
    return [(str(w), str(s), int(q)) for w, s, q in found]


def kill9(proc_owner: Collector | Agent) -> None:
    assert proc_owner.proc is not None and proc_owner.proc.popen is not None
    os.kill(proc_owner.proc.popen.pid, signal.SIGKILL)
    proc_owner.proc.popen.wait(10)


def test_kill_9_of_collector_and_agent_under_load_loses_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    profile = tmp_path / "profile.yaml"
    profile.write_text(PROFILE)
    # No rate limit: the load is the point, and a 429 would only slow it down.
    collector = Collector(tmp_path, profile, serve_args=["--ingest-rate", "0"])
    collector.setup()
    target = f"127.0.0.1:{collector.port}"
    # 20 checks a second per agent, pushed every 300 ms: batches in flight at every kill.
    checks = [{"name": f"port-{i}", "type": "tcp", "target": target} for i in range(10)]
    timing = {"interval": "500ms", "timeout": "400ms", "push_interval": "300ms"}
    agents = [Agent(tmp_path / w, w, "pc-01", collector, checks, **timing) for w in WARDS]
    with stopping(collector, *agents):
        collector.start()
        for a in agents:
            a.start()
        wait_until(lambda: len(rows(collector)) >= 200, 60, what="results under load")
        for _ in range(2):
            kill9(collector)
            time.sleep(2)  # the agents keep measuring and spooling meanwhile
            collector.start()
            before = len(rows(collector))
            wait_until(lambda b=before: len(rows(collector)) >= b + 100, 60, what="delivery")
        kill9(agents[0])
        agents[0].start()
        before = len(rows(collector))
        wait_until(lambda: len(rows(collector)) >= before + 200, 60, what="after agent restart")
        for a in agents:
            assert a.stop() == 0  # a clean stop drains the spools
        time.sleep(1.5)  # the collector commits the final drain
        stored = rows(collector)
    assert len(stored) == len(set(stored)), "a result was stored twice"
    for ward in WARDS:
        streams = {s for w, s, _ in stored if w == ward}
        assert len(streams) == 1, (ward, streams)  # the spool file, and its stream, survived
        seqs = sorted(q for w, _, q in stored if w == ward)
        assert seqs == list(range(1, len(seqs) + 1)), f"{ward}: a gap in the sequence numbers"
        assert len(seqs) >= 300
