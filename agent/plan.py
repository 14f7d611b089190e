"""The ward's check plan from the collector: polled, validated like a config file, kept.

Every ``plan_interval`` the poller asks ``GET /api/v1/plan`` with ``If-None-Match``, so an
unchanged plan costs a 304 and no body. A new plan is validated exactly as a config file's
``checks:`` (``agent.config.load_plan``); a good one is written next to the spool (so the
agent starts with it when the collector is unreachable) and handed to ``apply``; a bad one is
logged once per version, counted, and reported in every batch's status, while the last good
plan keeps running.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from agent.config import Config, ConfigError, load_plan
from agent.scheduler import CheckSpec
from agent.shipper import tls_context

log = logging.getLogger(__name__)

PLAN_PATH = "/api/v1/plan"
OUTCOMES = ("changed", "not_modified", "invalid", "failed")


@dataclass(frozen=True)
class Plan:
    version: int
    checks: tuple[CheckSpec, ...]
    raw: dict[str, Any] = field(repr=False, compare=False)


def cache_path(config: Config) -> Path:
    return config.spool_path.with_name(config.spool_path.name + ".plan.json")


def http_client(config: Config) -> httpx.Client:
    c = config.collector
    # The same trust and client certificate as the shipper's: one collector, one TLS setup.
    return httpx.Client(
        timeout=httpx.Timeout(c.timeout),
        verify=tls_context(c.ca_file, c.client_cert, c.client_key),
        follow_redirects=False,
    )


def parse(config: Config, body: dict[str, Any]) -> Plan:
    """A plan document (``{ward, version, checks}``) as specs; raises ConfigError."""
    version = body.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise ConfigError(["plan: no valid version number"])
    ward = body.get("ward")
    if ward != config.ward:
        raise ConfigError([f"plan v{version}: is for ward {ward!r}, not {config.ward!r}"])
    specs = load_plan(body.get("checks"), f"plan v{version}", config.ward,
                      config.default_interval, config.default_timeout)  # fmt: skip
    return Plan(version, specs, body)


def load_cached(config: Config) -> Plan | None:
    path = cache_path(config)
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        return parse(config, body)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, ConfigError, AttributeError) as exc:
        log.warning("ignoring the cached plan %s: %s", path, exc)
        return None


def save_cached(config: Config, body: dict[str, Any]) -> None:
    path = cache_path(config)
    tmp = path.with_name(path.name + ".tmp")
    try:
        # Owner-only, like the token: a plan may carry an SNMP community.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(body, ensure_ascii=False))
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot keep the plan in %s: %s", path, exc)


def fetch(client: httpx.Client, config: Config, etag: str | None) -> httpx.Response:
    """The plan from the first collector (``collector.urls`` in order) that answers below
    500: any of them serves it, so a dead replica never leaves the ward on an old plan."""
    headers = {"Authorization": f"Bearer {config.collector.token}"}
    if etag:
        headers["If-None-Match"] = etag
    c = config.collector
    urls = c.urls or (c.url,)
    failed: httpx.Response | httpx.HTTPError | None = None
    for url in urls:
        try:
            response = client.get(url.rstrip("/") + PLAN_PATH, headers=headers)
        except httpx.HTTPError as exc:
            failed = exc
            continue
        if response.status_code < 500:
            return response
        failed = response
    if isinstance(failed, httpx.Response):
        return failed
    assert failed is not None
    raise failed


class PlanPoller:
    """Polls the plan in a thread of its own; ``apply`` gets each new valid plan."""

    def __init__(
        self,
        config: Config,
        apply: Callable[[Plan], None],
        current: Plan | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        self.config = config
        self._apply = apply
        self.current = current
        self.etag = f'"v{current.version}"' if current else None
        self.error: str | None = None
        self.polls: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self.errors_total = 0
        self._client = client or http_client(config)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._logged: str | None = None

    @property
    def version(self) -> int | None:
        return self.current.version if self.current else None

    def poll_once(self) -> str:
        """One request; returns its outcome (one of OUTCOMES)."""
        try:
            response = fetch(self._client, self.config, self.etag)
        except httpx.HTTPError as exc:
            return self._count("failed", f"collector unreachable: {type(exc).__name__}")
        if response.status_code == 304:
            return self._count("not_modified")
        if response.status_code == 404:
            return self._count("not_modified")  # the fleet has no plan for this ward (yet)
        if response.status_code != 200:
            return self._count("failed", f"plan: collector answered {response.status_code}")
        try:
            body = response.json()
            if not isinstance(body, dict):
                raise ValueError("not a JSON object")
            plan = parse(self.config, body)
        except ValueError as exc:
            return self._invalid(response.headers.get("etag"), [f"plan: not JSON: {exc}"])
        except ConfigError as exc:
            return self._invalid(response.headers.get("etag"), exc.messages)
        self.etag = response.headers.get("etag") or f'"v{plan.version}"'
        self.error = None
        self._logged = None
        self._apply(plan)
        self.current = plan
        save_cached(self.config, body)
        return self._count("changed")

    def _invalid(self, etag: str | None, messages: list[str]) -> str:
        # The bad plan's ETag is remembered: asking again gets a 304 until the plan changes,
        # so the error is logged and counted once per bad version, not once per poll.
        self.etag = etag or self.etag
        self.error = "; ".join(messages)
        self.errors_total += 1
        if self._logged != self.error:
            self._logged = self.error
            keeping = f"v{self.version}" if self.current else "the local checks alone"
            log.error("plan refused, keeping %s: %s", keeping, self.error)
        return self._count("invalid")

    def _count(self, outcome: str, problem: str | None = None) -> str:
        self.polls[outcome] += 1
        if problem is not None:
            log.debug("plan poll: %s", problem)
        return outcome

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="plan", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # a surprise must not end polling for good
                log.exception("plan poll failed")
            self._stop.wait(self.config.collector.plan_interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.config.collector.timeout + 5)
        self._client.close()
