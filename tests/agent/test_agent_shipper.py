"""The shipper against a real local HTTP server standing in for the collector."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent import __version__
from agent.shipper import Shipper
from agent.spool import Spool
from checks.core import Result, Target
from shared.wire import Batch

TOKEN = "tok-5ecret-98f1"
TARGET = Target("gw", "127.0.0.1", {"ward": "ward-minh-phung"})


class FakeCollector:
    """Answers POST /api/v1/ingest with scripted status codes (200 once the script ends)."""

    def __init__(self, script: list[int] | None = None) -> None:
        self.script = list(script or [])
        self.batches: list[Batch] = []
        self.codes: list[int] = []
        self.auth: list[str] = []
        self.paths: list[str] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                batch = Batch.model_validate_json(body)
                with owner.lock:
                    code = owner.script.pop(0) if owner.script else 200
                    owner.batches.append(batch)
                    owner.codes.append(code)
                    owner.auth.append(self.headers.get("Authorization", ""))
                    owner.paths.append(self.path)
                if code == 200:
                    last = batch.results[-1].seq if batch.results else None
                    answer: dict[str, Any] = {
                        "accepted": len(batch.results),
                        "duplicates": 0,
                        "last_seq": last,
                    }
                elif code == 401:
                    answer = {"detail": "unknown token"}
                else:
                    answer = {"detail": "database busy"}
                data = json.dumps(answer).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def delivered(self) -> list[int]:
        with self.lock:
            return [
                r.seq
                for b, c in zip(self.batches, self.codes, strict=True)
                if c == 200
                for r in b.results
            ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector_factory() -> Iterator[Callable[..., FakeCollector]]:
    made: list[FakeCollector] = []

    def make(script: list[int] | None = None) -> FakeCollector:
        made.append(FakeCollector(script))
        return made[-1]

    yield make
    for c in made:
        c.close()


def fill(spool: Spool, n: int) -> None:
    for i in range(n):
        spool.append(
            Result("tcp", "gw", TARGET, time.time(), 0.001, True, "ok", {"connect_seconds": i}),
            interval=5.0,
        )


def shipper_for(spool: Spool, url: str, **kw: Any) -> Shipper:
    options: dict[str, Any] = {
        "push_interval": 0.2,
        "timeout": 2.0,
        "batch_size": 500,
        "checks": 3,
        "backoff_base": 0.05,
        "backoff_cap": 0.2,
    }
    options.update(kw)
    return Shipper(spool, url=url, token=TOKEN, ward="ward-minh-phung", agent="pc-01", **options)


def wait_for(predicate: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"not met within {seconds} s")


def test_503_keeps_data_then_delivers_in_order(
    tmp_path: Path, collector_factory: Callable[..., FakeCollector]
) -> None:
    server = collector_factory([503, 503])
    spool = Spool(tmp_path / "s.db")
    fill(spool, 5)
    shipper = shipper_for(spool, server.url)
    shipper.start()
    try:
        wait_for(lambda: spool.depth() == 0)
        fill(spool, 4)
        wait_for(lambda: spool.depth() == 0 and len(server.delivered()) == 9)
    finally:
        shipper.stop()
        shipper.close()

    assert server.codes[:3] == [503, 503, 200]
    # The refused batches carried the same results the accepted one did: nothing was dropped.
    assert [[r.seq for r in b.results] for b in server.batches[:3]] == [[1, 2, 3, 4, 5]] * 3
    assert server.delivered() == list(range(1, 10))  # contiguous, in order, each once
    assert shipper.push_failures_total == 2
    assert shipper.last_push_success is not None
    assert set(server.auth) == {f"Bearer {TOKEN}"}
    assert set(server.paths) == {"/api/v1/ingest"}
    assert {b.stream for b in server.batches} == {spool.stream}
    spool.close()


def test_heartbeat_when_spool_is_empty(
    tmp_path: Path, collector_factory: Callable[..., FakeCollector]
) -> None:
    server = collector_factory()
    spool = Spool(tmp_path / "s.db")
    shipper = shipper_for(spool, server.url)
    shipper.start()
    try:
        wait_for(lambda: len(server.batches) >= 3)
    finally:
        shipper.stop()
        shipper.close()
    beat = server.batches[0]
    assert beat.results == []
    assert (beat.ward, beat.agent) == ("ward-minh-phung", "pc-01")
    assert beat.status.version == __version__
    assert beat.status.checks == 3
    assert beat.status.spool_depth == 0
    assert beat.status.resident_memory_bytes > 1_000_000
    assert beat.status.cpu_seconds_total > 0
    assert shipper.push_failures_total == 0
    spool.close()


def test_401_keeps_data_and_logs_the_reason_not_the_token(
    tmp_path: Path,
    collector_factory: Callable[..., FakeCollector],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = collector_factory([401] * 1000)
    spool = Spool(tmp_path / "s.db")
    fill(spool, 3)
    shipper = shipper_for(spool, server.url)
    with caplog.at_level(logging.DEBUG):
        shipper.start()
        try:
            wait_for(lambda: len(server.batches) >= 3)
        finally:
            shipper.stop()
    assert spool.depth() == 3
    assert all([r.seq for r in b.results] == [1, 2, 3] for b in server.batches)
    failures = [r for r in caplog.records if r.name == "agent.shipper"]
    assert failures and failures[0].levelno == logging.ERROR
    assert "401" in failures[0].getMessage() and "unknown token" in failures[0].getMessage()
    assert "kept in the spool" in failures[0].getMessage()
    assert TOKEN not in caplog.text

    server.script.clear()  # the token is registered: the kept results now go through
    assert shipper.push_once().ok
    assert spool.depth() == 0
    assert server.delivered() == [1, 2, 3]
    shipper.close()
    spool.close()


def test_batches_are_bounded_and_a_full_batch_goes_at_once(
    tmp_path: Path, collector_factory: Callable[..., FakeCollector]
) -> None:
    server = collector_factory()
    spool = Spool(tmp_path / "s.db")
    fill(spool, 9)
    one = shipper_for(spool, server.url, batch_size=3)
    assert one.push_once().sent == 3
    assert [r.seq for r in server.batches[-1].results] == [1, 2, 3]
    one.close()

    # A long push interval: only the full-batch wake-up can ship these within the wait.
    shipper = shipper_for(spool, server.url, batch_size=3, push_interval=60.0)
    shipper.start()
    try:
        wait_for(lambda: spool.depth() == 0)  # full batches go one after the other
        fill(spool, 3)
        shipper.notify(spool.depth())
        wait_for(lambda: spool.depth() == 0)
    finally:
        shipper.stop()
        shipper.close()
    assert server.delivered() == list(range(1, 13))
    assert all(len(b.results) <= 3 for b in server.batches)
    spool.close()


def test_drain_gives_up_at_the_deadline_and_keeps_data(
    tmp_path: Path, collector_factory: Callable[..., FakeCollector]
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    spool = Spool(tmp_path / "s.db")
    fill(spool, 4)
    down = shipper_for(spool, dead)
    assert down.drain(time.monotonic() + 2.0) is False
    assert spool.depth() == 4
    assert down.push_failures_total >= 1
    down.close()

    server = collector_factory()
    up = shipper_for(spool, server.url, batch_size=3)
    assert up.drain(time.monotonic() + 5.0) is True
    assert server.delivered() == [1, 2, 3, 4]
    up.close()
    spool.close()
