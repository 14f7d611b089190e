"""One ward's token sends hostile but schema-valid data to a real collector process: absurd
finite values, then a flood of new series from many agent names. Every other ward is judged
as before, /metrics stays readable, and the collector's memory stays bounded, also after a
restart that rebuilds its state from the database."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from fleet import Collector, stopping, wait_until
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.e2e

GOOD = ("ward-minh-phung", "ward-binh-thoi")
HOSTILE = "ward-phu-tho"
BIG = 1.7976931348623157e308
FLOOD_BATCHES = 40
FLOOD_SIZE = 2000
# The line, the host check and the gadget: what the hostile ward holds before its flood.
SERIES_BEFORE_FLOOD = 3
WARD_BUDGET = 4000
# Memory may grow with the work a process has done (allocator pools, caches filled once), but
# not with what one ward sends: without budgets this flood took the collector to 3.6 times
# its starting size.
RSS_FACTOR = 2.0

PROFILE = """\
version: 1
silence_seconds: 120
criteria:
  - id: wan_loss
    title: WAN line loss under 1% over 15 min
    severity: blocker
    select: {check: icmp, labels: {role: wan}}
    condition: {metric: loss_ratio, agg: avg, window: 15m, op: "<", threshold: 0.01}
  - id: wan_rtt
    title: WAN round trip p95 under 100 ms
    severity: blocker
    select: {check: icmp, labels: {role: wan}}
    condition: {metric: rtt_avg_seconds, agg: p95, window: 15m, op: "<", threshold: 0.1}
  - id: wan_up
    title: WAN line answers
    severity: blocker
    select: {check: icmp, labels: {role: wan}}
    condition: {metric: success, agg: min, last: 2, op: ">=", threshold: 1}
  - id: disk_free
    title: PC disk has room
    severity: warning
    select: {check: host}
    condition: {metric: disk_free_ratio_min, agg: max, window: 15m, op: ">", threshold: 0.1}
  # A check type this collector does not know: its values have no declared range, so any
  # finite number arrives and every aggregation must survive it.
  - id: gadget
    title: A newer agent's gadget
    severity: warning
    select: {check: gadget}
    condition: {metric: level, agg: avg, window: 15m, op: "<", threshold: 1}
