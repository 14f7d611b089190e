"""A real Alertmanager for tests, and the local servers it notifies.

`Hooks` is one local HTTP server standing in for every webhook receiver and for Telegram's Bot
API (Alertmanager posts to `{api_url}/bot{token}/sendMessage`); `running` starts
prometheus-alertmanager on loopback with a given config and yields its API address.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import need_program
from tests.monitoring import free_port, process, tail, wait_for

# Telegram answers sendMessage with the message it sent; Alertmanager's client reads it back.
TELEGRAM_REPLY = json.dumps(
    {"ok": True, "result": {"message_id": 1, "date": 0, "chat": {"id": 1, "type": "group"}}}
).encode()


class Hooks:
    """Every POST received, by path (without the leading slash), answered 200."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                size = int(self.headers.get("content-length", "0"))
                body = json.loads(self.rfile.read(size))
                with hooks.lock:
                    hooks.received.append((self.path.strip("/"), body))
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(TELEGRAM_REPLY)))
                self.end_headers()
                self.wfile.write(TELEGRAM_REPLY)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def bodies(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [body for p, body in self.received if p == path]

    def alerts(self, receiver: str) -> list[dict[str, str]]:
        """Labels of every firing alert notified to the webhook ``receiver`` so far."""
        return [
            a["labels"]
            for body in self.bodies(receiver)
            for a in body["alerts"]
            if a["status"] == "firing"
        ]


@contextlib.contextmanager
def serving() -> Iterator[Hooks]:
    h = Hooks()
    h.thread.start()
    try:
        yield h
    finally:
        h.server.shutdown()
        h.server.server_close()


def absolute_templates(config: dict[str, Any], source: Path) -> None:
    """Template globs made absolute, for a copy of ``source`` written elsewhere."""
    config["templates"] = [str(source.parent / t) for t in config.get("templates", [])]


@contextlib.contextmanager
def running(config: Path, workdir: Path) -> Iterator[str]:
    """prometheus-alertmanager with ``config`` on a free loopback port: its /api/v2 address.
    Errors in its log fail the test after the block."""
    binary = need_program("prometheus-alertmanager")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api/v2"
    argv = [
        binary,
        f"--config.file={config}",
        f"--storage.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",  # no gossip port on every interface
    ]
    log = workdir / "alertmanager.log"
    with process(argv, log), httpx.Client(timeout=5) as http:
        wait_for(lambda: http.get(f"{api}/status").status_code == 200, 30, "alertmanager up")
        yield api
    assert "level=error" not in tail(log, 200), tail(log)
