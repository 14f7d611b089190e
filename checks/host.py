"""Health of the machine the agent runs on: CPU, memory, disks, network interfaces (psutil).

Target address: ignored (write ``localhost``).

This is the one check that judges by thresholds, because only the agent sees the machine.

Metrics (``__<suffix>`` names one configured mount or interface, so that a flat metric map
stays bounded by the config: the suffix is the path or interface name lower-cased with every
character outside ``a-z0-9`` turned into ``_`` and the leading ``/`` dropped; ``/`` is the
empty suffix, ``/var/lib`` is ``var_lib``):
- ``cpu_ratio``: busy share of all CPUs over ``cpu_sample_seconds`` (bounded by half the
  timeout);
- ``memory_used_ratio`` (1 - available / total), ``memory_available_bytes``;
- per mount: ``disk_free_bytes__<mount>``, ``disk_free_ratio__<mount>`` (space an unprivileged
  user may still write over total), and ``disk_free_ratio_min`` over the mounts;
- per interface: ``nic_up__<iface>`` (1/0), ``nic_speed_bytes_per_second__<iface>`` (when the
  driver knows it), ``nic_errors_total__<iface>`` and ``nic_drops_total__<iface>`` (receive plus
  transmit, cumulative since boot);
- ``boot_time_seconds`` (epoch), ``uptime_seconds``.

With ``interfaces: []`` every interface but loopback is reported, at most ``MAX_ITEMS`` (up ones
first, then by name; ``info.interfaces_omitted`` lists the rest), and a down link is not a
failure. Listed interfaces must exist and, with ``require_link_up``, be up.

Info: ``failures`` (every failed condition, the reason being the first), ``interfaces_omitted``.

Reasons, in order of precedence: ``interface_missing``, ``mount_missing``, ``link_down``,
``disk_low``, ``memory_high``, ``cpu_high``.

Privileges: none.
"""

from __future__ import annotations

import os
import time
from typing import Any

import psutil
from pydantic import Field, field_validator

from checks import core
from checks._items import MAX_ITEMS, MAX_SUFFIX, suffix, unique_suffixes
from checks.core import Outcome, Target

INTERFACE_MISSING = "interface_missing"
MOUNT_MISSING = "mount_missing"
LINK_DOWN = "link_down"
DISK_LOW = "disk_low"
MEMORY_HIGH = "memory_high"
CPU_HIGH = "cpu_high"

# Precedence order: a missing thing explains more than a threshold crossed.
_ORDER = (INTERFACE_MISSING, MOUNT_MISSING, LINK_DOWN, DISK_LOW, MEMORY_HIGH, CPU_HIGH)
REASONS = frozenset(_ORDER)


class Params(core.Params):
    cpu_max_ratio: float = Field(default=0.95, gt=0.0, le=1.0)
    memory_max_ratio: float = Field(default=0.95, gt=0.0, le=1.0)
    disk_min_free_ratio: float = Field(default=0.05, ge=0.0, le=1.0)
    mounts: list[str] = Field(default_factory=lambda: ["/"], max_length=MAX_ITEMS)
    interfaces: list[str] = Field(default_factory=list, max_length=MAX_ITEMS)
    require_link_up: bool = True
    cpu_sample_seconds: float = Field(default=0.5, ge=0.05, le=5.0)

    @field_validator("mounts")
    @classmethod
    def _mounts(cls, value: list[str]) -> list[str]:
        for path in value:
            if not path.startswith("/"):
                raise ValueError(f"mount {path!r}: must be an absolute path")
        return unique_suffixes(value, "mount")

    @field_validator("interfaces")
    @classmethod
    def _interfaces(cls, value: list[str]) -> list[str]:
        for name in value:
            if not name or len(name) > 15 or "/" in name or name.strip() != name:
                raise ValueError(f"interface {name!r}: not an interface name")
        return unique_suffixes(value, "interface")


def _mounted(path: str) -> bool:
    mountpoints = {p.mountpoint for p in psutil.disk_partitions(all=True)}
    return path in mountpoints or os.path.ismount(path)


def _disks(params: Params, metrics: dict[str, float], failures: dict[str, list[str]]) -> None:
    ratios = []
    for path in params.mounts:
        if not _mounted(path):
            failures[MOUNT_MISSING].append(path)
            continue
        usage = psutil.disk_usage(path)
        ratio = usage.free / usage.total if usage.total else 0.0
        metrics[f"disk_free_bytes__{suffix(path)}"] = float(usage.free)
        metrics[f"disk_free_ratio__{suffix(path)}"] = ratio
        ratios.append(ratio)
        if ratio < params.disk_min_free_ratio:
            failures[DISK_LOW].append(f"{path} {ratio:.1%} free")
    if ratios:
        metrics["disk_free_ratio_min"] = min(ratios)


