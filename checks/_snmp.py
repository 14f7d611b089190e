"""An SNMP client for the checks and for discovery: GET and a GETBULK walker of table columns,
over pysnmp, with its failures as ``CheckFailed`` reasons.

pysnmp is imported only inside these functions: the agent loads it when an SNMP check or a
discovery runs, never at start.

Community and keys are secrets: they go to pysnmp and nowhere else (not into errors).

Not a check: probes import this module and ``checks.core``, never each other.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator, Sequence
from typing import Any

from checks.core import ERROR, TIMEOUT, CheckFailed

AUTH_FAILED = "auth_failed"

Oid = tuple[int, ...]

# Variable bindings asked for per GETBULK request; halved when the agent answers tooBig.
BULK_VARBINDS = 48
TOO_BIG = 1
AUTHORIZATION_ERROR = 16

AUTH_PROTOCOLS = ("MD5", "SHA", "SHA224", "SHA256", "SHA384", "SHA512")
PRIV_PROTOCOLS = ("AES", "AES192", "AES256")


def _hlapi() -> Any:
    from pysnmp.hlapi.v3arch import asyncio as hl  # type: ignore[import-untyped]

    return hl


@contextlib.contextmanager
def engine() -> Iterator[Any]:
    """A pysnmp engine, its dispatcher closed on exit; sessions may share it."""
    snmp_engine = _hlapi().SnmpEngine()
    try:
        yield snmp_engine
    finally:
        snmp_engine.close_dispatcher()


def community(text: str) -> Any:
    """SNMPv2c credentials."""
    return _hlapi().CommunityData(text, mpModel=1)


def usm(user: str, auth_key: str, priv_key: str, auth_protocol: str, priv_protocol: str) -> Any:
    """SNMPv3 authPriv credentials; protocols by the names in AUTH_PROTOCOLS, PRIV_PROTOCOLS."""
    hl = _hlapi()
    auth = {
        "MD5": hl.usmHMACMD5AuthProtocol,
        "SHA": hl.usmHMACSHAAuthProtocol,
        "SHA224": hl.usmHMAC128SHA224AuthProtocol,
        "SHA256": hl.usmHMAC192SHA256AuthProtocol,
        "SHA384": hl.usmHMAC256SHA384AuthProtocol,
        "SHA512": hl.usmHMAC384SHA512AuthProtocol,
    }[auth_protocol]
    priv = {
        "AES": hl.usmAesCfb128Protocol,
        "AES192": hl.usmAesCfb192Protocol,
        "AES256": hl.usmAesCfb256Protocol,
    }[priv_protocol]
    return hl.UsmUserData(user, auth_key, priv_key, authProtocol=auth, privProtocol=priv)


class Session:
    """GET and GETBULK towards one agent, raising CheckFailed (timeout, auth_failed, error).

    Values come back plain: ``None`` where the agent has none, ``bytes`` for octet strings,
    dotted text for object identifiers, ``int`` for numbers.
    """

    def __init__(self, snmp_engine: Any, auth: Any, transport: Any, context: Any) -> None:
        self.hl = _hlapi()
        self.engine = snmp_engine
        self.auth = auth
        self.transport = transport
        self.context = context
        self.bulk = BULK_VARBINDS
        self.absent = (self.hl.NoSuchInstance, self.hl.NoSuchObject, self.hl.EndOfMibView)

    @classmethod
    async def open(
        cls,
        snmp_engine: Any,
        auth: Any,
        address: tuple[str, int],
        family: int,
        timeout: float,
        retries: int,
        context: str = "",
    ) -> Session:
        """A session to ``address`` (an IP address and a UDP port): every request waits
        ``timeout`` seconds and is retried ``retries`` times."""
        hl = _hlapi()
        kind = hl.Udp6TransportTarget if family == socket.AF_INET6 else hl.UdpTransportTarget
        transport = await kind.create(address, timeout=timeout, retries=retries)
        return cls(snmp_engine, auth, transport, hl.ContextData(contextName=context.encode()))

    def _plain(self, value: Any) -> Any:
        if isinstance(value, self.absent):
            return None
        if hasattr(value, "asTuple"):
            return ".".join(map(str, value.asTuple()))
        if hasattr(value, "asOctets"):
            return bytes(value.asOctets())
        try:
            return int(value)
        except (TypeError, ValueError):
            return None

    def _check(self, indication: Any, status: Any) -> None:
        if indication:
            raise failure(indication)
        if status and int(status) == AUTHORIZATION_ERROR:
            raise CheckFailed(AUTH_FAILED, "the agent refused access (authorizationError)")
        if status and int(status) != TOO_BIG:
            raise CheckFailed(ERROR, f"agent error: {status.prettyPrint()}")

    def _vars(self, oids: Sequence[Oid]) -> list[Any]:
        hl = self.hl
        return [hl.ObjectType(hl.ObjectIdentity(".".join(map(str, o)))) for o in oids]

    async def get(self, oids: Sequence[Oid]) -> dict[Oid, Any]:
        indication, status, _, binds = await self.hl.get_cmd(
            self.engine, self.auth, self.transport, self.context, *self._vars(oids),
            lookupMib=False,
        )  # fmt: skip
        self._check(indication, status)
        return {tuple(name): self._plain(value) for name, value in binds}

    async def columns(self, columns: Sequence[Oid], max_rows: int) -> dict[Oid, dict[Oid, Any]]:
        """Walk table columns side by side with GETBULK: ``{column: {row index: value}}``."""
        out: dict[Oid, dict[Oid, Any]] = {c: {} for c in columns}
        cursor: dict[Oid, Oid] = {c: c for c in columns}
        for _ in range(max_rows * len(columns) + 8):  # bounded even if the agent never ends
            active = [c for c in columns if c in cursor]
            if not active:
                break
            reps = max(1, min(max_rows, self.bulk // len(active)))
            indication, status, _, binds = await self.hl.bulk_cmd(
                self.engine, self.auth, self.transport, self.context, 0, reps,
                *self._vars([cursor[c] for c in active]), lookupMib=False,
            )  # fmt: skip
            self._check(indication, status)
            if status and int(status) == TOO_BIG:
                if self.bulk <= len(active):
                    raise CheckFailed(ERROR, "agent error: tooBig even for one row per column")
                self.bulk = max(len(active), self.bulk // 2)
                continue
            if not binds:
                break
            for i, (name, value) in enumerate(binds):
                column = active[i % len(active)]
                if column not in cursor:
                    continue
                oid = tuple(name)
                ended = isinstance(value, self.hl.EndOfMibView)
                if ended or oid[: len(column)] != column or oid <= cursor[column]:
                    del cursor[column]
                    continue
                rows = out[column]
                rows[oid[len(column) :]] = self._plain(value)
                cursor[column] = oid
                if len(rows) >= max_rows:
                    del cursor[column]
        return out


def failure(indication: Any) -> CheckFailed:
    """pysnmp's error indication as a failure: timeout, auth_failed (v3) or error."""
    from pysnmp.proto import errind  # type: ignore[import-untyped]

    text = str(indication)
    if isinstance(indication, errind.RequestTimedOut):
        return CheckFailed(TIMEOUT, text)
    auth_errors = (
        errind.UnknownUserName,
        errind.WrongDigest,
        errind.DecryptionError,
        errind.UnknownSecurityName,
        errind.UnsupportedSecurityLevel,
        errind.AuthenticationError,
        errind.AuthenticationFailure,
    )
    if isinstance(indication, auth_errors):
        return CheckFailed(AUTH_FAILED, f"the agent reported: {text}")
    return CheckFailed(ERROR, text)
