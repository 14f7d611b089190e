"""ssh against a real OpenSSH server on 127.0.0.1, with its own host keys and a test account.

The account (``wrtest``) is created when absent and removed afterwards; its password is ``*``
(no password matches, but the account is not locked, which sshd refuses with PAM off).
Changing the server's host key means restarting sshd on the same port with another key.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import ValidationError

from checks.core import Target, run_check
from checks.registry import REGISTRY
from checks.ssh import Params, known_hosts_name
from tests.checks.conftest import RunCheck
from tests.devices import Sshd, free_port, keygen, ssh_user, sshd
from tests.helpers import need_program

pytestmark = pytest.mark.peer

PASSPHRASE = "phường-bến-thành-2025"


@dataclass(frozen=True)
class Keys:
    host_a: Path
    host_b: Path
    client: Path
    stranger: Path
    locked: Path  # encrypted with PASSPHRASE
    ecdsa_host: Path


def public(key: Path) -> str:
    """'TYPE BASE64' of a key pair's public half."""
    kind, blob = Path(f"{key}.pub").read_text().split()[:2]
    return f"{kind} {blob}"


def ssh_keygen_fingerprint(key: Path) -> str:
    out = subprocess.run([need_program("ssh-keygen"), "-lf", f"{key}.pub"], check=True,
                         capture_output=True, text=True, timeout=30).stdout  # fmt: skip
    return out.split()[1]


@pytest.fixture(scope="module")
def user() -> Iterator[str]:
    with ssh_user() as name:
        yield name


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    d = tmp_path_factory.mktemp("keys")
    return Keys(
        host_a=keygen(d / "host_a"),
        host_b=keygen(d / "host_b"),
        client=keygen(d / "client"),
        stranger=keygen(d / "stranger"),
        locked=keygen(d / "locked", passphrase=PASSPHRASE),
        ecdsa_host=keygen(d / "ecdsa_host", kind="ecdsa"),
    )


def authorized(keys: Keys, directory: Path) -> Path:
    path = directory / "authorized.pub"
    path.write_text(Path(f"{keys.client}.pub").read_text() + Path(f"{keys.locked}.pub").read_text())
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, user: str, keys: Keys) -> Iterator[Sshd]:
    work = tmp_path_factory.mktemp("sshd")
    with sshd(work, keys.host_a, {user: authorized(keys, work)}) as s:
        yield s


@pytest.fixture(scope="module")
def known_hosts(tmp_path_factory: pytest.TempPathFactory, server: Sshd, keys: Keys) -> Path:
    path = tmp_path_factory.mktemp("known") / "known_hosts"
    path.write_text(f"{known_hosts_name('127.0.0.1', server.port)} {public(keys.host_a)}\n")
    return path


@pytest.fixture
def base(server: Sshd, known_hosts: Path, keys: Keys, user: str) -> dict[str, str]:
    return {"username": user, "key_file": str(keys.client), "known_hosts": str(known_hosts)}


def address(server: Sshd) -> str:
    return f"127.0.0.1:{server.port}"


def test_known_host_runs_the_command(
    run: RunCheck, server: Sshd, base: dict[str, str], keys: Keys
) -> None:
    r = run("ssh", address(server), command="echo ok", expect=["^ok$"], **base)
    assert (r.success, r.reason) == (True, "ok"), r.info
    m = r.metrics
    assert m["exit_status"] == 0
    assert all(m[k] > 0 for k in ("connect_seconds", "login_seconds", "command_seconds"))
    assert r.info["server_version"].startswith("SSH-2.0-OpenSSH")
    assert r.info["host_key"] == ssh_keygen_fingerprint(keys.host_a)
    assert r.info["host_key_type"] == "ssh-ed25519"


def test_login_only(run: RunCheck, server: Sshd, base: dict[str, str]) -> None:
    r = run("ssh", address(server), **base)
    assert (r.success, r.reason) == (True, "ok"), r.info
    assert "command_seconds" not in r.metrics and "exit_status" not in r.metrics


def test_port_parameter(run: RunCheck, server: Sshd, base: dict[str, str]) -> None:
    assert run("ssh", "127.0.0.1", port=server.port, **base).success


