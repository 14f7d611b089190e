"""traceroute on loopback and through chains of network namespaces acting as routers.

The chain: ward -- r1 -- r2 -- city, forwarding on in the routers and ICMP rate limits off (a
burst of probes would otherwise lose answers to the kernel's 1/s limit). The check runs inside
the ward namespace through the agent's command line, as an officer would run it on site.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import ValidationError

from checks import traceroute
from checks.core import Result
from tests.helpers import ROOT, need, need_root
from tests.netlab import Lab, drop_table, lab, nsexec, sh

RunCheck = Callable[..., Result]
FAST = {"max_hops": 6, "timeout_seconds": 1.0}
MODES = ["icmp", "udp", "tcp"]


def need_scapy() -> None:
    need(importlib.util.find_spec("scapy") is not None, "scapy is not installed")


def agent_check(ns: str | None, address: str, *params: str, timeout: float = 10) -> dict[str, Any]:
    argv = [sys.executable, "-m", "agent", "check", "traceroute", address, "--json"]
    argv += ["--timeout", str(timeout)]
    for p in params:
        argv += ["--param", p]
    done = subprocess.run(nsexec(ns, *argv), capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.stdout, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def hop_addresses(result: dict[str, Any]) -> list[str]:
    return [hop.split(":")[1] for hop in result["info"]["hops"].split(",")]


def sysctl(ns: str, *settings: str) -> None:
    for setting in settings:
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", setting)


def router(net: Lab, role: str) -> str:
    ns = net.netns(role)
    sysctl(ns, "net.ipv4.ip_forward=1", "net.ipv4.icmp_ratelimit=0")
    return ns


@dataclass
class Chain:
    net: Lab
    ward: str
    r1: str
    r2: str
    city: str
    r1_addr: str  # r1 on the ward side: the address of hop 1
    r2_addr: str  # r2 on r1's side: hop 2
    r1_to_r2: str  # r1 on r2's side
    city_addr: str  # the target, hop 3
    ward_net: str


def build_chain(net: Lab) -> Chain:
    ward = net.netns("ward")
    r1, r2 = router(net, "r1"), router(net, "r2")
    city = net.netns("city")
    sysctl(city, "net.ipv4.icmp_ratelimit=0")
    ward_addr, r1_addr = net.link(ward, r1)
    r1_to_r2, r2_addr = net.link(r1, r2)
    r2_to_city, city_addr = net.link(r2, city)
    ward_net = ward_addr.rsplit(".", 1)[0] + ".0/24"
    sh("ip", "-n", ward, "route", "add", "default", "via", r1_addr)
    sh("ip", "-n", r1, "route", "add", "default", "via", r2_addr)
    sh("ip", "-n", r2, "route", "add", ward_net, "via", r1_to_r2)
    sh("ip", "-n", city, "route", "add", "default", "via", r2_to_city)
    return Chain(net, ward, r1, r2, city, r1_addr, r2_addr, r1_to_r2, city_addr, ward_net)


@pytest.fixture(scope="module")
def chain() -> Iterator[Chain]:
    need_root()
    need_scapy()
    with lab() as net:
        yield build_chain(net)


# ---- without namespaces ---------------------------------------------------------------------


def test_the_agent_does_not_import_scapy_until_a_traceroute_runs() -> None:
    code = (
        "import sys, checks.registry, agent.cli\n"
        "assert 'traceroute' in checks.registry.REGISTRY\n"
        "assert not [m for m in sys.modules if m.startswith('scapy')], 'scapy imported'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("mode", MODES)
def test_loopback_is_reached_in_one_hop(run: RunCheck, mode: str) -> None:
    need_root()
    need_scapy()
    r = run("traceroute", "127.0.0.1", mode=mode, **FAST)
    assert (r.success, r.reason) == (True, "ok"), r.info
    assert r.metrics["path_hops"] == 1
    assert r.metrics["reached"] == 1
    assert r.metrics["hops_silent"] == 0
    assert r.metrics["probes_sent"] == 6 * 3
    assert 0 < r.metrics["rtt_last_hop_seconds"] < 0.5
    assert r.info["hops"].startswith("1:127.0.0.1:") and r.info["hops"].endswith("ms")
    assert r.info["path_fingerprint"] == traceroute.fingerprint(["127.0.0.1"])


def test_in_process_gives_the_same_answer(run: RunCheck) -> None:
    need_root()
    need_scapy()
    r = run("traceroute", "127.0.0.1", isolate=False, **FAST)
    assert (r.success, r.reason) == (True, "ok"), r.info
    assert r.info["path_fingerprint"] == traceroute.fingerprint(["127.0.0.1"])


def test_a_run_leaves_scapy_out_of_the_agent() -> None:
    need_root()
    need_scapy()
    code = (
        "import sys\n"
        "from checks.core import Target, run_check\n"
        "from checks.registry import REGISTRY\n"
        "kind = REGISTRY['traceroute']\n"
        "r = run_check('traceroute', kind, Target('t', '127.0.0.1'),\n"
        "              kind.params.model_validate({'max_hops': 2}), 10)\n"
        "assert r.success, r\n"
        "assert not [m for m in sys.modules if m.startswith('scapy')], 'scapy imported'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr


def test_without_cap_net_raw_it_is_permission_denied() -> None:
    need_root()
    need_scapy()
    setpriv = shutil.which("setpriv")
    need(setpriv is not None, "setpriv (util-linux) is not installed")
    assert setpriv is not None
    argv = [setpriv, "--bounding-set", "-net_raw", sys.executable, "-m", "agent"]
    argv += ["check", "traceroute", "127.0.0.1", "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)
    result = json.loads(done.stdout)
    assert (result["success"], result["reason"]) == (False, "permission_denied")
    assert "CAP_NET_RAW" in result["info"]["error"]


def test_missing_interface_is_source_unavailable(run: RunCheck) -> None:
    r = run("traceroute", "127.0.0.1", interface="wrnosuch0", **FAST)
    assert (r.success, r.reason) == (False, "source_unavailable"), r.info
    assert "wrnosuch0" in r.info["error"]


def test_source_not_on_this_host_is_source_unavailable(run: RunCheck) -> None:
    # 192.0.2.1 (TEST-NET-1) is only bound to, never sent to: the kernel refuses the bind.
    r = run("traceroute", "127.0.0.1", source="192.0.2.1", **FAST)
    assert (r.success, r.reason) == (False, "source_unavailable"), r.info


def test_unresolvable_name_is_resolve_failed(run: RunCheck) -> None:
    r = run("traceroute", "wardready-no-such-host.invalid", timeout=3)
    assert (r.success, r.reason) == (False, "resolve_failed"), r.info


def test_ipv6_is_refused_clearly(run: RunCheck) -> None:
    r = run("traceroute", "::1")
    assert (r.success, r.reason) == (False, "error")
    assert "only IPv4" in r.info["error"]


def test_fingerprint_follows_the_ordered_hops() -> None:
    one = traceroute.fingerprint(["10.0.0.1", "10.0.1.1", "10.0.2.1"])
    assert len(one) == traceroute.FINGERPRINT_HEX
    assert one == traceroute.fingerprint(["10.0.0.1", "10.0.1.1", "10.0.2.1"])
    assert one != traceroute.fingerprint(["10.0.1.1", "10.0.0.1", "10.0.2.1"])
    assert one != traceroute.fingerprint(["10.0.0.1", "*", "10.0.2.1"])


def test_paris_word_keeps_the_icmp_checksum_constant() -> None:
    from checks._icmp import checksum, echo_request, paris_word

    pairs = [(0, 0), (1, 2), (0xFFFF, 0xFFFF), (0x1234, 77), (0x8000, 0x8001)]
    packets = [
        echo_request(socket.AF_INET, ident, seq, paris_word(ident, seq), False)
        for ident, seq in pairs
    ]
    assert len({checksum(packet) for packet in packets}) == 1


@pytest.mark.parametrize(
    "params",
    [
        {"mode": "gre"},
        {"max_hops": 0},
        {"max_hops": 65},
        {"probes": 0},
        {"dport": 70000},
        {"source": "::1"},
        {"interface": "a b"},
        {"timeout_seconds": 0},
    ],
)
def test_bad_params_are_rejected(params: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        traceroute.Params.model_validate(params)


# ---- through routers in namespaces -----------------------------------------------------------


@pytest.mark.netns
@pytest.mark.parametrize("mode", MODES)
def test_both_routers_are_found_in_order(chain: Chain, mode: str) -> None:
    result = agent_check(chain.ward, chain.city_addr, f"mode={mode}", "max_hops=8")
    assert (result["success"], result["reason"]) == (True, "ok"), result
    assert hop_addresses(result) == [chain.r1_addr, chain.r2_addr, chain.city_addr]
    m = result["metrics"]
    assert m["path_hops"] == 3 and m["reached"] == 1 and m["hops_silent"] == 0
    assert result["info"]["path_fingerprint"] == traceroute.fingerprint(
        [chain.r1_addr, chain.r2_addr, chain.city_addr]
    )


@pytest.mark.netns
def test_every_mode_gives_the_same_fingerprint_for_the_same_path(chain: Chain) -> None:
    prints = {
        agent_check(chain.ward, chain.city_addr, f"mode={mode}", "max_hops=8")["info"][
            "path_fingerprint"
        ]
        for mode in MODES
    }
    assert len(prints) == 1


def refuse_beyond(net: Lab, router: str, via: str, prefix: str) -> None:
    """``router`` answers net-unreachable for ``prefix``, every time.

    Its kernel would too without a route, but Linux limits those answers (ip_error) to a
    burst of five and then one a second per source, across the whole host: an nftables
    reject answers through icmp_send, whose limit the lab turns off.
    """
    sh("ip", "-n", router, "route", "add", prefix, "via", via)
    net.nft(
        router,
        "table inet wardready_test {\n  chain forward {\n"
        "    type filter hook forward priority 0; policy accept;\n"
        f"    ip daddr {prefix} reject with icmp type net-unreachable\n  }}\n}}\n",
    )


@pytest.mark.netns
def test_a_router_that_refuses_the_destination_is_unreachable(chain: Chain) -> None:
    need(shutil.which("nft") is not None, "nft is not installed")
    beyond = chain.city_addr.rsplit(".", 2)[0] + ".250.1"
    prefix = chain.city_addr.rsplit(".", 2)[0] + ".250.0/24"
    refuse_beyond(chain.net, chain.r2, chain.city_addr, prefix)
    try:
        result = agent_check(chain.ward, beyond, "max_hops=8", "timeout_seconds=1")
    finally:
        chain.net.nft(chain.r2, "delete table inet wardready_test\n")
        sh("ip", "-n", chain.r2, "route", "del", prefix)
    assert (result["success"], result["reason"]) == (False, "unreachable"), result
    # r2 still answers time-exceeded at hop 2; probes that outlive it are refused at hop 3.
    assert hop_addresses(result) == [chain.r1_addr, chain.r2_addr, chain.r2_addr]
    assert result["metrics"]["path_hops"] == 3
    assert result["info"]["icmp_error"] == (
        f"destination unreachable (code 0) from {chain.r2_addr}"
    )
    assert result["metrics"]["reached"] == 0


@pytest.mark.netns
def test_a_silent_target_is_not_reached(chain: Chain) -> None:
    need(shutil.which("nft") is not None, "nft is not installed")
    chain.net.nft(chain.city, drop_table(100, "icmp"))
    try:
        result = agent_check(chain.ward, chain.city_addr, "max_hops=5", "timeout_seconds=1")
    finally:
        chain.net.nft(chain.city, "delete table inet wardready_test\n")
    assert (result["success"], result["reason"]) == (False, "not_reached"), result
    assert hop_addresses(result) == [chain.r1_addr, chain.r2_addr]
    assert "within 5 hops" in result["info"]["error"]
    assert result["metrics"]["probes_sent"] == 15


def test_path_changed_compares_with_the_last_run_that_got_through(run: RunCheck) -> None:
    trace = ("192.0.2.9", "icmp", None, None, None)  # never probed: only remembered
    assert traceroute.note_path(trace, "aaaa") is None
    assert traceroute.note_path(trace, "aaaa") == "aaaa"
    assert traceroute.note_path(trace, "bbbb") == "aaaa"
    need_root()
    need_scapy()
    r1 = run("traceroute", "127.0.0.2", **FAST)
    r2 = run("traceroute", "127.0.0.2", **FAST)
    assert r1.success and r2.success, (r1.info, r2.info)
    assert "path_changed" not in r1.metrics  # nothing to compare with yet
    assert r2.metrics["path_changed"] == 0
    assert "previous_fingerprint" not in r2.info


# Runs the check, changes the route with the command in argv[2], runs it again: one agent
# process, so path_changed sees both runs.
CHANGE_SCRIPT = """
import json, subprocess, sys
from checks.core import Target, run_check
from checks.registry import REGISTRY
kind = REGISTRY["traceroute"]
params = kind.params.model_validate({"max_hops": 8})
out = []
for step in range(2):
    if step:
        for argv in json.loads(sys.argv[2]):
            subprocess.run(argv, check=True, timeout=30)
    r = run_check("traceroute", kind, Target("t", sys.argv[1]), params, 10)
    out.append({"success": r.success, "metrics": r.metrics, "info": r.info})
