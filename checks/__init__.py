"""The probe library: one module per check type, a literal registry, one shared runner."""

from checks.core import (
    COMMON_REASONS,
    ERROR,
    OK,
    TIMEOUT,
    CheckType,
    Outcome,
    Params,
    Result,
    Target,
    run_check,
)

__all__ = [
    "COMMON_REASONS",
    "ERROR",
    "OK",
    "TIMEOUT",
    "CheckType",
    "Outcome",
    "Params",
    "Result",
    "Target",
    "run_check",
]
