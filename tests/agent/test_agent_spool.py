"""The SQLite outbox: order, acknowledgement, the bound, and surviving a restart."""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from agent.spool import Spool
from checks.core import Result, Target

TARGET = Target("gw", "10.0.0.1", {"ward": "ward-minh-phung", "site": "Phường Minh Phụng"})


def result(n: int, **metrics: float) -> Result:
    return Result(
        check="icmp",
        name="wan-city",
        target=TARGET,
        started=time.time() + n,
        duration_seconds=0.01 * n,
        success=n % 2 == 0,
        reason="ok" if n % 2 == 0 else "no_reply",
        metrics={"packets_sent": float(n), **metrics},
        info={"note": f"run {n}"},
    )


def test_append_peek_ack_in_seq_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    seqs = [spool.append(result(n), interval=30.0) for n in range(1, 6)]
    assert seqs == [1, 2, 3, 4, 5]
    assert spool.depth() == 5

    first = spool.peek(3)
    assert [r.seq for r in first] == [1, 2, 3]
    assert [r.metrics["packets_sent"] for r in first] == [1.0, 2.0, 3.0]
    assert first[0].interval_seconds == 30.0
    assert first[0].labels == {"ward": "ward-minh-phung", "site": "Phường Minh Phụng"}
    assert (first[0].success, first[0].reason) == (False, "no_reply")
    assert spool.depth() == 5  # peek removes nothing

    assert spool.ack(first[-1].seq) == 3
    assert spool.depth() == 2
    assert [r.seq for r in spool.peek(10)] == [4, 5]
    assert spool.append(result(6), 30.0) == 6  # numbers are never handed out twice
    spool.close()


def test_bound_drops_oldest_counts_and_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path / "s.db", max_results=3)
    with caplog.at_level(logging.WARNING, logger="agent.spool"):
        for n in range(1, 6):
            spool.append(result(n), 30.0)
    assert spool.depth() == 3
    assert [r.seq for r in spool.peek(10)] == [3, 4, 5]
    assert spool.dropped_total == 2
    drops = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert drops == ["spool full (3 results): dropped 1 oldest result(s), 1 dropped in total"]
    spool.close()


def test_restart_keeps_stream_seq_rows_and_drop_counter(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "s.db"
    spool = Spool(path, max_results=2)
    stream = spool.stream
    assert len(stream) == 32 and int(stream, 16) >= 0
    for n in range(1, 5):
        spool.append(result(n), 30.0)
    spool.ack(3)
    spool.close()

    again = Spool(path, max_results=2)
    assert again.stream == stream
    assert again.dropped_total == 2
    assert again.depth() == 1
    assert [r.seq for r in again.peek(10)] == [4]
    assert again.append(result(5), 30.0) == 5
    again.close()

    other = Spool(tmp_path / "other.db")
    assert other.stream != stream  # a new file is a new stream
    assert other.append(result(1), 30.0) == 1
    other.close()


def test_malformed_metrics_are_dropped_not_shipped(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    spool.append(result(2, **{"Bad-Name": 1.0, "rtt_avg_seconds": math.nan}), 30.0)
    (record,) = spool.peek(1)
    assert record.metrics == {"packets_sent": 2.0}
    assert record.info["dropped_metrics"] == "Bad-Name, rtt_avg_seconds"
    spool.close()


def test_unreadable_row_is_dropped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    spool = Spool(path)
    spool.append(result(1), 30.0)
    spool.append(result(2), 30.0)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE results SET record = '{\"check\": 1}' WHERE seq = 1")
    assert [r.seq for r in spool.peek(10)] == [2]
    assert spool.dropped_total == 1
    assert spool.depth() == 1
    spool.close()


def test_concurrent_appends_get_distinct_contiguous_seqs(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    got: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        for n in range(25):
            seq = spool.append(result(n), 30.0)
            with lock:
                got.append(seq)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(got) == list(range(1, 101))
    assert spool.depth() == 100
    spool.close()
