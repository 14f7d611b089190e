"""The model every check shares: targets, outcomes, results and the one runner.

A check module exposes three names that the registry picks up:

- ``Params``: a pydantic model of its parameters (``extra="forbid"``);
- ``REASONS``: the bounded set of failure reasons it may return;
- ``probe(target, params, timeout) -> Outcome``: does the work, honours ``timeout`` on every
  network operation, and returns success, a reason, numeric metrics and string info.

The runner owns what every check has in common: the deadline, timing, and turning exceptions
into a failed result. A check that overruns its deadline is reported as ``timeout`` and its
thread is abandoned, so one stuck check never holds a scheduler worker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict

log = logging.getLogger(__name__)

# Reasons any check may end with, on top of its own.
OK = "ok"
TIMEOUT = "timeout"
ERROR = "error"
COMMON_REASONS = frozenset({OK, TIMEOUT, ERROR})

# A check gets this long past its own timeout to return before it is abandoned: its own
# socket timeouts should fire first and give a more precise reason.
GRACE_SECONDS = 1.0


class Params(BaseModel):
    """Base for every check's parameter model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Target:
    name: str
    address: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Outcome:
    success: bool
    reason: str = OK
    metrics: dict[str, float] = field(default_factory=dict)
    info: dict[str, str] = field(default_factory=dict)


@dataclass
class Result:
    check: str
    name: str
    target: Target
    started: float
    duration_seconds: float
    success: bool
    reason: str
    metrics: dict[str, float] = field(default_factory=dict)
    info: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "name": self.name,
            "target": self.target.name,
            "address": self.target.address,
            "labels": dict(self.target.labels),
            "started": self.started,
            "duration_seconds": self.duration_seconds,
            "success": self.success,
            "reason": self.reason,
            "metrics": dict(self.metrics),
            "info": dict(self.info),
        }


P_contra = TypeVar("P_contra", bound=Params, contravariant=True)


class ProbeFn(Protocol[P_contra]):
    def __call__(self, target: Target, params: P_contra, timeout: float) -> Outcome: ...


@dataclass(frozen=True)
class CheckType:
    """One registry entry: the config model, the probe, and the reasons it may return."""

    params: type[Params]
    probe: ProbeFn[Any]
    reasons: frozenset[str]
    doc: str = ""

    @property
    def all_reasons(self) -> frozenset[str]:
        return self.reasons | COMMON_REASONS


def run_check(
    check: str,
    kind: CheckType,
    target: Target,
    params: Params,
    timeout: float,
    name: str | None = None,
) -> Result:
    """Run one probe under a hard deadline and always return a Result."""
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["outcome"] = kind.probe(target, params, timeout)
        except Exception as exc:  # the runner is the one place that turns crashes into results
            box["error"] = exc

    started = time.time()
    t0 = time.perf_counter()
    worker = threading.Thread(target=work, name=f"check-{check}-{target.name}", daemon=True)
    worker.start()
    worker.join(timeout + GRACE_SECONDS)
    duration = time.perf_counter() - t0

    if worker.is_alive():
        outcome = Outcome(False, TIMEOUT, info={"error": f"no answer within {timeout:g} s"})
    elif "error" in box:
        exc = box["error"]
        log.warning("check %s on %s raised %s", check, target.name, type(exc).__name__)
        outcome = Outcome(False, ERROR, info={"error": f"{type(exc).__name__}: {exc}"})
    else:
        outcome = box["outcome"]
        if outcome.reason not in kind.all_reasons:
            outcome = Outcome(
                False,
                ERROR,
                outcome.metrics,
                {**outcome.info, "error": f"undeclared reason {outcome.reason!r}"},
            )
        elif outcome.success and outcome.reason != OK:
            outcome.reason = OK
    return Result(
        check=check,
        name=name or f"{check}-{target.name}",
        target=target,
        started=started,
        duration_seconds=duration,
        success=outcome.success,
        reason=outcome.reason,
        metrics=outcome.metrics,
        info=outcome.info,
    )
