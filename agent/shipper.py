"""Pushes spooled results to the collector, oldest first, and deletes them once acknowledged.

Every ``push_interval`` the shipper POSTs one ``shared.wire.Batch`` (up to ``batch_size``
results; none makes it a heartbeat) to ``{url}/api/v1/ingest``, and at once when the spool
holds a full batch. Results leave the spool only after a 200 with an ``Ack``: a collector that
is down, overloaded or refusing the agent never loses data, the spool's bound aside.

Failures back off exponentially with full jitter (base 1 s, cap 60 s, reset on success), so
168 agents that lost the collector together do not return in lock-step. 401 and 403 (a bad or
revoked token, the wrong ward), 404 and 405 (a wrong URL), 408, 413 and 429 back off too and
keep the data: the fix is elsewhere, and the results are still good once it is made. Any other
4xx refuses the batch itself, for good: the results it names (``results.3...`` in the
collector's message; all of them when it names none) are set aside in the spool, counted by
reason and logged once a minute at most, and the rest keeps flowing.

Several collectors (``urls``: replicas, or a load balancer and a replica behind it) are tried
in turn: when one cannot be reached, times out or answers 5xx, the same batch goes at once to
the next, and the one that answered is kept for the following pushes. A batch whose answer
was lost (a replica killed after its commit) may so be stored by one collector and sent again
to another: the collectors share one database, which stores each (ward, agent, stream, seq)
once and counts the rest as duplicates, so nothing is lost or stored twice.

The ward PC's clock is often wrong (no NTP, a flat CMOS battery). Every collector answer says
the collector's time (``X-Wardready-Time``, else the HTTP ``Date``), so the shipper knows the
offset between the two clocks; past ``CLOCK_TOLERANCE_SECONDS`` it corrects each result's
``started`` and the batch's ``sent_at`` as it sends them, and reports the offset in the
batch's status. The spool keeps the times as measured.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import re
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx
from pydantic import ValidationError

from agent import __version__
from agent.metrics import process_usage
from agent.spool import Spool
from shared.wire import MAX_BATCH_BYTES, MAX_PLAN_ERROR, Ack, AgentStatus, Batch, ResultRecord

log = logging.getLogger(__name__)

INGEST_PATH = "/api/v1/ingest"
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 60.0
# Offsets under this are left alone: the HTTP Date header alone is good to about a second.
CLOCK_TOLERANCE_SECONDS = 2.0
# An answer that took longer than this says too little about when the collector wrote it.
CLOCK_MAX_RTT_SECONDS = 2.0
REJECT_LOG_EVERY_SECONDS = 60.0
# Refusals that are about the agent, its token or the URL, not about this batch: keep the data.
KEEP_ON = frozenset({401, 403, 404, 405, 408, 413, 429})
SERVER_TIME_HEADER = "x-wardready-time"
_MESSAGE_MAX = 300
_RESULT_INDEX = re.compile(r"\bresults\.(\d+)\b")


class PlanState(Protocol):
    @property
    def version(self) -> int | None: ...

    @property
    def error(self) -> str | None: ...


@dataclass(frozen=True)
class PushOutcome:
    ok: bool
    sent: int = 0
    problem: str = ""
    transient: bool = False  # unreachable, 5xx, 429: expected to pass by itself
    retry_after: float | None = None
    set_aside: int = 0  # results refused for good and moved out of the queue

    @property
    def progress(self) -> bool:
        return self.ok or self.set_aside > 0


class Shipper:
    def __init__(
        self,
        spool: Spool,
        *,
        url: str | Sequence[str],
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
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise ValueError("url: at least one collector URL is needed")
        self.endpoints = [u.rstrip("/") + INGEST_PATH for u in urls]
        # The collector pushes go to first: the last one that answered.
        self._current = 0
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
        # The collector's plan this agent runs, when it runs one (agent.plan.PlanPoller).
        self.plan: PlanState | None = None
        self._push_lock = threading.Lock()
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_push_success: float | None = None
        self.push_failures_total = 0
        self.failures_in_a_row = 0
        # Collector clock minus ours, from the last answer that told it; None before one did.
        self.clock_offset: float | None = None
        self._last_reject_log: dict[str, float] = {}

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
            clock_offset_seconds=self.clock_offset,
            plan_version=self.plan.version if self.plan else None,
            plan_error=(self.plan.error or "")[:MAX_PLAN_ERROR] or None if self.plan else None,
        )

    def correction(self) -> float:
        """Seconds added to our timestamps so that they read in the collector's time."""
        offset = self.clock_offset
        return offset if offset is not None and abs(offset) > CLOCK_TOLERANCE_SECONDS else 0.0

    def _batch_body(self) -> tuple[bytes, list[ResultRecord]]:
        records = self.spool.peek(self.batch_size)
        status = self.status()
        shift = self.correction()
        while True:
            batch = Batch(
                ward=self.ward,
                agent=self.agent,
                stream=self.spool.stream,
                sent_at=time.time() + shift,
                status=status,
                results=[r.model_copy(update={"started": r.started + shift}) for r in records]
                if shift
                else records,
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

    @property
    def endpoint(self) -> str:
        """The ingest URL the next push goes to first."""
        return self.endpoints[self._current]

    def _post(self, body: bytes, timeout: float | None) -> httpx.Response | PushOutcome:
        """POST ``body`` to each collector in turn, from the current one, until one answers
        with less than 500; the last failure when none does."""
        failed = PushOutcome(False, problem="no collector tried", transient=True)
        # An explicit timeout (the final drain) bounds all the tries together.
        deadline = None if timeout is None else time.monotonic() + timeout
        for _ in range(len(self.endpoints)):
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            endpoint = self.endpoint
            t0 = time.time()
            try:
                response = self._client.post(
                    endpoint,
                    content=body,
                    timeout=httpx.Timeout(left) if left is not None else httpx.USE_CLIENT_DEFAULT,
                )
            except httpx.HTTPError as exc:
                problem = f"collector {endpoint} unreachable: {type(exc).__name__}: {exc}"
                failed = PushOutcome(False, problem=problem, transient=True)
            else:
                self._learn_clock(response, t0, time.time())
                if response.status_code < 500:
                    return response
                message = self._redact(_collector_message(response))
                problem = (
                    f"collector {endpoint} answered {response.status_code} "
                    f"{response.reason_phrase}: {message}"
                )
                failed = PushOutcome(
                    False, problem=problem, transient=True, retry_after=_retry_after(response)
                )
            if len(self.endpoints) > 1:
                self._current = (self._current + 1) % len(self.endpoints)
                log.warning("%s; trying %s", failed.problem, self.endpoint)
        return failed

    def _push(self, timeout: float | None) -> PushOutcome:
        body, records = self._batch_body()
        shift = self.correction()
        response = self._post(body, timeout)
        if isinstance(response, PushOutcome):
            return response
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
        if code in KEEP_ON or not records:
            # The collector refuses this agent, not this batch: data stays, someone must act.
            return PushOutcome(False, problem=f"{problem} (results kept in the spool)")
        if self.correction() != shift:
            # Refused for times our clock got wrong, now that we know better: send again.
            return PushOutcome(False, problem=f"{problem} (clock corrected)", transient=True)
        return self._set_aside(code, message, records)

    def _set_aside(self, code: int, message: str, records: list[ResultRecord]) -> PushOutcome:
        named = {int(i) for i in _RESULT_INDEX.findall(message)}
        refused = [r for i, r in enumerate(records) if i in named] or records
        reason = f"http_{code}"
        moved = self.spool.set_aside(refused, reason, message)
        now = time.monotonic()
        if now - self._last_reject_log.get(reason, -REJECT_LOG_EVERY_SECONDS) >= (
            REJECT_LOG_EVERY_SECONDS
        ):
            self._last_reject_log[reason] = now
            log.error(
                "collector refused %d result(s) for good (%d): %s; set aside, %d so far",
                moved,
                code,
                message,
                self.spool.counts("rejected").get(reason, 0),
            )
        return PushOutcome(
            False, problem=f"{moved} result(s) refused by the collector", set_aside=moved
        )

    def _learn_clock(self, response: httpx.Response, sent: float, received: float) -> None:
        if received - sent > CLOCK_MAX_RTT_SECONDS:
            return
        server = _server_time(response)
        if server is not None:
            self.clock_offset = server - (sent + received) / 2

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
            if outcome.set_aside:
                attempt = 0
                continue  # the rest of the queue goes at once
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
            if not outcome.progress:
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


def _server_time(response: httpx.Response) -> float | None:
    """The collector's clock when it answered: its own header, else the HTTP Date."""
    try:
        return float(response.headers[SERVER_TIME_HEADER])
    except (KeyError, ValueError):
        pass
    try:
        date = email.utils.parsedate_to_datetime(response.headers["date"])
    except (KeyError, TypeError, ValueError):
        return None
    # Date is truncated to the second: its middle is the better guess.
    return date.timestamp() + 0.5


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