def test_expectations(run: RunCheck, server: Sshd, base: dict[str, str]) -> None:
    cmd = "printf 'interface ge-0/0/1 up\\ninterface ge-0/0/2 down\\n'"
    ok = run("ssh", address(server), command=cmd, expect=[r"ge-0/0/1 up$"], **base)
    assert ok.success, ok.info
    r = run("ssh", address(server), command=cmd, expect=["up", r"^all ok$"], **base)
    assert (r.success, r.reason) == (False, "expectation_failed")
    assert r.info["expectation"] == "expect[1]"
    assert r.info["output"].startswith("interface ge-0/0/1 up")
    assert r.metrics["exit_status"] == 0
    r = run("ssh", address(server), command=cmd, expect_absent=[r"\bdown$"], **base)
    assert (r.success, r.reason, r.info["expectation"]) == (
        False, "expectation_failed", "expect_absent[0]",
    )  # fmt: skip


def test_non_zero_exit(run: RunCheck, server: Sshd, base: dict[str, str]) -> None:
    r = run("ssh", address(server), command="echo 'no such table' >&2; exit 3", **base)
    assert (r.success, r.reason) == (False, "command_failed")
    assert r.metrics["exit_status"] == 3
    assert r.info["stderr"] == "no such table"


def test_wrong_client_key(run: RunCheck, server: Sshd, base: dict[str, str], keys: Keys) -> None:
    r = run("ssh", address(server), **{**base, "key_file": str(keys.stranger)})
    assert (r.success, r.reason) == (False, "auth_failed"), r.info
    assert r.info["host_key"]  # the host was checked before the key was offered


