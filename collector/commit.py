"""Group commit: one thread makes every batch that is waiting durable in one transaction.

Committing each small push on its own costs a commit (on SQLite an fsync of the WAL) per
request, and the commits take turns: at the national fleet's 664 pushes a second that, not
the CPU, was the ceiling. Here a request hands its validated batch over and waits on a
future; the committer thread takes every batch waiting, and the service's ``commit`` stores
them in one transaction and only then answers each one. An acknowledgement therefore still
means "committed", and the in-memory state is still only updated after the commit.

A group holds at most one batch per key (the ward): a ward's second batch waits for the next
group, so its series budget and its duplicate check see the first one's results.

The thread starts with the first batch and ends after a while with nothing to do, so a
:class:`~collector.service.Service` that is never closed (tests, one-off commands) does not
keep a thread for good.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

# A group is cut at this many batches or results, so one transaction (and the wait of the
# batches in it) stays bounded when a backlog arrives all at once.
MAX_GROUP_BATCHES = 256
MAX_GROUP_RESULTS = 8000
IDLE_SECONDS = 5.0

T = TypeVar("T")
R = TypeVar("R")


class Closed(RuntimeError):
    """The committer was closed before this batch was stored."""


@dataclass
class Job(Generic[T, R]):
    item: T
    key: Hashable
    size: int
    future: Future[R] = field(default_factory=Future)


class Committer(Generic[T, R]):
    """Hands every waiting job to ``commit`` (from one thread), which must settle each job's
    future; one it leaves unsettled, or all of them when it raises, fail with its error."""

    def __init__(
        self,
        commit: Callable[[list[Job[T, R]]], None],
        name: str = "committer",
        idle_seconds: float = IDLE_SECONDS,
    ) -> None:
        self._commit = commit
        self._name = name
        self._idle = idle_seconds
        self._cond = threading.Condition()
        self._queue: deque[Job[T, R]] = deque()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, item: T, key: Hashable, size: int = 1) -> Future[R]:
        job: Job[T, R] = Job(item, key, size)
        with self._cond:
            if self._closed:
                raise Closed("the collector is shutting down")
            self._queue.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            else:
                self._cond.notify()
        return job.future

    def close(self, timeout: float = 30.0) -> None:
        """Store what is waiting, then stop; later submits raise :class:`Closed`."""
        with self._cond:
            self._closed = True
            thread = self._thread
            self._cond.notify()
        if thread is not None:
            thread.join(timeout)

    def _take(self) -> list[Job[T, R]] | None:
        """The next group, or None when idle too long or closed with nothing left."""
        with self._cond:
            while not self._queue:
                if self._closed or (not self._cond.wait(self._idle) and not self._queue):
                    self._thread = None
                    return None
            group: list[Job[T, R]] = []
            keys: set[Hashable] = set()
            later: list[Job[T, R]] = []
            size = 0
            while self._queue and len(group) < MAX_GROUP_BATCHES:
                job = self._queue.popleft()
                if job.key in keys:
                    later.append(job)
                    continue
                if group and size + job.size > MAX_GROUP_RESULTS:
                    later.append(job)
                    break
                group.append(job)
                keys.add(job.key)
                size += job.size
            # What waits for the next group keeps its place at the front, in order.
            self._queue.extendleft(reversed(later))
            return group

    def _run(self) -> None:
        while True:
            group = self._take()
            if group is None:
                return
            try:
                self._commit(group)
            except BaseException as exc:  # every waiting request must get an answer
                log.exception("committing a group of %d batches failed", len(group))
                for job in group:
                    if not job.future.done():
                        job.future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
            for job in group:
                if not job.future.done():
                    job.future.set_exception(RuntimeError("batch left unanswered by commit"))
