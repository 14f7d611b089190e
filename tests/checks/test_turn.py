"""TURN Allocate against coturn on loopback with long-term credentials (UDP, TCP, TLS; right
and wrong password, unknown user), plus a scripted UDP socket for answers coturn will not give
on demand (quota reached, a success not signed with our key, a stale nonce)."""

from __future__ import annotations

import os
import socket
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from checks import turn
from checks.core import Result
from tests.checks.conftest import Certs
from tests.peers import Coturn, coturn, free_port, wait_until
from tests.peers import udp_responder as scripted_udp

RunCheck = Callable[..., Result]

USER, PASSWORD = "test", "secret"


@pytest.fixture(scope="module")
def turnserver(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[Coturn]:
    with coturn(tmp_path_factory.mktemp("coturn"), USER, PASSWORD, tls=certs.valid) as c:
        yield c


def everything(r: Result) -> str:
    return repr(r.as_dict())


@pytest.mark.peer
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_allocation_with_the_right_password(
    run: RunCheck, turnserver: Coturn, transport: str
) -> None:
    r = run(
        "turn",
        f"127.0.0.1:{turnserver.port}",
        transport=transport,
        username=USER,
        password=PASSWORD,
    )
    assert (r.success, r.reason) == (True, "ok"), r.info
    host, _, port = r.info["relayed_address"].rpartition(":")
    assert host == "127.0.0.1" and int(port) > 0
    assert r.info["mapped_address"].startswith("127.0.0.1:")
    assert r.info["realm"] == "test.local"
    assert r.info["released"] == "yes"
    assert r.metrics["lifetime_seconds"] > 0
    assert 0 < r.metrics["rtt_seconds"] <= r.metrics["allocate_seconds"] < 5
    assert "error_code" not in r.metrics


class HeldAllocation:
    """An allocation made by hand and kept until ``release``: a second client of the same user."""

    def __init__(self, port: int) -> None:
        from aioice import stun as wire
        from aioice.turn import make_integrity_key

        self.wire = wire
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(2)
        self.sock.connect(("127.0.0.1", port))
        challenge = self.ask("ALLOCATE", {"REQUESTED-TRANSPORT": 17 << 24}, sign=False)
        self.realm, self.nonce = challenge.attributes["REALM"], challenge.attributes["NONCE"]
        self.key = make_integrity_key(USER, self.realm, PASSWORD)
        reply = self.ask("ALLOCATE", {"REQUESTED-TRANSPORT": 17 << 24})
        self.allocated: bool = reply.message_class == wire.Class.RESPONSE
        if not self.allocated:
            self.sock.close()

    def ask(self, method: str, attributes: dict[str, object], sign: bool = True) -> Any:
        request = self.wire.Message(self.wire.Method[method], self.wire.Class.REQUEST)
        request.attributes.update(attributes)
        if sign:
            request.attributes.update(USERNAME=USER, REALM=self.realm, NONCE=self.nonce)
            request.add_message_integrity(self.key)
        self.sock.send(bytes(request))
        return self.wire.parse_message(self.sock.recv(2048))

    def release(self) -> None:
        reply = self.ask("REFRESH", {"LIFETIME": 0})
        assert reply.message_class == self.wire.Class.RESPONSE, reply
        self.sock.close()


@pytest.mark.peer
def test_allocation_is_released_on_the_server(run: RunCheck, tmp_path: Path) -> None:
    """With a quota of one allocation per user, an Allocate gets 486 (Allocation Quota
    Reached) while another allocation of the user lives. coturn frees a deleted allocation's
    quota about a second after the Refresh with lifetime 0; an allocation never released
    would hold it for its whole 600 s lifetime."""
    with coturn(tmp_path, USER, PASSWORD, extra=["--user-quota=1"]) as server:
        address = f"127.0.0.1:{server.port}"
        r = run("turn", address, username=USER, password=PASSWORD)
        assert (r.success, r.info["released"]) == (True, "yes"), r.info

        held: list[HeldAllocation] = []

        def allocate_by_hand() -> bool:
            attempt = HeldAllocation(server.port)
            if attempt.allocated:
                held.append(attempt)
            return attempt.allocated

        assert wait_until(allocate_by_hand, 10, step=0.2), "the check's allocation was not freed"
        r = run("turn", address, username=USER, password=PASSWORD)
        assert (r.reason, r.metrics["error_code"]) == ("allocation_failed", 486)
        held[0].release()
        assert wait_until(
            lambda: run("turn", address, username=USER, password=PASSWORD).success, 10, step=0.2
        )


@pytest.mark.peer
def test_allocation_over_tls(run: RunCheck, turnserver: Coturn, certs: Certs) -> None:
    assert turnserver.tls_port is not None
    r = run(
        "turn",
        f"127.0.0.1:{turnserver.tls_port}",
        transport="tls",
        ca_file=str(certs.ca),
        username=USER,
        password=PASSWORD,
    )
    assert r.success, r.info
    assert r.info["released"] == "yes"
    assert r.info["tls_version"].startswith("TLS")


@pytest.mark.peer
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_wrong_password_is_auth_failed(run: RunCheck, turnserver: Coturn, transport: str) -> None:
    r = run(
        "turn",
        f"127.0.0.1:{turnserver.port}",
        transport=transport,
        username=USER,
        password="not-the-Mật-khẩu",
    )
    assert (r.success, r.reason) == (False, "auth_failed"), r.info
    assert r.metrics["error_code"] == 401
    assert "relayed_address" not in r.info and "released" not in r.info
    assert "Mật-khẩu" not in everything(r)


@pytest.mark.peer
def test_unknown_user_is_auth_failed(run: RunCheck, turnserver: Coturn) -> None:
    r = run("turn", f"127.0.0.1:{turnserver.port}", username="nobody", password=PASSWORD)
    assert (r.reason, r.metrics["error_code"]) == ("auth_failed", 401)


@pytest.mark.peer
def test_password_from_a_file(run: RunCheck, turnserver: Coturn, tmp_path: Path) -> None:
    secret = tmp_path / "turn-password"
    secret.write_text(PASSWORD + "\n")
    r = run("turn", f"127.0.0.1:{turnserver.port}", username=USER, password_file=str(secret))
    assert r.success, r.info
    secret.write_text("wrong\n")
    r = run("turn", f"127.0.0.1:{turnserver.port}", username=USER, password_file=str(secret))
    assert r.reason == "auth_failed"


@pytest.mark.peer
def test_vietnamese_password_in_either_unicode_form(run: RunCheck, tmp_path: Path) -> None:
    # Typed on one keyboard "mật khẩu" is precomposed (NFC), on another decomposed (NFD);
    # the check normalizes to NFC (RFC 8265 OpaqueString) before hashing the key.
    password = unicodedata.normalize("NFC", "mật-khẩu-phường")
    with coturn(tmp_path, USER, password) as server:
        address = f"127.0.0.1:{server.port}"
        for form in ("NFC", "NFD"):
            typed = unicodedata.normalize(form, password)
            r = run("turn", address, username=USER, password=typed)
            assert r.success, (form, r.info)
            assert password not in everything(r) and typed not in everything(r)


@pytest.mark.peer
def test_stun_works_against_the_same_server(run: RunCheck, turnserver: Coturn) -> None:
    assert run("stun", f"127.0.0.1:{turnserver.port}").success


def test_missing_password_file_names_the_file(run: RunCheck, tmp_path: Path) -> None:
    path = tmp_path / "absent"
    r = run("turn", "127.0.0.1:3478", username=USER, password_file=str(path))
    assert (r.reason, r.info["error"]) == (
        "error",
        f"password_file {path}: cannot read: No such file or directory",
    )


def test_closed_port_is_refused(run: RunCheck) -> None:
    r = run("turn", f"127.0.0.1:{free_port('udp')}", username=USER, password=PASSWORD)
    assert (r.success, r.reason) == (False, "refused")


def test_silent_server_times_out(run: RunCheck) -> None:
    with scripted_udp(lambda data, i: None) as peer:
        r = run(
            "turn",
            f"127.0.0.1:{peer.port}",
            timeout=0.5,
            rto_seconds=0.1,
            username=USER,
            password=PASSWORD,
        )
    assert (r.success, r.reason) == (False, "timeout")
    assert r.metrics["retransmissions"] >= 1


# ---- scripted TURN answers -----------------------------------------------------------------

REALM = "scripted.test"


def scripted_turn(
    after_auth: Callable[[object, bytes], bytes],
) -> Callable[[bytes, int], bytes | None]:
    """401 to an Allocate without credentials; ``after_auth(request, key)`` otherwise."""
    from aioice import stun as wire
    from aioice.turn import make_integrity_key

    key = make_integrity_key(USER, REALM, PASSWORD)

    def answer(data: bytes, i: int) -> bytes | None:
        request = wire.parse_message(data)
        if "USERNAME" not in request.attributes:
            reply = wire.Message(request.message_method, wire.Class.ERROR, request.transaction_id)
            reply.attributes["ERROR-CODE"] = (401, "Unauthorized")
            reply.attributes["REALM"] = REALM
            reply.attributes["NONCE"] = b"n0nce"
            return bytes(reply)
        return after_auth(request, key)

    return answer


def error_reply(code: int, text: str, sign: bool) -> Callable[[object, bytes], bytes]:
    from aioice import stun as wire

    def reply(request: object, key: bytes) -> bytes:
        assert isinstance(request, wire.Message)
        out = wire.Message(request.message_method, wire.Class.ERROR, request.transaction_id)
        out.attributes["ERROR-CODE"] = (code, text)
        if sign:
            out.add_message_integrity(key)
        return bytes(out)

    return reply


def success_reply(key_override: bytes | None) -> Callable[[object, bytes], bytes]:
    from aioice import stun as wire

    def reply(request: object, key: bytes) -> bytes:
        assert isinstance(request, wire.Message)
        out = wire.Message(request.message_method, wire.Class.RESPONSE, request.transaction_id)
        out.attributes["XOR-RELAYED-ADDRESS"] = ("192.0.2.50", 50000)
        out.attributes["XOR-MAPPED-ADDRESS"] = ("198.51.100.4", 40000)
        out.attributes["LIFETIME"] = 600
        out.add_message_integrity(key_override or key)
        return bytes(out)

    return reply


def run_scripted(run: RunCheck, answer: Callable[[bytes, int], bytes | None]) -> Result:
    with scripted_udp(answer) as peer:
        return run(
            "turn",
            f"127.0.0.1:{peer.port}",
            timeout=1.0,
            rto_seconds=0.1,
            username=USER,
            password=PASSWORD,
        )


def test_quota_reached_is_allocation_failed(run: RunCheck) -> None:
    r = run_scripted(run, scripted_turn(error_reply(486, "Allocation Quota Reached", True)))
    assert (r.reason, r.metrics["error_code"]) == ("allocation_failed", 486)
    assert r.info["error_text"] == "Allocation Quota Reached"


def test_integrity_failure_is_auth_failed(run: RunCheck) -> None:
    r = run_scripted(run, scripted_turn(error_reply(431, "Integrity Check Failure", False)))
    assert (r.reason, r.metrics["error_code"]) == ("auth_failed", 431)


def test_other_error_is_error_response(run: RunCheck) -> None:
    r = run_scripted(run, scripted_turn(error_reply(420, "Unknown Attribute", True)))
    assert (r.reason, r.metrics["error_code"]) == ("error_response", 420)


def test_success_signed_with_another_key_is_a_bad_response(run: RunCheck) -> None:
    r = run_scripted(run, scripted_turn(success_reply(key_override=os.urandom(16))))
    assert (r.success, r.reason) == (False, "bad_response")
    assert "not signed with our key" in r.info["error"]


def test_signed_success_is_an_allocation(run: RunCheck) -> None:
    r = run_scripted(run, scripted_turn(success_reply(key_override=None)))
    assert r.success, r.info
    assert r.info["relayed_address"] == "192.0.2.50:50000"
    assert r.info["mapped_address"] == "198.51.100.4:40000"
    # The scripted server answers the Refresh with another signed success.
    assert r.info["released"] == "yes"


def test_stale_nonce_is_retried_with_the_new_one() -> None:
    from aioice import stun as wire

    nonces: list[bytes] = []
    signed = success_reply(key_override=None)

    def after_auth(request: object, key: bytes) -> bytes:
        assert isinstance(request, wire.Message)
        nonces.append(request.attributes["NONCE"])
        if request.attributes["NONCE"] == b"n0nce":
            out = wire.Message(request.message_method, wire.Class.ERROR, request.transaction_id)
            out.attributes["ERROR-CODE"] = (438, "Stale Nonce")
            out.attributes["NONCE"] = b"fresh"
            return bytes(out)
        return signed(request, key)

    from checks.core import Target

    with scripted_udp(scripted_turn(after_auth)) as peer:
        params = turn.Params(username=USER, password=PASSWORD, rto_seconds=0.1)
        outcome = turn.probe(Target("t", f"127.0.0.1:{peer.port}"), params, 2.0)
    assert outcome.success, outcome.info
    assert nonces[:2] == [b"n0nce", b"fresh"]


# ---- params --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"username": USER},
        {"username": USER, "password": "a", "password_file": "/tmp/p"},
        {"username": "", "password": "a"},
        {"password": "a"},
        {"username": USER, "password": "a", "transport": "dtls"},
        {"username": USER, "password": "a", "ca_file": "/tmp/ca.pem"},
    ],
)
def test_bad_params_are_rejected(params: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        turn.Params.model_validate(params)


def test_password_is_hidden() -> None:
    params = turn.Params.model_validate({"username": USER, "password": "Mật-khẩu-123"})
    for text in (repr(params), str(params), params.model_dump_json(), str(params.model_dump())):
        assert "Mật-khẩu-123" not in text
