"""Path MTU on loopback, and through a router whose far link is narrower (network namespaces).

The lab: ward -- r -- city. ``ip link set mtu 1300`` on the r -- city link makes r answer
fragmentation-needed for anything bigger; ICMP rate limits are off in r so every probe of the
search gets its answer.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import ValidationError

from checks import pmtu
from checks.core import Result
from tests.helpers import ROOT, need, need_root
from tests.netlab import Lab, drop_table, lab, nsexec, remove_table, sh

RunCheck = Callable[..., Result]
FAST = {"timeout_seconds": 0.3}


def agent_check(ns: str, address: str, *params: str, timeout: float = 20) -> dict[str, Any]:
    argv = [sys.executable, "-m", "agent", "check", "pmtu", address, "--json"]
    argv += ["--timeout", str(timeout)]
    for p in params:
        argv += ["--param", p]
    done = subprocess.run(nsexec(ns, *argv), capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.stdout, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@dataclass
class Narrow:
    net: Lab
    ward: str
    router: str
    city: str
    router_addr: str
    city_addr: str
    links: tuple[str, str]  # the r -- city link's two ends (in r, in city)


@pytest.fixture(scope="module")
def narrow() -> Iterator[Narrow]:
    """ward -- r -- city, the r -- city link at MTU 1300."""
    need_root()
    with lab() as net:
        ward, router, city = net.netns("ward"), net.netns("r"), net.netns("city")
        _, router_addr = net.link(ward, router)
        router_to_city, city_addr = net.link(router, city)
        for setting in ("net.ipv4.ip_forward=1", "net.ipv4.icmp_ratelimit=0"):
            sh("ip", "netns", "exec", router, "sysctl", "-qw", setting)
        # Datagram ICMP sockets for the unprivileged mode, in this namespace only.
        sh("ip", "netns", "exec", ward, "sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647")
        sh("ip", "-n", ward, "route", "add", "default", "via", router_addr)
        sh("ip", "-n", city, "route", "add", "default", "via", router_to_city)
        links = (f"wa{net.tag}2", f"wb{net.tag}2")
        sh("ip", "-n", router, "link", "set", links[0], "mtu", "1300")
        sh("ip", "-n", city, "link", "set", links[1], "mtu", "1300")
        yield Narrow(net, ward, router, city, router_addr, city_addr, links)


# ---- loopback ---------------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
def test_loopback_takes_the_largest_size_asked(
    run: RunCheck, address: str, request: pytest.FixtureRequest
) -> None:
    need_root()
    if ":" in address:
        request.getfixturevalue("ipv6_loopback")
    r = run("pmtu", address, **FAST)
    assert (r.success, r.reason) == (True, "ok"), r.info
    assert r.metrics["path_mtu_bytes"] == 1500
    # The smallest size, then the largest: both fit, nothing to search.
    assert r.metrics["probes_sent"] == 2
    assert r.info["socket"] == "raw"


def test_jumbo_sizes_fit_on_loopback(run: RunCheck) -> None:
    need_root()
    r = run("pmtu", "127.0.0.1", max_bytes=9000, **FAST)
    assert r.success, r.info
    assert r.metrics["path_mtu_bytes"] == 9000


def test_below_the_threshold_is_mtu_low(run: RunCheck) -> None:
    need_root()
    r = run("pmtu", "127.0.0.1", max_bytes=1280, threshold_bytes=1400, **FAST)
    assert (r.success, r.reason) == (False, "mtu_low"), r.info
    assert r.metrics["path_mtu_bytes"] == 1280
    assert "below 1400" in r.info["error"]


def test_without_cap_net_raw_a_raw_socket_is_permission_denied() -> None:
    need_root()
    setpriv = shutil.which("setpriv")
    need(setpriv is not None, "setpriv (util-linux) is not installed")
    assert setpriv is not None
    argv = [setpriv, "--bounding-set", "-net_raw", sys.executable, "-m", "agent"]
    argv += ["check", "pmtu", "127.0.0.1", "--param", "mode=raw", "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)
    result = json.loads(done.stdout)
    assert (result["success"], result["reason"]) == (False, "permission_denied")
    assert "CAP_NET_RAW" in result["info"]["error"]


def test_missing_interface_is_source_unavailable(run: RunCheck) -> None:
    need_root()
    r = run("pmtu", "127.0.0.1", interface="wrnosuch0", **FAST)
    assert (r.success, r.reason) == (False, "source_unavailable"), r.info
    assert "wrnosuch0" in r.info["error"]


def test_unresolvable_name_is_resolve_failed(run: RunCheck) -> None:
    r = run("pmtu", "wardready-no-such-host.invalid", timeout=3)
    assert (r.success, r.reason) == (False, "resolve_failed"), r.info


@pytest.mark.parametrize(
    "params",
    [
        {"min_bytes": 1500, "max_bytes": 1400},
        {"min_bytes": 67},
        {"max_bytes": 70000},
        {"attempts": 0},
        {"timeout_seconds": 0},
        {"mode": "tcp"},
        {"interface": ""},
    ],
)
def test_bad_params_are_rejected(params: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        pmtu.Params.model_validate(params)


# ---- through a router -------------------------------------------------------------------------


@pytest.mark.netns
@pytest.mark.parametrize("mode", ["raw", "dgram"])
def test_a_1300_byte_link_is_found_exactly(narrow: Narrow, mode: str) -> None:
    result = agent_check(narrow.ward, narrow.city_addr, f"mode={mode}")
    assert (result["success"], result["reason"]) == (False, "mtu_low"), result
    assert result["metrics"]["path_mtu_bytes"] == 1300
    assert result["info"]["frag_needed"] == f"1300 from {narrow.router_addr}"
    # 576 fits, 1500 draws fragmentation-needed 1300, 1300 fits: three probes.
    assert result["metrics"]["probes_sent"] == 3
    assert result["info"]["socket"] == mode


@pytest.mark.netns
def test_a_lower_threshold_accepts_the_1300_byte_path(narrow: Narrow) -> None:
    result = agent_check(narrow.ward, narrow.city_addr, "threshold_bytes=1280")
    assert (result["success"], result["reason"]) == (True, "ok"), result
    assert result["metrics"]["path_mtu_bytes"] == 1300


@pytest.mark.netns
def test_a_black_hole_is_found_by_search_alone(narrow: Narrow) -> None:
    need(shutil.which("nft") is not None, "nft is not installed")
    # The ward never hears fragmentation-needed: only missing replies tell the size.
    narrow.net.nft(
        narrow.ward,
        "table inet wardready_test {\n  chain input {\n"
        "    type filter hook input priority 0; policy accept;\n"
        "    icmp type destination-unreachable drop\n  }\n}\n",
    )
    try:
        result = agent_check(narrow.ward, narrow.city_addr, "timeout_seconds=0.3")
    finally:
        remove_table(narrow.net, narrow.ward)
    assert result["reason"] == "mtu_low", result
    assert result["metrics"]["path_mtu_bytes"] == 1300
    assert "frag_needed" not in result["info"]
    assert result["metrics"]["probes_sent"] > 3


@pytest.mark.netns
def test_a_clean_path_is_1500(narrow: Narrow) -> None:
    # The ward to the router's own address does not cross the narrow link.
    result = agent_check(narrow.ward, narrow.router_addr)
    assert (result["success"], result["reason"]) == (True, "ok"), result
    assert result["metrics"]["path_mtu_bytes"] == 1500


@pytest.mark.netns
def test_a_silent_target_is_no_reply(narrow: Narrow) -> None:
    need(shutil.which("nft") is not None, "nft is not installed")
    narrow.net.nft(narrow.city, drop_table(100, "icmp"))
    try:
        result = agent_check(narrow.ward, narrow.city_addr, "timeout_seconds=0.3")
    finally:
        remove_table(narrow.net, narrow.city)
    assert (result["success"], result["reason"]) == (False, "no_reply"), result
    assert result["metrics"]["probes_sent"] == 2  # the smallest size, twice
    assert "no echo reply to 576-byte packets" in result["info"]["error"]


@pytest.mark.netns
def test_a_router_that_refuses_the_destination_is_unreachable(narrow: Narrow) -> None:
    need(shutil.which("nft") is not None, "nft is not installed")
    beyond = narrow.city_addr.rsplit(".", 2)[0] + ".250.1"
    prefix = narrow.city_addr.rsplit(".", 2)[0] + ".250.0/24"
    # Linux rate-limits the net-unreachable of a missing route (ip_error: a burst of five,
    # then one a second, host-wide); an nftables reject goes through icmp_send, unlimited here.
    sh("ip", "-n", narrow.router, "route", "add", prefix, "via", narrow.city_addr)
    narrow.net.nft(
        narrow.router,
        "table inet wardready_test {\n  chain forward {\n"
        "    type filter hook forward priority 0; policy accept;\n"
        f"    ip daddr {prefix} reject with icmp type net-unreachable\n  }}\n}}\n",
    )
    try:
        result = agent_check(narrow.ward, beyond, "timeout_seconds=0.3")
    finally:
        remove_table(narrow.net, narrow.router)
        sh("ip", "-n", narrow.router, "route", "del", prefix)
    assert (result["success"], result["reason"]) == (False, "unreachable"), result
    assert result["info"]["icmp_error"] == (
        f"destination unreachable (code 0) from {narrow.router_addr}"
    )
    assert result["metrics"]["probes_sent"] == 1


@pytest.mark.netns
def test_a_search_cut_short_by_the_timeout_says_where_it_stopped(narrow: Narrow) -> None:
    need(shutil.which("nft") is not None, "nft is not installed")
    narrow.net.nft(
        narrow.ward,
        "table inet wardready_test {\n  chain input {\n"
        "    type filter hook input priority 0; policy accept;\n"
        "    icmp type destination-unreachable drop\n  }\n}\n",
    )
    try:
        result = agent_check(narrow.ward, narrow.city_addr, "timeout_seconds=1", timeout=2.5)
    finally:
        remove_table(narrow.net, narrow.ward)
    assert (result["success"], result["reason"]) == (False, "timeout"), result
    low, high = (int(x) for x in result["info"]["searched"].removesuffix(" bytes").split(".."))
    assert 576 <= low <= 1300 < high <= 1500
