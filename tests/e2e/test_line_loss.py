"""A ward and a city joined by a veth, with a known random drop one way: the icmp check sees it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT, need_program, need_root
from tests.netlab import drop_table, lab, nsexec

pytestmark = pytest.mark.netns


def run_icmp(ns: str, address: str, count: int, interval: float) -> dict[str, object]:
    argv = nsexec(
        ns, sys.executable, "-m", "agent", "check", "icmp", address,
        "--param", f"count={count}", "--param", f"interval_seconds={interval}",
        "--param", "timeout_seconds=1", "--timeout", str(count * interval + 5), "--json",
    )  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.stdout, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_ten_percent_drop_one_way_is_measured_as_ten_percent_loss() -> None:
    need_root()
    need_program("nft")
    with lab() as net:
        ward, city = net.netns("ward"), net.netns("city")
        ward_addr, city_addr = net.link(ward, city)
        net.nft(city, drop_table(10, saddr=ward_addr))

        result = run_icmp(ward, city_addr, count=500, interval=0.01)

    metrics = result["metrics"]
    assert isinstance(metrics, dict)
    assert metrics["packets_sent"] == 500
    assert abs(metrics["loss_ratio"] - 0.10) <= 0.04, metrics
    assert result["success"] is True


def test_clean_line_has_no_loss_and_a_dropped_line_no_reply() -> None:
    need_root()
    need_program("nft")
    with lab() as net:
        ward, city = net.netns("ward"), net.netns("city")
        ward_addr, city_addr = net.link(ward, city)
        clean = run_icmp(ward, city_addr, count=50, interval=0.01)
        net.nft(city, drop_table(100, saddr=ward_addr))
        cut = run_icmp(ward, city_addr, count=5, interval=0.05)

    assert clean["success"] is True
    assert clean["metrics"]["loss_ratio"] == 0.0  # type: ignore[index]
    assert cut["success"] is False
    assert cut["reason"] == "no_reply"
    assert cut["metrics"]["loss_ratio"] == 1.0  # type: ignore[index]