def _nics(
    params: Params,
    metrics: dict[str, float],
    failures: dict[str, list[str]],
    info: dict[str, str],
) -> None:
    stats = psutil.net_if_stats()
    counters = psutil.net_io_counters(pernic=True)
    if params.interfaces:
        names = list(params.interfaces)
        judged = True
    else:
        candidates = sorted(
            (n for n in stats if not _loopback(n, stats)), key=lambda n: (not stats[n].isup, n)
        )
        names, judged = [], False
        taken: set[str] = set()
        for n in candidates:
            if len(names) < MAX_ITEMS and len(suffix(n)) <= MAX_SUFFIX and suffix(n) not in taken:
                names.append(n)
                taken.add(suffix(n))
        omitted = [n for n in candidates if n not in names]
        if omitted:
            info["interfaces_omitted"] = ",".join(omitted)[:1000]
    for name in names:
        if name not in stats:
            failures[INTERFACE_MISSING].append(name)
            continue
        key = suffix(name)
        st = stats[name]
        metrics[f"nic_up__{key}"] = 1.0 if st.isup else 0.0
        if st.speed > 0:
            metrics[f"nic_speed_bytes_per_second__{key}"] = st.speed * 1e6 / 8
        io = counters.get(name)
        if io is not None:
            metrics[f"nic_errors_total__{key}"] = float(io.errin + io.errout)
            metrics[f"nic_drops_total__{key}"] = float(io.dropin + io.dropout)
        if judged and params.require_link_up and not st.isup:
            failures[LINK_DOWN].append(name)


def _loopback(name: str, stats: dict[str, Any]) -> bool:
    flags = getattr(stats[name], "flags", "")
    return name == "lo" or "loopback" in str(flags).split(",")


def probe(target: Target, params: Params, timeout: float) -> Outcome:
    failures: dict[str, list[str]] = {reason: [] for reason in _ORDER}
    metrics: dict[str, float] = {}
    info: dict[str, str] = {}

    sample = max(0.0, min(params.cpu_sample_seconds, timeout / 2))
    cpu = psutil.cpu_percent(interval=sample) / 100.0
    metrics["cpu_ratio"] = cpu
    if cpu > params.cpu_max_ratio:
        failures[CPU_HIGH].append(f"cpu {cpu:.0%}")

    mem = psutil.virtual_memory()
    used = 1.0 - mem.available / mem.total if mem.total else 0.0
    metrics["memory_used_ratio"] = used
    metrics["memory_available_bytes"] = float(mem.available)
    if used > params.memory_max_ratio:
        failures[MEMORY_HIGH].append(f"memory {used:.0%} used")

    _disks(params, metrics, failures)
    _nics(params, metrics, failures, info)

    boot = psutil.boot_time()
    metrics["boot_time_seconds"] = boot
    metrics["uptime_seconds"] = max(0.0, time.time() - boot)

    failed = [(reason, items) for reason, items in failures.items() if items]
    if not failed:
        return Outcome(True, metrics=metrics, info=info)
    info["failures"] = "; ".join(f"{r}: {', '.join(items)}" for r, items in failed)[:1000]
    return Outcome(False, failed[0][0], metrics, info)


CHECK = core.CheckType(
    params=Params,
    probe=probe,
    reasons=REASONS,
    metrics={
        "cpu_ratio": core.ratio("Busy share of all CPUs over the sample."),
        "memory_used_ratio": core.ratio("Share of memory in use: 1 - available / total."),
        "memory_available_bytes": core.gauge("Memory available to new programs.", 0.0),
        "disk_free_bytes": core.per_item(
            core.gauge("Space an unprivileged user may still write on the mount.", 0.0)
        ),
        "disk_free_ratio": core.per_item(
            core.ratio("Space an unprivileged user may still write, over the mount's size.")
        ),
        "disk_free_ratio_min": core.ratio("The lowest disk_free_ratio over the mounts."),
        "nic_up": core.per_item(core.gauge("1 when the network interface is up, else 0.", 0, 1)),
        "nic_speed_bytes_per_second": core.per_item(
            core.gauge("Negotiated speed of the network interface, in bytes/s.", 0.0)
        ),
        "nic_errors_total": core.per_item(
            core.counter("Receive plus transmit errors on the network interface since boot.")
        ),
        "nic_drops_total": core.per_item(
            core.counter("Receive plus transmit drops on the network interface since boot.")
        ),
        "boot_time_seconds": core.gauge("When the machine booted, in seconds since the epoch.", 0),
        "uptime_seconds": core.seconds("Time since the machine booted."),
    },
    doc=__doc__ or "",
)
