"""The registry: every check type declared once in its own module, and no probe that loads
another probe (the toolkit is ``checks._*``; ``core``, ``emodel`` and ``twamp`` are pure)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from checks.registry import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
PURE_HELPERS = {"core", "emodel", "twamp"}


@pytest.mark.parametrize("word", sorted(REGISTRY))
def test_the_registry_holds_the_module_declaration(word: str) -> None:
    check = importlib.import_module(f"checks.{word}").CHECK
    assert REGISTRY[word] is check
    assert check.metrics, "a check that reports nothing declares nothing"
    for name in check.metrics:
        # The docstring is the check's manual: every metric it may report is in it.
        assert f"``{name}" in check.doc, (word, name)


@pytest.mark.parametrize("word", sorted(REGISTRY))
def test_loading_a_probe_loads_no_other_probe(word: str) -> None:
    # In a fresh interpreter, so what the toolkit pulls in counts too, however indirectly.
    code = (
        f"import sys, checks.{word}\n"
        "print(' '.join(m.split('.')[1] for m in sys.modules if m.startswith('checks.')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    loaded = set(done.stdout.split())
    assert word in loaded
    probes = {m for m in loaded if not m.startswith("_")} - PURE_HELPERS - {word}
    assert probes == set(), f"checks.{word} loads probe modules {sorted(probes)}"
