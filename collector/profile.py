"""The readiness profile: criteria a ward must meet, loaded from YAML and validated.

A profile is judged by :mod:`collector.readiness`; this module only parses and checks it.
Every error names the file, the line and the field path
(``default.yaml:14: criteria[2].condition.op: Input should be '<', '<=', ...``), and all
errors of a file are reported at once.

Where the profile selects a check type this collector knows, the type's declaration is the
list of metrics a criterion may read: a misspelt ``metric: los_ratio`` is an error here, not
a criterion that stays unknown for ever. A check type it does not know is only a warning: the
agents may be newer than the collector, and their results are stored all the same.
"""

from __future__ import annotations

import difflib
import functools
import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from collector.declared import check_types
from shared.confload import (
    UNITS,
    DuplicateKeyError,
    LoadError,
    Loc,
    dotted,
    field_errors,
    load,
    located,
    model_at,
    parse_duration,
)
from shared.wire import LabelValue, Name, Word

if TYPE_CHECKING:
    from checks.core import CheckType

log = logging.getLogger(__name__)

Severity = Literal["blocker", "warning"]
Require = Literal["all", "any"]
Agg = Literal["avg", "min", "max", "p50", "p95", "p99", "last", "count"]
Op = Literal["<", "<=", ">", ">=", "==", "!="]

# Metrics every result has, whatever its check type.
SUCCESS = "success"
DURATION = "duration_seconds"

# `last: N` is bounded so the in-memory state can promise to keep N results of every series
# even when they are older than the time retention (see collector.state).
MAX_LAST = 64

# Windows are judged from memory (collector.state); a day of results is the most worth holding.
MAX_WINDOW_SECONDS = 86400.0

# Extra history kept beyond the longest window, so a window that ends "now" still finds its
# oldest samples while results of the last push are on their way.
RETENTION_MARGIN_SECONDS = 300.0

# `op: >=` unquoted: YAML reads > as the start of a folded block and fails on what follows.
_BARE_OP = re.compile(r":\s*[<>]=?\s*(#.*)?$")
_UNITS = {**UNITS, "d": 86400.0}


def _duration(value: Any) -> Any:
    """'90s', '15m', '1h' or a number of seconds -> seconds; None passes through."""
    if value is None:
        return None
    try:
        seconds = parse_duration(value, _UNITS)
    except ValueError:
        raise PydanticCustomError("duration", "expected a duration like 90s, 15m or 1h") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise PydanticCustomError("duration", "must be a duration greater than 0")
    if seconds > MAX_WINDOW_SECONDS:
        raise PydanticCustomError("duration", "must be at most 1d")
    return seconds


Duration = Annotated[float, BeforeValidator(_duration)]


