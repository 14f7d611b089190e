"""Runs every configured check on its own interval, on a bounded pool of worker threads.

One APScheduler job per check: ``max_instances=1`` so a slow check never overlaps itself,
``coalesce=True`` so a late scheduler runs a check once rather than catching up on every missed
run, and a first run spread at random over ``min(interval, 10 s)`` so checks (and agents
restarted together) do not all probe at the same instant. ``checks.core.run_check`` enforces
each timeout and never raises, so a worker is held at most ``timeout + GRACE_SECONDS``.

APScheduler stays inside this module: the rest of the agent sees ``CheckSpec``, ``Scheduler``
and a sink callback.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from checks.core import CheckType, Params, Result, Target, run_check

log = logging.getLogger(__name__)

START_SPREAD_MAX_SECONDS = 10.0


@dataclass(frozen=True)
class CheckSpec:
    """One configured check, resolved: everything a run needs."""

    name: str
    check: str  # the type word: metric prefix and wire ``check`` field
    kind: CheckType = field(repr=False)
    target: Target
    params: Params
    interval: float
    timeout: float


Sink = Callable[[CheckSpec, Result], None]


def run_spec(spec: CheckSpec) -> Result:
    return run_check(spec.check, spec.kind, spec.target, spec.params, spec.timeout, spec.name)


class Scheduler:
    """Runs ``specs`` forever from ``start()`` to ``stop()``, handing each Result to ``sink``."""

    def __init__(
        self,
        specs: Sequence[CheckSpec],
        sink: Sink,
        workers: int = 8,
        start_spread: float = START_SPREAD_MAX_SECONDS,
        rng: random.Random | None = None,
    ) -> None:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError("check names must be unique")
        self.specs = tuple(specs)
        self._sink = sink
        self._start_spread = start_spread
        self._rng = rng or random.Random()
        self._failing: dict[str, bool] = {}
        self._lock = threading.Lock()
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=workers)},
            timezone=UTC,
        )

    def start(self) -> None:
        # APScheduler logs every job run at INFO; one line per probe would drown real events.
        aps_log = logging.getLogger("apscheduler")
        if aps_log.level == logging.NOTSET:
            aps_log.setLevel(logging.WARNING)
        for spec in self.specs:
            self._add(spec)
        self._scheduler.start()
        log.info("scheduler started: %d checks", len(self.specs))

    def _add(self, spec: CheckSpec) -> None:
        delay = self._rng.uniform(0, min(spec.interval, self._start_spread))
        self._scheduler.add_job(
            self._run,
            trigger=IntervalTrigger(seconds=spec.interval, timezone=UTC),
            args=[spec],
            id=spec.name,
            name=spec.name,
            max_instances=1,
            coalesce=True,
            # A run late by less than its interval is still worth doing; later than that,
            # the next run is as good.
            misfire_grace_time=max(1, int(spec.interval)),
            next_run_time=datetime.now(UTC) + timedelta(seconds=delay),
        )

    def update(self, specs: Sequence[CheckSpec]) -> tuple[list[str], list[str], list[str]]:
        """Run ``specs`` from now on, without a restart: a check whose spec is unchanged keeps
        its job and next run time, a changed one is rescheduled, a removed one gets no further
        run (a run in flight still hands its result to the sink), a new one starts. Returns
        the names (added, changed, removed)."""
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError("check names must be unique")
        old = {s.name: s for s in self.specs}
        new = {s.name: s for s in specs}
        added = [n for n in new if n not in old]
        changed = [n for n in new if n in old and new[n] != old[n]]
        removed = [n for n in old if n not in new]
        with self._lock:
            self.specs = tuple(specs)
            for n in removed:
                self._failing.pop(n, None)
        for n in removed + changed:
            if self._scheduler.get_job(n) is not None:
                self._scheduler.remove_job(n)
        for n in changed + added:
            self._add(new[n])
        return added, changed, removed

    def stop(self, wait: bool = True) -> None:
        """Stop scheduling; with ``wait``, let runs in flight finish (each within its timeout)."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=wait)
            log.info("scheduler stopped")

    @property
    def running(self) -> bool:
        return bool(self._scheduler.running)

    def _run(self, spec: CheckSpec) -> None:
        result = run_spec(spec)
        self._log_change(spec, result)
        try:
            self._sink(spec, result)
        except Exception:
            log.exception("result of check %s could not be stored", spec.name)

    def _log_change(self, spec: CheckSpec, result: Result) -> None:
        """One log line when a check starts or stops failing, not one per run."""
        with self._lock:
            was_failing = self._failing.get(spec.name)
            self._failing[spec.name] = not result.success
        if result.success and was_failing:
            log.info("check %s on %s ok again", spec.name, spec.target.address)
        elif not result.success and not was_failing:
            error = result.info.get("error", "")
            log.warning(
                "check %s on %s failed: %s%s",
                spec.name,
                spec.target.address,
                result.reason,
                f" ({error})" if error else "",
            )
