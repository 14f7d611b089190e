"""``wardready-agent enroll``: trade an enrollment code for this PC's own token and config.

The code (from ``wardready-collector enroll create``) is the only credential needed: the
collector answers with a token bound to the ward and this agent's name. The token is written
to a file readable by its owner only and never printed or logged. The config written takes
its checks from the collector's plan (``collector.plan: true``); the plan is fetched once
here, so the first ``run`` starts with it even before the collector is reached again.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from agent import __version__
from agent.config import Config, ConfigError, default_agent_name, load_config
from agent.plan import fetch, http_client, parse, save_cached

ENROLL_PATH = "/api/v1/enroll"
MACHINE_ID = Path("/etc/machine-id")
TIMEOUT = 10.0
_IDENT = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class EnrollFailed(Exception):
    """Enrollment did not happen; the message says why, for the officer."""


@dataclass(frozen=True)
class Enrolled:
    ward: str
    agent: str
    config: Path
    token_file: Path
    plan_version: int | None
    plan_checks: int
    plan_problem: str | None


def machine_id_hash(path: Path = MACHINE_ID) -> str:
    """SHA-256 of the machine id: tells two PCs apart without sending the id itself."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return hashlib.sha256(text.encode("ascii")).hexdigest() if text else ""


def _detail(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    detail = data.get("detail") if isinstance(data, dict) else None
    return str(detail)[:300] if detail else response.reason_phrase


def write_private(path: Path, text: str) -> None:
    """Write ``text`` readable by its owner only, even over an existing file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a file that already exists
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)


def enroll(
    url: str,
    code: str,
    *,
    agent: str | None = None,
    ca_file: Path | None = None,
    config: Path,
    token_file: Path,
    spool: Path,
    metrics_listen: str | None = None,
) -> Enrolled:
    name = agent if agent is not None else default_agent_name()
    if not _IDENT.match(name):
        raise EnrollFailed(
            f"--agent: {name!r} must be 1 to 64 of a-z 0-9 . _ - (lower case), starting with "
            "a letter or digit"
        )
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise EnrollFailed(f"--collector: {url!r} must start with http:// or https://")
    if ca_file is not None and not ca_file.is_file():
        raise EnrollFailed(f"--ca-file: no file at {ca_file}")
    body = {
        "code": code.strip(),
        "agent": name,
        "hostname": socket.gethostname()[:255],
        "machine_id_hash": machine_id_hash(),
        "version": __version__,
        "os": platform.platform()[:255],
    }
    verify: bool | str = str(ca_file) if ca_file else True
    try:
        response = httpx.post(url + ENROLL_PATH, json=body, timeout=TIMEOUT, verify=verify)
    except httpx.HTTPError as exc:
        raise EnrollFailed(f"cannot reach the collector at {url}: {exc}") from None
    if response.status_code != 200:
        raise EnrollFailed(f"the collector refused: {_detail(response)}")
    try:
        answer = response.json()
        ward, token = str(answer["ward"]), str(answer["token"])
    except (ValueError, KeyError, TypeError):
        raise EnrollFailed("the collector's answer is not an enrollment answer") from None

    write_private(token_file, token + "\n")
    collector: dict[str, Any] = {"url": url, "token_file": str(token_file.absolute()),
                                 "plan": True}  # fmt: skip
    if ca_file is not None:
        collector["ca_file"] = str(ca_file.absolute())
    doc: dict[str, Any] = {
        "ward": ward,
        "agent": name,
        "collector": collector,
        "spool": {"path": str(spool.absolute())},
    }
    if metrics_listen is not None:
        doc["metrics"] = {"listen": metrics_listen}
    config.parent.mkdir(parents=True, exist_ok=True)
    head = f"# written by wardready-agent enroll: agent {name} of ward {ward}\n"
    text = head + yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)
    if config.exists() and config.read_text(encoding="utf-8", errors="replace") != text:
        # A config written by hand (local checks, say) is kept beside the new one.
        config.replace(config.with_name(config.name + ".bak"))
    config.write_text(text, encoding="utf-8")
    try:
        loaded = load_config(config)
    except ConfigError as exc:
        msg = "the config written does not validate: " + "; ".join(exc.messages)
        raise EnrollFailed(msg) from None
    spool.parent.mkdir(parents=True, exist_ok=True)
    version, count, problem = _first_plan(loaded)
    return Enrolled(ward, name, config, token_file, version, count, problem)


def _first_plan(config: Config) -> tuple[int | None, int, str | None]:
    """Fetch and keep the plan now; a failure here is not fatal (``run`` polls again)."""
    try:
        with http_client(config) as client:
            response = fetch(client, config, None)
    except httpx.HTTPError as exc:
        return None, 0, f"plan not fetched yet: {exc}"
    if response.status_code == 404:
        return None, 0, "the collector has no plan for this ward yet (fleet import)"
    if response.status_code != 200:
        return None, 0, f"plan not fetched yet: collector answered {response.status_code}"
    try:
        body = response.json()
        plan = parse(config, body)
    except (ValueError, ConfigError, AttributeError) as exc:
        messages = exc.messages if isinstance(exc, ConfigError) else [str(exc)]
        return None, 0, "the plan does not validate: " + "; ".join(messages)
    save_cached(config, body)
    return plan.version, len(plan.checks), None
