"""The fleet as real processes: agents enroll with codes, run their ward's plan from the
collector, survive plan changes without losing a result, refuse a bad plan, and one agent is
revoked while its ward's other agent keeps working."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fleet import ROOT, Collector, Proc, free_port, stopping, wait_until

pytestmark = pytest.mark.e2e

W1, W2 = "ward-minh-phung", "ward-binh-thoi"

PROFILE = """\
version: 1
silence_seconds: 20
criteria:
  - id: collector_up
    title: The collector answers on TCP
    severity: blocker
    select: {check: tcp, labels: {role: wan}}
    condition: {metric: success, agg: min, last: 2, op: ">=", threshold: 1}
    max_age_intervals: 5
"""


def fleet_file(port: int, extra: str = "") -> str:
    return f"""\
version: 1
defaults:
  checks:
    - name: collector-tcp
      type: tcp
      target: "127.0.0.1:{port}"
      interval: 1s
      timeout: 500ms
      labels: {{role: wan}}
wards:
  {W1}:
    checks:
      - {{name: spare, type: tcp, target: "127.0.0.1:{port}", interval: 2s, timeout: 1s,
         labels: {{role: spare}}}}
{extra}"""


def run(*argv: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *argv],
        capture_output=True,
        text=True,
        check=check,
        cwd=ROOT,
        timeout=60,
    )


def code(collector: Collector, ward: str, *more: str) -> str:
    out = collector.cli("enroll", "create", "--ward", ward, *more).stdout
    return out.strip().splitlines()[-1]


@dataclass
class Enrolled:
    workdir: Path
    ward: str
    name: str
    metrics_port: int
    proc: Proc | None = None

    @property
    def config(self) -> Path:
        return self.workdir / self.ward / self.name / "agent.yaml"

    @property
    def token_file(self) -> Path:
        return self.workdir / self.ward / self.name / "token"

    def enroll(self, url: str, the_code: str) -> subprocess.CompletedProcess[str]:
        return run(
            "agent",
            "enroll",
            "--collector",
            url,
            "--code",
            the_code,
            "--agent",
            self.name,
            "--config",
            str(self.config),
            "--token-file",
            str(self.token_file),
            "--spool",
            str(self.workdir / self.ward / self.name / "spool.db"),
            "--metrics-listen",
            f"127.0.0.1:{self.metrics_port}",
        )

    def quicken(self) -> None:
        """Push and poll every second: the officer's defaults, only faster for the test."""
        doc = yaml.safe_load(self.config.read_text())
        doc["collector"].update({"push_interval": "1s", "plan_interval": "1s", "timeout": "3s"})
        self.config.write_text(yaml.safe_dump(doc))

    def start(self) -> Enrolled:
        argv = [sys.executable, "-m", "agent", "run", "-c", str(self.config)]
        self.proc = Proc(
            f"agent {self.name}", argv, self.workdir / f"{self.ward}.{self.name}.log"
        ).start()
        return self

    def stop(self) -> int | None:
        return self.proc.stop() if self.proc else None

    def metric(self, family: str, /, **labels: str) -> float | None:
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2).text
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        for line in text.splitlines():
            if line.startswith(family + ("{" if labels else " ")) and want in line:
                return float(line.rsplit(" ", 1)[1])
        return None

    def log(self) -> str:
        return (self.workdir / f"{self.ward}.{self.name}.log").read_text(errors="replace")


def agent_of(collector: Collector, ward: str, name: str) -> dict[str, Any]:
    agents = collector.ward(ward)["agents"]
    return next(a for a in agents if a["agent"] == name)


def fleet_collector(tmp_path: Path) -> tuple[Collector, Path]:
    """A collector (not started yet) with the ward list and the fleet file imported."""
    profile = tmp_path / "profile.yaml"
    profile.write_text(PROFILE)
    collector = Collector(tmp_path, profile)
    collector.setup()
    fleet_yaml = tmp_path / "fleet.yaml"
    fleet_yaml.write_text(fleet_file(collector.port))
    collector.cli("fleet", "import", str(fleet_yaml))
    return collector, fleet_yaml


