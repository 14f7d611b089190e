"""Ward PCs whose clock is wrong (no NTP, a flat CMOS battery): said as a warning of its own.

The agent learns the offset from the collector's answers and corrects its results' times, so
a wrong clock no longer hides a ward's data; but the PC's other programs (the DMS client,
certificates, signed documents) still see the wrong time, so the ward is told.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from collector.readiness import Verdict

CLOCK_SKEW = "clock_skew"
# Past this the offset is a fault, not NTP jitter or a Date header's rounding.
SKEW_WARN_SECONDS = 60.0


class HasClock(Protocol):
    @property
    def ward(self) -> str: ...

    @property
    def agent(self) -> str: ...

    @property
    def clock_offset_seconds(self) -> float | None: ...


def describe(offset: float) -> str:
    """Collector minus agent, as a person says it: -600 -> "10 min fast", 7200 -> "2 h slow"."""
    ahead = offset < 0
    size = abs(offset)
    if size < 120:
        amount = f"{size:.0f} s"
    elif size < 7200:
        amount = f"{size / 60:.0f} min"
    elif size < 172800:
        amount = f"{size / 3600:.1f} h".replace(".0 h", " h")
    else:
        amount = f"{size / 86400:.1f} days"
    return f"{amount} {'fast' if ahead else 'slow'}"


def annotate(verdicts: Mapping[str, Verdict], agents: Iterable[HasClock]) -> None:
    """Add a ``warning: clock_skew: ...`` reason to the wards of agents whose clock is off."""
    for a in agents:
        offset = a.clock_offset_seconds
        verdict = verdicts.get(a.ward)
        if offset is None or verdict is None or abs(offset) < SKEW_WARN_SECONDS:
            continue
        verdict.reasons.append(
            f"warning: {CLOCK_SKEW}: {a.agent}'s clock is {describe(offset)} "
            "(its results are placed by the collector's time)"
        )
