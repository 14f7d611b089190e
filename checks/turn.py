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
- ``connect_seconds``, ``tls_handshake_seconds``, ``cert_expiry_seconds``, ``cert_days_left``
  over TCP/TLS, as in the tcp check.

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

import time
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import Field, IPvAnyAddress, SecretStr, field_validator, model_validator

from checks import core
from checks._net import (
    REFUSED,
    RESOLVE_FAILED,
    SOURCE_UNAVAILABLE,
    TLS_ERROR,
    TLS_EXPIRED,
    UNREACHABLE,
    Family,
    family_from_number,
)
from checks.core import ERROR, TIMEOUT, Outcome, Target
from checks.sip import DialError, peer_text
from checks.stun import (
    BAD_RESPONSE,
    ERROR_RESPONSE,
    Session,
    StunError,
    Transport,
    address_text,
    check_tls_options,
    error_of,
    fail,
)

if TYPE_CHECKING:
    from aioice.stun import Message

AUTH_FAILED = "auth_failed"
ALLOCATION_FAILED = "allocation_failed"

REASONS = frozenset(
    {
        AUTH_FAILED,
        ALLOCATION_FAILED,
        ERROR_RESPONSE,
        BAD_RESPONSE,
        TIMEOUT,
        REFUSED,
        UNREACHABLE,
        RESOLVE_FAILED,
        SOURCE_UNAVAILABLE,
        TLS_ERROR,
        TLS_EXPIRED,
    }
)

AUTH_CODES = frozenset({401, 431, 441})
ALLOCATION_CODES = frozenset({403, 437, 440, 442, 486, 508})
UNAUTHORIZED = 401
STALE_NONCE = 438
MAX_STALE_RETRIES = 2
# RFC 8656 section 14.7: protocol number 17 (UDP) in the first byte.
UDP_RELAY = 17 << 24


class Params(core.Params):
    username: str = Field(min_length=1, max_length=256)
    password: SecretStr | None = None
    password_file: str | None = Field(default=None, min_length=1)
    transport: Transport = "udp"
    rto_seconds: float = Field(default=0.5, ge=0.05, le=5.0)
    source: IPvAnyAddress | None = None
    family: Family = "auto"
    verify: bool = True
    ca_file: str | None = Field(default=None, min_length=1)
    server_name: str | None = Field(default=None, min_length=1, max_length=253)

    _family_number = field_validator("family", mode="before")(family_from_number)

    @model_validator(mode="after")
    def _checks(self) -> Params:
        if (self.password is None) == (self.password_file is None):
            raise ValueError("give exactly one of password, password_file")
        check_tls_options(self.transport, self.verify, self.ca_file, self.server_name)
        return self


class _PasswordError(Exception):
    pass


def _password(params: Params) -> str:
    if params.password is not None:
        return params.password.get_secret_value()
    assert params.password_file is not None
    try:
        with open(params.password_file, encoding="utf-8") as f:
            first = f.readline()
    except (OSError, UnicodeDecodeError) as exc:
        what = getattr(exc, "strerror", None) or type(exc).__name__
        raise _PasswordError(f"password_file {params.password_file}: cannot read: {what}") from None
    secret = first.rstrip("\r\n")
    if not secret:
        raise _PasswordError(f"password_file {params.password_file}: first line is empty")
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


def _error_outcome(
    message: Message, authenticated: bool, metrics: dict[str, float], info: dict[str, str]
) -> Outcome:
    code, text = error_of(message)
    metrics["error_code"] = float(code)
    info["error_text"] = text
    if code in ALLOCATION_CODES:
        reason = ALLOCATION_FAILED
    elif code in AUTH_CODES and (authenticated or code != UNAUTHORIZED):
        reason = AUTH_FAILED
    else:
        reason = ERROR_RESPONSE
    return fail(reason, f"error response {code} {text}".rstrip(), metrics, info)


def probe(target: Target, params: Params, timeout: float) -> Outcome:
    deadline = time.monotonic() + timeout
    try:
        password = _password(params)
    except _PasswordError as exc:
        return Outcome(False, ERROR, info={"error": str(exc)})
    creds = _Credentials(
        unicodedata.normalize("NFC", params.username), unicodedata.normalize("NFC", password)
    )
    try:
        session = Session.open(target.address, params.transport, params, deadline)
    except ValueError as exc:
        return Outcome(False, ERROR, info={"error": str(exc)})
    except DialError as exc:
        info = {"error": exc.message}
        if exc.address:
            info["address"] = exc.address
        return Outcome(False, exc.reason, info=info)

    metrics = dict(session.link.metrics)
    info = {**session.link.info, "address": session.link.address}
    try:
        outcome = _allocate(session, creds, metrics, info)
        if outcome.success:
            info["released"] = _release(session, creds)
    finally:
        session.close()
        if not session.link.stream:
            metrics["retransmissions"] = float(session.retransmissions)
    return outcome


def _allocate(
    session: Session, creds: _Credentials, metrics: dict[str, float], info: dict[str, str]
) -> Outcome:
    from aioice import stun

    t0 = time.perf_counter()
    try:
        first = session.transact(_request("ALLOCATE", {"REQUESTED-TRANSPORT": UDP_RELAY}))
        metrics["rtt_seconds"] = first.rtt_seconds
        reply = first.message
        authenticated = False
        if reply.message_class == stun.Class.ERROR and error_of(reply)[0] == UNAUTHORIZED:
            if not creds.challenge(reply):
                return fail(BAD_RESPONSE, "401 without REALM and NONCE", metrics, info)
            info["realm"] = peer_text(creds.realm)
            reply = _authenticated(session, creds, "ALLOCATE", {"REQUESTED-TRANSPORT": UDP_RELAY})
            authenticated = True
    except StunError as exc:
        return fail(exc.reason, exc.message, metrics, info)
    finally:
        metrics["allocate_seconds"] = time.perf_counter() - t0

    if reply.message_class == stun.Class.ERROR:
        return _error_outcome(reply, authenticated, metrics, info)
    if authenticated and not reply.check_message_integrity(creds.key):
        return fail(BAD_RESPONSE, "allocation response not signed with our key", metrics, info)
    relayed = reply.attributes.get("XOR-RELAYED-ADDRESS")
    if relayed is None:
        return fail(BAD_RESPONSE, "allocation response without XOR-RELAYED-ADDRESS", metrics, info)
    info["relayed_address"] = address_text(relayed)
    if "XOR-MAPPED-ADDRESS" in reply.attributes:
        info["mapped_address"] = address_text(reply.attributes["XOR-MAPPED-ADDRESS"])
    if "LIFETIME" in reply.attributes:
        metrics["lifetime_seconds"] = float(reply.attributes["LIFETIME"])
    return Outcome(True, metrics=metrics, info=info)


def _release(session: Session, creds: _Credentials) -> str:
    from aioice import stun

    if time.monotonic() >= session.deadline:
        return "skipped"
    try:
        if creds.key:
            reply = _authenticated(session, creds, "REFRESH", {"LIFETIME": 0})
        else:
            reply = session.transact(_request("REFRESH", {"LIFETIME": 0})).message
    except StunError as exc:
        return f"no: {exc.message}"
    if reply.message_class == stun.Class.ERROR:
        code, text = error_of(reply)
        return f"no: error response {code} {text}".rstrip()
    return "yes"