def test_three_agents_enroll_run_their_plans_and_one_is_revoked(tmp_path: Path) -> None:
    collector, _ = fleet_collector(tmp_path)
    agents = [
        Enrolled(tmp_path, W1, "pc-01", free_port()),
        Enrolled(tmp_path, W1, "pc-02", free_port()),
        Enrolled(tmp_path, W2, "pc-01", free_port()),
    ]
    with stopping(collector, *agents):
        collector.start()
        two = code(collector, W1, "--uses", "2", "--expires", "1h")
        one = code(collector, W2)
        assert re.fullmatch(r"[2-9A-HJKMNP-Z]{4}-[2-9A-HJKMNP-Z]{4}-[2-9A-HJKMNP-Z]{2}", two)
        for agent, the_code in zip(agents, [two, two, one], strict=True):
            done = agent.enroll(collector.url, the_code)
            assert done.returncode == 0, done.stderr
            token = agent.token_file.read_text().strip()
            assert agent.token_file.stat().st_mode & 0o777 == 0o600
            assert token not in done.stdout + done.stderr
            assert "plan: v1" in done.stdout, done.stdout
            valid = run("agent", "validate", "-c", str(agent.config))
            assert valid.returncode == 0 and "collector's plan" in valid.stdout, valid
            agent.quicken()
            agent.start()

        # Refused codes say why, and the agent command exits 1.
        spare = Enrolled(tmp_path / "spare", W1, "pc-09", free_port())
        used_up = spare.enroll(collector.url, one)
        assert used_up.returncode == 1 and "is used up (1 of 1 uses)" in used_up.stderr
        expired = code(collector, W1, "--expires", "1s")
        time.sleep(1.2)
        refused = spare.enroll(collector.url, expired)
        assert refused.returncode == 1 and "expired at" in refused.stderr, refused.stderr
        revoked = code(collector, W1)
        collector.cli("enroll", "revoke", revoked[:4])
        refused = spare.enroll(collector.url, revoked)
        assert refused.returncode == 1 and "was revoked" in refused.stderr, refused.stderr
        listed = collector.cli("enroll", "list", "--ward", W1).stdout
        assert "revoked" in listed and "expired" in listed and "used up" in listed

        for ward in (W1, W2):
            wait_until(
                lambda w=ward: collector.ward(w)["verdict"] == "ready", 40, what=f"{ward} ready"
            )
        detail = collector.ward(W1)
        enrolled = {a["agent"]: a for a in detail["fleet"]["agents"]}
        assert set(enrolled) == {"pc-01", "pc-02"}
        assert all(len(a["machine_id_hash"]) in (0, 64) and a["os"] for a in enrolled.values())
        wait_until(
            lambda: all(a["plan_version"] == 1 for a in collector.ward(W1)["fleet"]["agents"]),
            20,
            what="plan v1 reported",
        )
        listed = collector.cli("agent", "list", "--ward", W1).stdout
        assert "pc-01" in listed and "pc-02" in listed and "v1" in listed

        # Revoke W1's pc-01: its token is refused, W1's pc-02 keeps reporting.
        revoked_token = agents[0].token_file.read_text().strip()
        out = collector.cli("agent", "revoke", "--ward", W1, "--agent", "pc-01").stdout
        assert "revoked agent pc-01 of ward ward-minh-phung (1 token)" in out
        plan_url = f"{collector.url}/api/v1/plan"
        wait_until(
            lambda: (
                httpx.get(
                    plan_url, headers={"Authorization": f"Bearer {revoked_token}"}, timeout=2
                ).status_code
                == 401
            ),
            15,
            what="revoked token refused",
        )
        wait_until(lambda: "401" in agents[0].log(), 15, what="pc-01 told 401")
        before = agent_of(collector, W1, "pc-02")["last_seen"]
        wait_until(
            lambda: agent_of(collector, W1, "pc-02")["last_seen"] > before + 2,
            15,
            what="pc-02 still reporting",
        )
        pc01_seen = agent_of(collector, W1, "pc-01")["last_seen"]
        time.sleep(3)
        assert agent_of(collector, W1, "pc-01")["last_seen"] == pc01_seen
        assert collector.ward(W2)["verdict"] == "ready"


def count_results(workdir: Path, agent: str) -> list[int]:
    with sqlite3.connect(workdir / "collector.db", timeout=5) as db:
        rows = db.execute("SELECT seq FROM results WHERE agent = ? ORDER BY seq", (agent,))
        return [int(r[0]) for r in rows]


