"""SSH to managed network gear (switches, routers, firewalls): log in with a key, optionally
run one read-only command and check its output (paramiko).

Target address: ``host`` or ``host:port`` (``port`` otherwise, 22 by default); an IPv6
literal goes in brackets. The name is resolved within the timeout.

Host keys are verified before the key is offered, and an unknown host key is rejected:
- ``known_hosts``: an OpenSSH known_hosts file (hashed names work). A host listed there with a
  different key, or only with keys of other types, is ``host_key_mismatch``;
- ``host_key``: a pin, either a public key line (``ssh-ed25519 AAAA...``) or an OpenSSH
  SHA256 fingerprint (``SHA256:...`` as ``ssh-keygen -lf`` prints it);
- ``trust_on_first_use``: a host absent from ``known_hosts`` is trusted once, and its key is
  appended to that file (``info.host_key_recorded``); later changes are mismatches.
At least one of ``known_hosts`` and ``host_key`` is required.

Authentication: the private key in ``key_file`` (``passphrase`` when it is encrypted; never
logged or exported) for ``username``. No password, agent or other key is tried.

``command`` runs once in a session channel. Make it read-only and least-privileged on the
device side: an account that can only show, or a key restricted with
``command="..."``/``restrict`` in authorized_keys. Its exit status must be 0; ``expect``
regexes must all match its standard output and ``expect_absent`` ones must not (multiline:
``^`` and ``$`` match at line breaks). At most ``MAX_OUTPUT_BYTES`` are kept of each stream.
Every phase is bounded by what is left of the check timeout: TCP connect, banner, key
exchange, authentication, the session and the command.

Metrics:
- ``connect_seconds``: TCP connect;
- ``login_seconds``: banner, key exchange, host key check and authentication;
- ``command_seconds``: from the session request to the exit status;
- ``exit_status``: the command's exit status (-1 when the server sent none).

Info: ``server_version`` (the SSH banner), ``host_key`` (SHA256 fingerprint of the server's
key), ``host_key_type``, ``host_key_recorded``, ``expectation`` (which pattern failed),
``output`` (the start of the output, when an expectation failed), ``stderr`` (its last line,
when the command failed), ``error``.

Reasons: ``auth_failed``, ``host_key_mismatch``, ``host_key_unknown``, ``timeout``,
``refused``, ``unreachable``, ``resolve_failed``, ``command_failed`` (non-zero exit status,
or the server refused the session), ``expectation_failed``.

Privileges: none; the known_hosts file must be writable for trust_on_first_use.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import logging
import os
import re
import select
import threading
import time
from dataclasses import dataclass
from typing import Any

from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator

from checks import core
from checks._dial import carrying, dial, target_address
from checks._net import (
    REFUSED,
    RESOLVE_FAILED,
    UNREACHABLE,
    Family,
    family_from_number,
    parse_address,
)
from checks.core import ERROR, TIMEOUT, CheckFailed, Outcome, Target

AUTH_FAILED = "auth_failed"
HOST_KEY_MISMATCH = "host_key_mismatch"
HOST_KEY_UNKNOWN = "host_key_unknown"
EXPECTATION_FAILED = "expectation_failed"
COMMAND_FAILED = "command_failed"

REASONS = frozenset(
    {
        AUTH_FAILED,
        HOST_KEY_MISMATCH,
        HOST_KEY_UNKNOWN,
        TIMEOUT,
        REFUSED,
        UNREACHABLE,
        RESOLVE_FAILED,
        EXPECTATION_FAILED,
        COMMAND_FAILED,
    }
)

MAX_OUTPUT_BYTES = 64 * 1024
MAX_EXCERPT = 200
# How long a wait for output may last before stderr (which wakes no select) is looked at.
POLL_SECONDS = 0.05

_KEY_LINE = re.compile(r"^(?P<type>[a-z0-9@.-]+) (?P<blob>[A-Za-z0-9+/]+={0,2})(?: .*)?$")
_FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}=?$")
# trust_on_first_use appends to known_hosts: one writer at a time within the agent.
_RECORDING = threading.Lock()
# paramiko's transport thread logs every failed handshake with a traceback at ERROR; the
# check's result already carries the reason, so a device that is down must not flood the log.
TRANSPORT_LOG = "checks.ssh.transport"
logging.getLogger(TRANSPORT_LOG).setLevel(logging.CRITICAL)


class Params(core.Params):
    # Validation errors would otherwise quote the input, the passphrase included.
    model_config = ConfigDict(hide_input_in_errors=True)

    username: str = Field(min_length=1, max_length=64)
    key_file: str = Field(min_length=1)
    passphrase: SecretStr | None = None
    known_hosts: str | None = Field(default=None, min_length=1)
    host_key: str | None = Field(default=None, min_length=1, max_length=16384)
    trust_on_first_use: bool = False
    command: str | None = Field(default=None, min_length=1, max_length=4096)
    expect: list[str] = Field(default_factory=list, max_length=32)
    expect_absent: list[str] = Field(default_factory=list, max_length=32)
    port: int = Field(default=22, ge=1, le=65535)
    family: Family = "auto"

    _family_number = field_validator("family", mode="before")(family_from_number)

    @field_validator("expect", "expect_absent")
    @classmethod
    def _compiles(cls, value: list[str]) -> list[str]:
        for i, pattern in enumerate(value):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"[{i}] {pattern!r} is not a valid regex: {exc}") from None
        return value

    @field_validator("host_key")
    @classmethod
    def _pin_format(cls, value: str | None) -> str | None:
        if value is None:
            return None
        text = value.strip()
        if _FINGERPRINT.match(text):
            return text
        m = _KEY_LINE.match(text)
        if m:
            try:
                base64.b64decode(m["blob"], validate=True)
            except binascii.Error:
                raise ValueError("the key after the type is not valid base64") from None
            return f"{m['type']} {m['blob']}"
        raise ValueError(
            "expected 'TYPE BASE64' (a known_hosts key, e.g. ssh-ed25519 AAAA...) or an OpenSSH "
            "fingerprint 'SHA256:...'"
        )

    @model_validator(mode="after")
    def _coherent(self) -> Params:
        if self.known_hosts is None and self.host_key is None:
            raise ValueError("give known_hosts or host_key: unknown host keys are rejected")
        if self.trust_on_first_use and self.known_hosts is None:
            raise ValueError("trust_on_first_use needs known_hosts, to record the key in")
        if (self.expect or self.expect_absent) and self.command is None:
            raise ValueError("expect and expect_absent need a command")
        return self


def fingerprint(key_blob: bytes) -> str:
    """The OpenSSH SHA256 fingerprint of a public key blob."""
    digest = base64.b64encode(hashlib.sha256(key_blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def known_hosts_name(host: str, port: int) -> str:
    """How OpenSSH names a host in known_hosts: ``host``, or ``[host]:port`` off port 22."""
    return host if port == 22 else f"[{host}]:{port}"


@dataclass
class Session:
    metrics: dict[str, float]
    info: dict[str, str]


def _load_key(params: Params) -> Any:
    import paramiko

    secret = params.passphrase.get_secret_value().encode() if params.passphrase else None
    try:
        return paramiko.PKey.from_path(params.key_file, secret)  # type: ignore[arg-type]
    except OSError as exc:
        raise CheckFailed(ERROR, f"key_file {params.key_file}: {exc.strerror or exc}") from None
    except (paramiko.PasswordRequiredException, TypeError):
        # paramiko raises PasswordRequiredException for PEM keys; for OpenSSH-format keys
        # cryptography's TypeError ("password was not provided") comes through.
        if secret is not None:
            raise
        raise CheckFailed(
            ERROR, f"key_file {params.key_file}: the key is encrypted: give its passphrase"
        ) from None
    except (paramiko.SSHException, ValueError):
        # The libraries' messages here mislead ("no BEGIN/END delimiters" for a wrong
        # passphrase), and must never carry the passphrase: say what can be wrong.
        why = "wrong passphrase, or " if secret is not None else ""
        raise CheckFailed(
            ERROR, f"key_file {params.key_file}: cannot load the key ({why}not a private key)"
        ) from None


def _known(params: Params) -> Any:
    import paramiko

    keys = paramiko.HostKeys()
    if params.known_hosts is None:
        return keys
    try:
        keys.load(params.known_hosts)
    except FileNotFoundError:
        if not params.trust_on_first_use:
            raise CheckFailed(ERROR, f"known_hosts {params.known_hosts}: no such file") from None
    except OSError as exc:
        raise CheckFailed(ERROR, f"known_hosts {params.known_hosts}: {exc.strerror}") from None
    except paramiko.SSHException as exc:
        raise CheckFailed(ERROR, f"known_hosts {params.known_hosts}: {exc}") from None
    return keys


def _record(path: str, name: str, key: Any) -> None:
    line = f"{name} {key.get_name()} {key.get_base64()}\n"
    with _RECORDING:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="ascii") as f:
            f.write(line)


def _verify_host_key(params: Params, name: str, key: Any, known: Any, info: dict[str, str]) -> None:
    """Raise CheckFailed unless the server's key is the one expected; facts about it in info."""
    offered = f"{key.get_name()} {key.get_base64()}"
    info["host_key"] = fingerprint(key.asbytes())
    info["host_key_type"] = key.get_name()
    if params.host_key is not None:
        pinned = params.host_key
        matches = pinned == info["host_key"] if pinned.startswith("SHA256:") else pinned == offered
        if not matches:
            raise CheckFailed(
                HOST_KEY_MISMATCH,
                f"{name}: the server's {key.get_name()} key {info['host_key']} is not the "
                "pinned host_key",
            )
    entry = known.lookup(name)
    if entry:
        stored = entry.get(key.get_name())
        if stored is None:
            types = ", ".join(sorted(entry.keys()))
            raise CheckFailed(
                HOST_KEY_MISMATCH,
                f"{name}: known_hosts has {types} for this host, the server offered "
                f"{key.get_name()}",
            )
        if stored.asbytes() != key.asbytes():
            raise CheckFailed(
                HOST_KEY_MISMATCH,
                f"{name}: the {key.get_name()} host key changed: now {info['host_key']}, "
                f"known_hosts has {fingerprint(stored.asbytes())}",
            )
        return
    if params.host_key is not None:
        return
    if params.trust_on_first_use and params.known_hosts is not None:
        _record(params.known_hosts, name, key)
        info["host_key_recorded"] = "yes"
        return
    raise CheckFailed(
        HOST_KEY_UNKNOWN,
        f"{name} is not in known_hosts (its {key.get_name()} key is {info['host_key']}); add "
        "it, pin it with host_key, or set trust_on_first_use",
    )


