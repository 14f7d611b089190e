"""HTTP(S) request with status, body and certificate checks (httpx, HTTP/1.1).

Target address: the URL, ``http://`` or ``https://``.

One request (GET or HEAD), following redirects when asked. The body is read to the end (within
the timeout); the regexes see its first ``max_body_bytes``, decoded as text. Every network
operation has the check timeout; reading a slow body stops at the deadline. Name resolution
happens inside httpx and is bounded by the runner's deadline only.

Metrics:
- ``duration_seconds``: request start to last body byte, redirects included;
- ``status_code``, ``content_length_bytes`` (decoded body bytes), ``redirects``;
- phases, summed over redirects, each present when it happened: ``connect_seconds`` (name
  lookup and TCP connect), ``tls_seconds`` (TLS handshake), ``processing_seconds`` (request
  sent to response headers received), ``transfer_seconds`` (reading the body);
- HTTPS only: ``tls_verified`` (1 when the chain and name were verified, 0 with
  ``verify: false``), ``cert_expiry_seconds`` of the final server's certificate
  (with ``verify: false`` it needs the optional ``cryptography`` package).

Info: ``http_version``, ``final_url`` (after redirects, without query), ``tls_version``,
``error``. Request headers are never reported: they may hold credentials.

Reasons: ``timeout``, ``refused``, ``unreachable``, ``resolve_failed``, ``source_unavailable``,
``tls_error``, ``tls_expired`` (verification failed on an expired certificate; with
``verify: false`` expiry is only measured), ``status_mismatch`` (not in ``valid_status``,
default 200-299), ``body_mismatch`` (``body_regex`` absent or ``body_regex_absent`` present),
``too_many_redirects``, ``protocol_error`` (the server broke HTTP or dropped the connection).
``source_unavailable`` also covers an ``interface`` that is not on this host.

``interface`` pins every connection of the request to one network interface
(``SO_BINDTODEVICE``, Linux), so a ward's fibre and backup lines are probed separately: one
check per line, told apart by a ``line`` label. The connection is then opened by the checks'
own dial, as in the tcp check (the name resolved within the timeout).

Privileges: none; ``interface`` needs CAP_NET_RAW on Linux before 5.7.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import ssl
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import httpcore
import httpx
from httpcore._backends.sync import SyncStream
from pydantic import Field, IPvAnyAddress, field_validator

from checks import core
from checks._dial import CERT_METRICS, DIAL_REASONS, cause_reason, context_for, dial, parse_url
from checks._net import Interface, cert_not_after, expiry_metrics
from checks.core import ERROR, TIMEOUT, CheckFailed, Outcome, Target

STATUS_MISMATCH = "status_mismatch"
BODY_MISMATCH = "body_mismatch"
TOO_MANY_REDIRECTS = "too_many_redirects"
PROTOCOL_ERROR = "protocol_error"

REASONS = DIAL_REASONS | {STATUS_MISMATCH, BODY_MISMATCH, TOO_MANY_REDIRECTS, PROTOCOL_ERROR}

USER_AGENT = "wardready-probe/1"
# httpx always hands the pinned backend its connect timeout; this only bounds a caller that
# gives none.
_CONNECT_SECONDS = 30.0

Status = Annotated[int, Field(ge=100, le=599)]

# httpcore trace event prefixes -> our phase metric.
_PHASES = {
    "connection.connect_tcp": "connect_seconds",
    "connection.start_tls": "tls_seconds",
    "http11.receive_response_headers": "processing_seconds",
    "http11.receive_response_body": "transfer_seconds",
}


class Params(core.Params):
    method: Literal["GET", "HEAD"] = "GET"
    headers: dict[str, str] = Field(default_factory=dict, max_length=32)
    follow_redirects: bool = True
    max_redirects: int = Field(default=10, ge=0, le=30)
    valid_status: list[Status] = Field(default_factory=list, max_length=100)
    body_regex: str | None = Field(default=None, min_length=1, max_length=1000)
    body_regex_absent: str | None = Field(default=None, min_length=1, max_length=1000)
    max_body_bytes: int = Field(default=1 << 20, ge=0, le=64 << 20)
    verify: bool = True
    ca_file: str | None = Field(default=None, min_length=1)
    source: IPvAnyAddress | None = None
    interface: Interface | None = None

    @field_validator("body_regex", "body_regex_absent")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from exc
        return value


class _Phases:
    """Collects httpcore trace events into phase durations."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.totals: dict[str, float] = {}

    def event(self, name: str, info: dict[str, Any]) -> None:
        prefix, _, stage = name.rpartition(".")
        metric = _PHASES.get(prefix)
        if metric is None:
            return
        now = time.perf_counter()
        if stage == "started":
            self.started[prefix] = now
        elif prefix in self.started:
            self.totals[metric] = self.totals.get(metric, 0.0) + now - self.started.pop(prefix)


