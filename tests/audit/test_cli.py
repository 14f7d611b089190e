"""``wardready-collector audit``: what it prints and its exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from collector import cli, db

from .conftest import JUNE_12, JUNE_22, Fed, tamper

Capture = pytest.CaptureFixture[str]


@pytest.fixture
def base(fed: Fed, tmp_path: Path) -> Iterator[list[str]]:
    url = fed.copy(tmp_path)
    yield ["--db", url, "--profile", str(fed.profile_path)]
    fed.release(url)


def run(capsys: Capture, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def create(capsys: Capture, base: list[str], window: tuple[str, str], *extra: str) -> str:
    code, out, err = run(
        capsys, *base, "audit", "create", "--from", window[0], "--to", window[1],
        "--title", f"Chạy thử {window[0][:10]}", "--signed-off-by", "Nguyễn Văn An", *extra,
    )  # fmt: skip
    assert code == 0, err
    return out


def test_create_list_show_verify(base: list[str], capsys: Capture) -> None:
    out = create(capsys, base, JUNE_12)
    assert out.startswith("đã lưu biên bản 1: 4 phường, xã, từ 2026-06-12T08:00:00+07:00")
    sha = out.splitlines()[1].removeprefix("SHA-256 ")
    assert len(sha) == 64
    out = create(capsys, base, JUNE_22, "--lang", "en", "--step", "30")
    assert out.startswith("audit 2 stored: 4 wards, 2026-06-22T08:00:00+07:00 to")

    code, out, _ = run(capsys, *base, "audit", "list", "--lang", "en")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == ["ID", "1", "2"]
    assert "Nguyễn Văn An" in out
    code, out, _ = run(capsys, *base, "audit", "list", "--json")
    assert json.loads(out)[0]["sha256"] == sha

    code, out, _ = run(capsys, *base, "audit", "show", "1", "--lang", "en")
    assert code == 0 and "ward-minh-phung  Ward Minh Phụng  ready 62.9%" in out
    code, out, _ = run(capsys, *base, "audit", "show", "2", "--json")
    assert json.loads(out)["window"]["step_seconds"] == 30
    assert json.loads(out)["created_by"].startswith("cli:")

    code, out, _ = run(capsys, *base, "audit", "verify", "1", "--expect", sha.upper())
    assert code == 0 and out == f"biên bản 1: nguyên vẹn, SHA-256 {sha}\n"
    code, _, err = run(capsys, *base, "audit", "verify", "1", "--expect", "0" * 64, "--lang", "en")
    assert code == 1 and f"audit 1: FAILED: stored SHA-256 {sha} is not the expected" in err


def test_export_and_compare(base: list[str], capsys: Capture, tmp_path: Path) -> None:
    create(capsys, base, JUNE_12)
    create(capsys, base, JUNE_22)
    pdf = tmp_path / "audit.pdf"
    code, _, err = run(capsys, *base, "audit", "export", "1", "--format", "pdf", "--out", str(pdf))
    assert code == 0 and pdf.read_bytes().startswith(b"%PDF-")
    assert f"đã ghi biên bản 1 vào {pdf}" in err
    code, out, _ = run(capsys, *base, "audit", "export", "1", "--format", "csv", "--out", "-",
                       "--lang", "en")  # fmt: skip
    assert code == 0 and "Ward Minh Phụng" in out
    code, _, err = run(capsys, *base, "audit", "export", "1", "--format", "html",
                       "--out", str(tmp_path / "no" / "such" / "dir.html"))  # fmt: skip
    assert code == 2 and "--out: cannot write" in err

    code, out, _ = run(capsys, *base, "audit", "compare", "1", "2", "--lang", "en")
    assert code == 0 and "[improved] ward-minh-phung" in out
    code, out, _ = run(capsys, *base, "audit", "compare", "2", "1", "--fail-on-regression")
    assert code == 1 and "[kém đi] ward-" in out
    code, out, _ = run(capsys, *base, "audit", "compare", "1", "2", "--json")
    assert code == 0 and json.loads(out)["counts"] == {"improved": 2, "regressed": 0, "stayed": 2}


def test_a_changed_audit_fails_verify_and_is_not_exported(
    base: list[str], capsys: Capture, tmp_path: Path
) -> None:
    create(capsys, base, JUNE_12)
    engine = db.make_engine(base[1])
    with engine.connect() as conn:
        content = conn.execute(sa.select(db.audits.c.content)).scalar_one()
    tamper(engine, content=content.replace('"ready":7200', '"ready":7201'))
    engine.dispose()
    # Through the installed command, as an auditor runs it.
    done = subprocess.run(
        [sys.executable, "-m", "collector", *base, "audit", "verify", "1", "--lang", "en"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    assert "audit 1: FAILED: content does not match its SHA-256" in done.stderr
    code, _, err = run(capsys, *base, "audit", "export", "1", "--format", "pdf",
                       "--out", str(tmp_path / "x.pdf"), "--lang", "en")  # fmt: skip
    assert code == 1 and "audit 1 was changed after it was taken; not exported" in err
    assert not (tmp_path / "x.pdf").exists()
    code, _, err = run(capsys, *base, "audit", "show", "1")
    assert code == 0 and "cảnh báo: biên bản 1 không qua được bước xác minh" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["create", "--from", "2026-06-12T08:00", "--to", "2026-06-12T10:00+07:00"],
         "--from: '2026-06-12T08:00' has no time zone"),
        (["create", "--from", "2026-06-12T08:00+07:00", "--to", "2099-06-12T10:00+07:00"],
         "to: is in the future"),
        (["create", "--from", "2026-06-12T08:00+07:00", "--to", "2026-06-12T10:00+07:00",
          "--step", "0"], "step: must be at least 1 second"),
        (["create", "--from", "2026-06-12T08:00+07:00", "--to", "2026-06-12T10:00+07:00",
          "--ward", "ward-nowhere"], "ward: ward-nowhere not in the ward list"),
        (["show", "7"], "audit 7: no such audit"),
        (["verify", "7"], "audit 7: no such audit"),
        (["export", "7", "--format", "csv", "--out", "-"], "audit 7: no such audit"),
        (["compare", "7", "8"], "audit 7: no such audit"),
    ],
)  # fmt: skip
def test_bad_input_exits_2_naming_what(
    base: list[str], capsys: Capture, argv: list[str], message: str
) -> None:
    if argv[0] == "create":
        argv = [*argv, "--title", "t", "--signed-off-by", "s"]
    code, _, err = run(capsys, *base, "audit", *argv)
    assert code == 2 and message in err
