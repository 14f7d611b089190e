"""wardready-collector commands: the status table, ward listing, pruning, errors."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import unicodedata
from importlib.metadata import version
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from checks.registry import REGISTRY
from collector import cli, db, tokens
from collector.profile import default_profile_path, load_profile
from collector.service import Service

from .conftest import BROKEN, READY, auth, batch, body, broken_results, healthy_results

Capture = pytest.CaptureFixture[str]


def feed(client: TestClient, service: Service) -> None:
    for ward, results in ((READY, healthy_results()), (BROKEN, broken_results())):
        token = tokens.create(service.engine, ward)
        r = client.post(
            "/api/v1/ingest", content=body(batch(ward, results=results)), headers=auth(token)
        )
        assert r.status_code == 200


def run(capsys: Capture, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_status_table_counts_groups_and_reasons(
    client: TestClient, service: Service, db_url: str, profile_path: Path, capsys: Capture
) -> None:
    feed(client, service)
    code, out, _ = run(
        capsys, "--db", db_url, "--profile", str(profile_path), "status", "--width", "200"
    )
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("1/4 ready  (not ready 3, unknown 0)")
    assert "Working group 1: 0/2 ready" in lines
    assert "Working group 2: 1/2 ready" in lines
    assert lines.index("Working group 1: 0/2 ready") < lines.index("Working group 2: 1/2 ready")
    broken = next(line for line in lines if BROKEN in line)
    assert "not_ready" in broken and "wan_loss: WAN line loss under 1% over 15 min" in broken
    assert "loss_ratio avg 0.5" in broken
    assert "no_data: no agent has reported" in out
    ready = next(line for line in lines if READY in line)
    assert ready.rstrip().endswith("ready") and "Phường Bến Thành" in ready


def test_status_aligns_unicode_names_and_wraps_reasons(
    client: TestClient, service: Service, db_url: str, profile_path: Path, capsys: Capture
) -> None:
    feed(client, service)
    code, out, _ = run(
        capsys, "--db", db_url, "--profile", str(profile_path), "status", "--width", "80"
    )
    assert code == 0
    rows = [line for line in out.splitlines() if line.startswith("  ") and line.strip()]
    ward_rows = [
        r for r in rows if r.split()[0] in {READY, BROKEN, "commune-can-gio", "ward-binh-thoi"}
    ]
    assert len(ward_rows) == 4
    # The verdict column starts at the same terminal column on every row.
    starts = set()
    for row in ward_rows:
        verdict = next(v for v in ("not_ready", "unknown", "ready") if f"  {v}" in row)
        starts.add(cli.width(row[: row.index(f"  {verdict}")]))
    assert len(starts) == 1, ward_rows
    # Long reasons wrap under the reason column instead of running past the width.
    assert all(cli.width(line) <= 80 for line in out.splitlines()[1:])
    broken_at = out.splitlines().index(next(r for r in ward_rows if BROKEN in r))
    continuation = out.splitlines()[broken_at + 1]
    assert continuation.startswith(" " * 40) and continuation.strip()


def test_status_json_and_group_filter(
    client: TestClient, service: Service, db_url: str, profile_path: Path, capsys: Capture
) -> None:
    feed(client, service)
    code, out, _ = run(
        capsys,
        "--db",
        db_url,
        "--profile",
        str(profile_path),
        "status",
        "--json",
        "--working-group",
        "2",
    )
    assert code == 0
    doc = json.loads(out)
    assert doc["ready"] == 1 and doc["total"] == 2
    assert {w["id"] for w in doc["wards"]} == {READY, "commune-can-gio"}
    assert "Phường Bến Thành" in out  # not \\u-escaped


def test_display_width_counts_terminal_cells() -> None:
    nfc = "Phường Bến Thành"
    nfd = unicodedata.normalize("NFD", nfc)
    assert len(nfd) > len(nfc)
    assert cli.width(nfc) == cli.width(nfd) == 16
    assert cli.width("胡志明市") == 8
    assert cli.fit(nfd, 20) == nfc + " " * 4
    assert cli.width(cli.fit("Phường Bến Thành rất dài", 10)) == 10
    assert cli.fit("Phường Bến Thành rất dài", 10).endswith("…")


def test_wards_list(service: Service, db_url: str, capsys: Capture) -> None:
    code, out, _ = run(capsys, "--db", db_url, "wards", "list")
    assert code == 0 and "Phường Minh Phụng" in out and "4 wards" in out
    code, out, _ = run(capsys, "--db", db_url, "wards", "list", "--json")
    assert {w["name"] for w in json.loads(out)} >= {"Xã Cần Giờ", "Phường Bến Thành"}


def test_prune_removes_only_old_results(service: Service, db_url: str, capsys: Capture) -> None:
    now = time.time()
    rows = [
        dict(
            ward_id=READY,
            agent="pc-01",
            stream="a" * 32,
            seq=i,
            check="icmp",
            name="n",
            target="t",
            address="x",
            labels="{}",
            interval_seconds=30.0,
            started=now - days * 86400,
            duration_seconds=0.1,
            success=True,
            reason="ok",
            metrics="{}",
            info="{}",
            received_at=now,
        )
        for i, days in enumerate((40, 31, 29, 1), start=1)
    ]
    with service.engine.begin() as conn:
        conn.execute(sa.insert(db.results), rows)
    code, out, _ = run(capsys, "--db", db_url, "prune", "--days", "30")
    assert code == 0 and "removed 2 results" in out
    with service.engine.connect() as conn:
        left = conn.execute(sa.select(db.results.c.seq).order_by(db.results.c.seq)).scalars().all()
    assert left == [3, 4]


def test_migrate_reports_the_revision(tmp_path: Path, capsys: Capture) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    code, out, _ = run(capsys, "--db", url, "migrate")
    assert code == 0 and f"revision {db.head_revision()}" in out


def test_errors_exit_2_naming_what_is_wrong(
    tmp_path: Path, db_url: str, service: Service, capsys: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nowhere.db"
    code, _, err = run(capsys, "--db", f"sqlite:///{missing}", "status")
    assert code == 2 and f"no database at {missing}" in err
    assert not missing.exists()

    code, _, err = run(capsys, "--db", db_url, "serve", "--listen", "localhost")
    assert code == 2 and "--listen: 'localhost' is not HOST:PORT" in err

    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ncriteria:\n  - id: x\n    title: X\n    severity: fatal\n")
    code, _, err = run(capsys, "--db", db_url, "--profile", str(bad), "status")
    assert code == 2 and "bad.yaml:5: criteria[0].severity" in err

    monkeypatch.setenv("WARDREADY_DB", db_url)
    code, out, _ = run(capsys, "wards", "list")
    assert code == 0 and "4 wards" in out


def test_status_url_unreachable_exits_1(capsys: Capture) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = run(capsys, "status", "--url", f"http://127.0.0.1:{port}")
    assert code == 1 and "--url: cannot read" in err


def test_parse_listen() -> None:
    assert cli.parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert cli.parse_listen("[::1]:9000") == ("::1", 9000)
    assert cli.parse_listen(":0") == ("127.0.0.1", 0)
    with pytest.raises(cli.UsageError):
        cli.parse_listen("127.0.0.1:99999")


def test_version_is_the_installed_one(capsys: Capture) -> None:
    with pytest.raises(SystemExit) as stopped:
        cli.main(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out == f"wardready-collector {version('wardready')}\n"
    done = subprocess.run(
        [sys.executable, "-m", "collector", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, f"wardready-collector {version('wardready')}\n")


def test_profile_check_exits_0_for_the_shipped_profile(capsys: Capture) -> None:
    path = default_profile_path()
    code, out, err = run(capsys, "profile", "check", str(path))
    count = len(load_profile(path).criteria)
    assert (code, out, err) == (0, f"{path}: OK ({count} criteria)\n", "")


def one_criterion(path: Path, check: str, metric: str, op: str = "<") -> Path:
    """A profile of one criterion on ``check``'s ``metric``; its check at line 6, its
    condition at line 7."""
    path.write_text(
        "version: 1\ncriteria:\n  - id: c1\n    title: One\n    severity: blocker\n"
        f"    select: {{check: {check}}}\n"
        f"    condition: {{metric: {metric}, agg: last, last: 1, op: '{op}', threshold: 0.5}}\n",
        encoding="utf-8",
    )
    return path


def test_profile_check_exits_2_on_errors_and_prints_warnings(
    tmp_path: Path, capsys: Capture
) -> None:
    broken = Path(__file__).parent / "profiles" / "bad_op.yaml"
    code, out, err = run(capsys, "profile", "check", str(broken))
    assert (code, out) == (2, "")
    assert err.startswith(f"{broken}:11: criteria[0].condition.op: Input should be '<'")

    # An unknown check type is a warning: the profile is usable.
    path = one_criterion(tmp_path / "newer.yaml", "telepathy", "aura_ratio")
    code, out, err = run(capsys, "profile", "check", str(path))
    assert (code, out) == (0, f"{path}: OK (1 criterion)\n")
    assert err == (
        f"warning: {path}:6: criteria[0].select.check: unknown check type 'telepathy': "
        f"its metrics cannot be verified (this collector knows {', '.join(sorted(REGISTRY))})\n"
    )

    # With an error as well: both are printed, and the errors decide the exit status.
    one_criterion(path, "telepathy", "aura_ratio", op="=>")
    code, out, err = run(capsys, "profile", "check", str(path))
    assert (code, out) == (2, "")
    lines = err.splitlines()
    assert lines[0].startswith(f"{path}:7: criteria[0].condition.op: Input should be")
    assert lines[1].startswith(f"warning: {path}:6: criteria[0].select.check: unknown check")


def test_profile_check_refuses_a_metric_the_registry_does_not_declare(
    tmp_path: Path, capsys: Capture
) -> None:
    path = one_criterion(tmp_path / "typo.yaml", "icmp", "los_ratio")
    code, out, err = run(capsys, "profile", "check", str(path))
    assert (code, out) == (2, "")
    assert err.startswith(
        f"{path}:7: criteria[0].condition.metric: icmp reports no metric 'los_ratio' "
        "(did you mean 'loss_ratio'?)"
    )
