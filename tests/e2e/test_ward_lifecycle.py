"""Collector and agent as real processes: a ward goes ready, loses its line, recovers; a
collector outage loses no result."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from fleet import Agent, Collector, stopping, wait_until

from tests.helpers import need_program, need_root
from tests.netlab import drop_table, lab, remove_table

pytestmark = pytest.mark.e2e

WARD = "ward-phu-tho"
INTERVAL = 2.0

LINE_PROFILE = """\
version: 1
silence_seconds: 20
criteria:
  - id: wan_up
    title: WAN line to the city answers
    severity: blocker
    select: {check: icmp, labels: {role: wan}}
    condition: {metric: success, agg: min, last: 2, op: ">=", threshold: 1}
    max_age_intervals: 3
"""


def verdict(collector: Collector) -> dict[str, object]:
    return collector.ward(WARD)


def test_cut_line_turns_ward_not_ready_and_restoring_it_ready(tmp_path: Path) -> None:
    need_root()
    need_program("nft")
    profile = tmp_path / "profile.yaml"
    profile.write_text(LINE_PROFILE)
    with lab() as net:
        city = net.netns("city")
        ward_addr, city_addr = net.link(None, city)
        collector = Collector(tmp_path, profile)
        collector.setup()
        icmp = {
            "name": "wan-city",
            "type": "icmp",
            "target": city_addr,
            "labels": {"role": "wan", "line": "fibre"},
            "params": {"count": 3, "interval_seconds": 0.1, "timeout_seconds": 0.5},
        }
        agent = Agent(tmp_path, WARD, "pc-01", collector, [icmp], interval=f"{INTERVAL:g}s",
                      timeout="1500ms")  # fmt: skip
        with stopping(collector, agent):
            collector.start()
            agent.start()
            wait_until(lambda: verdict(collector)["verdict"] == "ready", 30, what="ready")

            net.nft(city, drop_table(100, saddr=ward_addr))
            cut_at = time.monotonic()
            # Three probe intervals, plus one push interval and the verdict cache.
            state = wait_until(
                lambda: (v := verdict(collector))["verdict"] == "not_ready" and v,
                3 * INTERVAL + 3,
                what="not_ready after the cut",
            )
            flagged_after = time.monotonic() - cut_at
            failing = [c for c in state["criteria"] if c["status"] != "ok"]
            assert [c["id"] for c in failing] == ["wan_up"], state
            assert any("wan_up" in r for r in state["reasons"]), state["reasons"]
            evidence = failing[0]["evidence"][0]
            assert evidence["observed"] == 0.0 and evidence["threshold"] == 1.0

            remove_table(net, city)
            wait_until(
                lambda: verdict(collector)["verdict"] == "ready",
                3 * INTERVAL + 3,
                what="ready after the line is restored",
            )
    print(f"line cut flagged after {flagged_after:.1f} s")


def test_collector_outage_loses_no_result(tmp_path: Path) -> None:
    profile = tmp_path / "profile.yaml"
    profile.write_text(LINE_PROFILE)
    collector = Collector(tmp_path, profile)
    collector.setup()
    icmp = {
        "name": "loopback",
        "type": "tcp",
        "target": f"127.0.0.1:{collector.port}",
        "labels": {"role": "collector"},
    }
    agent = Agent(tmp_path, WARD, "pc-01", collector, [icmp], interval="1s", timeout="500ms")
    with stopping(collector, agent):
        collector.start()
        agent.start()
        wait_until(lambda: count_rows(tmp_path) >= 3, 20, what="first results stored")
        collector.stop()
        down_at = time.time()
        time.sleep(6)
        up_at = time.time()
        collector.start()
        wait_until(
            lambda: rows_started_between(tmp_path, down_at, up_at) >= 4,
            30,
            what="results taken during the outage delivered",
        )
        assert agent.stop() == 0
        time.sleep(1.5)  # let the collector commit the final drain
    seqs = [row[0] for row in query(tmp_path, "SELECT seq FROM results ORDER BY seq")]
    assert seqs == list(range(1, len(seqs) + 1)), "sequence numbers must be contiguous"
    assert len(seqs) >= 10


def query(workdir: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(workdir / "collector.db", timeout=5) as db:
        return list(db.execute(sql, args))


def count_rows(workdir: Path) -> int:
    return int(query(workdir, "SELECT count(*) FROM results")[0][0])  # type: ignore[call-overload]


def rows_started_between(workdir: Path, t0: float, t1: float) -> int:
    rows = query(workdir, "SELECT count(*) FROM results WHERE started BETWEEN ? AND ?", t0, t1)
    return int(rows[0][0])  # type: ignore[call-overload]
