"""The agent beside the Prometheus exporters doing the same work, in one run on this machine.

Agent side: the ward plan of agent_footprint.py (40 icmp, 30 tcp, 25 http, 4 dns, the host
check) plus one printer_snmp check against a local snmpsim printer, every 30 s, pushing to a
real collector.

Reference side, started in the same run against the same loopback targets:
- blackbox_exporter with icmp, tcp and http modules, probed for the same 95 targets;
- node_exporter, scraped (the agent's host check does that work);
- snmp_exporter with a Printer MIB module, scraping the same snmpsim printer.
Blackbox only probes when asked, so this script drives all three: a bounded loop that spreads
each 30 s round of 97 requests evenly over the interval, as Prometheus spreads its targets
(no Prometheus server: its own cost would count for neither side). The loop's CPU is printed
but counted for neither side.

RSS is sampled every second over the measurement window (median printed); CPU is user + system
seconds (with reaped children) used over that same window by each process.

    python bench/agent_vs_exporters.py [--warmup 60] [--measure 120] [--echoes N] [--probes-only]

``--echoes 1`` gives each icmp check one echo per run, as blackbox sends (the agent's default
is a train of 5). ``--probes-only`` keeps only the 95 probes on both sides (no host, dns or
printer checks; node and snmp exporters idle), so the CPU per probe compares like with like;
its RSS ratio is then not the reported one.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts"), str(ROOT / "bench")]

from agent_footprint import plan  # noqa: E402
from fleet import Agent, Collector, Proc, free_port, http_server, stopping, wait_until  # noqa: E402

from tests.devices import snmpsim  # noqa: E402

INTERVAL = 30.0
COMMUNITY = "mono-normal"  # snmpsim serves tests/data/snmprec/<community>.snmprec

BLACKBOX = {
    "modules": {
        "icmp": {"prober": "icmp", "timeout": "10s", "icmp": {"preferred_ip_protocol": "ip4"}},
        "tcp_connect": {"prober": "tcp", "timeout": "10s"},
        "http_2xx": {"prober": "http", "timeout": "10s", "http": {"preferred_ip_protocol": "ip4"}},
    }
}


def snmp_module() -> dict[str, object]:
    """What printer_snmp reads: hrDeviceStatus, hrPrinterTable, supplies and input trays."""

    def metric(name: str, oid: str, index: str, kind: str = "gauge") -> dict[str, object]:
        indexes = [{"labelname": index, "type": "gauge"}]
        if index != "hrDeviceIndex":
            indexes.insert(0, {"labelname": "hrDeviceIndex", "type": "gauge"})
        return {
            "name": name,
            "oid": oid,
            "type": kind,
            "help": f"{name} ({oid})",
            "indexes": indexes,
        }

    supplies, inputs = "1.3.6.1.2.1.43.11.1.1", "1.3.6.1.2.1.43.8.2.1"
    return {
        "walk": ["1.3.6.1.2.1.25.3.2.1.5", "1.3.6.1.2.1.25.3.5.1", supplies, inputs],
        "get": ["1.3.6.1.2.1.1.1.0"],
        "version": 2,
        "auth": {"community": COMMUNITY},
        "retries": 1,
        "timeout": "1s",
        "metrics": [
            {
                "name": "sysDescr",
                "oid": "1.3.6.1.2.1.1.1",
                "type": "DisplayString",
                "help": "sysDescr",
            },
            metric("hrDeviceStatus", "1.3.6.1.2.1.25.3.2.1.5", "hrDeviceIndex"),
            metric("hrPrinterStatus", "1.3.6.1.2.1.25.3.5.1.1", "hrDeviceIndex"),
            metric(
                "hrPrinterDetectedErrorState",
                "1.3.6.1.2.1.25.3.5.1.2",
                "hrDeviceIndex",
                "OctetString",
            ),
            metric("prtMarkerSuppliesClass", f"{supplies}.4", "prtMarkerSuppliesIndex"),
            metric("prtMarkerSuppliesType", f"{supplies}.5", "prtMarkerSuppliesIndex"),
            metric(
                "prtMarkerSuppliesDescription",
                f"{supplies}.6",
                "prtMarkerSuppliesIndex",
                "DisplayString",
            ),
            metric("prtMarkerSuppliesSupplyUnit", f"{supplies}.7", "prtMarkerSuppliesIndex"),
            metric("prtMarkerSuppliesMaxCapacity", f"{supplies}.8", "prtMarkerSuppliesIndex"),
            metric("prtMarkerSuppliesLevel", f"{supplies}.9", "prtMarkerSuppliesIndex"),
            metric("prtInputMaxCapacity", f"{inputs}.9", "prtInputIndex"),
            metric("prtInputCurrentLevel", f"{inputs}.10", "prtInputIndex"),
            metric("prtInputName", f"{inputs}.13", "prtInputIndex", "DisplayString"),
        ],
    }


def agent_plan(
    web: int, collector: int, dns: int | None, snmp: int, echoes: int | None, probes_only: bool
) -> list[dict[str, object]]:
    checks = plan(web, collector, dns)
    if echoes is not None:
        for c in checks:
            if c["type"] == "icmp":
                c["params"] = {"count": echoes}
    if probes_only:
        return [c for c in checks if c["type"] in ("icmp", "tcp", "http")]
    checks.append(
        {
            "name": "printer-0",
            "type": "printer_snmp",
            "target": f"127.0.0.1:{snmp}",
            "params": {"community": COMMUNITY},
            "labels": {"role": "printer"},
        }
    )
    return checks


def probe_urls(blackbox: int, web: int, collector: int) -> list[str]:
    """The same 95 targets as the agent's plan, as blackbox /probe requests."""
    base = f"http://127.0.0.1:{blackbox}/probe"
    urls = [f"{base}?module=icmp&target=127.0.0.{i + 1}" for i in range(40)]
    urls += [f"{base}?module=tcp_connect&target=127.0.0.1:{collector}"] * 30
    urls += [f"{base}?module=http_2xx&target=http://127.0.0.1:{web}/"] * 25
    return urls


