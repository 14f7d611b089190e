"""Printer health over IPP: one Get-Printer-Attributes request (pyipp), over ipp or ipps.

Target address: a printer URI, ``ipp://host[:port]/path`` or ``ipps://host[:port]/path``
(port 631 and path ``/ipp/print`` when left out), or a bare ``host[:port]`` meaning ipp. The
host name is resolved within the timeout; the request, TLS handshake included, is bounded by
what is left of it. With ipps the certificate is verified (``verify``, ``ca_file``): most
printers ship a self-signed certificate, so give it (or the CA that signed it) as ``ca_file``,
or set ``verify: false``.

Read: printer-state, printer-state-reasons, printer-state-message, printer-is-accepting-jobs,
queued-job-count, printer-make-and-model, the supply levels, and printer-input-tray.
Supply levels come from printer-supply (PWG 5100.13: class, type, max capacity and level of
each supply, as in the Printer MIB) when the printer has it, else from marker-levels,
marker-names and marker-types (percentages). The special levels mean what they mean over
SNMP (see ``checks._printer``): -1 unrestricted or unavailable, -2 unknown, -3 some
remaining (not empty); none of them gives a ratio.

printer-state-reasons keywords may carry a ``-report``, ``-warning`` or ``-error`` suffix
(none means error). Conditions are judged by keyword whatever the suffix: printers, and
ippeveprinter among them, report even an empty toner as ``toner-empty-report``. The raw list
is kept in ``info.state_reasons``; keywords not named below are only listed there.

Metrics:
- ``printer_state``: 3 idle, 4 processing, 5 stopped (left out for any other value);
- ``queued_jobs``: queued-job-count;
- ``supply_level_ratio__<n>``: level of supply n (its printer-supply index, or its position
  in marker-levels counting from 1);
- ``toner_min_ratio``: the lowest level among toner and ink supplies;
- ``input_level_ratio__<n>``: level of input tray n (its position in printer-input-tray);
- ``request_seconds``: time of the request, connection included.

Info: ``printer_state`` (idle, processing, stopped), ``state_reasons``, ``state_message``,
``make_and_model``, ``supplies``, ``inputs``, ``faults`` (every fault, the reason being the
first), ``warnings``, ``error``.

Success means the printer can print. Faults, in order of precedence: ``media_jam``,
``door_open`` (door-open, cover-open, interlock-open), ``toner_empty`` (toner-empty,
marker-supply-empty, or a toner at level 0), ``media_empty`` (media-empty, media-needed),
``offline`` (offline, shutdown), ``stopped`` (printer-state stopped, or paused),
``not_accepting`` (printer-is-accepting-jobs false). Warnings keep success and are listed in
``info.warnings``: ``toner_low`` (toner-low, marker-supply-low, or a toner under
``toner_low_ratio``), ``media_low``, ``waste_full`` (marker-waste-full or -almost-full, or a
full waste receptacle), ``supply_low`` (another consumed supply under ``toner_low_ratio``).

Other reasons: ``timeout``, ``refused``, ``unreachable``, ``resolve_failed``, ``tls_error``
(handshake or verification failed, or the printer demands TLS with HTTP 426), ``ipp_error``
(an HTTP error status, or an IPP status that is not successful, e.g. a wrong path),
``bad_response`` (not an IPP answer).

Privileges: none.
"""

from __future__ import annotations

import asyncio
import math
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field

from checks import _printer, core
from checks._net import (
    REFUSED,
    RESOLVE_FAILED,
    TLS_ERROR,
    UNREACHABLE,
    ResolveError,
    oserror_reason,
    parse_address,
    resolve,
    tls_context,
)
from checks._printer import CONSUMED, RECEPTACLE, SUPPLY_TYPE_NAMES, Judgement, Supply, Tray
from checks.core import ERROR, TIMEOUT, Outcome, Target

MEDIA_JAM = "media_jam"
DOOR_OPEN = "door_open"
TONER_EMPTY = "toner_empty"
MEDIA_EMPTY = "media_empty"
OFFLINE = "offline"
STOPPED = "stopped"
NOT_ACCEPTING = "not_accepting"
IPP_ERROR = "ipp_error"
BAD_RESPONSE = "bad_response"

REASONS = frozenset(
    {
        MEDIA_JAM,
        DOOR_OPEN,
        TONER_EMPTY,
        MEDIA_EMPTY,
        OFFLINE,
        STOPPED,
        NOT_ACCEPTING,
        TIMEOUT,
        REFUSED,
        UNREACHABLE,
        RESOLVE_FAILED,
        TLS_ERROR,
        IPP_ERROR,
        BAD_RESPONSE,
    }
)

