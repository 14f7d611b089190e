"""Agent RSS and CPU at steady state with a full ward plan: 100 targets every 30 s.

The plan mixes the check types a ward runs: 40 icmp lines, 30 tcp services, 25 http shared
systems (a local web server), 4 dns look-ups (a local dnsmasq, when installed) and the host
check. A real collector receives the results. The comparison with node_exporter +
blackbox_exporter + snmp_exporter, measured in the same run, is bench/agent_vs_exporters.py.

    python bench/agent_footprint.py [--warmup 45] [--measure 120]
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from fleet import Agent, Collector, Proc, free_port, http_server, stopping  # noqa: E402


def plan(web: int, collector: int, dns: int | None) -> list[dict[str, object]]:
    checks: list[dict[str, object]] = []
    for i in range(40):
        checks.append({"name": f"line-{i}", "type": "icmp", "target": f"127.0.0.{i + 1}",
                       "labels": {"role": "wan"}})  # fmt: skip
    for i in range(30):
        checks.append({"name": f"svc-{i}", "type": "tcp", "target": f"127.0.0.1:{collector}"})
    for i in range(25):
        checks.append({"name": f"sys-{i}", "type": "http", "target": f"http://127.0.0.1:{web}/",
                       "labels": {"role": "shared_system"}})  # fmt: skip
    for i in range(4):
        params = {"server": f"127.0.0.1:{dns}"} if dns else {}
        checks.append({"name": f"dns-{i}", "type": "dns", "target": "dms.ward.test",
                       "params": params, "labels": {"role": "dns"}})  # fmt: skip
    checks.append({"name": "host", "type": "host", "target": "localhost"})
    return checks


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--warmup", type=float, default=45)
    parser.add_argument("--measure", type=float, default=120)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wardready-bench-"))
    site = work / "site"
    site.mkdir()
    (site / "index.html").write_text("ok\n")
    collector = Collector(work, ROOT / "collector" / "profiles" / "default.yaml")
    collector.setup()
    web = http_server(site, free_port(), work / "web.log")
    extra: list[Proc] = []
    dns_port = None
    if shutil.which("dnsmasq"):
        dns_port = free_port()
        argv = ["dnsmasq", "--no-daemon", "--port", str(dns_port), "--listen-address=127.0.0.1",
                "--bind-interfaces", "--no-resolv", "--no-hosts", "--address=/ward.test/127.0.0.9",
                f"--pid-file={work / 'dnsmasq.pid'}"]  # fmt: skip
        extra.append(Proc("dnsmasq", argv, work / "dnsmasq.log").start())
    agent = Agent(work, "ward-minh-phung", "bench", collector,
                  plan(int(web.argv[3]), collector.port, dns_port), interval="30s", timeout="10s",
                  push_interval="5s")  # fmt: skip
    with stopping(web, *extra, collector, agent):
        collector.start()
        agent.start()
        proc = psutil.Process(agent.proc.pid)  # type: ignore[union-attr]
        time.sleep(args.warmup)
        cpu0, t0 = sum(proc.cpu_times()[:2]), time.monotonic()
        peak = 0
        while time.monotonic() - t0 < args.measure:
            peak = max(peak, proc.memory_info().rss)
            time.sleep(1)
        cpu1, t1 = sum(proc.cpu_times()[:2]), time.monotonic()
        rss = proc.memory_info().rss
        with sqlite3.connect(work / "collector.db") as db:
            results = db.execute("SELECT count(*) FROM results").fetchone()[0]
    print("agent, 100 targets every 30 s "
          f"(warm-up {args.warmup:g} s, measured {t1 - t0:.0f} s)")  # fmt: skip
    print(f"  RSS now            {rss / 2**20:6.1f} MiB")
    print(f"  RSS peak           {peak / 2**20:6.1f} MiB")
    print(f"  CPU                {100 * (cpu1 - cpu0) / (t1 - t0):6.2f} % of one core   "
          "(target <= 1 %)")  # fmt: skip
    print(f"  results delivered  {results}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
