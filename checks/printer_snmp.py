"""Printer health over SNMP: Host Resources MIB (RFC 2790) and Printer MIB (RFC 3805).

Target address: ``host`` or ``host:port`` (UDP, default port 161); an IPv6 literal goes in
brackets. Names are resolved within the timeout.

SNMP v2c (``community``) or v3 with authPriv (``user``, ``auth_key``, ``priv_key``,
``auth_protocol`` SHA by default, ``priv_protocol`` AES by default, optional ``context``).
Community and keys are secrets: they are never logged, exported or shown in errors.
Every request waits ``request_timeout_seconds`` and is retried ``retries`` times; the whole run
is bounded by the check timeout.

What is read: the printer's row of hrPrinterTable (the first one, or ``device_index``):
hrPrinterStatus and hrPrinterDetectedErrorState; its hrDeviceStatus; every row of
prtMarkerSuppliesTable (class, type, description, unit, max capacity, level) and of
prtInputTable (max capacity, current level, name) that belongs to it.

Supply and tray levels: a ratio is exported only when both the level and the max capacity are
known numbers (max > 0): ``level / max``, clamped to 0..1. RFC 3805's special values:
- ``-1`` (other: the device places no restriction, e.g. unlimited): no ratio, not empty;
- ``-2`` (unknown): no ratio, and nothing is concluded from it;
- ``-3`` (some remaining: known only to be more than zero): no ratio, counted as not empty;
- level ``0``: empty, whatever the max capacity says.
For a receptacle (class receptacleThatIsFilled, e.g. a waste toner box) the ratio is how full
it is. Toner supplies are those of type toner, tonerCartridge, ink, inkCartridge, inkRibbon,
solidWax or ribbonWax that are consumed (not receptacles).

Metrics:
- ``device_status``: hrDeviceStatus (1 unknown, 2 running, 3 warning, 4 testing, 5 down);
- ``printer_status``: hrPrinterStatus (1 other, 2 unknown, 3 idle, 4 printing, 5 warmup);
  either is left out when the agent answers a value outside its enumeration;
- ``error_conditions``: how many hrPrinterDetectedErrorState bits are set;
- ``supply_level_ratio__<n>``: level of marker supply n (its prtMarkerSuppliesIndex);
- ``toner_min_ratio``: the lowest ratio among toner supplies (absent when none is known);
- ``input_level_ratio__<n>``: level of input tray n (its prtInputIndex);
- ``query_seconds``: time of the SNMP exchange.

Info: ``sys_descr``, ``error_state`` (the set bits by their MIB names, first octet from its
high bit: lowPaper, noPaper, lowToner, noToner, doorOpen, jammed, offline, serviceRequested;
second octet: inputTrayMissing, outputTrayMissing, markerSupplyMissing, outputNearFull,
outputFull, inputTrayEmpty, overduePreventMaint; or ``none``), ``supplies`` and ``inputs``
(index, description and level of each), ``faults`` (every fault found, the reason being the
first), ``warnings``, ``hint``, ``error``.

Success means the printer can print. Faults fail the check, in this order of precedence:
``jammed``, ``door_open``, ``toner_empty`` (noToner, or a toner supply at level 0),
``paper_empty`` (noPaper, or every tray with a known level at 0), ``offline``,
``service_requested`` (only while hrDeviceStatus is down: RFC 3805 calls that a critical
alert), ``device_down`` (hrDeviceStatus down with no more specific bit).
Conditions that still let it print keep success and are listed in ``info.warnings``:
``toner_low`` (lowToner, or a toner ratio under ``toner_low_ratio``), ``paper_low`` (lowPaper,
inputTrayEmpty, or a tray at 0 while another still holds paper), ``supply_low`` (another
consumed supply under ``toner_low_ratio``, e.g. a drum near its end of life),
``waste_full``, ``service_requested``, ``output_full``, ``output_near_full``,
``tray_missing``, ``supply_missing``, ``maintenance_overdue``, ``testing``.

Other reasons: ``timeout`` (no answer: with v2c a wrong community looks exactly like this, so
``info.hint`` says so; with v3 a wrong privacy key does too), ``auth_failed`` (v3: the agent
reported usmStatsUnknownUserNames or usmStatsWrongDigests, or refused access),
``not_printer`` (the agent answers but has no hrPrinterTable row), ``resolve_failed``.

Privileges: none.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator

from checks import _printer, _snmp, core
from checks._net import (
    RESOLVE_FAILED,
    Family,
    ResolveError,
    family_from_number,
    parse_address,
    resolve,
)
from checks._printer import Judgement, Supply, Tray
from checks._snmp import AUTH_FAILED
from checks.core import ERROR, TIMEOUT, Outcome, Target

JAMMED = "jammed"
DOOR_OPEN = "door_open"
TONER_EMPTY = "toner_empty"
PAPER_EMPTY = "paper_empty"
OFFLINE = "offline"
SERVICE_REQUESTED = "service_requested"
DEVICE_DOWN = "device_down"
NOT_PRINTER = "not_printer"

REASONS = frozenset(
    {
        JAMMED,
        DOOR_OPEN,
        TONER_EMPTY,
        PAPER_EMPTY,
        OFFLINE,
        SERVICE_REQUESTED,
        DEVICE_DOWN,
        TIMEOUT,
        AUTH_FAILED,
        NOT_PRINTER,
        RESOLVE_FAILED,
    }
)

# RFC 2790 hrPrinterDetectedErrorState, as updated by RFC 3805: bit 0 is the high bit of the
# first octet. Bit 15 is not assigned.
ERROR_BITS = (
    "lowPaper",
    "noPaper",
    "lowToner",
    "noToner",
    "doorOpen",
    "jammed",
    "offline",
    "serviceRequested",
    "inputTrayMissing",
    "outputTrayMissing",
    "markerSupplyMissing",
    "outputNearFull",
    "outputFull",
    "inputTrayEmpty",
    "overduePreventMaint",
)

DEVICE_RUNNING, DEVICE_WARNING, DEVICE_TESTING, DEVICE_DOWN_CODE = 2, 3, 4, 5
# hrDeviceStatus and hrPrinterStatus are enumerations 1..5: anything else is not reported.
STATUS_CODES = range(1, 6)

SYS_DESCR = (1, 3, 6, 1, 2, 1, 1, 1, 0)
HR_DEVICE_STATUS = (1, 3, 6, 1, 2, 1, 25, 3, 2, 1, 5)
HR_PRINTER_STATUS = (1, 3, 6, 1, 2, 1, 25, 3, 5, 1, 1)
HR_PRINTER_ERRORS = (1, 3, 6, 1, 2, 1, 25, 3, 5, 1, 2)
_INPUT = (1, 3, 6, 1, 2, 1, 43, 8, 2, 1)
INPUT_MAX, INPUT_LEVEL, INPUT_NAME = (*_INPUT, 9), (*_INPUT, 10), (*_INPUT, 13)
_SUPPLY = (1, 3, 6, 1, 2, 1, 43, 11, 1, 1)
SUPPLY_CLASS, SUPPLY_TYPE, SUPPLY_DESCR = (*_SUPPLY, 4), (*_SUPPLY, 5), (*_SUPPLY, 6)
SUPPLY_MAX, SUPPLY_LEVEL = (*_SUPPLY, 8), (*_SUPPLY, 9)

# Rows read per table: keeps the metric map within the wire limit of 64 metrics
# (5 + MAX_SUPPLIES + MAX_INPUTS) and bounds the walk on a misbehaving agent.
MAX_SUPPLIES = 32
MAX_INPUTS = 24
MAX_PRINTERS = 16

V2C_HINT = "no answer: wrong community? (SNMPv2c agents ignore requests with a wrong community)"
V3_HINT = "no answer: wrong privacy key? (agents drop what they cannot decrypt)"


class Params(core.Params):
    # Validation errors would otherwise quote the input, keys included.
    model_config = ConfigDict(hide_input_in_errors=True)

    version: Literal["2c", "3"] = "2c"
    community: SecretStr = SecretStr("public")
    user: str | None = Field(default=None, min_length=1, max_length=32)
    auth_key: SecretStr | None = None
    priv_key: SecretStr | None = None
    auth_protocol: Literal["SHA", "SHA224", "SHA256", "SHA384", "SHA512", "MD5"] = "SHA"
    priv_protocol: Literal["AES", "AES192", "AES256"] = "AES"
    context: str = Field(default="", max_length=32)
    device_index: int | None = Field(default=None, ge=1, le=2**31 - 1)
    toner_low_ratio: float = Field(default=0.10, ge=0.0, le=1.0)
    retries: int = Field(default=1, ge=0, le=5)
    request_timeout_seconds: float = Field(default=1.0, gt=0.0, le=30.0)
    family: Family = "auto"

    _family_number = field_validator("family", mode="before")(family_from_number)

    @field_validator("community", "auth_key", "priv_key", mode="before")
    @classmethod
    def _number_as_text(cls, value: Any) -> Any:
        # YAML reads a numeric community or key as an int; it is meant as text.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _v3_complete(self) -> Params:
        if self.version == "3":
            missing = [n for n in ("user", "auth_key", "priv_key") if getattr(self, n) is None]
            if missing:
                raise ValueError(f"SNMPv3 (authPriv) needs {', '.join(missing)}")
            for name in ("auth_key", "priv_key"):
                secret = getattr(self, name)
                # RFC 3414 passphrases are at least 8 characters; say so without echoing it.
                if len(secret.get_secret_value()) < 8:
                    raise ValueError(f"{name} must be at least 8 characters (RFC 3414)")
        return self


@dataclass
class Snapshot:
    """What the agent answered, as plain values."""

    sys_descr: str = ""
    device_status: int | None = None
    printer_status: int | None = None
    error_state: bytes = b""
    supplies: list[Supply] = field(default_factory=list)
    trays: list[Tray] = field(default_factory=list)


def error_names(state: bytes) -> list[str]:
    """hrPrinterDetectedErrorState bits that are set, by MIB name, in bit order."""
    names = []
    for bit, name in enumerate(ERROR_BITS):
        octet, shift = divmod(bit, 8)
        if octet < len(state) and state[octet] & (0x80 >> shift):
            names.append(name)
    return names


def _add(items: list[str], word: str) -> None:
    if word not in items:
        items.append(word)


def judge(snap: Snapshot, toner_low_ratio: float) -> Judgement:
    """Faults, warnings, metrics and info from what the printer reported."""
    bits = set(error_names(snap.error_state))
    down = snap.device_status == DEVICE_DOWN_CODE
    levels = _printer.assess_levels(snap.supplies, snap.trays, toner_low_ratio)
    metrics: dict[str, float] = {"error_conditions": float(len(bits))}
    for name, code in (("device_status", snap.device_status),
                       ("printer_status", snap.printer_status)):  # fmt: skip
        if code is not None and code in STATUS_CODES:
            metrics[name] = float(code)
    metrics.update(levels.metrics)
    toner_empty = levels.toner_empty or "noToner" in bits
    toner_low = levels.toner_low or "lowToner" in bits
    all_trays_empty = levels.trays_known > 0 and levels.trays_empty == levels.trays_known
    some_tray_empty = 0 < levels.trays_empty < levels.trays_known

    faults: list[str] = []
    if "jammed" in bits:
        faults.append(JAMMED)
    if "doorOpen" in bits:
        faults.append(DOOR_OPEN)
    if toner_empty:
        faults.append(TONER_EMPTY)
    if "noPaper" in bits or all_trays_empty:
        faults.append(PAPER_EMPTY)
    if "offline" in bits:
        faults.append(OFFLINE)
    if "serviceRequested" in bits and down:
        faults.append(SERVICE_REQUESTED)
    if down and not faults:
        faults.append(DEVICE_DOWN)

    warnings: list[str] = []
    if toner_low and not toner_empty:
        _add(warnings, "toner_low")
    if PAPER_EMPTY not in faults and ({"lowPaper", "inputTrayEmpty"} & bits or some_tray_empty):
        _add(warnings, "paper_low")
    for flag, word in (
        (levels.supply_low, "supply_low"),
        (levels.waste_full, "waste_full"),
        ("serviceRequested" in bits and not down, "service_requested"),
        ("outputFull" in bits, "output_full"),
        ("outputNearFull" in bits and "outputFull" not in bits, "output_near_full"),
        (bool({"inputTrayMissing", "outputTrayMissing"} & bits), "tray_missing"),
        ("markerSupplyMissing" in bits, "supply_missing"),
        ("overduePreventMaint" in bits, "maintenance_overdue"),
        (snap.device_status == DEVICE_TESTING, "testing"),
    ):
        if flag:
            _add(warnings, word)

    info = {"error_state": ",".join(error_names(snap.error_state)) or "none"}
    if snap.sys_descr:
        info["sys_descr"] = snap.sys_descr[: _printer.MAX_TEXT]
    if snap.supplies:
        info["supplies"] = _printer.describe_supplies(snap.supplies)
    if snap.trays:
        info["inputs"] = _printer.describe_trays(snap.trays)
    if faults:
        info["faults"] = ",".join(faults)
    if warnings:
        info["warnings"] = ",".join(warnings)
    return Judgement(faults, warnings, metrics, info)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.replace(b"\0", b"").decode("utf-8", "replace").strip()
    return "" if value is None else str(value).strip()


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) else None


# ---- the SNMP exchange (pysnmp, imported only here) -----------------------------------------


def _auth(params: Params) -> Any:
    if params.version == "2c":
        return _snmp.community(params.community.get_secret_value())
    assert params.user is not None  # checked by Params
    assert params.auth_key is not None and params.priv_key is not None
    return _snmp.usm(
        params.user,
        params.auth_key.get_secret_value(),
        params.priv_key.get_secret_value(),
        params.auth_protocol,
        params.priv_protocol,
    )


def _pick_printer(
    table: Mapping[tuple[int, ...], Mapping[tuple[int, ...], Any]], wanted: int | None
) -> int:
    indexes = sorted({row[0] for rows in table.values() for row in rows if len(row) == 1})
    if not indexes:
        raise core.CheckFailed(NOT_PRINTER, "the agent answers but has no hrPrinterTable row")
    if wanted is None:
        return indexes[0]
    if wanted not in indexes:
        known = ", ".join(map(str, indexes))
        raise core.CheckFailed(
            NOT_PRINTER, f"no printer at hrDeviceIndex {wanted} (printers: {known})"
        )
    return wanted


def _rows(
    table: Mapping[_snmp.Oid, Mapping[_snmp.Oid, Any]], index: int
) -> list[tuple[int, dict[_snmp.Oid, Any]]]:
    """This printer's rows of walked columns, as (row, {column: value}), in row order."""
    # Tables are indexed (hrDeviceIndex, row): keep this printer's rows.
    mine = {
        column: {r[1]: v for r, v in rows.items() if len(r) == 2 and r[0] == index}
        for column, rows in table.items()
    }
    found = sorted({i for rows in mine.values() for i in rows})
    return [(i, {column: rows.get(i) for column, rows in mine.items()}) for i in found]