@dataclass
class Driver:
    """Requests each URL once per interval, spread evenly; remembers when each one finished."""

    urls: list[tuple[str, str]]  # (kind, url)
    stop: threading.Event = field(default_factory=threading.Event)
    done: list[tuple[float, str, bool]] = field(default_factory=list)
    native_id: int = 0

    def run(self) -> None:
        self.native_id = threading.get_native_id()
        gap = INTERVAL / len(self.urls)
        start = time.monotonic()
        with httpx.Client(timeout=12) as client:
            for n in range(100_000):
                kind, url = self.urls[n % len(self.urls)]
                if self.stop.wait(max(0.0, start + n * gap - time.monotonic())):
                    return
                try:
                    ok = client.get(url).status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.done.append((time.monotonic(), kind, ok))

    def count(self, t0: float, t1: float, kind: str) -> tuple[int, int]:
        rows = [ok for t, k, ok in self.done if t0 <= t < t1 and k == kind]
        return len(rows), sum(rows)


def cpu_seconds(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def thread_cpu(native_id: int) -> float:
    for t in psutil.Process().threads():
        if t.id == native_id:
            return float(t.user_time + t.system_time)
    return 0.0


def agent_runs(agent: Agent) -> dict[str, float]:
    runs: dict[str, float] = {}
    for family in text_string_to_metric_families(agent.metrics()):
        if family.name == "wardready_check_runs":
            for s in family.samples:
                if s.name.endswith("_total"):
                    runs[s.labels["check"]] = runs.get(s.labels["check"], 0) + s.value
    return runs


def exporter(name: str, program: str, args: list[str], port: int, work: Path) -> Proc:
    if not shutil.which(program):
        sys.exit(f"{program} is missing: scripts/setup.sh installs it (Debian package)")
    argv = [program, f"--web.listen-address=127.0.0.1:{port}", *args]
    proc = Proc(name, argv, work / f"{name}.log").start()
    wait_until(
        lambda: httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200, 15, what=name
    )
    return proc


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--warmup", type=float, default=60)
    parser.add_argument("--measure", type=float, default=120)
    parser.add_argument("--echoes", type=int, default=None, help="icmp echoes per agent run")
    parser.add_argument("--probes-only", action="store_true", help="only the 95 probes")
    args = parser.parse_args()
    if not 0 < args.warmup <= 1800 or not 30 <= args.measure <= 3600:
        sys.exit("--warmup must be in (0, 1800] s and --measure in [30, 3600] s")
    work = Path(tempfile.mkdtemp(prefix="wardready-bench-"))
    site = work / "site"
    site.mkdir()
    (site / "index.html").write_text("ok\n")
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, work, True)
        snmp = stack.enter_context(snmpsim(work))
        collector = Collector(work, ROOT / "collector" / "profiles" / "default.yaml")
        collector.setup()
        web = http_server(site, free_port(), work / "web.log")
        web_port = int(web.argv[3])
        extra: list[Proc] = [web]
        dns_port = None
        if shutil.which("dnsmasq"):
            dns_port = free_port()
            argv = [
                "dnsmasq",
                "--no-daemon",
                "--port",
                str(dns_port),
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--no-resolv",
                "--no-hosts",
                "--address=/ward.test/127.0.0.9",
                f"--pid-file={work / 'dnsmasq.pid'}",
            ]
            extra.append(Proc("dnsmasq", argv, work / "dnsmasq.log").start())
        stack.enter_context(stopping(*extra))
        (work / "blackbox.yml").write_text(yaml.safe_dump(BLACKBOX))
        (work / "snmp.yml").write_text(yaml.safe_dump({"printer": snmp_module()}))
        ports = {n: free_port() for n in ("blackbox", "node", "snmp")}
        refs = {
            "blackbox_exporter": exporter(
                "blackbox_exporter",
                "prometheus-blackbox-exporter",
                [f"--config.file={work / 'blackbox.yml'}"],
                ports["blackbox"],
                work,
            ),
            "node_exporter": exporter(
                "node_exporter", "prometheus-node-exporter", [], ports["node"], work
            ),
            "snmp_exporter": exporter(
                "snmp_exporter",
                "prometheus-snmp-exporter",
                [f"--config.file={work / 'snmp.yml'}"],
                ports["snmp"],
                work,
            ),
        }
        stack.enter_context(stopping(*refs.values()))
        collector.start()
        stack.enter_context(stopping(collector))
        checks = agent_plan(web_port, collector.port, dns_port, snmp, args.echoes, args.probes_only)
        agent = Agent(
            work,
            "ward-minh-phung",
            "bench",
            collector,
            checks,
            interval="30s",
            timeout="10s",
            push_interval="5s",
        )
        agent.start()
        stack.enter_context(stopping(agent))
        urls = [
            (u.split("module=")[1].split("&")[0], u)
            for u in probe_urls(ports["blackbox"], web_port, collector.port)
        ]
        if not args.probes_only:
            urls.append(("node", f"http://127.0.0.1:{ports['node']}/metrics"))
            urls.append(
                (
                    "snmp",
                    f"http://127.0.0.1:{ports['snmp']}/snmp?module=printer&target=127.0.0.1:{snmp}",
                )
            )
        driver = Driver(urls)
        loop = threading.Thread(target=driver.run, daemon=True)
        loop.start()
        stack.callback(loop.join, 15)
        stack.callback(driver.stop.set)
        report(args, agent, refs, driver)