def format_duration(seconds: float) -> str:
    """The shortest exact spelling: 900 -> '15m', 90 -> '90s', 3600 -> '1h'."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Select(_Model):
    check: Word | None = None
    name: Name | None = None
    labels: dict[Word, LabelValue] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _not_empty(self) -> Select:
        if self.check is None and self.name is None and not self.labels:
            raise PydanticCustomError("empty_select", "give at least one of check, name, labels")
        return self

    def describe(self) -> str:
        parts = []
        if self.check is not None:
            parts.append(f"check={self.check}")
        if self.name is not None:
            parts.append(f"name={self.name}")
        parts.extend(f"{k}={v}" for k, v in sorted(self.labels.items()))
        return " ".join(parts)


class Condition(_Model):
    metric: Word
    agg: Agg
    window: Duration | None = None
    last: int | None = Field(default=None, ge=1, le=MAX_LAST, strict=True)
    op: Op
    threshold: float = Field(strict=True, allow_inf_nan=False)
    min_samples: int = Field(default=1, ge=1, le=100_000, strict=True)

    @model_validator(mode="after")
    def _one_span(self) -> Condition:
        if (self.window is None) == (self.last is None):
            raise PydanticCustomError("span", "give exactly one of window or last")
        if self.last is not None and self.min_samples > self.last:
            raise PydanticCustomError(
                "span",
                "min_samples ({min}) is more than last ({last}): it could never be judged",
                {"min": self.min_samples, "last": self.last},
            )
        return self

    @functools.cached_property
    def span(self) -> str:
        """How the samples are chosen, as shown in evidence: '15m' or 'last 3'."""
        if self.window is not None:
            return format_duration(self.window)
        return f"last {self.last}"


class Criterion(_Model):
    id: Word
    title: str = Field(min_length=1, max_length=200)
    # What the board shows in Vietnamese; the English title stands in when it is absent.
    title_vi: str | None = Field(default=None, min_length=1, max_length=200)
    severity: Severity
    select: Select
    require: Require = "all"
    condition: Condition
    max_age_intervals: float = Field(default=3.0, gt=0, le=1000, strict=True)

    @field_validator("title", "title_vi")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        # Titles end up in one-line reasons and terminal tables; a YAML block keeps newlines.
        return None if value is None else " ".join(value.split())

    @model_validator(mode="after")
    def _declared_metric(self, info: ValidationInfo) -> Criterion:
        check = self.select.check
        kind = _checks(info).get(check) if check is not None else None
        if check is None or kind is None:
            return self
        problem = _undeclared(check, kind, self.condition.metric)
        if problem is not None:
            raise PydanticCustomError(
                "undeclared_metric",
                "{problem}",
                {"problem": problem, "at": ("condition", "metric")},
            )
        return self


def _checks(info: ValidationInfo) -> Mapping[str, CheckType]:
    """The declarations to validate against: the caller's (``context={"checks": ...}``), or
    the registry's."""
    context = info.context if isinstance(info.context, dict) else {}
    checks = context.get("checks")
    return check_types() if checks is None else checks


def _undeclared(check: str, kind: CheckType, metric: str) -> str | None:
    """Why check type ``check`` never reports ``metric``; None when it may."""
    if metric in (SUCCESS, DURATION) or kind.metric(metric) is not None:
        return None
    base, sep, _ = metric.partition("__")
    declared = kind.metrics.get(base)
    if declared is not None and declared.per_item:
        return f"{check} reports {base} once per item: name one, as {base}__<item>"
    if declared is not None:
        return f"{check} reports {base} without items: name it {base!r}"
    names = [f"{n}__<item>" if m.per_item else n for n, m in sorted(kind.metrics.items())]
    close = difflib.get_close_matches(base, list(kind.metrics), n=1)
    hint = f" (did you mean {close[0] + ('__<item>' if sep else '')!r}?)" if close else ""
    return f"{check} reports no metric {metric!r}{hint}; it reports " + ", ".join(
        [SUCCESS, DURATION, *names]
    )


class Profile(_Model):
    version: int
    silence_seconds: float = Field(default=180.0, gt=0, le=7 * 86400, strict=True)
    criteria: list[Criterion] = Field(min_length=1)

    @field_validator("version", mode="before")
    @classmethod
    def _supported(cls, value: Any) -> Any:
        if isinstance(value, bool) or value != 1:
            raise PydanticCustomError(
                "version",
                "unsupported profile version {value}; this collector reads 1",
                {"value": repr(value)},
            )
        return value

    @field_validator("criteria")
    @classmethod
    def _unique_ids(cls, criteria: list[Criterion]) -> list[Criterion]:
        first: dict[str, int] = {}
        for i, c in enumerate(criteria):
            if c.id in first:
                raise PydanticCustomError(
                    "duplicate_id",
                    "duplicate id '{id}', first used by criteria[{first}]",
                    {"id": c.id, "first": first[c.id], "at": (i, "id")},
                )
            first[c.id] = i
        return criteria

    def retention_seconds(self) -> float:
        """How much history the in-memory state must keep for every window to be full."""
        windows = [c.condition.window for c in self.criteria if c.condition.window is not None]
        return max(windows, default=0.0) + RETENTION_MARGIN_SECONDS

    def keep_last(self) -> int:
        """The most results any `last: N` criterion looks at."""
        lasts = [c.condition.last for c in self.criteria if c.condition.last is not None]
        return max(lasts, default=1)

    def metrics_used(self) -> frozenset[str]:
        """Metric names the criteria read (besides success and duration_seconds)."""
        return frozenset(c.condition.metric for c in self.criteria) - {SUCCESS, DURATION}