async def _collect(ip: str, port: int, family: int, params: Params) -> Snapshot:
    with _snmp.engine() as engine:
        snmp = await _snmp.Session.open(
            engine,
            _auth(params),
            (ip, port),
            family,
            params.request_timeout_seconds,
            params.retries,
            params.context,
        )
        printers = await snmp.columns([HR_PRINTER_STATUS, HR_PRINTER_ERRORS], MAX_PRINTERS)
        index = _pick_printer(printers, params.device_index)
        scalars = await snmp.get([SYS_DESCR, (*HR_DEVICE_STATUS, index)])
        supplies = await snmp.columns(
            [SUPPLY_CLASS, SUPPLY_TYPE, SUPPLY_DESCR, SUPPLY_MAX, SUPPLY_LEVEL], MAX_SUPPLIES
        )
        inputs = await snmp.columns([INPUT_MAX, INPUT_LEVEL, INPUT_NAME], MAX_INPUTS)

    errors = printers[HR_PRINTER_ERRORS].get((index,))
    snap = Snapshot(
        sys_descr=_text(scalars.get(SYS_DESCR)),
        device_status=_int(scalars.get((*HR_DEVICE_STATUS, index))),
        printer_status=_int(printers[HR_PRINTER_STATUS].get((index,))),
        error_state=errors if isinstance(errors, bytes) else b"",
    )
    for i, row in _rows(supplies, index):
        snap.supplies.append(
            Supply(i, klass=_int(row[SUPPLY_CLASS]), kind=_int(row[SUPPLY_TYPE]),
                   description=_text(row[SUPPLY_DESCR]), max_capacity=_int(row[SUPPLY_MAX]),
                   level=_int(row[SUPPLY_LEVEL]))
        )  # fmt: skip
    for i, row in _rows(inputs, index):
        snap.trays.append(
            Tray(i, name=_text(row[INPUT_NAME]), max_capacity=_int(row[INPUT_MAX]),
                 level=_int(row[INPUT_LEVEL]))
        )  # fmt: skip
    return snap


