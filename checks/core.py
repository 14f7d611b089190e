"""The model every check shares: targets, outcomes, results, declarations and the one runner.

A check module declares itself once, as ``CHECK = CheckType(...)``:

- ``params``: a pydantic model of its parameters (``extra="forbid"``);
- ``probe(target, params, timeout) -> Outcome``: does the work, honours ``timeout`` on every
  network operation, and returns success, a reason, numeric metrics and string info;
- ``reasons``: the bounded set of failure reasons it may return;
- ``metrics``: every metric it may report, each a :class:`Metric` with its type, help text
  and plausible range. A metric reported once per configured item (a mount, an interface, a
  toner) is declared once by its base name with ``per_item=True`` and reported as
  ``<base>__<item>``.

The runner owns what every check has in common: the deadline, timing, and turning exceptions
into a failed result (:class:`CheckFailed` into its reason, anything else into ``error``). A
check that overruns its deadline is reported as ``timeout`` and its thread is abandoned, so
one stuck check never holds a scheduler worker. A result that names an undeclared reason or
metric, or a value outside its metric's range, is a bug in the probe: the runner turns it
into a failed result with reason ``error`` rather than ship a number nobody can interpret.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

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


class CheckFailed(Exception):
    """A probe's way out with a failure: ``raise CheckFailed(reason, message, address=...)``.

    The runner turns it into a failed result with that reason, ``info.error`` set to the
    message and the keyword arguments as further info. Metrics measured before the failure
    travel along in ``metrics``.
    """

    def __init__(
        self, reason: str, message: str, metrics: Mapping[str, float] | None = None, **info: str
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.metrics = dict(metrics or {})
        self.info = info

    def outcome(self) -> Outcome:
        return Outcome(False, self.reason, self.metrics, {**self.info, "error": self.message})


MetricKind = Literal["gauge", "counter"]

# Prometheus's metric-name grammar less the colon, which is reserved for recording rules.
_METRIC_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
# Base units only (Prometheus naming conventions): a duration is never _ms, a size never _kb.
_FORBIDDEN_UNITS = ("_ms", "_milliseconds", "_kb", "_mb", "_percent", "_kbps", "_mbps")


@dataclass(frozen=True)
class Metric:
    """One metric a check may report: what it is, and which values are plausible.

    ``kind="counter"`` names end in ``_total`` and only ever grow (since boot, say); every
    other name is a gauge and must not end in ``_total``. ``low``/``high`` bound what the
    measurement can physically be (a ratio is 0..1, a duration is >= 0): a value outside is a
    bug in the probe, or a hostile sender at the collector.
    """

    help: str
    kind: MetricKind = "gauge"
    low: float = -math.inf
    high: float = math.inf
    per_item: bool = False

    def admits(self, value: float) -> bool:
        return math.isfinite(value) and self.low <= value <= self.high


def gauge(help: str, low: float = -math.inf, high: float = math.inf) -> Metric:
    return Metric(help, "gauge", low, high)


def seconds(help: str) -> Metric:
    """A duration: never negative."""
    return Metric(help, "gauge", 0.0)


def ratio(help: str) -> Metric:
    """A share, 0..1."""
    return Metric(help, "gauge", 0.0, 1.0)


def counter(help: str) -> Metric:
    """A cumulative count: never negative, never falls (except when its source restarts)."""
    return Metric(help, "counter", 0.0)


def per_item(metric: Metric) -> Metric:
    """The same metric reported once per configured item, as ``<base>__<item>``."""
    return Metric(metric.help, metric.kind, metric.low, metric.high, per_item=True)


def split_item(name: str) -> tuple[str, str]:
    """``"disk_free_ratio__var_lib"`` -> ``("disk_free_ratio", "var_lib")``; no item -> ``""``."""
    base, _, item = name.partition("__")
    return base, item


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
    """A check's one declaration: its config model, its probe, its reasons and its metrics."""

    params: type[Params]
    probe: ProbeFn[Any]
    reasons: frozenset[str]
    metrics: Mapping[str, Metric]
    doc: str = ""
    # Checks a configured target before any run (raises ValueError saying what is wrong), so a
    # tcp target without a port fails at config load, not at every run.
    parse_target: Callable[[str], object] | None = None

    def __post_init__(self) -> None:
        for name, metric in self.metrics.items():
            if not _METRIC_NAME.match(name) or "__" in name:
                raise ValueError(f"metric {name!r}: not a metric base name")
            if name.endswith(_FORBIDDEN_UNITS):
                raise ValueError(f"metric {name!r}: use base units (_seconds, _bytes, _ratio)")
            if (metric.kind == "counter") != name.endswith("_total"):
                raise ValueError(f"metric {name!r}: counters, and only counters, end in _total")
            if not metric.help.strip():
                raise ValueError(f"metric {name!r}: help text is required")

    @property
    def all_reasons(self) -> frozenset[str]:
        return self.reasons | COMMON_REASONS

    def metric(self, name: str) -> Metric | None:
        """The declaration behind a reported metric name (``base`` or ``base__item``)."""
        base, _ = split_item(name)
        declared = self.metrics.get(base)
        # "__" marks a per-item name even when the item is empty (the host check's "/" mount).
        if declared is None or declared.per_item != ("__" in name):
            return None
        return declared

    def refusal(self, metrics: Mapping[str, float]) -> str | None:
        """Why these metrics cannot be shipped; None when each is declared and plausible."""
        for name, value in metrics.items():
            declared = self.metric(name)
            if declared is None:
                return f"undeclared metric {name!r}"
            if not declared.admits(value):
                return f"metric {name!r} = {value!r} outside {declared.low:g}..{declared.high:g}"
        return None


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
        except CheckFailed as failed:
            box["outcome"] = failed.outcome()
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
        refusal = kind.refusal(outcome.metrics)
        if refusal is not None:
            log.error("check %s on %s: %s", check, target.name, refusal)
            outcome = Outcome(False, ERROR, {}, {**outcome.info, "error": refusal})
        elif outcome.reason not in kind.all_reasons:
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
