"""The stream check across an impaired line, and the verdict the collector draws from it.

A ward and a city namespace joined through a router namespace (ward — router — city, each hop
a veth). The city runs ``wardready-collector reflector``; the ward runs ``wardready-agent
check stream``. Impairments are applied on the way out (ward to city) only:

- loss: nftables in the city, ``numgen random mod 100 < 5 drop`` on the ward's UDP;
- delay and jitter: an NFQUEUE rule in the router's mangle PREROUTING for the ward's UDP and
  tests/impair.py holding each packet. In the router, not in the city: the kernel stamps a
  received packet before netfilter's PREROUTING, so a packet held in the reflector's own
  PREROUTING would count as time the reflector held it, which TWAMP subtracts from the RTT,
  exactly as it should for a slow reflector.

"Jitter applied" is the RFC 3550 interarrival jitter the applied delays must produce: with an
independent uniform extra delay on [0, J] per packet, the |D| of two consecutive packets has a
triangular law on [0, J] of mean J/3 (tests.impair.expected_jitter). The packets are sent
further apart than J, so they keep their order and that mean is what the check measures.

Each result is judged with the shipped profile's stream criteria (the ``vc_*`` ids) on a
collector State holding the run as the last three results of a ward's `role: vc` stream
check, so that ``min_samples: 3`` is met by the figures this line produced.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from collector.profile import Profile, default_profile_path, load_profile
from collector.readiness import Verdict, evaluate
from collector.state import State
from shared.wire import ResultRecord
from tests.helpers import ROOT, need, need_program, need_root
from tests.impair import expected_jitter
from tests.netlab import Lab, drop_table, lab, nsexec, remove_table, sh

pytestmark = pytest.mark.netns

QUEUE = 37
WARD = "ward-tan-dinh"


@dataclass
class Line:
    net: Lab
    ward: str
    router: str
    city: str
    ward_addr: str
    city_addr: str


@pytest.fixture(scope="module")
def line() -> Iterator[Line]:
    need_root()
    need_program("nft")
    need_program("iptables")
    with lab() as net:
        ward, router, city = net.netns("ward"), net.netns("rt"), net.netns("city")
        ward_addr, router_a = net.link(ward, router)
        router_b, city_addr = net.link(router, city)
        net.route(ward, city_addr.rsplit(".", 1)[0] + ".0/24", router_a)
        net.route(city, ward_addr.rsplit(".", 1)[0] + ".0/24", router_b)
        sh(*nsexec(router, "sysctl", "-qw", "net.ipv4.ip_forward=1"))
        reflector = subprocess.Popen(
            nsexec(city, sys.executable, "-m", "collector", "reflector",
                   "--listen", f"{city_addr}:862", "--max-pps", "2000"),
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        try:
            assert reflector.stdout is not None
            ready = reflector.stdout.readline()
            assert ready.startswith("wardready-collector reflector listening"), ready
            yield Line(net, ward, router, city, ward_addr, city_addr)
        finally:
            reflector.terminate()
            reflector.wait(10)


@contextmanager
def delayed(ln: Line, delay_ms: float, jitter_ms: float = 0.0) -> Iterator[None]:
    """Hold the ward's UDP in the router for delay_ms (+ uniform [0, jitter_ms])."""
    need(
        importlib.util.find_spec("netfilterqueue") is not None,
        "the netfilterqueue package is not installed (pip install netfilterqueue)",
    )
    rule = ["-t", "mangle", "PREROUTING", "-s", ln.ward_addr, "-p", "udp",
            "-j", "NFQUEUE", "--queue-num", str(QUEUE), "--queue-bypass"]  # fmt: skip
    impair = subprocess.Popen(
        nsexec(ln.router, sys.executable, "tests/impair.py", "--queue", str(QUEUE),
               "--delay-ms", str(delay_ms), "--jitter-ms", str(jitter_ms), "--seconds", "120"),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert impair.stdout is not None
        ready = impair.stdout.readline()
        assert ready.strip() == "ready", impair.stderr.read() if impair.stderr else ""
        sh(*nsexec(ln.router, "iptables", *rule[:2], "-A", *rule[2:]))
        try:
            yield
        finally:
            sh(*nsexec(ln.router, "iptables", *rule[:2], "-D", *rule[2:]))
    finally:
        impair.terminate()
        impair.wait(10)


def run_stream(ln: Line, **params: Any) -> dict[str, Any]:
    seconds = float(params.get("duration_seconds", 5)) + 1
    argv = nsexec(
        ln.ward, sys.executable, "-m", "agent", "check", "stream", f"{ln.city_addr}:862",
        *[a for k, v in params.items() for a in ("--param", f"{k}={v}")],
        "--timeout", str(seconds + 5), "--json",
    )  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, cwd=ROOT)
    assert done.stdout, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def stream_profile() -> Profile:
    shipped = load_profile(default_profile_path())
    criteria = [c for c in shipped.criteria if c.select.check == "stream"]
    assert {c.id for c in criteria} == {"vc_mos", "vc_loss", "vc_rtt", "vc_jitter"}
    return shipped.model_copy(update={"criteria": criteria})


