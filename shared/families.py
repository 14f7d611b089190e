"""How a check's metric becomes a Prometheus family, on the agent and the collector alike.

A metric ``<base>`` of check type ``<type>`` is exported as ``wardready_<type>_<base>``. A
metric ``<base>__<item>`` (one of several mounts, interfaces, supplies or trays) joins the
family of ``<base>`` with the label ``item="<item>"``; the empty item (the ``/`` mount) is
shown as ``item="/"``: one family per measured quantity, as Prometheus expects.

The check type's declaration gives the help text and the type: a counter (its name ends in
``_total``) is a Prometheus counter, anything else a gauge. A metric nobody here declared (a
check type, or a metric, newer than this program) is still exported, with a plain help text;
by the naming rule every declaration follows, a name ending in ``_total`` is a counter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from checks.core import CheckType

PREFIX = "wardready_"
ROOT_ITEM = "/"
_BASE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_PER_ITEM_HELP = " Label item: the mount, interface, supply or tray it is about."


@dataclass(frozen=True)
class Family:
    """Where one reported metric goes: ``name`` is the family's name in prometheus_client's
    convention (a counter's without ``_total``, which its samples carry)."""

    name: str
    kind: Literal["gauge", "counter"]
    help: str
    item: str | None  # the ``item`` label's value; None for a metric without items

    @property
    def sample_name(self) -> str:
        return f"{self.name}_total" if self.kind == "counter" else self.name


def family_of(check: str, metric: str, kind: CheckType | None) -> Family | None:
    """The family of metric ``metric`` reported by a check of type ``check`` (declared by
    ``kind`` when known); None for a name that cannot be part of a metric name."""
    base, sep, item = metric.partition("__")
    if not _BASE.fullmatch(base) or not _BASE.fullmatch(check):
        return None
    declared = kind.metric(metric) if kind is not None else None
    if declared is not None:
        counter, text = declared.kind == "counter", declared.help.strip()
    else:
        counter = base.endswith("_total")
        text = f"{base} from the newest {check} check result (not declared by this wardready)."
    if sep:
        text += _PER_ITEM_HELP
    name = f"{PREFIX}{check}_{base.removesuffix('_total') if counter else base}"
    about = (item or ROOT_ITEM) if sep else None
    return Family(name, "counter" if counter else "gauge", text, about)
