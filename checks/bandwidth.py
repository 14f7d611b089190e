"""Line throughput to a city-side iperf3 server, upload and download (the iperf3 client).

Target address: ``host`` or ``host:port`` of an ``iperf3 -s`` server (port 5201 by default);
an IPv6 literal goes in brackets. The name is resolved here, within the timeout, and iperf3 is
given the address.

Each direction is one ``iperf3 -c ADDRESS -J -t duration_seconds`` run, one after the other:
``up`` sends from the ward to the server, ``down`` has the server send (``-R``). A run's
throughput is what the receiving end counted (``end.sum_received``), so data still queued in
the sender's buffers when the clock stops is not counted as delivered.

The runs must fit the check timeout: each gets an equal share of what is left, and a share too
short for ``duration_seconds`` plus ``SETUP_SECONDS`` shortens the run (``info.clamped`` says
so). Give the check a timeout of at least ``directions x (duration_seconds + 3)`` seconds, and
run it rarely (hourly, say): every run fills the line for its duration, and one iperf3 server
serves one client at a time.

Metrics (per direction run): ``upload_bytes_per_second``, ``download_bytes_per_second``
(Prometheus's base unit: 375,000 bytes/s is 3 Mbit/s), ``upload_retransmits``,
``download_retransmits`` (TCP retransmissions of the sending side; absent when the sender's
system does not report them).

Info: ``address``, ``clamped``, ``error`` (iperf3's own message).

Reasons: ``iperf3_missing`` (no ``iperf3`` program on the agent's PATH: install the Debian
package ``iperf3``), ``refused`` (nothing listens on the port), ``server_busy`` (the server
was running another client's test, even after ``busy_retries`` retries a moment later),
``unreachable``, ``resolve_failed``, ``source_unavailable`` (``source`` or ``interface`` is
not on this host), ``timeout`` (no connection within ``connect_timeout_seconds``, or a run
that did not finish in its share of the timeout), ``error`` (anything else iperf3 reported).

``source`` binds the runs to a local address (``-B``), ``interface`` to a network interface
(``--bind-dev``, SO_BINDTODEVICE; iperf3 3.10 or later), so the fibre and the backup line are
measured separately.

Privileges: none; ``interface`` needs CAP_NET_RAW on Linux before 5.7.
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
import shutil
import socket
import subprocess
import time
from typing import Any, Literal

from pydantic import Field, field_validator

from checks import core
from checks._dial import SourceParams, target_address
from checks._net import (
    REFUSED,
    RESOLVE_FAILED,
    SOURCE_UNAVAILABLE,
    UNREACHABLE,
    Interface,
    ResolveError,
    parse_address,
    resolve,
)
from checks.core import ERROR, TIMEOUT, CheckFailed, Outcome, Target

IPERF3_MISSING = "iperf3_missing"
SERVER_BUSY = "server_busy"

REASONS = frozenset(
    {
        IPERF3_MISSING,
        REFUSED,
        TIMEOUT,
        SERVER_BUSY,
        UNREACHABLE,
        RESOLVE_FAILED,
        SOURCE_UNAVAILABLE,
        ERROR,
    }
)

DEFAULT_PORT = 5201
PROGRAM = "iperf3"
# Beyond the run itself: starting iperf3, the control connection, parameter and result
# exchange. Measured on loopback at ~10 ms; the margin is for slow lines and loaded PCs.
SETUP_SECONDS = 1.5
# A busy server is retried after a pause drawn from this range, so that wards that collided
# do not collide again.
BUSY_PAUSE_SECONDS = (0.5, 2.0)

Direction = Literal["up", "down"]
DIRECTIONS: tuple[Direction, ...] = ("up", "down")
_METRIC_WORD = {"up": "upload", "down": "download"}

# iperf3's error text -> our reason; the first match wins.
_ERROR_REASONS = (
    ("server is busy", SERVER_BUSY),
    ("connection refused", REFUSED),
    ("no route to host", UNREACHABLE),
    ("network is unreachable", UNREACHABLE),
    ("network is down", UNREACHABLE),
    ("timed out", TIMEOUT),
    ("operation now in progress", TIMEOUT),
    ("cannot assign requested address", SOURCE_UNAVAILABLE),
    ("no such device", SOURCE_UNAVAILABLE),
    ("name or service not known", RESOLVE_FAILED),
    ("temporary failure in name resolution", RESOLVE_FAILED),
)


class Params(SourceParams):
    directions: list[Direction] = Field(default_factory=lambda: list(DIRECTIONS), min_length=1)
    duration_seconds: int = Field(default=5, ge=1, le=60)
    connect_timeout_seconds: float = Field(default=3.0, gt=0.0, le=60.0)
    streams: int = Field(default=1, ge=1, le=16, description="parallel TCP streams (-P)")
    busy_retries: int = Field(default=2, ge=0, le=10)
    interface: Interface | None = None

    @field_validator("directions")
    @classmethod
    def _once_each(cls, value: list[Direction]) -> list[Direction]:
        if len(set(value)) != len(value):
            raise ValueError("each direction may be given once")
        return value


def _reason_of(message: str) -> str:
    lowered = message.lower()
    for text, reason in _ERROR_REASONS:
        if text in lowered:
            return reason
    return ERROR


def _command(
    program: str, address: str, port: int, direction: Direction, duration: int, params: Params
) -> list[str]:
    argv = [
        program, "-c", address, "-p", str(port), "-J",
        "-t", str(duration),
        "-P", str(params.streams),
        "--connect-timeout", str(math.ceil(params.connect_timeout_seconds * 1000)),
    ]  # fmt: skip
    if direction == "down":
        argv.append("-R")
    if params.source is not None:
        argv += ["-B", str(params.source)]
    if params.interface is not None:
        argv += ["--bind-dev", params.interface]
    return argv


def _run(argv: list[str], limit: float) -> dict[str, Any]:
    """One iperf3 run; its JSON report, or CheckFailed."""
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=limit,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "LC_ALL": "C"},  # error texts are matched in English
        )
    except subprocess.TimeoutExpired:
        raise CheckFailed(TIMEOUT, f"iperf3 did not finish within {limit:.3g} s") from None
    try:
        report = json.loads(done.stdout)
    except ValueError:
        text = (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"
        raise CheckFailed(_reason_of(text), f"iperf3: {text[:500]}") from None
    if not isinstance(report, dict):
        raise CheckFailed(ERROR, "iperf3: its JSON report is not an object")
    error = report.get("error")
    if error:
        raise CheckFailed(_reason_of(str(error)), f"iperf3: {str(error)[:500]}")
    if done.returncode != 0:
        raise CheckFailed(ERROR, f"iperf3 exited with status {done.returncode}")
    return report


def _measure(report: dict[str, Any], word: str) -> dict[str, float]:
    end = report.get("end") or {}
    received = end.get("sum_received") or {}
    sent = end.get("sum_sent") or {}
    bps = received.get("bits_per_second", sent.get("bits_per_second"))
    if not isinstance(bps, int | float):
        raise CheckFailed(ERROR, "iperf3: no end.sum_received.bits_per_second in its report")
    metrics = {f"{word}_bytes_per_second": float(bps) / 8}
    retransmits = sent.get("retransmits")
    if isinstance(retransmits, int | float):
        metrics[f"{word}_retransmits"] = float(retransmits)
    return metrics


def probe(target: Target, params: Params, timeout: float) -> Outcome:
    deadline = time.monotonic() + timeout
    program = shutil.which(PROGRAM)
    if program is None:
        return Outcome(
            False,
            IPERF3_MISSING,
            info={
                "error": "iperf3 is not installed (or not on the agent's PATH): "
                "install the iperf3 package (apt-get install iperf3)"
            },
        )
    host, port = target_address(target.address, DEFAULT_PORT)
    try:
        addrs = resolve(host, port, params.family, timeout, socket.SOCK_STREAM, params.source)
    except ResolveError as exc:
        return Outcome(False, RESOLVE_FAILED, info={"error": str(exc)})
    address = str(addrs[0][1][0])
    metrics: dict[str, float] = {}
    info = {"address": address}
    clamped: list[str] = []

    for i, direction in enumerate(params.directions):
        word = _METRIC_WORD[direction]
        try:
            report = _run_direction(
                program, address, port, direction, params, deadline,
                len(params.directions) - i, clamped, after_a_run=i > 0,
            )  # fmt: skip
            metrics.update(_measure(report, word))
        except CheckFailed as exc:
            if clamped:
                info["clamped"] = "; ".join(clamped)
            return Outcome(False, exc.reason, metrics, {**info, "error": f"{word}: {exc.message}"})
    if clamped:
        info["clamped"] = "; ".join(clamped)
    return Outcome(True, metrics=metrics, info=info)


def _run_direction(
    program: str,
    address: str,
    port: int,
    direction: Direction,
    params: Params,
    deadline: float,
    runs_left: int,
    clamped: list[str],
    after_a_run: bool = False,
) -> dict[str, Any]:
    # Between two tests iperf3 closes its listening socket and opens a new one: right after
    # our own upload, a refused connection is that moment, not a server that is down.
    retried = {SERVER_BUSY, REFUSED} if after_a_run else {SERVER_BUSY}
    attempt = 0
    while True:
        share = (deadline - time.monotonic()) / runs_left
        duration = min(params.duration_seconds, math.floor(share - SETUP_SECONDS + 0.05))
        if duration < 1:
            raise CheckFailed(
                TIMEOUT,
                f"{share:.3g} s left for this run: too little for a 1 s run "
                f"(give the check a timeout of at least "
                f"{len(params.directions) * (params.duration_seconds + 3)} s)",
            )
        note = f"{direction} run shortened to {duration} s to fit the check timeout"
        if duration < params.duration_seconds and note not in clamped:
            clamped.append(note)
        argv = _command(program, address, port, direction, duration, params)
        try:
            return _run(argv, share)
        except CheckFailed as exc:
            if exc.reason not in retried or attempt >= params.busy_retries:
                raise
        attempt += 1
        pause = random.uniform(*BUSY_PAUSE_SECONDS)
        if deadline - time.monotonic() - pause < runs_left * (1 + SETUP_SECONDS):
            raise CheckFailed(SERVER_BUSY, "the server is busy running a test")
        time.sleep(pause)


CHECK = core.CheckType(
    params=Params,
    probe=probe,
    reasons=REASONS,
    metrics={
        "upload_bytes_per_second": core.gauge(
            "Upload throughput in bytes/s, ward to server, as the server counted it received.", 0
        ),
        "download_bytes_per_second": core.gauge(
            "Download throughput in bytes/s, server to ward, as the ward counted it received.", 0
        ),
        "upload_retransmits": core.gauge("TCP retransmissions by the ward in the upload run.", 0),
        "download_retransmits": core.gauge(
            "TCP retransmissions by the server in the download run.", 0
        ),
    },
    doc=__doc__ or "",
    parse_target=functools.partial(parse_address, default_port=DEFAULT_PORT),
)