def test_plan_change_hot_reload_and_bad_plan(tmp_path: Path) -> None:
    collector, fleet_yaml = fleet_collector(tmp_path)
    agent = Enrolled(tmp_path, W1, "pc-01", free_port())
    with stopping(collector, agent):
        collector.start()
        assert agent.enroll(collector.url, code(collector, W1)).returncode == 0
        agent.quicken()
        agent.start()
        wait_until(
            lambda: (agent.metric("wardready_check_runs_total", name="collector-tcp") or 0) >= 8,
            30,
            what="8 runs",
        )
        # Between changes the agent asks with If-None-Match and gets 304s.
        wait_until(
            lambda: (
                (agent.metric("wardready_agent_plan_polls_total", outcome="not_modified") or 0) >= 2
            ),
            10,
            what="304s",
        )
        assert collector.get("/api/v1/fleet")["plan_requests"]["not_modified"] >= 2
        pid = agent.proc.pid if agent.proc else -1

        # v2: the shared check unchanged, "spare" changed, "extra" added.
        changed = fleet_file(collector.port).replace("interval: 2s", "interval: 3s")
        changed += (
            f"      - {{name: extra, type: tcp, target: '127.0.0.1:{collector.port}', "
            "interval: 1s, timeout: 500ms, labels: {role: lan}}\n"
        )
        fleet_yaml.write_text(changed)
        runs_before = agent.metric("wardready_check_runs_total", name="collector-tcp") or 0
        out = collector.cli("fleet", "import", str(fleet_yaml)).stdout
        assert "ward-minh-phung: plan v2" in out
        wait_until(lambda: agent.metric("wardready_agent_plan_version") == 2, 15, what="v2")
        runs_after = agent.metric("wardready_check_runs_total", name="collector-tcp") or 0
        assert runs_after >= runs_before, "an unchanged check's counter must not reset"
        assert agent.proc is not None and agent.proc.pid == pid and agent.proc.alive()
        assert "plan v2 applied: 3 checks (1 new, 1 changed, 0 removed, 1 unchanged)" in agent.log()
        wait_until(
            lambda: agent.metric("wardready_check_runs_total", name="extra"),
            10,
            what="the new check runs",
        )

        # v3 fails the agent's validation (imported without the collector's own check):
        # the agent keeps v2, counts and reports it.
        bad = changed.replace("labels: {role: lan}}", "labels: {role: lan}, params: {nope: 1}}")
        fleet_yaml.write_text(bad)
        collector.cli("fleet", "import", "--no-validate", str(fleet_yaml))
        wait_until(
            lambda: agent.metric("wardready_agent_plan_errors_total") == 1,
            15,
            what="plan error counted",
        )
        assert agent.metric("wardready_agent_plan_version") == 2
        wait_until(lambda: agent_plan(collector)["plan_error"], 15, what="plan error reported")
        reported = agent_plan(collector)
        assert reported["plan_version"] == 2
        assert "plan v3" in reported["plan_error"] and "params.nope" in reported["plan_error"]
        assert agent.log().count("plan refused, keeping v2") == 1
        outdated = collector.get("/api/v1/fleet")["outdated"]
        assert outdated == [
            {
                "ward": W1,
                "agent": "pc-01",
                "running": 2,
                "current": 3,
                "plan_error": reported["plan_error"],
            }
        ]
        status = collector.cli(
            "status", "--url", collector.url, "--working-group", "1",
            "--token-file", str(collector.viewer_token_file),
        ).stdout  # fmt: skip
        assert "ward-minh-phung/pc-01: runs v2, current v3; refused it: plan v3" in status
        time.sleep(2)
        assert agent.stop() == 0
        time.sleep(1.5)  # the final drain is committed
    seqs = count_results(tmp_path, "pc-01")
    assert len(seqs) >= 15
    assert seqs == list(range(1, len(seqs) + 1)), "no result lost across plan changes"


def agent_plan(collector: Collector) -> dict[str, Any]:
    agents = collector.ward(W1)["fleet"]["agents"]
    return next(a for a in agents if a["agent"] == "pc-01")