def probe(target: Target, params: Params, timeout: float) -> Outcome:
    deadline = time.monotonic() + timeout
    try:
        host, port = parse_target(target.address)
    except ValueError as exc:
        return Outcome(False, ERROR, info={"error": str(exc)})
    try:
        addrs = resolve(host, port, params.family, timeout, socket.SOCK_DGRAM)
    except ResolveError as exc:
        return Outcome(False, RESOLVE_FAILED, info={"error": str(exc)})
    family, sockaddr = addrs[0]
    hint = V2C_HINT if params.version == "2c" else V3_HINT
    try:
        snap, elapsed = _printer.ask(
            lambda _: _collect(sockaddr[0], port, family, params), deadline
        )
    except TimeoutError:
        return Outcome(
            False, TIMEOUT, info={"error": f"no complete answer within {timeout:g} s", "hint": hint}
        )
    except core.CheckFailed as failed:
        if failed.reason == TIMEOUT:
            failed.info["hint"] = hint
        raise
    verdict = judge(snap, params.toner_low_ratio)
    verdict.metrics["query_seconds"] = elapsed
    return verdict.outcome()


def parse_target(address: str) -> tuple[str, int]:
    """``host[:port]``, the port defaulting to SNMP's."""
    return parse_address(address, 161)


CHECK = core.CheckType(
    params=Params,
    probe=probe,
    reasons=REASONS,
    metrics={
        "device_status": core.gauge(
            "hrDeviceStatus: 1 unknown, 2 running, 3 warning, 4 testing, 5 down.", 1, 5
        ),
        "printer_status": core.gauge(
            "hrPrinterStatus: 1 other, 2 unknown, 3 idle, 4 printing, 5 warmup.", 1, 5
        ),
        "error_conditions": core.gauge(
            "hrPrinterDetectedErrorState bits set (jammed, noToner, doorOpen...).",
            0,
            len(ERROR_BITS),
        ),
        **_printer.LEVEL_METRICS,
        "query_seconds": core.seconds("Time of the SNMP exchange."),
    },
    doc=__doc__ or "",
    parse_target=parse_target,
)
