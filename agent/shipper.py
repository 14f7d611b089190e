"""Pushes spooled results to the collector, oldest first, and deletes them once acknowledged.

Every ``push_interval`` the shipper POSTs one ``shared.wire.Batch`` (up to ``batch_size``
results; none makes it a heartbeat) to ``{url}/api/v1/ingest``, and at once when the spool
holds a full batch. Results leave the spool only after a 200 with an ``Ack``: a collector that
is down, overloaded or refusing the agent never loses data, the spool's bound aside.

Failures back off exponentially with full jitter (base 1 s, cap 60 s, reset on success), so
168 agents that lost the collector together do not return in lock-step. A 4xx other than 429
(bad token, ward unknown, a batch refused) also backs off and keeps the data: the fix is on the
collector's side, and the results are still good once it is made.
"""

from __future__ import annotations

import json
import logging
import random
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from pydantic import ValidationError

from agent import __version__
from agent.metrics import process_usage
from agent.spool import Spool
from shared.wire import MAX_BATCH_BYTES, Ack, AgentStatus, Batch, ResultRecord

log = logging.getLogger(__name__)

INGEST_PATH = "/api/v1/ingest"
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 60.0
_MESSAGE_MAX = 300


@dataclass(frozen=True)
class PushOutcome:
    ok: bool
    sent: int = 0
    problem: str = ""
    transient: bool = False  # unreachable, 5xx, 429: expected to pass by itself
    retry_after: float | None = None