def _read_body(response: httpx.Response, keep: int, deadline: float) -> tuple[int, bytes]:
    size, head = 0, bytearray()
    for chunk in response.iter_bytes():
        size += len(chunk)
        if len(head) < keep:
            head += chunk[: keep - len(head)]
        if time.perf_counter() > deadline:
            raise CheckFailed(TIMEOUT, f"body still arriving after {size} bytes at the deadline")
    return size, bytes(head)


def _tls_facts(response: httpx.Response, verify: bool) -> tuple[dict[str, float], dict[str, str]]:
    stream = response.extensions.get("network_stream")
    ssl_object = stream.get_extra_info("ssl_object") if stream is not None else None
    if ssl_object is None:
        return {}, {}
    metrics = {"tls_verified": 1.0 if verify else 0.0}
    metrics.update(expiry_metrics(cert_not_after(ssl_object)))
    return metrics, {"tls_version": ssl_object.version() or ""}


def _without_query(url: httpx.URL) -> str:
    parts = urlsplit(str(url))
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class _PinnedBackend(httpcore.SyncBackend):
    """Opens each TCP connection with the checks' own dial, on one network interface."""

    def __init__(self, interface: str) -> None:
        self.interface = interface

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        source = ipaddress.ip_address(local_address) if local_address is not None else None
        try:
            link = dial(
                host,
                port,
                stream=True,
                family="auto",
                source=source,
                deadline=time.monotonic() + (timeout if timeout is not None else _CONNECT_SECONDS),
                interface=self.interface,
            )
        except CheckFailed as exc:
            # Raised inside the handler: httpcore drops __cause__ on the way up, and
            # cause_reason finds the dial failure through __context__.
            if exc.reason == TIMEOUT:
                raise httpcore.ConnectTimeout(exc.message) from exc
            raise httpcore.ConnectError(exc.message) from exc
        for option in socket_options or ():
            link.sock.setsockopt(*option)
        link.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return SyncStream(link.sock)


class _PinnedTransport(httpx.HTTPTransport):
    """httpx's transport with every connection opened on one network interface.

    httpx applies socket options only after connecting, too late for SO_BINDTODEVICE to pick
    the route, so the pool gets a network backend that pins each socket before it connects.
    ``_pool`` and httpcore's ``SyncStream`` are internals (stable since httpx 0.18); the
    interface tests in tests/checks/test_http.py fail if they move.
    """

    def __init__(self, ctx: ssl.SSLContext, local_address: str | None, interface: str) -> None:
        super().__init__(verify=ctx, local_address=local_address, retries=0)
        self._pool = httpcore.ConnectionPool(
            ssl_context=ctx,
            local_address=local_address,
            retries=0,
            network_backend=_PinnedBackend(interface),
        )


@contextmanager
def _client(params: Params, ctx: ssl.SSLContext, timeout: float) -> Iterator[httpx.Client]:
    local_address = str(params.source) if params.source is not None else None
    transport = (
        httpx.HTTPTransport(verify=ctx, local_address=local_address, retries=0)
        if params.interface is None
        else _PinnedTransport(ctx, local_address, params.interface)
    )
    with httpx.Client(
        transport=transport,
        timeout=timeout,
        follow_redirects=params.follow_redirects,
        max_redirects=params.max_redirects,
        trust_env=False,
        headers={"User-Agent": USER_AGENT, **params.headers},
    ) as client:
        yield client