# Keyword (suffix removed) -> fault, in no particular order: precedence is FAULT_ORDER.
FAULT_KEYWORDS = {
    "media-jam": MEDIA_JAM,
    "door-open": DOOR_OPEN,
    "cover-open": DOOR_OPEN,
    "interlock-open": DOOR_OPEN,
    "toner-empty": TONER_EMPTY,
    "marker-supply-empty": TONER_EMPTY,
    "media-empty": MEDIA_EMPTY,
    "media-needed": MEDIA_EMPTY,
    "offline": OFFLINE,
    "shutdown": OFFLINE,
    "paused": STOPPED,
}
FAULT_ORDER = (MEDIA_JAM, DOOR_OPEN, TONER_EMPTY, MEDIA_EMPTY, OFFLINE, STOPPED, NOT_ACCEPTING)
WARNING_KEYWORDS = {
    "toner-low": "toner_low",
    "marker-supply-low": "toner_low",
    "media-low": "media_low",
    "marker-waste-almost-full": "waste_full",
    "marker-waste-full": "waste_full",
}
SUFFIXES = ("-report", "-warning", "-error")

STATE_NAMES = {3: "idle", 4: "processing", 5: "stopped"}
PRINTER_STOPPED = 5

ATTRIBUTES = [
    "printer-state",
    "printer-state-reasons",
    "printer-state-message",
    "printer-is-accepting-jobs",
    "queued-job-count",
    "printer-make-and-model",
    "printer-supply",
    "printer-supply-description",
    "marker-names",
    "marker-levels",
    "marker-types",
    "printer-input-tray",
]

# Keeps the metric map within the wire limit of 64 metrics (4 + supplies + trays).
MAX_SUPPLIES = 32
MAX_TRAYS = 24

_KIND_BY_NAME = {name.lower(): code for code, name in SUPPLY_TYPE_NAMES.items()}
_CLASS_BY_NAME = {"supplythatisconsumed": CONSUMED, "receptaclethatisfilled": RECEPTACLE}
# marker-types that are receptacles rather than supplies.
_WASTE_KINDS = frozenset({"wastetoner", "wasteink", "wastewax", "wastewater", "wastepaper"})


class Params(core.Params):
    verify: bool = True
    ca_file: str | None = Field(default=None, min_length=1)
    toner_low_ratio: float = Field(default=0.10, ge=0.0, le=1.0)


@dataclass(frozen=True)
class PrinterUri:
    tls: bool
    host: str
    port: int
    path: str


def parse_uri(address: str) -> PrinterUri:
    """``ipp://``/``ipps://`` URI or bare ``host[:port]``; ValueError says what is wrong."""
    text = address.strip()
    if "://" not in text:
        host, port = parse_address(text, 631)
        return PrinterUri(False, host, port, "/ipp/print")
    parts = urlsplit(text)
    if parts.scheme not in ("ipp", "ipps"):
        raise ValueError(f"address {address!r}: the scheme must be ipp or ipps")
    if not parts.hostname:
        raise ValueError(f"address {address!r}: no host")
    try:
        port = parts.port or 631
    except ValueError:
        raise ValueError(f"address {address!r}: port must be 1..65535") from None
    return PrinterUri(parts.scheme == "ipps", parts.hostname, port, parts.path or "/ipp/print")


def as_list(value: Any) -> list[Any]:
    """pyipp gives a single value for a one-value attribute and a list for several."""
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def split_reason(keyword: str) -> tuple[str, str]:
    """'toner-low-report' -> ('toner-low', 'report'); no suffix means 'error' (RFC 8011)."""
    for suffix in SUFFIXES:
        if keyword.endswith(suffix):
            return keyword[: -len(suffix)], suffix[1:]
    return keyword, "error"


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _fields(value: Any) -> dict[str, str]:
    """'index=1;class=supplyThatIsConsumed;level=80;' -> {'index': '1', ...}."""
    out = {}
    for part in _text(value).split(";"):
        key, sep, val = part.partition("=")
        if sep:
            out[key.strip().lower()] = val.strip()
    return out