class ProfileError(LoadError):
    """A profile that cannot be used; ``messages`` holds one 'file:line: path: what' each,
    ``warnings`` what would still be worth knowing once they are fixed."""

    def __init__(self, messages: list[str], warnings: list[str] | None = None) -> None:
        super().__init__(messages)
        self.warnings = warnings or []


def _messages(source: str, exc: ValidationError, lines: dict[Loc, int]) -> list[str]:
    out = []
    for loc, bad_key, err in field_errors(exc):
        msg = err["msg"]
        at = (err.get("ctx") or {}).get("at")
        if at:
            loc = (*loc, *at)
        if bad_key:
            msg = f"key {loc[-1]!r}: {msg}"
            loc = loc[:-1]
        if err["type"] == "extra_forbidden" and loc and isinstance(loc[-1], str):
            parent = model_at(Profile, loc[:-1])
            fields = list(parent.model_fields) if parent is not None else []
            close = difflib.get_close_matches(loc[-1], fields, n=1)
            msg = f"unknown key (did you mean {close[0]!r}?)" if close else "unknown key"
        out.append(located(source, lines, loc, msg, root="(profile)"))
    return out


def _unknown_checks(
    source: str, data: dict[Any, Any], lines: dict[Loc, int], known: Mapping[str, CheckType]
) -> list[str]:
    """A ``file:line: field: ...`` warning for each check type the profile selects that this
    collector does not know; read from the raw data, so they come with the errors too."""
    criteria = data.get("criteria")
    out = []
    for i, c in enumerate(criteria if isinstance(criteria, list) else []):
        select = c.get("select") if isinstance(c, dict) else None
        check = select.get("check") if isinstance(select, dict) else None
        if isinstance(check, str) and check not in known:
            text = (
                f"unknown check type {check!r}: its metrics cannot be verified "
                f"(this collector knows {', '.join(sorted(known)) or 'none'})"
            )
            out.append(located(source, lines, ("criteria", i, "select", "check"), text))
    return out


def load_profile(path: str | Path) -> Profile:
    """Read and validate a profile file; raises ProfileError listing every problem.

    Warnings (check types this collector does not know) are logged.
    """
    profile, warnings = read_profile(path)
    for warning in warnings:
        log.warning("%s", warning)
    return profile


def read_profile(
    path: str | Path, checks: Mapping[str, CheckType] | None = None
) -> tuple[Profile, list[str]]:
    """The profile and its warnings; raises ProfileError listing every problem, whose
    ``warnings`` holds the warnings of the file. ``checks``: the check types known, by
    default the registry's."""
    known = check_types() if checks is None else checks
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError([f"{source}: cannot read: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ProfileError([f"{source}: cannot read: not UTF-8 text ({exc.reason})"]) from exc
    try:
        data, lines = load(text)
    except DuplicateKeyError as exc:
        raise ProfileError(
            [
                f"{source}:{d.line}: {dotted(d.loc)}: duplicate key (first at line {d.first_line})"
                for d in sorted(exc.duplicates, key=lambda d: d.line)  # in reading order
            ]
        ) from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = exc.problem or exc.context or "invalid YAML"
        source_lines = text.splitlines()
        if (
            mark is not None
            and mark.line < len(source_lines)
            and _BARE_OP.search(source_lines[mark.line])
        ):
            problem += ' (quote comparison operators: op: ">=")'
        raise ProfileError([f"{source}:{line}: invalid YAML: {problem}"]) from exc
    except yaml.YAMLError as exc:
        raise ProfileError([f"{source}: invalid YAML: {exc}"]) from exc
    if data is None:
        raise ProfileError([f"{source}: the profile is empty"])
    if not isinstance(data, dict):
        raise ProfileError([f"{source}:1: the profile must be a mapping of keys to values"])
    warnings = _unknown_checks(source, data, lines, known)
    try:
        return Profile.model_validate(data, context={"checks": known}), warnings
    except ValidationError as exc:
        raise ProfileError(_messages(source, exc, lines), warnings) from exc


def default_profile_path() -> Path:
    return Path(__file__).resolve().parent / "profiles" / "default.yaml"