class Shipper:
    def __init__(
        self,
        spool: Spool,
        *,
        url: str,
        token: str,
        ward: str,
        agent: str,
        push_interval: float = 5.0,
        timeout: float = 5.0,
        batch_size: int = 500,
        checks: int = 0,
        version: str = __version__,
        backoff_base: float = BACKOFF_BASE_SECONDS,
        backoff_cap: float = BACKOFF_CAP_SECONDS,
        rng: random.Random | None = None,
        ca_file: Path | None = None,
        client_cert: Path | None = None,
        client_key: Path | None = None,
    ) -> None:
        self.spool = spool
        self.endpoint = url.rstrip("/") + INGEST_PATH
        self.ward = ward
        self.agent = agent
        self.push_interval = push_interval
        self.timeout = timeout
        self.batch_size = batch_size
        self.checks = checks
        self.version = version
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self._token = token
        self._rng = rng or random.Random()
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout),
            headers={
                "Authorization": f"Bearer {token}",
                "User-Agent": f"wardready-agent/{version}",
                "Content-Type": "application/json",
            },
            follow_redirects=False,
            verify=tls_context(ca_file, client_cert, client_key),
        )
        self._push_lock = threading.Lock()
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_push_success: float | None = None
        self.push_failures_total = 0
        self.failures_in_a_row = 0

    # -- one push ---------------------------------------------------------------------------

    def status(self) -> AgentStatus:
        rss, cpu = process_usage()
        return AgentStatus(
            version=self.version[:64],
            spool_depth=self.spool.depth(),
            spool_dropped_total=self.spool.dropped_total,
            resident_memory_bytes=rss,
            cpu_seconds_total=cpu,
            checks=self.checks,
        )

    def _batch_body(self) -> tuple[bytes, list[ResultRecord]]:
        records = self.spool.peek(self.batch_size)
        status = self.status()
        while True:
            batch = Batch(
                ward=self.ward,
                agent=self.agent,
                stream=self.spool.stream,
                sent_at=time.time(),
                status=status,
                results=records,
            )
            body = batch.model_dump_json().encode()
            if len(body) <= MAX_BATCH_BYTES or len(records) <= 1:
                return body, records
            records = records[: len(records) // 2]  # large info values: send fewer at a time

    def push_once(self, timeout: float | None = None) -> PushOutcome:
        """One POST of the oldest spooled results (or a heartbeat); ack them on a 200."""
        with self._push_lock:
            outcome = self._push(timeout)
        if outcome.ok:
            if self.failures_in_a_row:
                log.info("push ok again after %d failed attempt(s)", self.failures_in_a_row)
            self.failures_in_a_row = 0
            self.last_push_success = time.time()
        else:
            self.failures_in_a_row += 1
            self.push_failures_total += 1
        return outcome

    def _push(self, timeout: float | None) -> PushOutcome:
        body, records = self._batch_body()
        try:
            response = self._client.post(
                self.endpoint,
                content=body,
                timeout=httpx.Timeout(timeout) if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.HTTPError as exc:
            problem = f"collector unreachable: {type(exc).__name__}: {exc}"
            return PushOutcome(False, problem=problem, transient=True)
        code = response.status_code
        if code == 200:
            try:
                ack = Ack.model_validate_json(response.content)
            except ValidationError:
                return PushOutcome(False, problem="collector answered 200 without a valid Ack")
            if records:
                self.spool.ack(records[-1].seq)
                if ack.accepted + ack.duplicates != len(records):
                    log.warning(
                        "collector acknowledged %d new + %d duplicate of %d results sent",
                        ack.accepted,
                        ack.duplicates,
                        len(records),
                    )
            return PushOutcome(True, sent=len(records))
        message = self._redact(_collector_message(response))
        problem = f"collector answered {code} {response.reason_phrase}: {message}"
        if code == 429 or code >= 500:
            return PushOutcome(
                False, problem=problem, transient=True, retry_after=_retry_after(response)
            )
        # The collector refuses this agent or this batch: data stays, someone must act.
        return PushOutcome(False, problem=f"{problem} (results kept in the spool)")

    def _redact(self, text: str) -> str:
        return text.replace(self._token, "[token]") if self._token else text

    # -- the thread -------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("shipper already started")
        self._thread = threading.Thread(target=self._loop, name="shipper", daemon=True)
        self._thread.start()

    def notify(self, depth: int) -> None:
        """Tell the shipper the spool now holds ``depth`` results: a full batch goes at once."""
        if depth >= self.batch_size:
            self._wake.set()

    def stop(self) -> None:
        """Stop the thread; a push in flight finishes first (bounded by the request timeout)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 5)

    def _loop(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            outcome = self.push_once()
            if outcome.ok:
                attempt = 0
                if self.spool.depth() >= self.batch_size:
                    continue  # a backlog: keep pushing full batches
                self._sleep(self.push_interval, wake_on_data=True)
                continue
            delay = self._rng.uniform(0, min(self.backoff_cap, self.backoff_base * 2**attempt))
            attempt = min(attempt + 1, 32)
            if outcome.retry_after is not None:
                delay = max(delay, min(outcome.retry_after, self.backoff_cap))
            log.log(
                logging.WARNING if outcome.transient else logging.ERROR,
                "push failed (%d in a row): %s; retrying in %.1f s",
                self.failures_in_a_row,
                outcome.problem,
                delay,
            )
            self._sleep(delay, wake_on_data=False)

    def _sleep(self, seconds: float, wake_on_data: bool) -> None:
        deadline = time.monotonic() + seconds
        while not self._stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if self._wake.wait(remaining):
                self._wake.clear()
                if wake_on_data:
                    return

    def drain(self, deadline: float) -> bool:
        """A last push (or several, while they succeed) before ``deadline`` (time.monotonic()).

        Call after ``stop()``. True when the spool ended empty.
        """
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            outcome = self.push_once(timeout=min(self.timeout, remaining))
            if not outcome.ok:
                log.warning("final push failed: %s", outcome.problem)
                break
            if self.spool.depth() == 0:
                break
        left = self.spool.depth()
        if left:
            log.info("%d result(s) stay in the spool for the next start", left)
        return left == 0

    def close(self) -> None:
        self._client.close()


def tls_context(
    ca_file: Path | None = None, client_cert: Path | None = None, client_key: Path | None = None
) -> ssl.SSLContext:
    """Verification against ``ca_file`` (else the system's CAs), with a client certificate
    for a collector that asks for one (mTLS). Host names are always checked."""
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    if client_cert is not None:
        ctx.load_cert_chain(str(client_cert), str(client_key) if client_key else None)
    return ctx


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def _collector_message(response: httpx.Response) -> str:
    """The collector's reason, short: FastAPI puts it in ``detail``."""
    text = response.text
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:_MESSAGE_MAX] or "(no body)"
    detail = data.get("detail", data) if isinstance(data, dict) else data
    if not isinstance(detail, str):
        detail = json.dumps(detail, ensure_ascii=False)
    return detail[:_MESSAGE_MAX]