def report(args: argparse.Namespace, agent: Agent, refs: dict[str, Proc], driver: Driver) -> None:
    procs = {"agent": psutil.Process(agent.proc.pid)}  # type: ignore[union-attr]
    procs |= {name: psutil.Process(p.pid) for name, p in refs.items()}
    time.sleep(args.warmup)
    runs0 = agent_runs(agent)
    t0 = time.monotonic()
    cpu0 = {n: cpu_seconds(p) for n, p in procs.items()}
    loop0 = thread_cpu(driver.native_id)
    rss: dict[str, list[int]] = {n: [] for n in procs}
    while time.monotonic() - t0 < args.measure:
        for n, p in procs.items():
            rss[n].append(p.memory_info().rss)
        time.sleep(1)
    t1 = time.monotonic()
    cpu = {n: cpu_seconds(p) - cpu0[n] for n, p in procs.items()}
    loop_cpu = thread_cpu(driver.native_id) - loop0
    runs1 = agent_runs(agent)
    span = t1 - t0
    mib: dict[str, float] = {n: statistics.median(v) / 2**20 for n, v in rss.items()}
    refs_rss = sum(mib[n] for n in refs)
    agent_probe_runs = {k: runs1.get(k, 0) - runs0.get(k, 0) for k in runs1}
    probe_kinds = ("icmp", "tcp", "http")
    bb = {k: driver.count(t0, t1, k) for k in ("icmp", "tcp_connect", "http_2xx", "node", "snmp")}
    bb_probes = sum(bb[k][0] for k in ("icmp", "tcp_connect", "http_2xx"))
    all_runs = sum(agent_probe_runs.values())
    probe_runs = sum(agent_probe_runs.get(k, 0) for k in probe_kinds)
    echoes = args.echoes or 5
    show: Callable[[str], None] = print
    if args.probes_only:
        show("probes only: no host, dns or printer checks; node and snmp exporters idle")
    show(
        f"agent vs exporters, every {INTERVAL:g} s, loopback targets "
        f"(warm-up {args.warmup:g} s, measured {span:.0f} s; agent icmp: {echoes} echo(es)/run, "
        "blackbox: 1)"
    )
    show("")
    show(f"  {'process':<20}{'RSS MiB':>9}{'CPU s':>8}{'% core':>8}")
    for n in procs:
        show(f"  {n:<20}{mib[n]:>9.1f}{cpu[n]:>8.2f}{100 * cpu[n] / span:>8.2f}")
    refs_cpu = sum(cpu[n] for n in refs)
    show(f"  {'exporters (sum)':<20}{refs_rss:>9.1f}{refs_cpu:>8.2f}{100 * refs_cpu / span:>8.2f}")
    show(
        f"  {'bench scrape loop':<20}{'':>9}{loop_cpu:>8.2f}{100 * loop_cpu / span:>8.2f}"
        "   (counted for neither side)"
    )
    show("")
    show(f"  RSS  agent / exporters' sum           {mib['agent'] / refs_rss:6.2f}   (goal <= 0.8)")
    show(f"  CPU  agent / exporters' sum           {cpu['agent'] / refs_cpu:6.2f}")
    show("")
    runs_txt = ", ".join(f"{k} {v:g}" for k, v in sorted(agent_probe_runs.items()))
    show(f"  agent runs in window: {runs_txt}")
    bb_txt = ", ".join(f"{k} {n} ({ok} ok)" for k, (n, ok) in bb.items())
    show(f"  reference requests in window: {bb_txt}")
    agent_ms = 1000 * cpu["agent"] / all_runs if all_runs else float("nan")
    bb_ms = 1000 * cpu["blackbox_exporter"] / bb_probes if bb_probes else float("nan")
    show(f"  CPU ms per probe  agent (all its CPU / all {all_runs:g} runs)  {agent_ms:7.3f}")
    show(f"  CPU ms per probe  blackbox ({bb_probes} probes)             {bb_ms:7.3f}")
    show(f"  CPU per probe  agent / blackbox        {agent_ms / bb_ms:6.2f}   (goal <= 1.5)")
    if probe_runs != all_runs:
        show(
            f"  (the agent's CPU also covers {all_runs - probe_runs:g} host, dns and printer "
            "runs and its pushes; blackbox's covers only its probes)"
        )


if __name__ == "__main__":
    main()
