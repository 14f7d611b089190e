"""WAN line checks across network namespaces: a shaped line's throughput, and two lines apart.

- ward -- city, each veth end shaped by tbf to 10 Mbit/s: the bandwidth check measures the
  shaped rate in both directions.
- A ward with a fibre and a backup line, to two namespaces that both carry the city's address
  (as two ISPs both reach the city's data center): every line check pinned to one line's
  interface answers for that line alone. Cutting the fibre fails the fibre's checks while the
  backup's still pass, whatever the ward's routing table prefers.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT, need, need_program, need_root
from tests.netlab import Lab, drop_table, lab, nsexec, sh

pytestmark = [pytest.mark.netns, pytest.mark.peer]

RATE_BITS = 10_000_000
HTTP_PORT = 8080

# Runs checks inside a namespace, one after the other; prints [{name, success, reason, ...}].
SCRIPT = """
import json, sys
from checks.core import Target, run_check
from checks.registry import REGISTRY
out = []
for name, check, address, params, timeout in json.loads(sys.argv[1]):
    kind = REGISTRY[check]
    r = run_check(check, kind, Target(name, address), kind.params.model_validate(params), timeout)
    out.append({"name": name, "success": r.success, "reason": r.reason,
                "metrics": r.metrics, "info": r.info})
