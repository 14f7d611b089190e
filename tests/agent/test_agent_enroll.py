"""``wardready-agent enroll`` pieces that need no collector: the token file's mode, the
machine-id hash, and the refusals that happen before anything is sent."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from agent import enroll
from agent.cli import main
from tests.peers import free_port


def test_token_file_is_owner_only_even_over_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "token"
    path.parent.mkdir()
    path.write_text("old\n")
    path.chmod(0o644)
    enroll.write_private(path, "new\n")
    assert path.read_text() == "new\n" and path.stat().st_mode & 0o777 == 0o600


def test_machine_id_is_sent_hashed(tmp_path: Path) -> None:
    mid = tmp_path / "machine-id"
    mid.write_text("0123456789abcdef0123456789abcdef\n")
    expected = hashlib.sha256(b"0123456789abcdef0123456789abcdef").hexdigest()
    assert enroll.machine_id_hash(mid) == expected
    assert enroll.machine_id_hash(tmp_path / "absent") == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--agent", "PC 01"], "--agent: 'PC 01' must be 1 to 64 of a-z"),
        (["--collector", "ftp://x"], "--collector: 'ftp://x' must start with http://"),
        (["--ca-file", "/nonexistent/ca.pem"], "--ca-file: no file at /nonexistent/ca.pem"),
        ([], "cannot reach the collector at http://127.0.0.1:"),
    ],
)
def test_refusals_exit_1_with_the_reason_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    argv = [
        "enroll",
        "--collector",
        url,
        "--code",
        "K7QM-3XPA-W9",
        "--agent",
        "pc-01",
        "--config",
        str(tmp_path / "agent.yaml"),
        "--token-file",
        str(tmp_path / "token"),
        "--spool",
        str(tmp_path / "spool.db"),
    ]
    for i in range(0, len(args), 2):
        if args[i] in argv:
            argv[argv.index(args[i]) + 1] = args[i + 1]
        else:
            argv += args[i : i + 2]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("enroll: ") and message in err, err
    assert not (tmp_path / "token").exists() and not (tmp_path / "agent.yaml").exists()
