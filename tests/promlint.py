"""For the expositions' tests: plausible results of any check type, and promtool's opinion.

``declared_metrics`` builds what a run of a check type could report from its declarations
alone (every metric, each per-item one for two items, the root mount's empty one included,
each value inside its declared range), so the tests cover every check type the registry
lists, whatever it declares, without knowing its probe.
"""

from __future__ import annotations

import math
import subprocess

from prometheus_client.parser import text_string_to_metric_families

from checks.core import CheckType, Metric
from tests.helpers import need_program

# Two items, as a host check with two mounts reports them: "/" (empty name) and /var/lib.
ITEMS = ("", "var_lib")


def plausible(metric: Metric) -> float:
    low, high = metric.low, metric.high
    if math.isfinite(low) and math.isfinite(high):
        return (low + high) / 2
    if math.isfinite(low):
        return low + 3.0
    if math.isfinite(high):
        return high - 3.0
    return 3.0


def declared_metrics(kind: CheckType) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, metric in kind.metrics.items():
        value = plausible(metric)
        assert metric.admits(value), (name, value)
        for item in ITEMS if metric.per_item else (None,):
            full = name if item is None else f"{name}__{item}"
            assert kind.metric(full) is metric, full  # the name a probe would report
            out[full] = value
    return out


def promtool_complaints(exposition: str) -> str:
    """What ``promtool check metrics`` says about a text exposition ("" when nothing)."""
    promtool = need_program("promtool")
    done = subprocess.run(
        [promtool, "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    complaints = (done.stdout + done.stderr).strip()
    assert (done.returncode == 0) == (complaints == ""), (done.returncode, complaints)
    return complaints


def stand_ins(kind: CheckType) -> dict[str, float]:
    """What a run of ``kind`` could report: every metric it declares."""
    return declared_metrics(kind)


def assert_clean_and_declared(text: str, word: str, kind: CheckType) -> None:
    """promtool has nothing to say about ``text``, and each metric ``kind`` declares is there
    with its help and type, for the two runs of type ``word`` (named ``<word>-...``)."""
    assert promtool_complaints(text) == ""
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, declared in kind.metrics.items():
        family = families[f"wardready_{word}_{name.removesuffix('_total')}"]
        assert family.type == declared.kind, name
        assert family.documentation.startswith(declared.help.strip()), name
        ours = [s for s in family.samples if s.labels["name"].startswith(f"{word}-")]
        assert len(ours) == (len(ITEMS) if declared.per_item else 1) * 2, name
