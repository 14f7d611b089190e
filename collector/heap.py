"""Garbage collection that never stops the collector for long.

A full collection walks every tracked object while holding the GIL, and the collector holds
millions: every request waits behind it. At national scale each judgement replaces a third of
a million verdict objects, which set off a full collection almost every judgement (CPython
runs one when the objects new to the oldest generation reach a quarter of it): the p99 ack
time of the agents' pushes was ~390 ms, ~115 ms with collection off, and ~210 ms with this
policy (bench/national.py, SQLite, 664 pushes/s).

So every ``freeze_seconds`` what is alive is moved out of the collector's sight
(:func:`gc.freeze`): objects freed by reference counting are still freed at once, and only
cyclic garbage made since the last freeze waits, for a full collection every
``full_seconds``, which is then the one long pause in that time.
"""

from __future__ import annotations

import gc
import threading
import time

FREEZE_SECONDS = 0.5
FULL_SECONDS = 600.0


def keep_collections_small(
    stop: threading.Event,
    freeze_seconds: float = FREEZE_SECONDS,
    full_seconds: float = FULL_SECONDS,
) -> None:
    """Freeze the heap every ``freeze_seconds`` and collect it whole every ``full_seconds``,
    until ``stop`` is set."""
    last_full = time.monotonic()
    while not stop.wait(freeze_seconds):
        if time.monotonic() - last_full >= full_seconds:
            gc.unfreeze()
            gc.collect()
            last_full = time.monotonic()
        gc.freeze()
