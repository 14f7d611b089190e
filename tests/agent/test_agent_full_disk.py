"""The spool on a real file system that fills up: losses counted, logging bounded, recovery."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.spool import DISK_FULL, Spool
from checks.core import Result, Target
from tests.helpers import need_root

TARGET = Target("gw", "127.0.0.1", {"role": "wan"})


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str = "2m") -> Iterator[Path]:
    need_root()
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill_up(folder: Path) -> Path:
    """Write until the file system says no; the filler file is returned for freeing."""
    filler = folder / "filler"
    with filler.open("wb") as f:
        chunk = b"\0" * 65536
        with contextlib.suppress(OSError):
            for _ in range(10_000):  # bounded: far more than the tmpfs holds
                f.write(chunk)
                f.flush()
        with contextlib.suppress(OSError):
            os.fsync(f.fileno())
    return filler


def result(i: int) -> Result:
    return Result("tcp", "gw", TARGET, time.time(), 0.001, True, "ok", {"connect_seconds": i})


def test_a_full_disk_counts_losses_logs_once_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with small_tmpfs(tmp_path / "fs") as fs:
        spool = Spool(fs / "spool.db", max_results=1000)
        for i in range(5):
            assert spool.append(result(i), 5.0) is not None
        filler = fill_up(fs)

        caplog.set_level(logging.ERROR, logger="agent.spool")
        lost = 0
        # Every append inside a page that SQLite already has may still fit; the disk refuses
        # the rest. Enough appends that the free pages run out.
        for i in range(400):
            if spool.append(result(100 + i), 5.0) is None:
                lost += 1
        assert lost > 0
        assert spool.counts("dropped")[DISK_FULL] == lost
        assert spool.dropped_total == lost
        disk_logs = [r for r in caplog.records if "disk is full" in r.getMessage()]
        assert len(disk_logs) == 1, [r.getMessage() for r in disk_logs]
        kept = spool.depth()
        assert kept == 5 + 400 - lost
        assert [r.seq for r in spool.peek(1000)][:5] == [1, 2, 3, 4, 5]

        filler.unlink()
        seq = spool.append(result(999), 5.0)
        assert seq is not None
        assert spool.depth() == kept + 1
        spool.close()

        # The losses were written to the file once it took writes again.
        again = Spool(fs / "spool.db", max_results=1000)
        assert again.counts("dropped")[DISK_FULL] == lost
        assert again.dropped_total == lost
        assert again.depth() == kept + 1
        again.close()


def test_ack_on_a_full_disk_keeps_the_results_for_the_next_push(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "fs", size="1m") as fs:
        spool = Spool(fs / "spool.db")
        for i in range(50):
            spool.append(result(i), 5.0)
        filler = fill_up(fs)
        # Whether SQLite needs a fresh page for the delete depends on the WAL; either the rows
        # go, or they all stay: never half, never an exception.
        gone = spool.ack(10)
        assert gone in (0, 10)
        assert spool.depth() == 50 - gone
        filler.unlink()
        assert spool.ack(10) == 10 - gone
        assert spool.depth() == 40
        spool.close()
