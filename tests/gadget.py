"""``gadget``: a small check type of the tests' own, declared as every check type is.

Tests of what the agent and the collector do with declarations (ranges, counters, per-item
metrics, a target that must name a port) use it, so they do not hang on what one probe
module happens to declare.
"""

from __future__ import annotations

from checks.core import CheckType, Outcome, Params, Target, counter, gauge, per_item, ratio


def _probe(target: Target, params: Params, timeout: float) -> Outcome:
    return Outcome(True, metrics={"loss_ratio": 0.0})


def _host_and_port(target: str) -> tuple[str, int]:
    host, sep, port = target.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{target!r} has no port: write host:port")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{target!r}: the port must be a number from 1 to 65535")
    return host, int(port)


GADGET = CheckType(
    params=Params,
    probe=_probe,
    reasons=frozenset(),
    metrics={
        "loss_ratio": ratio("Share of probes lost."),
        "rtt_avg_seconds": gauge("Mean round-trip time.", 0.0),
        "free_ratio": per_item(ratio("Free share of a mount.")),
        "errors_total": counter("Errors since boot."),
    },
    doc="A check type of the tests.",
    parse_target=_host_and_port,
)
