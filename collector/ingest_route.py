"""``POST /api/v1/ingest`` as plain ASGI: the one request every agent makes every few seconds.

At national scale (3,321 agents, 664 pushes a second) the framework's layers (a dozen
middlewares, routing, dependency solving, response validation) cost more CPU than storing a
push of a few results. :class:`IngestRoute` answers this one path before all of them; every
other request goes through FastAPI as before, and the FastAPI route (which documents the
endpoint in OpenAPI) answers through the same :class:`IngestHandler`.

The order of the steps decides which error a client sees: 401 (who are you) before 413/422
(what did you send) before 403 (may you write there); see :mod:`collector.ingest`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from collector import auth
from collector.clock import HEADER as TIME_HEADER
from collector.commit import Closed
from collector.ingest import IngestError
from collector.service import Service
from collector.tokens import Grant
from shared.wire import MAX_BATCH_BYTES

log = logging.getLogger(__name__)

PATH = "/api/v1/ingest"
# Bodies up to this size are validated on the event loop: a push of a few results takes
# well under a millisecond, less than a trip through the thread pool. A large replay is
# validated in the pool so it does not hold up every other request.
INLINE_BODY_BYTES = 64 * 1024

Answer = tuple[int, bytes, dict[str, str]]


class Disconnected(Exception):
    """The client went away before its body arrived."""


def _json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request body, refused with a 413 as soon as it is known to exceed ``limit``."""
    declared = _header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise IngestError(413, f"body: larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise IngestError(413, f"body: larger than {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class IngestHandler:
    """Authorize, read, validate and store one push; answer (status, body, headers)."""

    def __init__(self, service: Service, limiter: auth.RateLimiter | None) -> None:
        self.service = service
        self.limiter = limiter

    def _agent(self, authorization: str | None) -> Grant:
        return auth.agent_grant(self.service.authorize(authorization), self.limiter)

    async def answer(self, scope: Scope, receive: Receive) -> Answer:
        service = self.service
        requests = service.metrics.requests
        try:
            # Who is asking is settled before the body is read: an unauthenticated client
            # does not get to upload 8 MiB. A token the cache holds is checked here on the
            # event loop; only one it does not hold costs a lookup in the thread pool.
            authorization = _header(scope, b"authorization")
            known = service.known(authorization)
            if known is None:
                grant = await run_in_threadpool(self._agent, authorization)
            else:
                grant = auth.agent_grant(known, self.limiter)
            try:
                body = await read_body(scope, receive, MAX_BATCH_BYTES)
            except IngestError as exc:
                service.metrics.refused(exc)
                raise
            if len(body) <= INLINE_BODY_BYTES:
                pending = service.submit(grant, body)
            else:
                pending = await run_in_threadpool(service.submit, grant, body)
            ack = await asyncio.wrap_future(pending)
        except IngestError as exc:
            requests.labels(str(exc.status)).inc()
            return exc.status, _json(exc.body()), exc.headers
        except sa.exc.OperationalError as exc:
            log.error("database error: %s", exc.orig)
            requests.labels("503").inc()
            return 503, _json({"detail": "database unavailable; retry later"}), {}
        except Closed:
            requests.labels("503").inc()
            return 503, _json({"detail": "the collector is shutting down; retry later"}), {}
        except Disconnected:
            raise
        except Exception:
            requests.labels("500").inc()
            raise
        requests.labels("200").inc()
        return 200, ack.model_dump_json().encode(), {}


class IngestRoute:
    """ASGI middleware: ``POST /api/v1/ingest`` goes to the handler, the rest to ``app``.

    Every answer carries the collector's clock (:mod:`collector.clock`), as those made by
    the rest of the app do."""

    def __init__(self, app: ASGIApp, handler: IngestHandler) -> None:
        self.app = app
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        try:
            status, body, extra = await self.handler.answer(scope, receive)
        except Disconnected:
            return
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (TIME_HEADER, f"{time.time():.6f}".encode()),
        ]
        headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
