"""What both printer checks (printer_snmp, printer_ipp) share: the supply and tray model of the
Printer MIB (RFC 3805, which IPP's printer-supply copies), what the levels say, the verdict,
and one bounded exchange with the printer.

Supply and tray levels: a ratio is reported only when both the level and the max capacity are
known numbers (max > 0): ``level / max``, clamped to 0..1. RFC 3805's special values: ``-1``
(other: no restriction, e.g. unlimited) gives no ratio and is not empty; ``-2`` (unknown) gives
no ratio and nothing is concluded from it; ``-3`` (some remaining) gives no ratio and is not
empty; level ``0`` is empty whatever the max capacity says. For a receptacle (a waste toner
box) the ratio is how full it is.

Not a check: probes import this module and ``checks.core``, never each other.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from checks import core
from checks.core import Outcome

# Level and max-capacity special values (RFC 3805 prtMarkerSuppliesLevel, prtInputCurrentLevel).
UNRESTRICTED, UNKNOWN, SOME_REMAINING = -1, -2, -3

CONSUMED = 3  # prtMarkerSuppliesClass supplyThatIsConsumed
RECEPTACLE = 4  # prtMarkerSuppliesClass receptacleThatIsFilled
# PrtMarkerSuppliesTypeTC: toner 3, ink 5, inkCartridge 6, inkRibbon 7, solidWax 12,
# ribbonWax 13, tonerCartridge 21.
COLORANT_TYPES = frozenset({3, 5, 6, 7, 12, 13, 21})
SUPPLY_TYPE_NAMES = {
    1: "other",
    2: "unknown",
    3: "toner",
    4: "wasteToner",
    5: "ink",
    6: "inkCartridge",
    7: "inkRibbon",
    8: "wasteInk",
    9: "opc",
    10: "developer",
    11: "fuserOil",
    12: "solidWax",
    13: "ribbonWax",
    14: "wasteWax",
    15: "fuser",
    20: "transferUnit",
    21: "tonerCartridge",
}

MAX_TEXT = 200

LEVEL_METRICS: dict[str, core.Metric] = {
    "supply_level_ratio": core.per_item(
        core.ratio(
            "Level of the supply with this index, over its max capacity (for a waste "
            "receptacle: how full it is)."
        )
    ),
    "toner_min_ratio": core.ratio("The lowest level among the toner and ink supplies."),
    "input_level_ratio": core.per_item(
        core.ratio("Paper in the input tray with this index, over its max capacity.")
    ),
}


@dataclass
class Supply:
    index: int
    klass: int | None
    kind: int | None
    description: str
    max_capacity: int | None
    level: int | None

    @property
    def colorant(self) -> bool:
        return self.kind in COLORANT_TYPES and self.klass != RECEPTACLE

    @property
    def receptacle(self) -> bool:
        return self.klass == RECEPTACLE


@dataclass
class Tray:
    index: int
    name: str
    max_capacity: int | None
    level: int | None


def ratio(level: int | None, max_capacity: int | None) -> float | None:
    """level / max in 0..1 when both are known numbers; None for the special values."""
    if level is None or max_capacity is None or level < 0 or max_capacity <= 0:
        return None
    return min(max(level / max_capacity, 0.0), 1.0)


def _describe_level(level: int | None, max_capacity: int | None) -> str:
    r = ratio(level, max_capacity)
    if r is not None:
        return f"{r:.0%}"
    return {
        UNRESTRICTED: "unrestricted",
        SOME_REMAINING: "some remaining",
        0: "empty",
    }.get(level if level is not None else UNKNOWN, "unknown")


@dataclass
class Levels:
    """What the supply and tray levels say."""

    metrics: dict[str, float]
    toner_empty: bool = False
    toner_low: bool = False
    supply_low: bool = False
    waste_full: bool = False
    trays_known: int = 0
    trays_empty: int = 0


def assess_levels(supplies: Sequence[Supply], trays: Sequence[Tray], low: float) -> Levels:
    """Ratios as metrics, and which thresholds the levels cross (see the module docstring)."""
    out = Levels(metrics={})
    toner_ratios: list[float] = []
    for s in supplies:
        r = ratio(s.level, s.max_capacity)
        if r is not None:
            out.metrics[f"supply_level_ratio__{s.index}"] = r
        if s.colorant:
            if r is not None:
                toner_ratios.append(r)
            if s.level == 0:
                out.toner_empty = True
            elif r is not None and r < low:
                out.toner_low = True
        elif s.receptacle:
            out.waste_full = out.waste_full or (r is not None and r >= 1.0)
        elif s.level == 0 or (r is not None and r < low):
            out.supply_low = True
    if toner_ratios:
        out.metrics["toner_min_ratio"] = min(toner_ratios)
    for t in trays:
        r = ratio(t.level, t.max_capacity)
        if r is not None:
            out.metrics[f"input_level_ratio__{t.index}"] = r
        if t.level is not None and t.level != UNKNOWN:
            out.trays_known += 1
            out.trays_empty += t.level == 0
    return out


def describe_supplies(supplies: Sequence[Supply]) -> str:
    return clip(
        "; ".join(
            f"{s.index} {s.description or '?'} ({SUPPLY_TYPE_NAMES.get(s.kind or 2, 'other')}): "
            f"{_describe_level(s.level, s.max_capacity)}"
            for s in supplies
        )
    )


def describe_trays(trays: Sequence[Tray]) -> str:
    return clip(
        "; ".join(
            f"{t.index} {t.name or '?'}: {_describe_level(t.level, t.max_capacity)}" for t in trays
        )
    )


def clip(text: str, limit: int = 1000) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class Judgement:
    """A printer's verdict: faults (the first is the reason), warnings, metrics and info."""

    faults: list[str]
    warnings: list[str]
    metrics: dict[str, float] = field(default_factory=dict)
    info: dict[str, str] = field(default_factory=dict)

    def outcome(self) -> Outcome:
        """Success when nothing keeps the printer from printing; warnings keep success."""
        if self.faults:
            return Outcome(False, self.faults[0], self.metrics, self.info)
        return Outcome(True, metrics=self.metrics, info=self.info)


T = TypeVar("T")


def ask(work: Callable[[float], Coroutine[Any, Any, T]], deadline: float) -> tuple[T, float]:
    """Run the exchange ``work(budget)`` in an event loop of its own, bounded by what is left
    until ``deadline`` (monotonic): its result and the seconds it took, or TimeoutError."""
    budget = deadline - time.monotonic()
    if budget <= 0:
        raise TimeoutError

    async def bounded() -> T:
        async with asyncio.timeout(budget):
            return await work(budget)

    t0 = time.perf_counter()
    result = asyncio.run(bounded())
    return result, time.perf_counter() - t0
