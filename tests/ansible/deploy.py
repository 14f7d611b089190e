"""What the deployment tests share: wheels built from this tree, a test inventory over the
nspawn hosts, ansible-playbook runs and their recaps, and the collector's API."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers import ROOT

ANSIBLE = ROOT / "ansible"
PLAY_TIMEOUT = 600
RECAP = re.compile(
    r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M
)


def source_tree() -> Path:
    """The tree the wheels are built from (WARDREADY_TEST_TREE tries another checkout)."""
    return Path(os.environ.get("WARDREADY_TEST_TREE") or ROOT)


def run(
    argv: list[str | Path], timeout: float = 300, **kw: Any
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=timeout, **kw
    )


def version_of(tree: Path) -> str:
    found = re.search(r'^version = "([^"]+)"', (tree / "pyproject.toml").read_text(), re.M)
    assert found, "no version in pyproject.toml"
    return found.group(1)


def build_wheel(tree: Path, out: Path) -> Path:
    built = run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            out,
            tree,
        ],
        cwd="/",
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = out.glob("wardready-*.whl")
    return wheel


def build_version(tree: Path, version: str, work: Path) -> Path:
    """A wheel of ``tree`` that calls itself ``version`` (pyproject and the agent's own)."""
    copy = work / f"tree-{version}"
    shutil.copytree(
        tree,
        copy,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            ".cache",
            "build",
            "dist",
            "*.egg-info",
            "__pycache__",
            ".mypy_cache",
            ".ruff_cache",
            ".pytest_cache",
            "demo-run",
            "artifacts",
        ),
    )
    old = version_of(tree)
    for rel in ("pyproject.toml", "agent/__init__.py"):
        path = copy / rel
        text = path.read_text()
        assert f'"{old}"' in text, f"{rel}: no {old!r} to replace"
        path.write_text(text.replace(f'"{old}"', f'"{version}"', 1))
    return build_wheel(copy, work / f"dist-{version}")


def first_ward_of_groups(groups: list[int]) -> dict[int, dict[str, str]]:
    found: dict[int, dict[str, str]] = {}
    with (ROOT / "data/hcmc_pilot_units.csv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            g = int(row["working_group"])
            if g in groups and g not in found:
                found[g] = row
    return found


@dataclass
class Recap:
    rc: int
    output: str
    hosts: dict[str, dict[str, int]]

    def changed(self) -> dict[str, int]:
        return {h: r["changed"] for h, r in self.hosts.items()}


def playbook(inventory: Path, env: dict[str, str], name: str, *args: str) -> Recap:
    argv = [
        str(Path(sys.executable).parent / "ansible-playbook"),
        "-i",
        str(inventory),
        name,
        *args,
    ]
    done = run(argv, timeout=PLAY_TIMEOUT, cwd=ANSIBLE, env=env)  # type: ignore[arg-type]
    out = done.stdout + done.stderr
    hosts = {
        m[0]: {"ok": int(m[1]), "changed": int(m[2]), "unreachable": int(m[3]), "failed": int(m[4])}
        for m in RECAP.findall(out)
    }
    return Recap(done.returncode, out, hosts)


def ansible_env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(
        {
            "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
            "ANSIBLE_HOME": str(work / "ansible-home"),
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(work / "cp"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_TIMEOUT": "20",
            "LC_ALL": "C.UTF-8",
            "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}",
        }
    )
    return env


def api(url: str, token: str | None = None, ca: Path | None = None, timeout: float = 10) -> Any:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    context = ssl.create_default_context(cafile=str(ca)) if ca else None
    with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
        return json.load(response)


def tls_files(work: Path, addresses: list[str]) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for ``addresses``: (CA, chain, key) PEM files."""
    ca, ca_key = work / "ca.pem", work / "ca.key"
    cert, key, csr, ext = (
        work / "server.pem",
        work / "server.key",
        work / "server.csr",
        work / "ext",
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    ext.write_text(
        f"subjectAltName={','.join(f'IP:{a}' for a in addresses)}\n"
        "extendedKeyUsage=serverAuth\nbasicConstraints=critical,CA:FALSE\n"
    )
    for argv in (
        ["req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "1",
         "-subj", "/CN=wardready test CA", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=wardready-city"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
         "-out", cert, "-days", "1", "-extfile", ext],
    ):  # fmt: skip
        done = run(["openssl", *argv])
        assert done.returncode == 0, done.stderr
    return ca, cert, key
