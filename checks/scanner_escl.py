"""Network scanner health over eSCL (AirScan): ScannerCapabilities and ScannerStatus (httpx).

Target address: the scanner's base URL, ``http://host:port`` or ``https://host:port``; the
eSCL root is ``/eSCL`` unless the URL gives another path (the ``rs=`` value the scanner
announces over DNS-SD, e.g. ``http://host:8080/escl``). Two GETs,
``{root}/ScannerCapabilities`` and ``{root}/ScannerStatus``, bounded together by the check
timeout. With https the certificate is verified (``verify``, ``ca_file``).

The XML is parsed with defusedxml, DTDs forbidden: a document carrying one (entity expansion,
external entities) is refused as ``bad_response`` before anything in it is expanded. At most
``MAX_BODY_BYTES`` of each document are read.

Metrics:
- ``scanner_state``: pwg:State as a number: 3 Idle, 4 Processing, 5 Stopped (the values of
  IPP's printer-state), 6 Testing, 7 Down;
- ``adf_present``: 1 when the capabilities list an automatic document feeder (scan:Adf);
- ``adf_loaded``: 1 when scan:AdfState is ScannerAdfLoaded, 0 for any other AdfState (absent
  when the scanner reports none);
- ``request_seconds``: both requests, connections included.

Info: ``state``, ``adf_state``, ``make_and_model``, ``serial_number``, ``escl_version``,
``warnings``, ``error``.

Reasons: ``down`` (State Down), ``stopped`` (State Stopped), ``adf_jam`` (ScannerAdfJam,
ScannerAdfMispick, ScannerAdfMultipickDetected), ``adf_door_open`` (ScannerAdfHatchOpen, and
ScannerAdfDoorOpen as some devices spell it), ``adf_error`` (ScannerAdfInputTrayFailed,
ScannerAdfInputTrayOverloaded, ScannerAdfDuplexPageTooShort, ScannerAdfDuplexPageTooLong),
``timeout``, ``refused``, ``unreachable``, ``resolve_failed``, ``tls_error``, ``tls_expired``,
``bad_response`` (an HTTP status other than 200, a document that is not eSCL XML, or one with
a DTD). An empty feeder (ScannerAdfEmpty) is normal between dossiers; State Testing keeps
success with a ``testing`` warning.

Privileges: none.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlunsplit

from pydantic import Field

from checks import core
from checks._dial import cause_reason, context_for, parse_url
from checks._net import (
    REFUSED,
    RESOLVE_FAILED,
    TLS_ERROR,
    TLS_EXPIRED,
    UNREACHABLE,
)
from checks.core import ERROR, TIMEOUT, CheckFailed, Outcome, Target

DOWN = "down"
STOPPED = "stopped"
ADF_JAM = "adf_jam"
ADF_DOOR_OPEN = "adf_door_open"
ADF_ERROR = "adf_error"
BAD_RESPONSE = "bad_response"

REASONS = frozenset(
    {
        DOWN,
        STOPPED,
        ADF_JAM,
        ADF_DOOR_OPEN,
        ADF_ERROR,
        TIMEOUT,
        REFUSED,
        UNREACHABLE,
        RESOLVE_FAILED,
        TLS_ERROR,
        TLS_EXPIRED,
        BAD_RESPONSE,
    }
)

SCAN_NS = "http://schemas.hp.com/imaging/escl/2011/05/03"
PWG_NS = "http://www.pwg.org/schemas/2010/12/sm"

STATES = {"Idle": 3, "Processing": 4, "Stopped": 5, "Testing": 6, "Down": 7}
STATE_FAULTS = {"Down": DOWN, "Stopped": STOPPED}
ADF_FAULTS = {
    "ScannerAdfJam": ADF_JAM,
    "ScannerAdfMispick": ADF_JAM,
    "ScannerAdfMultipickDetected": ADF_JAM,
    "ScannerAdfHatchOpen": ADF_DOOR_OPEN,
    "ScannerAdfDoorOpen": ADF_DOOR_OPEN,
    "ScannerAdfInputTrayFailed": ADF_ERROR,
    "ScannerAdfInputTrayOverloaded": ADF_ERROR,
    "ScannerAdfDuplexPageTooShort": ADF_ERROR,
    "ScannerAdfDuplexPageTooLong": ADF_ERROR,
}

MAX_BODY_BYTES = 256 * 1024
MAX_TEXT = 200
USER_AGENT = "wardready-scanner-escl"


class Params(core.Params):
    verify: bool = True
    ca_file: str | None = Field(default=None, min_length=1)


def escl_root(address: str) -> str:
    """The eSCL root URL from the target address; ValueError says what is wrong."""
    parts = parse_url(address)
    path = parts.path.rstrip("/") or "/eSCL"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _child_text(root: Any, name: str) -> str | None:
    # Matched by local name: devices disagree on whether State is pwg: or scan:.
    for child in root:
        if isinstance(child.tag, str) and _local(child.tag) == name:
            return str(child.text or "").strip()
    return None


def _has_child(root: Any, name: str) -> bool:
    return any(isinstance(c.tag, str) and _local(c.tag) == name for c in root)


def parse(document: bytes, expect: str) -> Any:
    """Parse one eSCL document, DTDs forbidden; its root must be ``expect`` (local name)."""
    import defusedxml.ElementTree as safe_xml
    from defusedxml import DefusedXmlException

    try:
        root = safe_xml.fromstring(document, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise CheckFailed(BAD_RESPONSE, f"{expect}: refused: {type(exc).__name__}") from exc
    except safe_xml.ParseError as exc:
        raise CheckFailed(BAD_RESPONSE, f"{expect}: not XML: {exc}") from exc
    if _local(root.tag) != expect:
        raise CheckFailed(BAD_RESPONSE, f"{expect}: the document is a {_local(root.tag)}")
    return root


def _get(client: Any, url: str, deadline: float) -> bytes:
    import httpx

    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise CheckFailed(TIMEOUT, f"no time left for {url}")
    with client.stream("GET", url, timeout=remaining) as response:
        if response.status_code != 200:
            raise CheckFailed(BAD_RESPONSE, f"HTTP {response.status_code} from {url}")
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise CheckFailed(BAD_RESPONSE, f"{url}: more than {MAX_BODY_BYTES} bytes")
            if time.monotonic() > deadline:
                raise httpx.ReadTimeout("body still arriving at the deadline")
        return bytes(body)


def _cause(exc: BaseException) -> tuple[str, str]:
    """The reason under an httpx error: the socket or TLS error it wraps."""
    reason, message = cause_reason(exc)
    # Anything that is not a socket or TLS failure is the scanner breaking HTTP.
    return (
        (BAD_RESPONSE, f"{type(exc).__name__}: {message}") if reason == ERROR else (reason, message)
    )


def judge(caps: Any, status: Any) -> Outcome:
    state = _child_text(status, "State")
    adf_state = _child_text(status, "AdfState")
    if state is None:
        return Outcome(False, BAD_RESPONSE, info={"error": "ScannerStatus has no State"})
    metrics: dict[str, float] = {"adf_present": 1.0 if _has_child(caps, "Adf") else 0.0}
    if state in STATES:
        metrics["scanner_state"] = float(STATES[state])
    info = {"state": state[:MAX_TEXT]}
    if adf_state:
        info["adf_state"] = adf_state[:MAX_TEXT]
        metrics["adf_loaded"] = 1.0 if adf_state == "ScannerAdfLoaded" else 0.0
    for key, name in (("make_and_model", "MakeAndModel"), ("serial_number", "SerialNumber"),
                      ("escl_version", "Version")):  # fmt: skip
        text = _child_text(caps, name)
        if text:
            info[key] = text[:MAX_TEXT]
    if state == "Testing":
        info["warnings"] = "testing"
    reason = STATE_FAULTS.get(state) or ADF_FAULTS.get(adf_state or "")
    if reason is not None:
        return Outcome(False, reason, metrics, info)
    if state not in STATES:
        return Outcome(False, BAD_RESPONSE, metrics, {**info, "error": f"unknown State {state!r}"})
    return Outcome(True, metrics=metrics, info=info)


def probe(target: Target, params: Params, timeout: float) -> Outcome:
    import httpx

    deadline = time.monotonic() + timeout
    try:
        root = escl_root(target.address)
    except ValueError as exc:
        return Outcome(False, ERROR, info={"error": str(exc)})
    ctx = context_for(params.verify, params.ca_file)
    t0 = time.perf_counter()
    try:
        with httpx.Client(
            transport=httpx.HTTPTransport(verify=ctx, retries=0),
            timeout=timeout,
            trust_env=False,
            headers={"User-Agent": USER_AGENT},
        ) as client:
            caps = parse(_get(client, f"{root}/ScannerCapabilities", deadline),
                         "ScannerCapabilities")  # fmt: skip
            status = parse(_get(client, f"{root}/ScannerStatus", deadline), "ScannerStatus")
    except httpx.TimeoutException as exc:
        return Outcome(
            False, TIMEOUT, info={"error": f"{type(exc).__name__}: no answer within {timeout:g} s"}
        )
    except httpx.HTTPError as exc:
        reason, message = _cause(exc)
        return Outcome(False, reason, info={"error": message[:1000]})
    outcome = judge(caps, status)
    outcome.metrics["request_seconds"] = time.perf_counter() - t0
    return outcome


CHECK = core.CheckType(
    params=Params,
    probe=probe,
    reasons=REASONS,
    metrics={
        "scanner_state": core.gauge(
            "pwg:State as a number: 3 Idle, 4 Processing, 5 Stopped, 6 Testing, 7 Down.", 3, 7
        ),
        "adf_present": core.gauge(
            "1 when the capabilities list an automatic document feeder, else 0.", 0, 1
        ),
        "adf_loaded": core.gauge("1 when the feeder reports paper loaded, else 0.", 0, 1),
        "request_seconds": core.seconds("Both eSCL requests, connections included."),
    },
    doc=__doc__ or "",
    parse_target=escl_root,
)
