"""Delay and jitter for the packets of one NFQUEUE queue: the tests' stand-in for netem.

Run it where the packets are queued (this kernel has no netem)::

    ip netns exec NS iptables -t mangle -A PREROUTING -s SRC -j NFQUEUE --queue-num N \\
        --queue-bypass
    ip netns exec NS python3 tests/impair.py --queue N --delay-ms D [--jitter-ms J]

For a timestamping peer (the stream check's TWAMP reflector), queue in a router namespace
between the two ends, not in the receiver's own PREROUTING: the kernel stamps a packet when it
arrives, before netfilter, so a hold there would not show in the receive timestamp.

Each packet is accepted ``D`` ms after it was queued plus, with ``--jitter-ms J``, a random
extra delay drawn independently for every packet:

- ``uniform`` (default): uniform on [0, J]. For two packets the difference of their delays then
  has |ΔD| with a triangular law on [0, J], of mean J/3: the RFC 3550 interarrival jitter of
  the stream converges to J/3 as long as the packets keep their order (J below the packet
  spacing).
- ``normal``: |N(0, J)|, a half-normal of scale J. Independent draws give
  E|ΔD| = J·(4 − 2√2)/√π ≈ 0.661·J (``expected_jitter`` shows the derivation).

Packets are released each at its own time, so a jitter wider than the packet spacing reorders
them, as a real path with parallel links or retransmitting radios does. ``--keep-order`` makes
the queue first-in first-out instead (a packet never overtakes the one before it); the delays
are then no longer independent and ``expected_jitter`` does not apply.

It prints ``ready`` once the queue is bound, runs until SIGTERM or SIGINT (or ``--seconds``),
releases what it still holds, and prints how many packets it handled. It needs root
(CAP_NET_ADMIN) and the Python package netfilterqueue (Debian libnetfilter-queue-dev to
build it).
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import select
import signal
import sys
import time
from typing import Any

SPREADS = ("uniform", "normal")
# Longest sleep between looks at the stop flag.
MAX_WAIT = 0.1


def extra_delay(rng: random.Random, spread: str, jitter: float) -> float:
    if jitter <= 0:
        return 0.0
    if spread == "uniform":
        return rng.uniform(0.0, jitter)
    return abs(rng.gauss(0.0, jitter))


def expected_jitter(spread: str, jitter: float) -> float:
    """E|X − Y| for two independent extra delays: what RFC 3550 jitter converges to."""
    if spread == "uniform":
        return jitter / 3.0
    # (X, Y) = s·(|Z1|, |Z2|) = s·R·(cos θ, sin θ) with θ uniform on [0, π/2] and E[R] = √(π/2);
    # E|cos θ − sin θ| = (4/π)(√2 − 1), hence E|X − Y| = s·(4 − 2√2)/√π ≈ 0.661·s.
    return jitter * (4 - 2 * math.sqrt(2)) / math.sqrt(math.pi)


def serve(args: argparse.Namespace) -> int:
    from netfilterqueue import NetfilterQueue

    rng = random.Random(args.seed)
    delay = args.delay_ms / 1000.0
    jitter = args.jitter_ms / 1000.0
    held: list[tuple[float, int, Any]] = []  # (release time, arrival number, packet)
    handled = 0
    last_release = 0.0
    stop = False

    def queued(pkt: Any) -> None:
        nonlocal handled, last_release
        release = time.monotonic() + delay + extra_delay(rng, args.spread, jitter)
        if args.keep_order:
            release = max(release, last_release)
            last_release = release
        heapq.heappush(held, (release, handled, pkt))
        handled += 1

    def release_due(until: float) -> None:
        while held and held[0][0] <= until:
            heapq.heappop(held)[2].accept()

    def finish(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, finish)
    signal.signal(signal.SIGINT, finish)
    nfq = NetfilterQueue()
    nfq.bind(args.queue, queued, max_len=args.max_len)
    fd = nfq.get_fd()
    end = time.monotonic() + args.seconds
    try:
        print("ready", flush=True)
        # select() takes its timeout in microseconds (an event loop's timers round to
        # milliseconds), so each packet leaves within a few tens of µs of its time.
        while not stop and time.monotonic() < end:
            now = time.monotonic()
            wait = min(held[0][0] - now, MAX_WAIT) if held else MAX_WAIT
            readable, _, _ = select.select([fd], [], [], max(wait, 0.0))
            if readable:
                nfq.run(block=False)
            release_due(time.monotonic())
        # Let the packets still held go, so nothing waits for the queue-bypass.
        release_due(math.inf)
    finally:
        nfq.unbind()
    print(f"handled {handled}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Delay (and jitter) the packets of an NFQUEUE.")
    p.add_argument("--queue", type=int, required=True, help="NFQUEUE number")
    p.add_argument("--delay-ms", type=float, required=True, help="fixed delay per packet")
    p.add_argument("--jitter-ms", type=float, default=0.0, help="random extra delay scale")
    p.add_argument("--spread", choices=SPREADS, default="uniform")
    p.add_argument("--keep-order", action="store_true", help="never let a packet overtake")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--max-len", type=int, default=4096, help="packets the kernel may hold")
    p.add_argument("--seconds", type=float, default=600.0, help="exit after this long")
    args = p.parse_args(argv)
    if not 0 <= args.queue <= 65535:
        p.error("--queue: must be 0..65535")
    if args.delay_ms < 0 or args.jitter_ms < 0:
        p.error("--delay-ms and --jitter-ms: must not be negative")
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
