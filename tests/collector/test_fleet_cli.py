"""The fleet commands of ``wardready-collector``, in process: what they print and how they
exit on bad input."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from collector.cli import main
from collector.service import Service
from tests.collector.conftest import BROKEN, READY

Capture = pytest.CaptureFixture[str]

FLEET = """\
version: 1
defaults:
  checks:
    - {name: dms, type: http, target: "http://dms.example/", labels: {role: shared_system}}
wards:
  ward-minh-phung:
    checks:
      - {name: wan, type: icmp, target: 10.0.0.1, labels: {role: wan}}
"""


def test_enroll_create_prints_the_code_alone_on_the_last_line(
    service: Service, db_url: str, capsys: Capture
) -> None:
    assert (
        main(
            ["--db", db_url, "enroll", "create", "--ward", READY, "--expires", "12h", "--uses", "3"]
        )
        == 0
    )
    out, err = capsys.readouterr()
    code = out.splitlines()[-1]
    assert re.fullmatch(r"[2-9A-HJKMNP-Z]{4}-[2-9A-HJKMNP-Z]{4}-[2-9A-HJKMNP-Z]{2}", code)
    assert "usable 3 times" in err and code in err
    assert main(["--db", db_url, "enroll", "list", "--ward", READY]) == 0
    listed = capsys.readouterr().out
    assert f"{code[:4]}    {READY}" in listed and "valid" in listed and "0/3" in listed
    assert main(["--db", db_url, "enroll", "revoke", code[:4].lower()]) == 0
    assert "revoked enrollment code" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["enroll", "create", "--ward", READY, "--expires", "soon"], "--expires: 'soon' is not"),
        (["enroll", "create", "--ward", "ward-x"], "'ward-x' is not a known ward"),
        (["enroll", "revoke", "ZZZZ"], "no enrollment code starts with 'ZZZZ'"),
        (["agent", "revoke", "--ward", READY, "--agent", "pc-7"], "no live token of agent"),
        (["plan", "show", "--ward", READY], f"ward {READY!r} has no plan"),
        (["inventory", "accept", "--ward", READY], "no inventory reported"),
    ],
)
def test_bad_input_exits_2_saying_what(
    service: Service, db_url: str, capsys: Capture, argv: list[str], message: str
) -> None:
    assert main(["--db", db_url, *argv]) == 2
    assert message in capsys.readouterr().err


def test_fleet_import_then_plan_show(
    service: Service, db_url: str, tmp_path: Path, capsys: Capture
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("defaults:\n  checks:\n    - {name: a, type: tcp}\n")
    assert main(["--db", db_url, "fleet", "import", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml:3: defaults.checks[0].target: ward" in err and "nothing imported" in err
    good = tmp_path / "fleet.yaml"
    good.write_text(FLEET)
    assert main(["--db", db_url, "fleet", "import", str(good)]) == 0
    assert "4 ward plans, 4 changed" in capsys.readouterr().out
    assert main(["--db", db_url, "plan", "show", "--ward", BROKEN]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"# plan v1 of ward {BROKEN}")
    assert 'target: "10.0.0.1"  # ward' in shown and 'type: "http"  # defaults' in shown
