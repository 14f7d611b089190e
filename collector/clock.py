"""Every answer carries the collector's clock, so that an agent on a PC whose clock is wrong
learns the offset from any reply, a refusal included, and corrects its timestamps."""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = b"x-wardready-time"


class ServerTime:
    """Pure ASGI, not BaseHTTPMiddleware: it sits on the ingest path of every push."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers: list[Any] = list(message.get("headers", []))
                headers.append((HEADER, f"{time.time():.6f}".encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, stamped)
