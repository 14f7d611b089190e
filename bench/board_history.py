"""Cost of the verdict history and of the board at national scale: 3,321 wards judged against
the shipped profile (25 criteria), with no results (every ward no_data).

Prints: the first history write (every ward and criterion from nothing), a judging round with
no change (what every `--verdict-seconds` pays), and rendering `/` for all wards.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from fastapi.testclient import TestClient

from collector import db, wards
from collector.api import create_app
from collector.profile import default_profile_path, load_profile
from collector.service import Service

N = 3321


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        engine = db.make_engine(f"sqlite:///{Path(tmp) / 'bench.db'}")
        db.upgrade(engine)
        wards.upsert(
            engine,
            [wards.Ward(f"ward-{i:04d}", f"Phường Số {i}", "ward", "", str(i % 10 + 1))
             for i in range(N)],
        )  # fmt: skip
        # Verdicts cached as `serve`'s judging thread keeps them: a page never judges.
        service = Service(engine, load_profile(default_profile_path()), verdict_seconds=3600.0)
        service.rebuild()
        # An explicit time judges without recording, so the first write is measured here.
        verdicts = service.verdicts(time.time())
        t = time.perf_counter()
        written = service.history.record(verdicts)
        first = time.perf_counter() - t
        t = time.perf_counter()
        again = service.history.record(verdicts)
        steady = time.perf_counter() - t
        print(f"history: first write {len(written)} rows in {first:.2f} s; "
              f"a round with no change ({len(again)} rows) in {steady * 1000:.1f} ms")  # fmt: skip
        client = TestClient(create_app(service))
        client.get("/")
        t = time.perf_counter()
        for _ in range(3):
            r = client.get("/")
        board = (time.perf_counter() - t) / 3
        print(f"board: / for {N} wards in {board * 1000:.0f} ms, {len(r.content) / 1e6:.1f} MB")
        engine.dispose()


if __name__ == "__main__":
    main()
