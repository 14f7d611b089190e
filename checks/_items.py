"""Per-item metric names for the checks that report one figure per configured thing (a mount,
a network interface): ``<base>__<suffix>``, as ``disk_free_ratio__var_lib``.

The suffix is the name lower-cased, every character outside ``a-z0-9`` turned into ``_`` and a
leading ``/`` dropped: ``/`` gives the empty suffix, ``/var/lib`` gives ``var_lib``. The agent
exports it as an ``item`` label.

Not a check: probes import this module and ``checks.core``, never each other.
"""

from __future__ import annotations

import re

# Keeps a check's metric map within the wire limit of 64: the host check reports
# 5 + 1 + 2*8 + 4*8 = 54.
MAX_ITEMS = 8
# Longest suffix that keeps every metric name within the wire's 64 characters.
MAX_SUFFIX = 32


def suffix(name: str) -> str:
    """The metric-name suffix of a mount path or an interface name."""
    return re.sub(r"[^a-z0-9]", "_", name.lower().removeprefix("/"))


def unique_suffixes(names: list[str], what: str) -> list[str]:
    """``names`` unchanged, or ValueError when two share a suffix or one is too long for it."""
    seen: dict[str, str] = {}
    for name in names:
        key = suffix(name)
        if len(key) > MAX_SUFFIX:
            raise ValueError(f"{what} {name!r}: name too long for a metric (max {MAX_SUFFIX})")
        if key in seen:
            raise ValueError(f"{what}s {seen[key]!r} and {name!r} give the same metric name")
        seen[key] = name
    return names
