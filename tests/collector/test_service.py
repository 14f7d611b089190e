"""The judging thread: verdicts kept fresh in the background, read without re-evaluation."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from collector import wards
from collector.profile import load_profile
from collector.service import Service

from .conftest import READY, auth, batch, body, healthy_results


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_judge_forever_keeps_verdicts_fresh_and_requests_only_read_them(
    engine: Any, profile_path: Path, units_csv: Path, token: str
) -> None:
    wards.import_csv(engine, units_csv)
    svc = Service(engine, load_profile(profile_path), verdict_seconds=0.2)
    svc.rebuild()
    stop = threading.Event()
    judge = threading.Thread(target=svc.judge_forever, args=(stop,), daemon=True)
    judge.start()
    try:
        wait_for(lambda: svc._verdicts is not None)
        first = svc.verdicts()
        assert first[READY].verdict == "not_ready"
        # Between two rounds of the thread, requests get the very same evaluation.
        assert svc.verdicts() is svc.verdicts()

        svc.ingest(auth(token)["Authorization"], body(batch(results=healthy_results())))
        # No request computes: the thread alone turns the ward ready within a few rounds.
        wait_for(lambda: svc._verdicts is not None and svc._verdicts[1][READY].verdict == "ready")
        assert svc.verdicts()[READY].verdict == "ready"
    finally:
        stop.set()
        judge.join(5)
    assert not judge.is_alive()
    assert not svc._judging.is_set()
