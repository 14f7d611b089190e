"""The check types this collector knows, with what each declares about its metrics.

The collector stores and shows results of any check type: an agent upgraded before its
collector must not go silent. Where a type is known, its declaration gives each metric's
help text, its type (gauge or counter) and its plausible range, for ingest, the profile and
/metrics. The registry imports every probe module, so it is imported once, on first use;
a collector whose probe modules (or their libraries) cannot be imported still serves,
treating every check type as unknown, and says so once.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from checks.core import CheckType

log = logging.getLogger(__name__)


@functools.cache
def check_types() -> Mapping[str, CheckType]:
    try:
        from checks.registry import REGISTRY
    except ImportError as exc:
        log.warning("check registry unavailable (%s): every check type is treated as unknown", exc)
        return {}
    return REGISTRY