def probe(target: Target, params: Params, timeout: float) -> Outcome:
    t0 = time.perf_counter()
    deadline = t0 + timeout
    phases = _Phases()
    metrics: dict[str, float] = {}
    info: dict[str, str] = {}
    ctx = context_for(params.verify, params.ca_file)
    try:
        with (
            _client(params, ctx, timeout) as client,
            client.stream(
                params.method, target.address, extensions={"trace": phases.event}
            ) as response,
        ):
            metrics["status_code"] = float(response.status_code)
            metrics["redirects"] = float(len(response.history))
            info["http_version"] = response.http_version
            if response.history:
                info["final_url"] = _without_query(response.url)
            tls_metrics, tls_info = _tls_facts(response, params.verify)
            metrics.update(tls_metrics)
            info.update(tls_info)
            size, head = _read_body(response, params.max_body_bytes, deadline)
            text = head.decode(response.encoding or "utf-8", errors="replace")
    except httpx.InvalidURL as exc:
        return Outcome(False, ERROR, info={"error": f"url {target.address!r}: {exc}"})
    except CheckFailed as exc:
        return _failed(exc.reason, exc.message, metrics, info, phases)
    except httpx.TimeoutException as exc:
        return _failed(
            TIMEOUT, f"{type(exc).__name__}: no answer within {timeout:g} s", metrics, info, phases
        )
    except httpx.TooManyRedirects as exc:
        return _failed(TOO_MANY_REDIRECTS, str(exc), metrics, info, phases)
    except httpx.ConnectError as exc:
        reason, message = cause_reason(exc)
        return _failed(reason, message, metrics, info, phases)
    except (httpx.ProtocolError, httpx.DecodingError, httpx.ReadError, httpx.WriteError) as exc:
        return _failed(PROTOCOL_ERROR, f"{type(exc).__name__}: {exc}", metrics, info, phases)
    except httpx.HTTPError as exc:
        reason, message = cause_reason(exc)
        return _failed(reason, f"{type(exc).__name__}: {message}", metrics, info, phases)

    metrics["duration_seconds"] = time.perf_counter() - t0
    metrics["content_length_bytes"] = float(size)
    metrics.update(phases.totals)
    status = response.status_code
    if not (status in params.valid_status if params.valid_status else 200 <= status < 300):
        wanted = ",".join(map(str, params.valid_status)) or "200-299"
        return Outcome(
            False, STATUS_MISMATCH, metrics, {**info, "error": f"status {status}, want {wanted}"}
        )
    if params.body_regex is not None and not re.search(params.body_regex, text):
        return Outcome(False, BODY_MISMATCH, metrics, {**info, "error": "body_regex not found"})
    if params.body_regex_absent is not None and re.search(params.body_regex_absent, text):
        return Outcome(False, BODY_MISMATCH, metrics, {**info, "error": "body_regex_absent found"})
    return Outcome(True, metrics=metrics, info=info)


def _failed(
    reason: str, message: str, metrics: dict[str, float], info: dict[str, str], phases: _Phases
) -> Outcome:
    return Outcome(False, reason, {**metrics, **phases.totals}, {**info, "error": message[:1000]})


CHECK = core.CheckType(
    params=Params,
    probe=probe,
    reasons=REASONS,
    metrics={
        "duration_seconds": core.seconds(
            "Request start to the last body byte, redirects included."
        ),
        # HTTP's grammar allows any three digits; servers do send codes past 599.
        "status_code": core.gauge("HTTP status code of the final response.", 100, 999),
        "content_length_bytes": core.gauge("Body bytes received, after content decoding.", 0),
        "redirects": core.gauge("Redirects followed to reach the final response.", 0),
        "connect_seconds": core.seconds(
            "Name lookup and TCP connect, summed over the request's connections."
        ),
        "tls_seconds": core.seconds("TLS handshakes, summed over the request's connections."),
        "processing_seconds": core.seconds(
            "Request sent to response headers received, summed over redirects."
        ),
        "transfer_seconds": core.seconds("Reading response bodies, summed over redirects."),
        "tls_verified": core.gauge(
            "1 when the final server's chain and name were verified, 0 with verify: false.", 0, 1
        ),
        **CERT_METRICS,
    },
    doc=__doc__ or "",
    parse_target=parse_url,
)
