"""Line measurement against fping on the same path: loss and RTT under a known random drop.

Makes two network namespaces joined by a veth, drops a known share of echo requests with
nftables in the city namespace, then runs our icmp check and fping (500 packets, 10 ms apart)
one after the other from the ward namespace. Needs root, nft and fping.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from netlab import drop_table, lab, nsexec, remove_table  # noqa: E402

COUNT, INTERVAL_MS = 500, 10


def ours(ns: str, addr: str) -> tuple[float, float]:
    argv = nsexec(
        ns, sys.executable, "-m", "agent", "check", "icmp", addr, "--json",
        "--param", f"count={COUNT}", "--param", f"interval_seconds={INTERVAL_MS / 1000}",
        "--timeout", "30",
    )  # fmt: skip
    out = json.loads(subprocess.run(argv, capture_output=True, text=True, cwd=ROOT).stdout)
    m = out["metrics"]
    return m["loss_ratio"], m.get("rtt_avg_seconds", float("nan")) * 1000


def fping(ns: str, addr: str) -> tuple[float, float]:
    argv = nsexec(ns, "fping", "-q", "-c", str(COUNT), "-p", str(INTERVAL_MS), addr)
    err = subprocess.run(argv, capture_output=True, text=True).stderr
    sent, received = map(int, re.search(r"= (\d+)/(\d+)/", err).groups())  # type: ignore[union-attr]
    avg = re.search(r"min/avg/max = [\d.]+/([\d.]+)/", err)
    return 1 - received / sent, float(avg.group(1)) if avg else float("nan")


def main() -> None:
    print(f"{COUNT} echoes at {INTERVAL_MS} ms, ward -> city over a veth, nftables random drop")
    print(f"{'drop':>6} {'our loss':>9} {'fping loss':>10} {'our rtt ms':>11} "
          f"{'fping rtt ms':>12} {'rtt diff ms':>11}")  # fmt: skip
    with lab() as net:
        ward, city = net.netns("ward"), net.netns("city")
        ward_addr, city_addr = net.link(ward, city)
        for percent in (0, 5, 10, 20):
            if percent:
                net.nft(city, drop_table(percent, saddr=ward_addr))
            our_loss, our_rtt = ours(ward, city_addr)
            f_loss, f_rtt = fping(ward, city_addr)
            if percent:
                remove_table(net, city)
            print(f"{percent / 100:6.2f} {our_loss:9.3f} {f_loss:10.3f} {our_rtt:11.3f} "
                  f"{f_rtt:12.3f} {our_rtt - f_rtt:11.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
