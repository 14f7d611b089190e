"""The wire schema between agent and collector: the one place both sides import.

An agent POSTs a ``Batch`` to ``/api/v1/ingest`` with ``Authorization: Bearer <token>``.
Every result carries ``seq``, numbered by the agent per ``stream`` (one stream per spool
file), so the collector can store each (ward, agent, stream, seq) once however often a batch
is replayed. A batch with no results is a heartbeat.

Limits are part of the contract: they keep one bad agent from exhausting the collector and
keep label values bounded for Prometheus.

The schema tells the truth: every model is strict (a JSON ``"7"`` is not an integer, ``"yes"``
is not a boolean), maps allow only their declared keys, integers fit in 64 bits, and free text
that can reach ``/metrics`` or a log line holds no control characters, which is also what the
JSON schema (``/openapi.json``) says, so a client generated from it never meets a surprise.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from pydantic.config import JsonDict
from pydantic.json_schema import WithJsonSchema
from pydantic_core import PydanticCustomError

WIRE_VERSION = 1
MAX_RESULTS_PER_BATCH = 2000
MAX_BATCH_BYTES = 8 * 1024 * 1024
MAX_LABELS = 16
MAX_METRICS = 64
MAX_INFO = 32
# Results older than this are refused: the spool keeps far less than a week at any real rate,
# and accepting ancient timestamps would let a broken clock rewrite history.
MAX_AGE_SECONDS = 7 * 24 * 3600
MAX_FUTURE_SECONDS = 300
# Integers are stored as 64-bit columns (PostgreSQL bigint, SQLite INTEGER).
MAX_INT64 = 2**63 - 1

# C0 and C1 controls, DEL and the Unicode line and paragraph separators: each breaks a line of
# the Prometheus text format or of a log for some reader (prometheus_client's own parser fails on
# a raw CR or U+2028). Letters with diacritics (Vietnamese names) are far from these ranges.
CONTROL = "\x00-\x1f\x7f-\x9f\u2028\u2029"
NO_CONTROL_PATTERN = f"^[^{CONTROL}]*$"
_CONTROL_RE = re.compile(f"[{CONTROL}]")


def _no_control(v: str) -> str:
    bad = _CONTROL_RE.search(v)
    if bad is not None:
        raise PydanticCustomError(
            "control_character",
            "must not contain control characters (U+{code} at position {at})",
            {"code": f"{ord(bad.group()):04X}", "at": bad.start()},
        )
    return v


def _text(max_length: int, min_length: int = 0) -> WithJsonSchema:
    """The JSON schema of a Text field: what ``_no_control`` and the length bounds enforce."""
    schema: dict[str, object] = {
        "type": "string",
        "maxLength": max_length,
        "pattern": NO_CONTROL_PATTERN,
    }
    if min_length:
        schema["minLength"] = min_length
    return WithJsonSchema(schema)

MAX_PLAN_ERROR = 1024

Ident = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$")]
Word = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
Stream = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
LabelValue = Annotated[
    str, StringConstraints(max_length=128), AfterValidator(_no_control), _text(128)
]
InfoValue = Annotated[
    str, StringConstraints(max_length=1024), AfterValidator(_no_control), _text(1024)
]
Address = Annotated[
    str,
    StringConstraints(min_length=1, max_length=255),
    AfterValidator(_no_control),
    _text(255, 1),
]
Version = Annotated[str, StringConstraints(max_length=64), AfterValidator(_no_control), _text(64)]
Count = Annotated[int, Field(ge=0, le=MAX_INT64)]
# A map's keys are Words and nothing else: without this the schema's patternProperties would
# let any other key through with any value, which the server refuses.
_CLOSED_MAP: JsonDict = {"additionalProperties": False}


def _finite(v: float) -> float:
    if not math.isfinite(v):
        raise ValueError("must be a finite number")
    return v


Finite = Annotated[float, AfterValidator(_finite)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ResultRecord(_Strict):
    seq: int = Field(ge=1, le=MAX_INT64)
    check: Word
    name: Name
    target: Name
    address: Address
    labels: dict[Word, LabelValue] = Field(
        default_factory=dict, max_length=MAX_LABELS, json_schema_extra=_CLOSED_MAP
    )
    interval_seconds: Finite = Field(gt=0, le=86400)
    started: Finite = Field(gt=0)
    duration_seconds: Finite = Field(ge=0, le=3600)
    success: bool
    reason: Word
    metrics: dict[Word, Finite] = Field(
        default_factory=dict, max_length=MAX_METRICS, json_schema_extra=_CLOSED_MAP
    )
    info: dict[Word, InfoValue] = Field(
        default_factory=dict, max_length=MAX_INFO, json_schema_extra=_CLOSED_MAP
    )


class AgentStatus(_Strict):
    version: Version
    spool_depth: Count
    spool_dropped_total: Count
    resident_memory_bytes: Count
    cpu_seconds_total: Finite = Field(ge=0)
    checks: Count
    # The collector's clock minus the agent's, as the agent last measured it; None when unknown.
    clock_offset_seconds: Finite | None = Field(
        default=None, ge=-MAX_AGE_SECONDS, le=MAX_AGE_SECONDS
    )
    # The collector's check plan the agent runs (None: no plan, a local config alone), and
    # why the newest plan it received was not applied, if it was not.
    plan_version: int | None = Field(default=None, ge=0)
    plan_error: Annotated[str, StringConstraints(max_length=MAX_PLAN_ERROR)] | None = None


class Batch(_Strict):
    wire_version: int = Field(WIRE_VERSION, ge=0, le=MAX_INT64)
    ward: Ident
    agent: Ident
    stream: Stream
    sent_at: Finite = Field(gt=0)
    status: AgentStatus
    results: list[ResultRecord] = Field(default_factory=list, max_length=MAX_RESULTS_PER_BATCH)


class Ack(_Strict):
    accepted: Count
    duplicates: Count
    last_seq: int | None = Field(ge=1, le=MAX_INT64)


def time_errors(batch: Batch, now: float) -> list[str]:
    """Field paths whose timestamps are implausible, as 'results.3.started: ...' lines."""
    problems = []
    for i, r in enumerate(batch.results):
        if r.started < now - MAX_AGE_SECONDS:
            problems.append(f"results.{i}.started: older than {MAX_AGE_SECONDS} s")
        elif r.started > now + MAX_FUTURE_SECONDS:
            problems.append(f"results.{i}.started: more than {MAX_FUTURE_SECONDS} s in the future")
    return problems


# ---- device inventory (``POST /api/v1/inventory``, from ``wardready-agent discover``) ----------

MAX_DEVICES = 1024
MAX_SERVICES = 16
DeviceKind = Literal["printer", "scanner", "multifunction", "vc", "router", "unknown"]
# Device text is shown on the ward page (escaped there) but never reaches /metrics, and a
# printer's sysDescr legitimately holds line breaks: only the length is bounded.
Text255 = Annotated[str, StringConstraints(max_length=255)]


class Endpoint(_Strict):
    """A service a device announced: enough to build a check for it."""

    service: Annotated[str, StringConstraints(max_length=64)]
    port: int = Field(ge=0, le=65535)
    path: Annotated[str, StringConstraints(max_length=255)] = ""  # DNS-SD rp / rs


class Device(_Strict):
    # Only text and a word: lax mode coerces nothing into a string from JSON, and the agent's
    # discovery hands its kind over as a plain str (checked against DeviceKind here).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    address: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    mac: Annotated[str, StringConstraints(pattern=r"^([0-9a-f]{2}(:[0-9a-f]{2}){5})?$")] = ""
    name: Text255 = ""
    kind: DeviceKind
    services: list[Annotated[str, StringConstraints(max_length=64)]] = Field(
        default_factory=list, max_length=MAX_SERVICES
    )
    sys_descr: Annotated[str, StringConstraints(max_length=1024)] = ""
    endpoints: list[Endpoint] = Field(default_factory=list, max_length=MAX_SERVICES)
    printer_mib: bool = False


class Inventory(_Strict):
    """What one agent found on its ward's LAN at ``taken_at``; the newest replaces the last."""

    wire_version: int = Field(WIRE_VERSION, ge=0, le=MAX_INT64)
    ward: Ident
    agent: Ident
    taken_at: Finite = Field(gt=0)
    devices: list[Device] = Field(default_factory=list, max_length=MAX_DEVICES)
