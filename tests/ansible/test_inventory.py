"""The dynamic inventory (ansible/inventory/wards.py) as Ansible reads it, and the playbooks'
static promises: every working group of the units CSV has its upgrade play, ansible-lint's
production profile passes."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ansible.deploy import ANSIBLE
from tests.helpers import ROOT

BIN = Path(sys.executable).parent
UNITS = """\
id,name,kind,former_district,working_group
ward-ben-thanh,Phường Bến Thành,ward,Quận 1,2
ward-sai-gon,Phường Sài Gòn,ward,Quận 1,2
commune-nha-be,Xã Nhà Bè,commune,Huyện Nhà Bè,1
ward-thu-duc,Phường Thủ Đức,ward,Thành phố Thủ Đức,10
"""


def inventory(tmp_path: Path, units: str, pcs: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "units.csv").write_text(units, encoding="utf-8")
    (tmp_path / "ward_pcs.csv").write_text(pcs, encoding="utf-8")
    env = {
        **os.environ,
        "WARDREADY_UNITS": str(tmp_path / "units.csv"),
        "WARDREADY_WARD_PCS": str(tmp_path / "ward_pcs.csv"),
        "LC_ALL": "C.UTF-8",
        "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
    }
    return subprocess.run(
        [BIN / "ansible-inventory", "-i", ANSIBLE / "inventory/wards.py", "--list", "--export"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=ANSIBLE,
    )


def test_groups_per_working_group_and_former_district_with_names_as_written(
    tmp_path: Path,
) -> None:
    pcs = (
        "host,ward,address,agent\npc-ben-thanh,ward-ben-thanh,10.2.0.10,\n"
        "pc-ben-thanh-2,ward-ben-thanh,10.2.0.11,pc-02\npc-nha-be,commune-nha-be,10.1.0.10,\n"
        "pc-thu-duc,ward-thu-duc,10.10.0.10,\n"
    )
    done = inventory(tmp_path, UNITS, pcs)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    hosts = lambda g: sorted(found[g]["hosts"])  # noqa: E731
    assert hosts("wardready_agents") == [
        "pc-ben-thanh",
        "pc-ben-thanh-2",
        "pc-nha-be",
        "pc-thu-duc",
    ]
    assert hosts("wg_2") == ["pc-ben-thanh", "pc-ben-thanh-2"]
    assert hosts("wg_1") == ["pc-nha-be"] and hosts("wg_10") == ["pc-thu-duc"]
    assert hosts("former_quan_1") == ["pc-ben-thanh", "pc-ben-thanh-2"]
    assert hosts("former_thanh_pho_thu_duc") == ["pc-thu-duc"]
    assert hosts("former_huyen_nha_be") == ["pc-nha-be"]
    ben_thanh = found["_meta"]["hostvars"]["pc-ben-thanh-2"]
    assert ben_thanh["ward_id"] == "ward-ben-thanh"
    assert ben_thanh["ward_name"] == "Phường Bến Thành"  # NFC, diacritics kept
    assert ben_thanh["working_group"] == 2 and ben_thanh["ansible_host"] == "10.2.0.11"
    assert ben_thanh["wardready_agent_name"] == "pc-02"
    assert found["_meta"]["hostvars"]["pc-ben-thanh"]["wardready_agent_name"] == "pc-ben-thanh"
    assert "ward-sai-gon" not in json.dumps(found["_meta"])  # no PC: not a host


@pytest.mark.parametrize(
    ("pcs", "message"),
    [
        (
            "host,ward,address\npc-x,ward-nowhere,10.0.0.1\n",
            "ward_pcs.csv:2: ward: 'ward-nowhere' is not in the units CSV",
        ),
        ("host,ward,address\npc-x,ward-sai-gon,\n", "ward_pcs.csv:2: address: empty"),
        (
            "host,ward,address\npc-x,ward-sai-gon,10.0.0.1\npc-x,ward-ben-thanh,10.0.0.2\n",
            "ward_pcs.csv:3: host: pc-x is listed twice",
        ),
        ("host,ward\npc-x,ward-sai-gon\n", "ward_pcs.csv:1: missing column(s) address"),
    ],
)
def test_bad_site_data_is_refused_naming_file_line_and_field(
    tmp_path: Path, pcs: str, message: str
) -> None:
    done = wards_py(_write(tmp_path / "u.csv", UNITS), _write(tmp_path / "ward_pcs.csv", pcs))
    assert done.returncode == 1
    assert message in done.stderr, done.stderr


def test_a_bad_units_row_names_its_line(tmp_path: Path) -> None:
    units = _write(tmp_path / "u.csv", UNITS + "ward-x,Phường X,ward,Quận 1,two\n")
    done = wards_py(units, _write(tmp_path / "p.csv", "host,ward,address\n"))
    assert done.returncode == 1
    assert "u.csv:6: working_group: not a number: 'two'" in done.stderr, done.stderr


def wards_py(units: Path, pcs: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WARDREADY_UNITS": str(units), "WARDREADY_WARD_PCS": str(pcs)}
    return subprocess.run(
        [ANSIBLE / "inventory/wards.py", "--list"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_upgrade_yml_has_a_play_for_every_working_group_in_order() -> None:
    with (ROOT / "data/hcmc_pilot_units.csv").open(encoding="utf-8") as f:
        groups = sorted({int(r["working_group"]) for r in csv.DictReader(f)})
    text = (ANSIBLE / "upgrade.yml").read_text()
    listed = [int(n) for n in re.findall(r"wardready_upgrade_group: wg_(\d+)", text)]
    assert listed == sorted(listed)
    assert set(groups) <= set(listed), sorted(set(groups) - set(listed))


def test_ansible_lint_production_profile_passes(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
        "LC_ALL": "C.UTF-8",
        "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
    }
    done = subprocess.run(
        [BIN / "ansible-lint", "--offline", "--profile", "production", "--nocolor"],
        capture_output=True,
        text=True,
        cwd=ANSIBLE,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-3000:]
    assert "Passed" in done.stdout + done.stderr
