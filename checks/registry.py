"""The literal map from a config's ``type:`` word to its check.

Adding a check type: write ``checks/<word>.py`` with ``Params``, ``REASONS`` and ``probe``, add
one line here, and add its tests. The module name, the type word and the metric prefix are the
same word.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from checks import dns, host, http, icmp, tcp
from checks.core import CheckType


def _entry(module: object) -> CheckType:
    return CheckType(
        params=module.Params,  # type: ignore[attr-defined]
        probe=module.probe,  # type: ignore[attr-defined]
        reasons=frozenset(module.REASONS),  # type: ignore[attr-defined]
        doc=module.__doc__ or "",
    )


REGISTRY: Mapping[str, CheckType] = MappingProxyType(
    {
        "icmp": _entry(icmp),
        "tcp": _entry(tcp),
        "http": _entry(http),
        "dns": _entry(dns),
        "host": _entry(host),
    }
)