print(json.dumps(out))
"""


@pytest.mark.netns
def test_a_changed_path_changes_the_fingerprint() -> None:
    need_root()
    need_scapy()
    with lab() as net:
        chain = build_chain(net)
        # A third router r3 joins r1 and the city; r1 will send city traffic through it.
        r3 = router(net, "r3")
        r1_to_r3, r3_addr = net.link(chain.r1, r3)
        _, city_on_r3 = net.link(r3, chain.city)
        city_net = chain.city_addr.rsplit(".", 1)[0] + ".0/24"
        sh("ip", "-n", r3, "route", "add", chain.ward_net, "via", r1_to_r3)
        sh("ip", "-n", r3, "route", "add", city_net, "via", city_on_r3)
        reroute = [["ip", "-n", chain.r1, "route", "add", city_net, "via", r3_addr]]
        done = subprocess.run(
            nsexec(chain.ward, sys.executable, "-c", CHANGE_SCRIPT, chain.city_addr,
                   json.dumps(reroute)),
            capture_output=True, text=True, timeout=120, cwd=ROOT,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        before, after = json.loads(done.stdout)

    assert before["success"] and after["success"], (before, after)
    assert hop_addresses(before) == [chain.r1_addr, chain.r2_addr, chain.city_addr]
    assert hop_addresses(after) == [chain.r1_addr, r3_addr, chain.city_addr]
    assert before["info"]["path_fingerprint"] != after["info"]["path_fingerprint"]
    assert "path_changed" not in before["metrics"]
    assert after["metrics"]["path_changed"] == 1
    assert after["info"]["previous_fingerprint"] == before["info"]["path_fingerprint"]