print(json.dumps(out))
"""


def run_in(ns: str, checks: list[tuple[str, str, str, dict[str, Any], float]]) -> dict[str, Any]:
    done = subprocess.run(
        nsexec(ns, sys.executable, "-c", SCRIPT, json.dumps(checks)),
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout, done.stderr
    return {r["name"]: r for r in json.loads(done.stdout)}


def start_in(ns: str, argv: list[str], log: Path, ready: str) -> subprocess.Popen[bytes]:
    """Start a server inside ``ns``; return once its log shows ``ready`` (within 10 s)."""
    with log.open("wb") as out:
        process = subprocess.Popen(nsexec(ns, *argv), stdout=out, stderr=subprocess.STDOUT)
    for _ in range(200):
        if ready in log.read_text(errors="replace"):
            return process
        if process.poll() is not None:
            break
        time.sleep(0.05)
    stop(process)
    raise AssertionError(f"{argv[0]} did not start in {ns}: {log.read_text(errors='replace')!r}")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


# ---- a shaped line ----------------------------------------------------------------------------


def shape(ns: str, dev: str, rate: str = "10mbit") -> None:
    sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root",
       "tbf", "rate", rate, "burst", "32kbit", "latency", "50ms")  # fmt: skip


def failing_bandwidth_criteria(result: dict[str, Any]) -> set[str]:
    """The shipped profile's bandwidth criteria that this run, as the ward's latest, fails."""
    from collector.profile import default_profile_path, load_profile
    from collector.readiness import evaluate
    from collector.state import State
    from shared.wire import ResultRecord

    now = time.time()
    record = ResultRecord(
        seq=1, check="bandwidth", name="bw", target="city", address="city",
        labels={"role": "wan", "line": "fibre"}, interval_seconds=3600, started=now - 5,
        duration_seconds=5, success=result["success"], reason=result["reason"],
        metrics=result["metrics"],
    )  # fmt: skip
    state = State(3600)
    state.add("ward-phu-tho", "pc-01", [record])
    state.heard("ward-phu-tho", "pc-01", now)
    verdict = evaluate(load_profile(default_profile_path()), state.ward("ward-phu-tho"), now)
    return {c.id for c in verdict.criteria if c.id.startswith("wan_bandwidth") and c.status != "ok"}


def measure_shaped(tmp_path: Path, up: str, down: str) -> dict[str, Any]:
    with lab() as net:
        ward, city = net.netns("ward"), net.netns("city")
        _, city_addr = net.link(ward, city)
        shape(ward, f"wa{net.tag}1", up)  # upload leaves through the ward's end
        shape(city, f"wb{net.tag}1", down)  # download leaves through the city's end
        server = start_in(
            city,
            ["iperf3", "-s", "-B", city_addr, "-p", "5201", "--forceflush"],
            tmp_path / "iperf3.log",
            "Server listening",
        )
        try:
            # Room for a retried connection on a loaded machine: a run shortened to fit the
            # timeout measures mostly TCP's slow start on the shaped line.
            results = run_in(ward, [("bw", "bandwidth", city_addr, {"duration_seconds": 2}, 30.0)])
        finally:
            stop(server)
    return results["bw"]


def test_a_10_mbit_line_measures_10_mbit_both_ways(tmp_path: Path) -> None:
    need_root()
    need_program("iperf3")
    need_program("tc")
    r = measure_shaped(tmp_path, "10mbit", "10mbit")
    assert (r["success"], r["reason"]) == (True, "ok"), r
    for direction in ("upload", "download"):
        measured = 8 * r["metrics"][f"{direction}_bytes_per_second"]
        # TCP over Ethernet carries ~95.7% of the line rate as payload (1448 of 1514 bytes).
        assert 8e6 <= measured <= 10.5e6, (direction, measured, r.get("info"))
        assert r["metrics"][f"{direction}_retransmits"] >= 0
    assert failing_bandwidth_criteria(r) == set()


def test_a_2_mbit_upload_fails_the_upload_criterion_only(tmp_path: Path) -> None:
    need_root()
    need_program("iperf3")
    need_program("tc")
    r = measure_shaped(tmp_path, "2mbit", "10mbit")
    assert 8 * r["metrics"]["upload_bytes_per_second"] < 2.1e6, r
    assert 8 * r["metrics"]["download_bytes_per_second"] > 8e6, r
    assert failing_bandwidth_criteria(r) == {"wan_bandwidth_up"}


def test_a_city_that_drops_the_connection_is_a_timeout() -> None:
    need_root()
    need_program("iperf3")
    need_program("nft")
    with lab() as net:
        ward, city = net.netns("ward"), net.netns("city")
        _, city_addr = net.link(ward, city)
        net.nft(city, drop_table(100, "tcp"))
        params = {"connect_timeout_seconds": 1, "duration_seconds": 1}
        results = run_in(ward, [("bw", "bandwidth", city_addr, params, 10.0)])
    r = results["bw"]
    assert (r["success"], r["reason"]) == (False, "timeout"), r
    assert "timed out" in r["info"]["error"]


# ---- two lines --------------------------------------------------------------------------------


@dataclass
class Lines:
    net: Lab
    ward: str
    fibre: str
    backup: str
    city: str  # the address both line namespaces carry
    devices: dict[str, str]  # line -> the ward's interface on it
    far_ends: dict[str, tuple[str, str]]  # line -> (namespace, its end of the ward's link)


@pytest.fixture(scope="module")
def lines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lines]:
    need_root()
    need_program("iperf3")
    need(importlib.util.find_spec("scapy") is not None, "scapy is not installed")
    logs = tmp_path_factory.mktemp("lines")
    servers: list[subprocess.Popen[bytes]] = []
    with lab() as net:
        ward = net.netns("ward")
        fibre, backup = net.netns("fibre"), net.netns("backup")
        city = f"10.{net.subnet}.99.1"
        devices, far_ends = {}, {}
        for number, (line, ns) in enumerate((("fibre", fibre), ("backup", backup)), start=1):
            _, far = net.link(ward, ns)
            devices[line] = f"wa{net.tag}{number}"
            far_ends[line] = (ns, f"wb{net.tag}{number}")
            sh("ip", "-n", ns, "addr", "add", f"{city}/32", "dev", "lo")
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.icmp_ratelimit=0")
            # The fibre is the preferred route; the backup's route only matters to checks
            # pinned to its interface.
            sh("ip", "-n", ward, "route", "add", f"{city}/32", "via", far,
               "dev", devices[line], "metric", str(10 * number))  # fmt: skip
            servers.append(
                start_in(
                    ns,
                    ["iperf3", "-s", "-B", city, "-p", "5201", "--forceflush"],
                    logs / f"iperf3-{line}.log",
                    "Server listening",
                )
            )
            servers.append(
                start_in(
                    ns,
                    [sys.executable, "-u", "-m", "http.server", "--bind", city, str(HTTP_PORT)],
                    logs / f"http-{line}.log",
                    "Serving HTTP",
                )
            )
        try:
            yield Lines(net, ward, fibre, backup, city, devices, far_ends)
        finally:
            for server in servers:
                stop(server)


def line_checks(lines: Lines, line: str) -> list[tuple[str, str, str, dict[str, Any], float]]:
    dev = lines.devices[line]
    pin = {"interface": dev}
    return [
        (f"icmp-{line}", "icmp", lines.city,
         {**pin, "count": 3, "interval_seconds": 0.05, "timeout_seconds": 0.5}, 3.0),
        (f"tcp-{line}", "tcp", f"{lines.city}:{HTTP_PORT}", pin, 2.0),
        (f"http-{line}", "http", f"http://{lines.city}:{HTTP_PORT}/", pin, 2.0),
        (f"bandwidth-{line}", "bandwidth", lines.city,
         {**pin, "directions": ["up"], "duration_seconds": 1, "connect_timeout_seconds": 1},
         6.0),
        (f"traceroute-{line}", "traceroute", lines.city,
         {**pin, "max_hops": 4, "timeout_seconds": 1.0}, 3.0),
        (f"pmtu-{line}", "pmtu", lines.city, {**pin, "timeout_seconds": 0.3}, 5.0),
        (f"link-{line}", "link", "localhost", {"interfaces": [dev]}, 2.0),
    ]  # fmt: skip


KINDS = ["icmp", "tcp", "http", "bandwidth", "traceroute", "pmtu", "link"]


def test_each_line_answers_on_its_own_interface(lines: Lines) -> None:
    results = run_in(lines.ward, line_checks(lines, "fibre") + line_checks(lines, "backup"))
    for line in ("fibre", "backup"):
        for kind in KINDS:
            r = results[f"{kind}-{line}"]
            assert (r["success"], r["reason"]) == (True, "ok"), r
        # Each line's traceroute sees its own first hop: the city behind that line.
        assert results[f"traceroute-{line}"]["info"]["hops"].startswith(f"1:{lines.city}:")
    assert results["pmtu-fibre"]["metrics"]["path_mtu_bytes"] == 1500


def test_a_cut_fibre_fails_its_checks_and_the_backup_still_answers(lines: Lines) -> None:
    ns, far_end = lines.far_ends["fibre"]
    sh("ip", "-n", ns, "link", "set", far_end, "down")  # the fibre is cut beyond the ward
    try:
        results = run_in(lines.ward, line_checks(lines, "fibre") + line_checks(lines, "backup"))
    finally:
        sh("ip", "-n", ns, "link", "set", far_end, "up")
    expected_fibre = {
        "icmp": {"no_reply", "unreachable"},
        "tcp": {"timeout", "unreachable"},
        "http": {"timeout", "unreachable"},
        "bandwidth": {"timeout", "unreachable"},
        "traceroute": {"not_reached", "unreachable"},
        "pmtu": {"no_reply", "unreachable"},
        "link": {"link_down"},
    }
    for kind in KINDS:
        fibre, backup = results[f"{kind}-fibre"], results[f"{kind}-backup"]
        assert not fibre["success"] and fibre["reason"] in expected_fibre[kind], fibre
        assert (backup["success"], backup["reason"]) == (True, "ok"), backup
    assert results["link-fibre"]["info"][f"state__{lines.devices['fibre']}"] == "no_carrier"
