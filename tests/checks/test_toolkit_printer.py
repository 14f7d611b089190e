"""checks._printer, the supply/tray model and verdict both printer checks share."""

from __future__ import annotations

import asyncio
import time

import pytest

from checks import _printer
from checks._printer import RECEPTACLE, Supply, Tray


def toner(index: int, level: int | None, max_capacity: int | None = 100) -> Supply:
    return Supply(index, klass=3, kind=21, description="toner", max_capacity=max_capacity,
                  level=level)  # fmt: skip


def test_special_levels_give_no_ratio_and_only_zero_is_empty() -> None:
    levels = _printer.assess_levels(
        [toner(1, -1), toner(2, -2), toner(3, -3), toner(4, 50, -2)], [], 0.1
    )
    assert levels.metrics == {}
    assert not levels.toner_empty and not levels.toner_low
    empty = _printer.assess_levels([toner(1, 0, -2)], [], 0.1)
    assert empty.toner_empty and empty.metrics == {}


def test_levels_as_per_item_ratios_and_thresholds() -> None:
    waste = Supply(5, klass=RECEPTACLE, kind=4, description="waste", max_capacity=10, level=10)
    drum = Supply(6, klass=3, kind=9, description="drum", max_capacity=100, level=5)
    trays = [Tray(1, "t1", 250, 0), Tray(2, "t2", 500, 500), Tray(3, "t3", 100, -2)]
    levels = _printer.assess_levels([toner(1, 80), toner(2, 6), waste, drum], trays, 0.1)
    assert levels.metrics == {
        "supply_level_ratio__1": 0.8,
        "supply_level_ratio__2": 0.06,
        "supply_level_ratio__5": 1.0,
        "supply_level_ratio__6": 0.05,
        "toner_min_ratio": 0.06,
        "input_level_ratio__1": 0.0,
        "input_level_ratio__2": 1.0,
    }
    assert levels.toner_low and levels.waste_full and levels.supply_low
    assert not levels.toner_empty
    assert (levels.trays_known, levels.trays_empty) == (2, 1)


def test_descriptions_are_clipped() -> None:
    text = _printer.describe_supplies([toner(i, 50) for i in range(200)])
    assert len(text) == 1000 and text.endswith("…")
    assert _printer.describe_trays([Tray(1, "", 10, -3)]) == "1 ?: some remaining"


def test_level_metrics_are_declared_per_item_ratios() -> None:
    declared = _printer.LEVEL_METRICS
    assert declared["supply_level_ratio"].per_item and declared["input_level_ratio"].per_item
    assert not declared["toner_min_ratio"].per_item
    assert all((m.low, m.high) == (0.0, 1.0) for m in declared.values())


def test_judgement_outcome() -> None:
    ok = _printer.Judgement([], ["toner_low"], {"toner_min_ratio": 0.05}, {"warnings": "x"})
    assert (ok.outcome().success, ok.outcome().reason) == (True, "ok")
    failed = _printer.Judgement(["jammed", "door_open"], [], {"toner_min_ratio": 0.5})
    out = failed.outcome()
    assert (out.success, out.reason, out.metrics) == (False, "jammed", {"toner_min_ratio": 0.5})


def test_ask_gives_the_result_and_its_time() -> None:
    async def work(budget: float) -> float:
        await asyncio.sleep(0.01)
        return budget

    budget, took = _printer.ask(work, time.monotonic() + 5.0)
    assert 0 < budget <= 5.0
    assert took > 0


def test_ask_is_bounded_by_the_deadline() -> None:
    async def stuck(budget: float) -> None:
        await asyncio.sleep(30)

    with pytest.raises(TimeoutError):
        _printer.ask(stuck, time.monotonic() + 0.05)
    with pytest.raises(TimeoutError):
        _printer.ask(stuck, time.monotonic() - 1.0)