def test_unknown_host_is_rejected(
    run: RunCheck, server: Sshd, base: dict[str, str], tmp_path: Path, keys: Keys
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    r = run("ssh", address(server), **{**base, "known_hosts": str(empty)})
    assert (r.success, r.reason) == (False, "host_key_unknown"), r.info
    assert r.info["host_key"] == ssh_keygen_fingerprint(keys.host_a)
    assert empty.read_text() == ""  # nothing recorded without trust_on_first_use
    missing = run("ssh", address(server), **{**base, "known_hosts": str(tmp_path / "nope")})
    assert (missing.reason, "no such file" in missing.info["error"]) == ("error", True)


def test_known_with_another_key_type(
    run: RunCheck, server: Sshd, base: dict[str, str], tmp_path: Path, keys: Keys
) -> None:
    other = tmp_path / "known_hosts"
    other.write_text(f"{known_hosts_name('127.0.0.1', server.port)} {public(keys.ecdsa_host)}\n")
    r = run("ssh", address(server), **{**base, "known_hosts": str(other)})
    assert (r.success, r.reason) == (False, "host_key_mismatch"), r.info
    assert "known_hosts has ecdsa-sha2-nistp256" in r.info["error"]


def test_pins(run: RunCheck, server: Sshd, keys: Keys, user: str) -> None:
    pinned = {"username": user, "key_file": str(keys.client)}
    for pin in (public(keys.host_a), ssh_keygen_fingerprint(keys.host_a)):
        r = run("ssh", address(server), host_key=pin, command="true", **pinned)
        assert (r.success, r.reason) == (True, "ok"), (pin, r.info)
    for pin in (public(keys.host_b), ssh_keygen_fingerprint(keys.host_b)):
        r = run("ssh", address(server), host_key=pin, **pinned)
        assert (r.success, r.reason) == (False, "host_key_mismatch"), (pin, r.info)


def test_trust_on_first_use_then_a_changed_host_key(
    run: RunCheck, tmp_path: Path, keys: Keys, user: str
) -> None:
    port = free_port()
    known = tmp_path / "tofu_known_hosts"
    params = {"username": user, "key_file": str(keys.client), "known_hosts": str(known),
              "trust_on_first_use": True, "command": "echo ok", "expect": ["ok"]}  # fmt: skip
    auth = {user: authorized(keys, tmp_path)}
    with sshd(tmp_path / "first", keys.host_a, auth, port=port):
        first = run("ssh", f"127.0.0.1:{port}", **params)
        assert (first.success, first.info.get("host_key_recorded")) == (True, "yes"), first.info
        assert known.read_text() == f"[127.0.0.1]:{port} {public(keys.host_a)}\n"
        assert oct(known.stat().st_mode & 0o777) == "0o600"
        again = run("ssh", f"127.0.0.1:{port}", **params)
        assert again.success and "host_key_recorded" not in again.info
    with sshd(tmp_path / "second", keys.host_b, auth, port=port):
        r = run("ssh", f"127.0.0.1:{port}", **params)
    assert (r.success, r.reason) == (False, "host_key_mismatch"), r.info
    assert r.info["host_key"] == ssh_keygen_fingerprint(keys.host_b)
    assert "host key changed" in r.info["error"]
    assert known.read_text().count("\n") == 1  # a mismatch is never recorded


def test_encrypted_key_and_its_passphrase(
    server: Sshd, base: dict[str, str], keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    kind = REGISTRY["ssh"]
    caplog.set_level(logging.DEBUG)
    locked = {**base, "key_file": str(keys.locked)}
    results = {}
    for label, extra in (("right", {"passphrase": PASSPHRASE}), ("none", {}),
                         ("wrong", {"passphrase": PASSPHRASE + "x"})):  # fmt: skip
        params = kind.params.model_validate({**locked, **extra, "command": "echo ok"})
        assert PASSPHRASE not in repr(params)
        results[label] = run_check("ssh", kind, Target("t", address(server)), params, 5.0)
    assert results["right"].success, results["right"].info
    assert (results["none"].reason, "give its passphrase" in results["none"].info["error"]) == (
        "error", True,
    )  # fmt: skip
    assert results["wrong"].reason == "error"
    assert "wrong passphrase" in results["wrong"].info["error"]
    text = repr([r.as_dict() for r in results.values()]) + caplog.text
    assert PASSPHRASE not in text


def test_refused_and_timeout(
    run: RunCheck, base: dict[str, str], closed_port: int, silent_port: int
) -> None:
    r = run("ssh", f"127.0.0.1:{closed_port}", **base)
    assert (r.success, r.reason) == (False, "refused")
    # Accepts TCP, never says a word: the banner never comes.
    r = run("ssh", f"127.0.0.1:{silent_port}", timeout=1.0, **base)
    assert (r.success, r.reason) == (False, "timeout"), r.info
    assert "connect_seconds" in r.metrics


def test_command_that_outlives_the_timeout(
    run: RunCheck, server: Sshd, base: dict[str, str]
) -> None:
    # Writes until the channel is gone, then dies of SIGPIPE: nothing outlives the test.
    ticking = "while echo tick; do sleep 0.2; done"
    r = run("ssh", address(server), command=ticking, timeout=1.5, **base)
    assert (r.success, r.reason) == (False, "timeout"), r.info
    # Logged in, then the command ran out of time: the check's own deadline, not the runner's.
    assert "login_seconds" in r.metrics and "exit_status" not in r.metrics
    assert r.info["error"] == "no time left for the command to finish"


def test_params() -> None:
    common = {"username": "u", "key_file": "/k"}
    cases: list[tuple[dict[str, object], str]] = [
        ({}, "give known_hosts or host_key"),
        (
            {"host_key": "SHA256:" + "A" * 43, "trust_on_first_use": True},
            "trust_on_first_use needs",
        ),
        ({"known_hosts": "/kh", "expect": ["x"]}, "need a command"),
        ({"host_key": "ssh-ed25519 not*base64"}, "expected 'TYPE BASE64'"),
        ({"known_hosts": "/kh", "command": "x", "expect": ["("]}, "not a valid regex"),
    ]
    for extra, says in cases:
        with pytest.raises(ValidationError, match=says):
            Params.model_validate({**common, **extra})
    with pytest.raises(ValidationError) as caught:
        Params.model_validate({**common, "passphrase": "sêcret-pass"})
    assert "sêcret-pass" not in str(caught.value)
    pin = Params.model_validate({**common, "host_key": "ssh-ed25519 AAAA comment here"})
    assert pin.host_key == "ssh-ed25519 AAAA"