def _preferred_types(transport: Any, params: Params, name: str, known: Any) -> None:
    """Ask first for the host key type we can check, as OpenSSH does."""
    wanted = list((known.lookup(name) or {}).keys())
    if params.host_key is not None and not params.host_key.startswith("SHA256:"):
        wanted.insert(0, params.host_key.split()[0])
    options = transport.get_security_options()
    supported = list(options.key_types)
    first = [t for t in wanted if t in supported]
    if first:
        options.key_types = tuple(dict.fromkeys(first + supported))


def _remaining(deadline: float, phase: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise CheckFailed(TIMEOUT, f"no time left for {phase}")
    return left


def _run(channel: Any, command: str, deadline: float) -> tuple[int, bytes, bytes]:
    out, err = bytearray(), bytearray()

    def drain() -> None:
        while channel.recv_ready():
            data = channel.recv(65536)
            out.extend(data[: max(0, MAX_OUTPUT_BYTES - len(out))])
        while channel.recv_stderr_ready():
            data = channel.recv_stderr(65536)
            err.extend(data[: max(0, MAX_OUTPUT_BYTES - len(err))])

    channel.exec_command(command)
    channel.shutdown_write()
    while True:
        drain()
        if channel.exit_status_ready() and (channel.eof_received or channel.closed):
            drain()
            return channel.recv_exit_status(), bytes(out), bytes(err)
        left = _remaining(deadline, "the command to finish")
        select.select([channel], [], [], min(left, POLL_SECONDS))


def _session(params: Params, host: str, port: int, deadline: float) -> Session:
    s = Session({}, {})
    # What was measured before a failure still tells something (exit_status above all).
    with carrying(s.metrics, s.info):
        return _steps(params, host, port, deadline, s)


def _steps(params: Params, host: str, port: int, deadline: float, s: Session) -> Session:
    import paramiko

    pkey = _load_key(params)
    known = _known(params)
    name = known_hosts_name(host, port)
    link = dial(host, port, stream=True, family=params.family, source=None, deadline=deadline)
    sock = link.sock
    metrics, info = s.metrics, s.info
    metrics.update(link.metrics)

    transport = paramiko.Transport(sock)
    transport.set_log_channel(TRANSPORT_LOG)
    try:
        t1 = time.perf_counter()
        left = _remaining(deadline, "the SSH banner")
        transport.banner_timeout = left
        transport.handshake_timeout = left
        transport.auth_timeout = left
        _preferred_types(transport, params, name, known)
        try:
            transport.start_client(timeout=left)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if time.monotonic() >= deadline or isinstance(exc, TimeoutError):
                raise CheckFailed(TIMEOUT, f"no SSH handshake within the timeout: {exc}") from None
            raise CheckFailed(ERROR, f"SSH handshake failed: {exc or type(exc).__name__}") from None
        if transport.host_key is None:
            # start_client returns quietly when its timeout passes before the key exchange ends.
            raise CheckFailed(TIMEOUT, "no SSH banner and key exchange within the timeout")
        info["server_version"] = str(transport.remote_version)[:MAX_EXCERPT]
        _verify_host_key(params, name, transport.get_remote_server_key(), known, info)
        try:
            _remaining(deadline, "authentication")
            transport.auth_publickey(params.username, pkey)
        except paramiko.AuthenticationException as exc:
            if time.monotonic() >= deadline:  # paramiko's auth_timeout raises this too
                raise CheckFailed(TIMEOUT, "no answer to authentication in time") from None
            raise CheckFailed(AUTH_FAILED, f"{params.username}: key refused: {exc}") from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            reason = TIMEOUT if time.monotonic() >= deadline else ERROR
            raise CheckFailed(reason, f"authentication: {exc}") from None
        metrics["login_seconds"] = time.perf_counter() - t1
        if params.command is None:
            return s

        t2 = time.perf_counter()
        try:
            channel = transport.open_session(timeout=_remaining(deadline, "a session"))
        except paramiko.ChannelException as exc:
            raise CheckFailed(COMMAND_FAILED, f"the server refused a session: {exc}") from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            reason = TIMEOUT if time.monotonic() >= deadline else ERROR
            raise CheckFailed(reason, f"session: {exc}") from None
        try:
            status, out, err = _run(channel, params.command, deadline)
        except TimeoutError:
            raise CheckFailed(TIMEOUT, "the command did not finish in time") from None
        finally:
            channel.close()
        metrics["command_seconds"] = time.perf_counter() - t2
        metrics["exit_status"] = float(status)
    finally:
        transport.close()
    return _judge_output(params, status, out, err, s)


def _judge_output(params: Params, status: int, out: bytes, err: bytes, s: Session) -> Session:
    if status != 0:
        lines = err.decode("utf-8", "replace").strip().splitlines()
        if lines:
            s.info["stderr"] = lines[-1][:MAX_EXCERPT]
        raise CheckFailed(COMMAND_FAILED, f"the command exited with status {status}")
    text = out.decode("utf-8", "replace")
    for i, pattern in enumerate(params.expect):
        if not re.search(pattern, text, re.MULTILINE):
            message = f"expect[{i}] {pattern!r} not found in the output"
            raise CheckFailed(
                EXPECTATION_FAILED, message, expectation=f"expect[{i}]", output=text[:MAX_EXCERPT]
            )
    for i, pattern in enumerate(params.expect_absent):
        if re.search(pattern, text, re.MULTILINE):
            message = f"expect_absent[{i}] {pattern!r} found in the output"
            raise CheckFailed(
                EXPECTATION_FAILED,
                message,
                expectation=f"expect_absent[{i}]",
                output=text[:MAX_EXCERPT],
            )
    return s


def probe(target: Target, params: Params, timeout: float) -> Outcome:
    deadline = time.monotonic() + timeout
    host, port = target_address(target.address, params.port)
    try:
        session = _session(params, host, port, deadline)
    except CheckFailed as exc:
        return Outcome(False, exc.reason, exc.metrics, {**exc.info, "error": exc.message[:1000]})
    return Outcome(True, metrics=session.metrics, info=session.info)


CHECK = core.CheckType(
    params=Params,
    probe=probe,
    reasons=REASONS,
    metrics={
        "connect_seconds": core.seconds("Time of the TCP connect to the device."),
        "login_seconds": core.seconds(
            "SSH banner, key exchange, host key check and key authentication."
        ),
        "command_seconds": core.seconds("Session request to the command's exit status."),
        # SSH carries the status as 32 bits; gear is not bound to POSIX's 0..255.
        "exit_status": core.gauge(
            "Exit status of the command; -1 when the device sent none.", -1, 2**32 - 1
        ),
    },
    doc=__doc__ or "",
    parse_target=functools.partial(parse_address, default_port=22),
)
