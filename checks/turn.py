"""TURN Allocate with long-term credentials (RFC 8656, RFC 8489 section 9.2): can a WebRTC
client get a relay from this TURN server?

Target address: ``host[:port]``, port 3478 by default (5349 with ``transport: tls``); an IPv6
literal goes in brackets.

The exchange: an Allocate (UDP relay) without credentials; the server's 401 gives the realm
and a nonce; the Allocate again with USERNAME, REALM, NONCE and MESSAGE-INTEGRITY. A success
response must be signed with our key and carry XOR-RELAYED-ADDRESS. A 438 (stale nonce) is
retried with the new nonce, at most twice. The allocation is then released at once with a
Refresh of lifetime 0, so probes never pile up allocations on the server. Transactions follow
the stun check (retransmissions over UDP, once over TCP/TLS); messages are built and parsed
with aioice's ``stun`` module.

Parameters: ``username``; ``password`` or ``password_file`` (one of them; the file's first
line is the password); ``transport`` (udp, tcp, tls), ``rto_seconds``, ``source``, ``family``,
and for TLS ``verify``, ``ca_file``, ``server_name``. The password is never logged, reported
or shown: it is a secret field, and errors about the file name the file, not its content.
Username and password are NFC-normalized (RFC 8265 OpaqueString) before use.

Metrics:
- ``rtt_seconds``: round trip of the first Allocate (the one the server challenges);
- ``allocate_seconds``: start of the first Allocate to the allocation (or the final error);
- ``lifetime_seconds``: the allocation lifetime the server granted;
- ``error_code``: the STUN error code of the response that ended the check;
- ``retransmissions``: requests resent over UDP, all transactions together;
- ``connect_seconds``, ``tls_handshake_seconds``, ``cert_expiry_seconds`` over
  TCP/TLS, as in the tcp check.

Info: ``relayed_address`` and ``mapped_address`` (``ip:port``), ``realm``, ``address`` (the
server IP), ``released`` (``yes``, ``no`` with the error, or ``skipped`` when the deadline had
passed: the server frees it when its lifetime ends), ``error_text``, ``tls_version``, ``error``.

Reasons:
- ``auth_failed``: the server refused the credentials: 401 to the authenticated request,
  431 (integrity check failure) or 441 (wrong credentials);
- ``allocation_failed``: the credentials were taken but no relay was given: 403 (forbidden),
  437 (allocation mismatch), 440 (address family not supported), 442 (unsupported transport),
  486 (allocation quota reached), 508 (insufficient capacity);
- ``error_response``: any other error response (its code in ``error_code``);
- ``bad_response``: not a STUN response to our request, a 401 without realm or nonce, or a
  success that is unsigned, wrongly signed or has no relayed address;
- ``timeout``, ``refused``, ``unreachable``, ``resolve_failed``, ``source_unavailable``,
  ``tls_error``, ``tls_expired``.

Privileges: none. Needs the ``aioice`` package (imported only when the check runs).
"""

from __future__ import annotations

import functools
import time
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import Field, SecretStr, model_validator

from checks import core
from checks._dial import carrying, peer_text
from checks._net import parse_address
from checks._stun import (
    BAD_RESPONSE,
    DEFAULT_PORTS,
    ERROR_RESPONSE,
    STUN_METRICS,
    STUN_REASONS,
    Session,
    StunParams,
    address_text,
    error_of,
)
from checks.core import ERROR, CheckFailed, Outcome, Target

if TYPE_CHECKING:
    from aioice.stun import Message

AUTH_FAILED = "auth_failed"
ALLOCATION_FAILED = "allocation_failed"

REASONS = STUN_REASONS | {AUTH_FAILED, ALLOCATION_FAILED}

AUTH_CODES = frozenset({401, 431, 441})
ALLOCATION_CODES = frozenset({403, 437, 440, 442, 486, 508})
UNAUTHORIZED = 401
STALE_NONCE = 438
MAX_STALE_RETRIES = 2
# RFC 8656 section 14.7: protocol number 17 (UDP) in the first byte.
UDP_RELAY = 17 << 24


class Params(StunParams):
    username: str = Field(min_length=1, max_length=256)
    password: SecretStr | None = None
    password_file: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_password(self) -> Params:
        if (self.password is None) == (self.password_file is None):
            raise ValueError("give exactly one of password, password_file")
        return self


def _password(params: Params) -> str:
    if params.password is not None:
        return params.password.get_secret_value()
    assert params.password_file is not None
    try:
        with open(params.password_file, encoding="utf-8") as f:
            first = f.readline()
    except (OSError, UnicodeDecodeError) as exc:
        what = getattr(exc, "strerror", None) or type(exc).__name__
        raise CheckFailed(
            ERROR, f"password_file {params.password_file}: cannot read: {what}"
        ) from None
    secret = first.rstrip("\r\n")
    if not secret:
        raise CheckFailed(ERROR, f"password_file {params.password_file}: first line is empty")
    return secret


