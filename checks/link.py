"""Link state of named network interfaces of the ward PC: up, speed, duplex, error and drop rates.

Target address: ignored (write ``localhost``). ``interfaces`` names the links to watch (at
most ``MAX_ITEMS``): the NIC towards the fibre router, the one towards the backup line.

Metrics per interface, named ``<metric>__<suffix>`` as in the host check (the suffix is the
interface name lower-cased, every character outside ``a-z0-9`` turned into ``_``; the agent
exports it as an ``item`` label):
- ``up__<if>``: 1 when the link is administratively up and has carrier, else 0;
- ``speed_bytes_per_second__<if>``: negotiated speed in bytes/s, when the driver knows it;
- ``duplex_full__<if>``: 1 full duplex, 0 half duplex; absent when the driver does not say;
- ``mtu_bytes__<if>``;
- ``errors_per_second__<if>``, ``drops_per_second__<if>``: receive plus transmit errors (and
  drops) per second since the previous run. The previous counters are kept in this module,
  per interface name, for as long as the agent runs: the first run after the agent starts
  has no rates, and neither has a run after the interface was re-created (a new interface
  index) or its counters went backwards (a driver reset). Two link checks on one interface
  share the counters; each rate still covers the time since whichever ran last.

Info: ``state__<if>`` (``up``, ``no_carrier``: up but nothing plugged in or the peer is down,
``admin_down``), ``duplex__<if>`` (``full``, ``half``, ``unknown``), ``failures``.

Reasons, in order of precedence: ``interface_missing`` (a listed interface does not exist),
``link_down`` (a listed interface is not up with carrier). Speed, duplex and the rates are
judged by the collector.

Privileges: none.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

import psutil
from pydantic import Field, field_validator

from checks import core
from checks._items import MAX_ITEMS, suffix, unique_suffixes
from checks._net import Interface
from checks.core import Outcome, Target

INTERFACE_MISSING = "interface_missing"
LINK_DOWN = "link_down"

REASONS = frozenset({INTERFACE_MISSING, LINK_DOWN})

_DUPLEX: dict[int, str] = {psutil.NIC_DUPLEX_FULL: "full", psutil.NIC_DUPLEX_HALF: "half"}


class Params(core.Params):
    interfaces: list[Interface] = Field(min_length=1, max_length=MAX_ITEMS)

    @field_validator("interfaces")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        return unique_suffixes(value, "interface")


@dataclass(frozen=True)
class _Seen:
    """An interface's counters at one run."""

    at: float  # monotonic seconds
    index: int  # the kernel's interface index: a re-created interface gets a new one
    errors: int
    drops: int


# interface name -> what the previous run saw
_previous: dict[str, _Seen] = {}
_lock = threading.Lock()


def _index(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return 0


def _rates(name: str, now: _Seen) -> tuple[float, float] | None:
    """Errors and drops per second since the previous run on ``name``; None the first time."""
    with _lock:
        before = _previous.get(name)
        _previous[name] = now
    if before is None or before.index != now.index:
        return None
    elapsed = now.at - before.at
    if elapsed <= 0 or now.errors < before.errors or now.drops < before.drops:
        return None
    return (now.errors - before.errors) / elapsed, (now.drops - before.drops) / elapsed


def _state(isup: bool, flags: str) -> str:
    if isup:
        return "up"
    return "no_carrier" if "up" in flags.split(",") else "admin_down"


def probe(target: Target, params: Params, timeout: float) -> Outcome:
    stats = psutil.net_if_stats()
    counters = psutil.net_io_counters(pernic=True)
    now = time.monotonic()
    metrics: dict[str, float] = {}
    info: dict[str, str] = {}
    missing: list[str] = []
    down: list[str] = []
    for name in params.interfaces:
        st = stats.get(name)
        if st is None:
            missing.append(name)
            continue
        key = suffix(name)
        state = _state(st.isup, getattr(st, "flags", ""))
        info[f"state__{key}"] = state
        metrics[f"up__{key}"] = 1.0 if st.isup else 0.0
        if not st.isup:
            down.append(f"{name} {state.replace('_', ' ')}")
        if st.speed > 0:
            metrics[f"speed_bytes_per_second__{key}"] = st.speed * 1e6 / 8
        duplex = _DUPLEX.get(st.duplex, "unknown")
        info[f"duplex__{key}"] = duplex
        if duplex != "unknown":
            metrics[f"duplex_full__{key}"] = 1.0 if duplex == "full" else 0.0
        metrics[f"mtu_bytes__{key}"] = float(st.mtu)
        io = counters.get(name)
        if io is not None:
            seen = _Seen(now, _index(name), io.errin + io.errout, io.dropin + io.dropout)
            rates = _rates(name, seen)
            if rates is not None:
                metrics[f"errors_per_second__{key}"] = rates[0]
                metrics[f"drops_per_second__{key}"] = rates[1]

    failures = []
    if missing:
        failures.append(f"{INTERFACE_MISSING}: {', '.join(missing)}")
    if down:
        failures.append(f"{LINK_DOWN}: {', '.join(down)}")
    if not failures:
        return Outcome(True, metrics=metrics, info=info)
    info["failures"] = "; ".join(failures)[:1000]
    return Outcome(False, INTERFACE_MISSING if missing else LINK_DOWN, metrics, info)


CHECK = core.CheckType(
    params=Params,
    probe=probe,
    reasons=REASONS,
    metrics={
        "up": core.per_item(
            core.gauge("1 when the link is administratively up and has carrier, else 0.", 0, 1)
        ),
        "speed_bytes_per_second": core.per_item(
            core.gauge("Negotiated speed of the link in bytes/s, when the driver knows it.", 0.0)
        ),
        "duplex_full": core.per_item(core.gauge("1 full duplex, 0 half duplex.", 0, 1)),
        "mtu_bytes": core.per_item(core.gauge("MTU of the interface.", 0.0)),
        "errors_per_second": core.per_item(
            core.gauge("Receive plus transmit errors per second since the previous run.", 0.0)
        ),
        "drops_per_second": core.per_item(
            core.gauge("Receive plus transmit drops per second since the previous run.", 0.0)
        ),
    },
    doc=__doc__ or "",
)