def _number(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _kind(name: str) -> tuple[int, bool]:
    """Supply type keyword (printer-supply camelCase or marker-types hyphenated) -> (code,
    is-waste)."""
    flat = name.replace("-", "").replace("_", "").lower()
    return _KIND_BY_NAME.get(flat, 1), flat in _WASTE_KINDS


def supplies_from(attrs: dict[str, Any]) -> list[Supply]:
    records = as_list(attrs.get("printer-supply"))
    if records:
        names = [_text(n) for n in as_list(attrs.get("printer-supply-description"))]
        out = []
        for position, record in enumerate(records[:MAX_SUPPLIES]):
            f = _fields(record)
            kind, waste = _kind(f.get("type", ""))
            klass = _CLASS_BY_NAME.get(f.get("class", "").lower())
            out.append(
                Supply(
                    _number(f.get("index")) or position + 1,
                    klass=RECEPTACLE if waste and klass is None else klass,
                    kind=kind,
                    description=names[position] if position < len(names) else "",
                    max_capacity=_number(f.get("maxcapacity")),
                    level=_number(f.get("level")),
                )
            )
        return out
    levels = as_list(attrs.get("marker-levels"))
    names = [_text(n) for n in as_list(attrs.get("marker-names"))]
    kinds = [_text(k) for k in as_list(attrs.get("marker-types"))]
    out = []
    for position, level in enumerate(levels[:MAX_SUPPLIES]):
        kind, waste = _kind(kinds[position]) if position < len(kinds) else (3, False)
        out.append(
            Supply(
                position + 1,
                klass=RECEPTACLE if waste else CONSUMED,
                kind=kind,
                description=names[position] if position < len(names) else "",
                max_capacity=100,
                level=level if isinstance(level, int) else None,
            )
        )
    return out


def trays_from(attrs: dict[str, Any]) -> list[Tray]:
    out = []
    for position, record in enumerate(as_list(attrs.get("printer-input-tray"))[:MAX_TRAYS]):
        f = _fields(record)
        out.append(
            Tray(position + 1, f.get("name", ""), _number(f.get("maxcapacity")),
                 _number(f.get("level")))
        )  # fmt: skip
    return out


def judge(attrs: dict[str, Any], toner_low_ratio: float) -> Judgement:
    """Faults, warnings, metrics and info from one printer's attributes (as pyipp parses them)."""
    raw = [_text(k) for k in as_list(attrs.get("printer-state-reasons"))]
    keywords = {split_reason(k)[0] for k in raw if k and k != "none"}
    state = attrs.get("printer-state")
    state_code = int(state) if isinstance(state, int) else None
    supplies, trays = supplies_from(attrs), trays_from(attrs)
    levels = _printer.assess_levels(supplies, trays, toner_low_ratio)

    found = {FAULT_KEYWORDS[k] for k in keywords if k in FAULT_KEYWORDS}
    if levels.toner_empty:
        found.add(TONER_EMPTY)
    if state_code == PRINTER_STOPPED:
        found.add(STOPPED)
    if attrs.get("printer-is-accepting-jobs") is False:
        found.add(NOT_ACCEPTING)
    faults = [f for f in FAULT_ORDER if f in found]

    warned = {WARNING_KEYWORDS[k] for k in keywords if k in WARNING_KEYWORDS}
    if levels.toner_low:
        warned.add("toner_low")
    if levels.waste_full:
        warned.add("waste_full")
    if levels.supply_low:
        warned.add("supply_low")
    if TONER_EMPTY in found:
        warned.discard("toner_low")
    if MEDIA_EMPTY in found:
        warned.discard("media_low")
    warnings = sorted(warned)

    metrics = dict(levels.metrics)
    if state_code in STATE_NAMES:
        metrics["printer_state"] = float(state_code)
    jobs = attrs.get("queued-job-count")
    if isinstance(jobs, int) and jobs >= 0:
        metrics["queued_jobs"] = float(jobs)
    info = {"state_reasons": ",".join(raw)[:1000] or "none"}
    if state_code is not None:
        info["printer_state"] = STATE_NAMES.get(state_code, str(state_code))
    for key, attr in (("state_message", "printer-state-message"),
                      ("make_and_model", "printer-make-and-model")):  # fmt: skip
        text = _text(attrs.get(attr)).strip()
        if text:
            info[key] = text[: _printer.MAX_TEXT]
    if supplies:
        info["supplies"] = _printer.describe_supplies(supplies)
    if trays:
        info["inputs"] = _printer.describe_trays(trays)
    if faults:
        info["faults"] = ",".join(faults)
    if warnings:
        info["warnings"] = ",".join(warnings)
    return Judgement(faults, warnings, metrics, info)


# ---- the request (pyipp and aiohttp, imported only here) -------------------------------------


def _connection_failure(exc: BaseException, tls: bool) -> core.CheckFailed:
    import aiohttp

    cause = exc.__cause__ or exc
    if isinstance(cause, asyncio.TimeoutError):
        return core.CheckFailed(TIMEOUT, "no answer in time")
    if isinstance(cause, aiohttp.ClientConnectorCertificateError):
        return core.CheckFailed(TLS_ERROR, f"tls: {cause.certificate_error}")
    if isinstance(cause, aiohttp.ClientSSLError | ssl.SSLError):
        return core.CheckFailed(TLS_ERROR, f"tls: {cause}")
    if isinstance(cause, aiohttp.ClientConnectorError):
        reason = oserror_reason(cause.os_error)
        detail = cause.os_error.strerror or cause.os_error
        if tls and reason == ERROR:
            # A server that cannot (or will not) speak TLS typically drops the handshake.
            return core.CheckFailed(
                TLS_ERROR, f"tls: connection lost during the handshake ({detail})"
            )
        return core.CheckFailed(reason, f"connect: {detail}")
    return core.CheckFailed(BAD_RESPONSE, f"{type(cause).__name__}: {cause}")


def _status_text(exc: Exception) -> str:
    from pyipp.enums import IppStatus

    details = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else {}
    code = details.get("status-code")
    if not isinstance(code, int):
        return f"IPP error: {exc.args[0] if exc.args else type(exc).__name__}"
    try:
        name = IppStatus(code).name.lower().replace("_", "-")
    except ValueError:
        name = "unknown"
    return f"IPP status {name} (0x{code:04x})"


async def _fetch(
    uri: PrinterUri, addrs: Sequence[tuple[int, Any]], ctx: ssl.SSLContext, budget: float
) -> dict[str, Any]:
    import aiohttp
    from aiohttp.abc import AbstractResolver, ResolveResult
    from pyipp import IPP
    from pyipp.enums import IppOperation
    from pyipp.exceptions import (
        IPPConnectionError,
        IPPConnectionUpgradeRequired,
        IPPError,
        IPPParseError,
        IPPResponseError,
    )

    class Resolved(AbstractResolver):
        """Hands aiohttp the addresses already looked up within the timeout."""

        async def resolve(
            self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
        ) -> list[ResolveResult]:
            return [
                ResolveResult(hostname=host, host=sockaddr[0], port=port, family=fam, proto=0,
                              flags=socket.AI_NUMERICHOST)
                for fam, sockaddr in addrs
            ]  # fmt: skip

        async def close(self) -> None:
            return None

    connector = aiohttp.TCPConnector(
        ssl=ctx if uri.tls else False, resolver=Resolved(), force_close=True
    )
    async with aiohttp.ClientSession(connector=connector) as session:
        # pyipp's own timeout is whole seconds: ours, just above, is the one that fires.
        printer = IPP(
            host=uri.host,
            port=uri.port,
            base_path=uri.path,
            tls=uri.tls,
            verify_ssl=True,
            session=session,
            request_timeout=math.ceil(budget) + 1,
        )
        try:
            answer = await printer.execute(
                IppOperation.GET_PRINTER_ATTRIBUTES,
                {"operation-attributes-tag": {"requested-attributes": ATTRIBUTES}},
            )
        except IPPConnectionUpgradeRequired as exc:
            raise core.CheckFailed(
                TLS_ERROR, "the printer requires TLS (HTTP 426): use ipps://"
            ) from exc
        except IPPConnectionError as exc:
            raise _connection_failure(exc, uri.tls) from exc
        except IPPResponseError as exc:
            status = exc.args[1].get("status-code") if len(exc.args) > 1 else "?"
            raise core.CheckFailed(IPP_ERROR, f"HTTP {status} from {uri.path}") from exc
        except IPPParseError as exc:
            raise core.CheckFailed(BAD_RESPONSE, "the answer is not an IPP message") from exc
        except IPPError as exc:
            raise core.CheckFailed(IPP_ERROR, _status_text(exc)) from exc
    printers = answer.get("printers") or []
    if not printers:
        raise core.CheckFailed(BAD_RESPONSE, "the answer holds no printer attributes")
    attrs: dict[str, Any] = printers[0]
    return attrs


def probe(target: Target, params: Params, timeout: float) -> Outcome:
    deadline = time.monotonic() + timeout
    try:
        uri = parse_uri(target.address)
    except ValueError as exc:
        return Outcome(False, ERROR, info={"error": str(exc)})
    try:
        ctx = tls_context(params.verify, params.ca_file)
    except (OSError, ssl.SSLError) as exc:
        return Outcome(False, ERROR, info={"error": f"ca_file {params.ca_file}: {exc}"})
    try:
        addrs = resolve(uri.host, uri.port, "auto", timeout, socket.SOCK_STREAM)
    except ResolveError as exc:
        return Outcome(False, RESOLVE_FAILED, info={"error": str(exc)})
    try:
        attrs, elapsed = _printer.ask(lambda budget: _fetch(uri, addrs, ctx, budget), deadline)
    except TimeoutError:
        return Outcome(False, TIMEOUT, info={"error": f"no IPP answer within {timeout:g} s"})
    verdict = judge(attrs, params.toner_low_ratio)
    verdict.metrics["request_seconds"] = elapsed
    return verdict.outcome()


CHECK = core.CheckType(
    params=Params,
    probe=probe,
    reasons=REASONS,
    metrics={
        "printer_state": core.gauge("printer-state: 3 idle, 4 processing, 5 stopped.", 3, 5),
        "queued_jobs": core.gauge("queued-job-count: jobs waiting or printing.", 0),
        **_printer.LEVEL_METRICS,
        "request_seconds": core.seconds("Time of the IPP request, connection included."),
    },
    doc=__doc__ or "",
    parse_target=parse_uri,
)