@dataclass
class _Credentials:
    username: str
    password: str
    realm: str = ""
    nonce: bytes = b""
    key: bytes = b""

    def challenge(self, message: Message) -> bool:
        """Take realm and nonce from a 401/438; False when they are missing."""
        from aioice.turn import make_integrity_key

        realm, nonce = message.attributes.get("REALM"), message.attributes.get("NONCE")
        if nonce is None or (realm is None and not self.realm):
            return False
        self.realm = str(realm) if realm is not None else self.realm
        self.nonce = bytes(nonce)
        self.key = make_integrity_key(self.username, self.realm, self.password)
        return True

    def sign(self, message: Message) -> None:
        message.attributes["USERNAME"] = self.username
        message.attributes["REALM"] = self.realm
        message.attributes["NONCE"] = self.nonce
        message.add_message_integrity(self.key)


def _request(method: str, attributes: dict[str, object]) -> Message:
    from aioice import stun

    message = stun.Message(stun.Method[method], stun.Class.REQUEST)
    message.attributes.update(attributes)
    return message


def _authenticated(
    session: Session, creds: _Credentials, method: str, attributes: dict[str, object]
) -> Message:
    """One signed transaction, retried with a fresh nonce on 438."""
    for _ in range(1 + MAX_STALE_RETRIES):
        request = _request(method, attributes)
        creds.sign(request)
        reply = session.transact(request).message
        code, _text = error_of(reply)
        if code == STALE_NONCE and creds.challenge(reply):
            continue
        return reply
    return reply


def _error_reason(message: Message, authenticated: bool) -> str:
    code, _text = error_of(message)
    if code in ALLOCATION_CODES:
        return ALLOCATION_FAILED
    if code in AUTH_CODES and (authenticated or code != UNAUTHORIZED):
        return AUTH_FAILED
    return ERROR_RESPONSE


def probe(target: Target, params: Params, timeout: float) -> Outcome:
    deadline = time.monotonic() + timeout
    password = _password(params)
    creds = _Credentials(
        unicodedata.normalize("NFC", params.username), unicodedata.normalize("NFC", password)
    )
    session = Session.open(target.address, params, deadline)
    metrics = dict(session.link.metrics)
    info = dict(session.link.info)
    with carrying(metrics, info):
        try:
            _allocate(session, creds, metrics, info)
            info["released"] = _release(session, creds)
        finally:
            session.close()
            if not session.link.stream:
                metrics["retransmissions"] = float(session.retransmissions)
    return Outcome(True, metrics=metrics, info=info)


def _allocate(
    session: Session, creds: _Credentials, metrics: dict[str, float], info: dict[str, str]
) -> None:
    """Get a relay, its facts into ``metrics`` and ``info``; raise CheckFailed otherwise."""
    from aioice import stun

    t0 = time.perf_counter()
    try:
        first = session.transact(_request("ALLOCATE", {"REQUESTED-TRANSPORT": UDP_RELAY}))
        metrics["rtt_seconds"] = first.rtt_seconds
        reply = first.message
        authenticated = False
        if reply.message_class == stun.Class.ERROR and error_of(reply)[0] == UNAUTHORIZED:
            if not creds.challenge(reply):
                raise CheckFailed(BAD_RESPONSE, "401 without REALM and NONCE")
            info["realm"] = peer_text(creds.realm)
            reply = _authenticated(session, creds, "ALLOCATE", {"REQUESTED-TRANSPORT": UDP_RELAY})
            authenticated = True
    finally:
        metrics["allocate_seconds"] = time.perf_counter() - t0

    if reply.message_class == stun.Class.ERROR:
        code, text = error_of(reply)
        metrics["error_code"] = float(code)
        info["error_text"] = text
        message = f"error response {code} {text}".rstrip()
        raise CheckFailed(_error_reason(reply, authenticated), message)
    if authenticated and not reply.check_message_integrity(creds.key):
        raise CheckFailed(BAD_RESPONSE, "allocation response not signed with our key")
    relayed = reply.attributes.get("XOR-RELAYED-ADDRESS")
    if relayed is None:
        raise CheckFailed(BAD_RESPONSE, "allocation response without XOR-RELAYED-ADDRESS")
    info["relayed_address"] = address_text(relayed)
    if "XOR-MAPPED-ADDRESS" in reply.attributes:
        info["mapped_address"] = address_text(reply.attributes["XOR-MAPPED-ADDRESS"])
    if "LIFETIME" in reply.attributes:
        metrics["lifetime_seconds"] = float(reply.attributes["LIFETIME"])


def _release(session: Session, creds: _Credentials) -> str:
    from aioice import stun

    if time.monotonic() >= session.deadline:
        return "skipped"
    try:
        if creds.key:
            reply = _authenticated(session, creds, "REFRESH", {"LIFETIME": 0})
        else:
            reply = session.transact(_request("REFRESH", {"LIFETIME": 0})).message
    except CheckFailed as exc:
        return f"no: {exc.message}"
    if reply.message_class == stun.Class.ERROR:
        code, text = error_of(reply)
        return f"no: error response {code} {text}".rstrip()
    return "yes"


CHECK = core.CheckType(
    params=Params,
    probe=probe,
    reasons=REASONS,
    metrics={
        **STUN_METRICS,
        "allocate_seconds": core.seconds(
            "Start of the first Allocate to the allocation, or to the error that ended it."
        ),
        "lifetime_seconds": core.gauge("Allocation lifetime the server granted.", 0),
    },
    doc=__doc__ or "",
    parse_target=functools.partial(parse_address, default_port=DEFAULT_PORTS["udp"]),
)
