"""The stream check: its CPU cost, and what it measures on lines with a known impairment.

1. CPU: the check sends streams on loopback to a reflector running as its own process; the CPU
   time of this process (user + system, ``resource.getrusage``) per second of stream, and the
   reflector's (psutil) per packet.
2. Accuracy: ward — router — city namespaces (veth), the reflector in the city; loss by
   nftables in the city (``numgen random``), delay and jitter by an NFQUEUE in the router held
   by tests/impair.py. Applied jitter is the RFC 3550 jitter the applied delays must give:
   J/3 for a uniform extra delay on [0, J] (packets sent further apart than J).

Needs root, nft, iptables and the netfilterqueue package. ``--quick`` skips the namespaces.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

import psutil  # noqa: E402

from checks import stream  # noqa: E402
from checks.core import Target  # noqa: E402
from tests.impair import expected_jitter  # noqa: E402
from tests.netlab import drop_table, lab, nsexec, remove_table, sh  # noqa: E402

QUEUE = 41


def start_reflector(listen: str, ns: str | None = None) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        nsexec(ns, sys.executable, "-m", "collector", "reflector", "--listen", listen,
               "--max-pps", "5000"),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, line.strip().rpartition("//")[2]


def cpu_table() -> None:
    proc, address = start_reflector("127.0.0.1:0")
    reflector = psutil.Process(proc.pid)
    print("CPU cost on loopback (sender: this process; reflector: its own process)")
    print(f"{'rate pps':>8} {'seconds':>7} {'sent':>6} {'lost':>5} {'sender ms CPU/stream-s':>23} "
          f"{'sender µs/packet':>17} {'reflector µs/packet':>20}")  # fmt: skip
    try:
        for rate, seconds in ((50, 10.0), (200, 10.0), (1000, 5.0)):
            params = stream.Params(rate_pps=rate, duration_seconds=seconds)
            r0 = reflector.cpu_times()
            u0 = resource.getrusage(resource.RUSAGE_SELF)
            out = stream.probe(Target("bench", address), params, seconds + 5)
            u1 = resource.getrusage(resource.RUSAGE_SELF)
            r1 = reflector.cpu_times()
            cpu = (u1.ru_utime - u0.ru_utime) + (u1.ru_stime - u0.ru_stime)
            rcpu = (r1.user - r0.user) + (r1.system - r0.system)
            sent = out.metrics["packets_sent"]
            lost = sent - out.metrics["packets_received"]
            print(f"{rate:8d} {seconds:7g} {sent:6.0f} {lost:5.0f} {cpu / seconds * 1000:23.1f} "
                  f"{cpu / sent * 1e6:17.1f} {rcpu / sent * 1e6:20.1f}")  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(10)


def run_stream(ns: str, address: str, **params: Any) -> dict[str, Any]:
    seconds = float(params["duration_seconds"]) + 6
    argv = nsexec(
        ns, sys.executable, "-m", "agent", "check", "stream", address, "--json",
        "--timeout", str(seconds),
        *[a for k, v in params.items() for a in ("--param", f"{k}={v}")],
    )  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=seconds + 30)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def accuracy_table() -> None:
    cases: list[tuple[str, float, float, float, int, float]] = [
        # name, loss %, delay ms, jitter ms, rate pps, seconds
        ("clean", 0, 0, 0, 50, 5),
        ("loss 1%", 1, 0, 0, 200, 5),
        ("loss 5%", 5, 0, 0, 200, 5),
        ("loss 10%", 10, 0, 0, 200, 5),
        ("delay 20 ms", 0, 20, 0, 50, 5),
        ("delay 100 ms", 0, 100, 0, 50, 5),
        ("20 ms + jitter 30", 0, 20, 30, 20, 10),
        ("20 ms + jitter 120", 0, 20, 120, 7, 20),
    ]
    print()
    print("Accuracy: ward -> router -> city, impairment on the way out only")
    print(f"{'impairment':<19} {'loss':>6} {'meas':>6} {'delay':>6} {'rtt':>6} {'fwd':>6} "
          f"{'jitter':>6} {'rt jit':>6} {'fw jit':>6} {'late':>5} {'MOS':>5}")  # fmt: skip
    print(f"{'':<19} {'appl.':>6} {'loss':>6} {'ms':>6} {'ms':>6} {'ms':>6} "
          f"{'appl.':>6} {'ms':>6} {'ms':>6} {'':>5} {'':>5}")  # fmt: skip
    with lab() as net:
        ward, router, city = net.netns("ward"), net.netns("rt"), net.netns("city")
        ward_addr, router_a = net.link(ward, router)
        router_b, city_addr = net.link(router, city)
        net.route(ward, city_addr.rsplit(".", 1)[0] + ".0/24", router_a)
        net.route(city, ward_addr.rsplit(".", 1)[0] + ".0/24", router_b)
        sh(*nsexec(router, "sysctl", "-qw", "net.ipv4.ip_forward=1"))
        reflector, address = start_reflector(f"{city_addr}:862", city)
        rule = ["-t", "mangle", "PREROUTING", "-s", ward_addr, "-p", "udp",
                "-j", "NFQUEUE", "--queue-num", str(QUEUE), "--queue-bypass"]  # fmt: skip
        try:
            for name, loss, delay, jitter, rate, seconds in cases:
                impair = None
                if loss:
                    net.nft(city, drop_table(int(loss), proto="udp", saddr=ward_addr))
                if delay or jitter:
                    impair = subprocess.Popen(
                        nsexec(router, sys.executable, "tests/impair.py", "--queue", str(QUEUE),
                               "--delay-ms", str(delay), "--jitter-ms", str(jitter)),
                        cwd=ROOT, stdout=subprocess.PIPE, text=True,
                    )  # fmt: skip
                    assert impair.stdout is not None
                    impair.stdout.readline()
                    sh(*nsexec(router, "iptables", *rule[:2], "-A", *rule[2:]))
                try:
                    out = run_stream(ward, address, rate_pps=rate, duration_seconds=seconds)
                finally:
                    if loss:
                        remove_table(net, city)
                    if impair is not None:
                        sh(*nsexec(router, "iptables", *rule[:2], "-D", *rule[2:]))
                        impair.terminate()
                        impair.wait(10)
                m = out["metrics"]
                applied_jitter = expected_jitter("uniform", jitter)
                print(
                    f"{name:<19} {loss / 100:6.3f} {m['loss_ratio']:6.3f} {delay:6.1f} "
                    f"{m['rtt_avg_seconds'] * 1000:6.2f} {m['forward_delay_seconds'] * 1000:6.2f} "
                    f"{applied_jitter:6.2f} {m.get('jitter_seconds', 0) * 1000:6.2f} "
                    f"{m.get('forward_jitter_seconds', 0) * 1000:6.2f} "
                    f"{m['packets_late']:5.0f} {m['mos']:5.2f}"
                )
        finally:
            reflector.terminate()
            reflector.wait(10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="only the CPU table (no namespaces)")
    args = p.parse_args()
    t0 = time.monotonic()
    cpu_table()
    if not args.quick:
        accuracy_table()
    print(f"\n({time.monotonic() - t0:.0f} s)")


if __name__ == "__main__":
    main()