def judge(result: dict[str, Any]) -> tuple[Verdict, set[str]]:
    """The ward's verdict with this run as its last three results; the failed criterion ids."""
    now = time.time()
    records = [
        ResultRecord(
            seq=i + 1,
            check="stream",
            name="vc-city",
            target="city",
            address=result["target"],
            labels={"role": "vc", "line": "fibre"},
            interval_seconds=60.0,
            started=now - 120 + 60 * i,
            duration_seconds=result["duration_seconds"],
            success=result["success"],
            reason=result["reason"],
            metrics=result["metrics"],
            info=result["info"],
        )
        for i in range(3)
    ]
    profile = stream_profile()
    state = State.for_profile(profile)
    state.add(WARD, "pc-01", records)
    state.heard(WARD, "pc-01", now)
    verdict = evaluate(profile, state.ward(WARD), now)
    return verdict, {c.id for c in verdict.criteria if c.status == "failed"}


def test_five_percent_random_loss(line: Line) -> None:
    line.net.nft(line.city, drop_table(5, proto="udp", saddr=line.ward_addr))
    try:
        result = run_stream(line, rate_pps=200, duration_seconds=5)
    finally:
        remove_table(line.net, line.city)
    m = result["metrics"]
    assert result["success"] is True, result
    assert m["packets_sent"] == 1000
    assert abs(m["loss_ratio"] - 0.05) <= 0.02, m
    assert m["loss_bursts"] >= 1
    assert m["burst_loss_mean_packets"] < 1.5  # random loss: mostly single packets
    verdict, failed = judge(result)
    assert verdict.verdict == "not_ready"
    assert "vc_loss" in failed
    # 3% to 7% loss straddles MOS 4.0 (R 83 to 72): the MOS criterion follows the score.
    assert failed - {"vc_loss"} == ({"vc_mos"} if m["mos"] < 4.0 else set())
    assert any(r.startswith("vc_loss:") for r in verdict.reasons)


def test_twenty_ms_delay(line: Line) -> None:
    with delayed(line, 20):
        result = run_stream(line, rate_pps=50, duration_seconds=5)
    m = result["metrics"]
    assert result["success"] is True, result
    assert m["packets_received"] == m["packets_sent"] == 250
    assert abs(m["rtt_avg_seconds"] - 0.020) <= 0.002, m
    assert m["rtt_min_seconds"] >= 0.0195
    # The namespaces share one clock: the delay shows on the way out only.
    assert abs(m["forward_delay_seconds"] - 0.020) <= 0.002
    assert m["backward_delay_seconds"] < 0.002
    verdict, failed = judge(result)
    assert (verdict.verdict, failed) == ("ready", set()), verdict.reasons


def test_long_delay_fails_the_round_trip_criterion_only(line: Line) -> None:
    with delayed(line, 160):
        result = run_stream(line, rate_pps=50, duration_seconds=3)
    m = result["metrics"]
    assert abs(m["rtt_avg_seconds"] - 0.160) <= 0.005, m
    # Ta = 80 + 40 ms buffer = 120 ms: G.107 barely charges it, the call still scores high.
    assert m["mos"] > 4.3
    verdict, failed = judge(result)
    assert (verdict.verdict, failed) == ("not_ready", {"vc_rtt"}), verdict.reasons


def test_jitter(line: Line) -> None:
    jitter_ms = 120.0
    applied = expected_jitter("uniform", jitter_ms / 1000)  # 40 ms
    with delayed(line, 20, jitter_ms):
        # 7 packets a second: 143 ms apart, wider than the jitter, so order is kept.
        result = run_stream(line, rate_pps=7, duration_seconds=20)
    m = result["metrics"]
    assert result["success"] is True, result
    assert m["packets_sent"] == 140
    assert abs(m["forward_jitter_seconds"] - applied) <= 0.3 * applied, m
    assert abs(m["jitter_seconds"] - applied) <= 0.3 * applied, m
    assert abs(m["rtt_avg_seconds"] - 0.080) <= 0.015  # 20 ms + a mean extra of 60 ms
    # A 40 ms jitter buffer discards the packets delayed over 40 ms more than the fastest:
    # about two in three.
    assert 0.45 <= m["packets_late"] / m["packets_received"] <= 0.85
    verdict, failed = judge(result)
    assert (verdict.verdict, failed) == ("not_ready", {"vc_jitter", "vc_mos"}), verdict.reasons