"""


class Sender:
    """Posts batches as one agent of one ward, with fresh sequence numbers."""

    def __init__(self, collector: Collector, ward: str, token: str) -> None:
        self.url = f"{collector.url}/api/v1/ingest"
        self.ward = ward
        self.headers = {"Authorization": f"Bearer {token}"}
        self.stream = uuid.uuid4().hex
        self.seq = 0

    def result(self, name: str, target: str, **over: Any) -> dict[str, Any]:
        self.seq += 1
        doc: dict[str, Any] = {
            "seq": self.seq,
            "check": "icmp",
            "name": name,
            "target": target,
            "address": "10.0.0.1",
            "labels": {"role": "wan", "line": "fibre"},
            "interval_seconds": 30.0,
            "started": time.time() - 1 - self.seq * 1e-4,
            "duration_seconds": 0.5,
            "success": True,
            "reason": "ok",
            "metrics": {"loss_ratio": 0.0, "rtt_avg_seconds": 0.012},
        }
        doc.update(over)
        return doc

    def healthy(self) -> list[dict[str, Any]]:
        now = time.time()
        return [
            self.result("wan-city", "gw", started=now - 20),
            self.result("wan-city", "gw", started=now - 10),
            self.result(
                "host",
                "localhost",
                check="host",
                labels={"role": "host"},
                metrics={"disk_free_ratio_min": 0.5},
                started=now - 10,
            ),
        ]

    def post(self, results: list[dict[str, Any]], agent: str = "pc-01") -> httpx.Response:
        doc = {
            "wire_version": 1,
            "ward": self.ward,
            "agent": agent,
            "stream": self.stream,
            "sent_at": time.time(),
            "status": {
                "version": "0.1.0",
                "spool_depth": 0,
                "spool_dropped_total": 0,
                "resident_memory_bytes": 1,
                "cpu_seconds_total": 0.0,
                "checks": 2,
            },
            "results": results,
        }
        return httpx.post(self.url, json=doc, headers=self.headers, timeout=30)


def rss(collector: Collector) -> int:
    assert collector.proc is not None
    return int(psutil.Process(collector.proc.pid).memory_info().rss)


def scrape(collector: Collector) -> dict[str, Any]:
    token = collector.viewer_token_file.read_text().strip()
    auth = {"Authorization": f"Bearer {token}"}
    text = httpx.get(f"{collector.url}/metrics", timeout=30, headers=auth).text
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(families: dict[str, Any], family: str, sample: str, **labels: str) -> float | None:
    for s in families[family].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    return None


def assert_others_judged(collector: Collector) -> None:
    for ward in GOOD:
        v = collector.ward(ward)
        assert v["verdict"] == "ready", (ward, v["reasons"])
    families = scrape(collector)
    for ward in GOOD:
        assert value(families, "wardready_ward_ready", "wardready_ward_ready", ward=ward) == 1.0
        loss = value(
            families,
            "wardready_icmp_loss_ratio",
            "wardready_icmp_loss_ratio",
            ward=ward,
            name="wan-city",
        )
        assert loss == 0.0
    hostile = collector.ward(HOSTILE)
    assert hostile["verdict"] == "not_ready"
    assert any(r.startswith("wan_loss:") for r in hostile["reasons"]), hostile["reasons"]
    assert hostile["series"]["used"] <= WARD_BUDGET


def test_a_hostile_ward_neither_blinds_nor_fills_the_collector(tmp_path: Path) -> None:
    profile = tmp_path / "profile.yaml"
    profile.write_text(PROFILE)
    # No rate limit: this flood is to meet the series budgets, not the token's rate.
    collector = Collector(
        tmp_path, profile, serve_args=["--verdict-seconds", "0.5", "--ingest-rate", "0"]
    )
    collector.setup()
    good = [Sender(collector, w, collector.token(w, "pc-01")) for w in GOOD]
    any_agent = collector.cli("token", "create", "--ward", HOSTILE).stdout.split()[-1]
    hostile = Sender(collector, HOSTILE, any_agent)
    with stopping(collector):
        collector.start()
        for sender in (*good, hostile):
            assert sender.post(sender.healthy()).status_code == 200
        wait_until(
            lambda: all(collector.ward(w)["verdict"] == "ready" for w in GOOD),
            20,
            what="good wards ready",
        )
        scrape(collector)
        baseline = rss(collector)

        # Values outside what a metric can be (a ratio of -1.8e308) are refused at the door.
        implausible = [hostile.result("wan-city", "gw", metrics={"loss_ratio": -BIG})]
        r = hostile.post(implausible)
        assert r.status_code == 422 and "loss_ratio" in r.text, r.text
        # Absurd values a metric's range allows (durations have no upper bound, an unknown
        # check type has no range at all) arrive: every aggregation of the profile runs
        # over them.
        absurd = [
            hostile.result("wan-city", "gw", metrics={"loss_ratio": ratio, "rtt_avg_seconds": v})
            for v, ratio in ((BIG, 1.0), (BIG, 0.0), (1e308, 1.0), (BIG, 5e-324), (5e-324, 1.0))
        ]
        absurd += [
            hostile.result("gadget", "gadget-1", check="gadget", metrics={"level": v})
            for v in (BIG, BIG, -BIG, 1e308, BIG, 5e-324)
        ]
        assert hostile.post(absurd).status_code == 200

        # A flood of new series under ever new agent names: the ward's budget stops it.
        codes = []
        for b in range(FLOOD_BATCHES):
            flood = [hostile.result("flood", f"t-{b}-{i}") for i in range(FLOOD_SIZE)]
            r = hostile.post(flood, agent=f"pc-{b}")
            codes.append(r.status_code)
            if r.status_code == 422:
                assert "series budget" in r.json()["detail"], r.text
        # A batch is refused whole: the two series of pc-01 and one flood batch fit.
        accepted = (WARD_BUDGET - 2) // FLOOD_SIZE
        assert codes == [200] * accepted + [422] * (FLOOD_BATCHES - accepted), codes
        # The hostile ward's existing series keep working.
        assert hostile.post(hostile.healthy()).status_code == 200

        wait_until(
            lambda: collector.ward(HOSTILE)["verdict"] == "not_ready",
            10,
            what="hostile ward judged",
        )
        assert_others_judged(collector)
        series = collector.ward(HOSTILE)["series"]
        assert series["used"] == SERIES_BEFORE_FLOOD + accepted * FLOOD_SIZE
        refused = (FLOOD_BATCHES - accepted) * FLOOD_SIZE
        assert series["refused"] == refused
        families = scrape(collector)
        rejected = value(
            families,
            "wardready_collector_ingest_rejected_results",
            "wardready_collector_ingest_rejected_results_total",
            reason="series_budget",
        )
        assert rejected == refused
        flooded = rss(collector)
        assert flooded < RSS_FACTOR * baseline, (baseline, flooded)

        # Restart: the state is rebuilt from the database, within the same budget.
        collector.stop()
        collector.start()
        wait_until(
            lambda: all(collector.ward(w)["verdict"] == "ready" for w in GOOD),
            20,
            what="good wards ready after restart",
        )
        assert_others_judged(collector)
        assert collector.ward(HOSTILE)["series"]["used"] <= WARD_BUDGET
        after = [hostile.result("flood", f"after-{i}") for i in range(FLOOD_SIZE)]
        r = hostile.post(after, agent="pc-99")
        assert r.status_code == 422 and "series budget of ward" in r.json()["detail"], r.text
        used = collector.ward(HOSTILE)["series"]["used"]
        assert used == SERIES_BEFORE_FLOOD + accepted * FLOOD_SIZE
        restarted = rss(collector)
        assert restarted < RSS_FACTOR * baseline, (baseline, restarted)
        assert httpx.get(f"{collector.url}/healthz", timeout=5).json() == {"status": "ok"}
    print(
        f"collector RSS: baseline {baseline / 1e6:.0f} MB, after the flood {flooded / 1e6:.0f} MB,"
        f" after restart {restarted / 1e6:.0f} MB"
    )
