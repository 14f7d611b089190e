"""ansible/ for real: ansible-playbook over SSH into four hosts that boot systemd (a city host
and three ward PCs, one per working group), each a systemd-nspawn container in a network
namespace of its own. site.yml installs the collector, monitoring and the agents; the agents
enroll with codes, fetch their plan (an icmp check of the line to the city) and make their
wards ready. A second run and a --check run change nothing. upgrade.yml then rolls version B
out group by group, and a fault planted by this test (never by the product) keeps the second
group's agent from starting under B: the rollout stops there and rolls that group back.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.ansible import rootfs
from tests.ansible.deploy import (
    ANSIBLE,
    Recap,
    ansible_env,
    api,
    build_version,
    build_wheel,
    first_ward_of_groups,
    playbook,
    run,
    source_tree,
    tls_files,
    version_of,
)
from tests.ansible.hosts import Fleet, Host, fleet
from tests.e2e.test_ward_lifecycle import LINE_PROFILE
from tests.helpers import ROOT, need, need_program, need_root

pytestmark = [pytest.mark.e2e, pytest.mark.netns]

GROUPS = [1, 2, 3]
CAP_NET_RAW = 1 << 13
MONITORING = ["prometheus.service", "prometheus-alertmanager.service"]
AGENT_UNIT = "wardready-agent.service"


@dataclass
class Site:
    fleet: Fleet
    city: Host
    wards: dict[int, Host]
    ward_ids: dict[str, str]
    inventory: Path
    env: dict[str, str]
    url: str
    version_a: str
    version_b: str
    wheel_b: Path
    work: Path
    token: str | None = None
    ca: Path | None = None
    untouched: dict[str, str] = field(default_factory=dict)
    runs: dict[str, Recap] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def play(self, label: str, name: str, *args: str) -> Recap:
        started = time.monotonic()
        recap = playbook(self.inventory, self.env, name, *args)
        self.seconds[label] = time.monotonic() - started
        return recap

    def ward(self, host: Host) -> dict[str, object]:
        url = f"{self.url}/api/v1/wards/{self.ward_ids[host.name]}"
        found: dict[str, object] = api(url, self.token, self.ca)
        return found

    def reported_version(self, host: Host) -> str | None:
        agents = self.ward(host)["agents"]
        assert isinstance(agents, list)
        return next((a["version"] for a in agents if a["agent"] == host.name), None)

    def wait(self, what: str, predicate: Callable[[], object], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
            except OSError:
                pass
            time.sleep(1)
        assert predicate(), f"not within {timeout:g} s: {what}"


def wheelhouse(kind: str) -> Path:
    env = f"WARDREADY_{kind.upper()}_WHEELHOUSE"
    path = Path(os.environ.get(env) or ROOT / f".cache/{kind}-wheelhouse")
    need(
        path.is_dir() and any(path.glob("*.whl")),
        f"no {kind} wheelhouse at {path} (scripts/setup.sh builds it)",
    )
    return path


def write_inventory(
    site_dir: Path,
    net: Fleet,
    city: Host,
    wards: dict[int, Host],
    ward_ids: dict[str, str],
    settings: dict[str, object],
) -> Path:
    inv = site_dir / "inventory"
    (inv / "group_vars").mkdir(parents=True)
    (inv / "wards.py").symlink_to(ANSIBLE / "inventory/wards.py")
    lines = ["host,ward,address,agent"]
    lines += [f"{h.name},{ward_ids[h.name]},{h.address}," for h in wards.values()]
    (inv / "ward_pcs.csv").write_text("\n".join(lines) + "\n")
    (inv / "city.yml").write_text(
        json.dumps(
            {
                "wardready_city": {
                    "hosts": {city.name: {"ansible_host": city.address}},
                    "children": {
                        "wardready_collector": {"hosts": {city.name: None}},
                        "wardready_monitoring": {"hosts": {city.name: None}},
                    },
                }
            }
        )
    )
    ssh_args = f"-o UserKnownHostsFile={net.known_hosts} -o StrictHostKeyChecking=yes"
    common = {
        "ansible_user": "root",
        "ansible_ssh_private_key_file": str(net.key),
        "ansible_ssh_common_args": ssh_args,
    }
    (inv / "group_vars/all.yml").write_text(json.dumps({**common, **settings}, indent=1))
    return inv


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    need_root()
    for program in ("systemd-nspawn", "debootstrap", "ssh", "ssh-keygen"):
        need_program(program)
    agent_wh, collector_wh = wheelhouse("agent"), wheelhouse("collector")
    work = tmp_path_factory.mktemp("ansible")
    seconds: dict[str, float] = {}
    started = time.monotonic()
    lower = rootfs.ensure(work / "debootstrap.log")
    seconds["root file system (cached or built)"] = time.monotonic() - started

    started = time.monotonic()
    tree = source_tree()
    version_a = version_of(tree)
    version_b = f"{version_a}.post1"
    wheel_a = build_wheel(tree, work / "dist-a")
    wheel_b = build_version(tree, version_b, work)
    seconds["two wheels"] = time.monotonic() - started

    rows = first_ward_of_groups(GROUPS)
    with fleet(work, lower) as net:
        started = time.monotonic()
        city = net.add("wardready-city")
        wards = {g: net.add(rows[g]["id"], mask=MONITORING) for g in GROUPS}
        net.boot()
        seconds["boot four hosts"] = time.monotonic() - started
        ward_ids = {h.name: rows[g]["id"] for g, h in wards.items()}
        roles = _collector_has_roles(tree)
        fleet_file = work / "fleet.yaml"
        fleet_file.write_text(
            json.dumps(
                {
                    "version": 1,
                    "defaults": {
                        "checks": [
                            {
                                "name": "wan-city",
                                "type": "icmp",
                                "target": city.address,
                                "interval": "5s",
                                "timeout": "4s",
                                "labels": {"role": "wan", "line": "fibre"},
                                "params": {"count": 3, "interval_seconds": 0.2},
                            }
                        ]
                    },
                }
            )
        )
        profile = work / "profile.yaml"
        profile.write_text(LINE_PROFILE)  # icmp to the city, up
        # HTTPS once the collector serves it; Prometheus scrapes it on the city host itself.
        tls = _collector_has_tls(tree)
        ca, cert, key = tls_files(work, [city.address, "127.0.0.1"]) if tls else (None, None, None)
        url = f"{'https' if tls else 'http'}://{city.address}:8080"
        tls_vars = (
            {
                "wardready_collector_tls_cert": str(cert),
                "wardready_collector_tls_key": str(key),
                "wardready_agent_ca_file": str(ca),
                "wardready_monitoring_collector_scheme": "https",
                "wardready_monitoring_collector_ca_file": str(ca),
            }
            if tls
            else {}
        )
        inventory = write_inventory(
            work,
            net,
            city,
            wards,
            ward_ids,
            {
                "wardready_collector_url": url,
                "wardready_agent_wheel": str(wheel_a),
                "wardready_agent_wheelhouse": str(agent_wh),
                "wardready_agent_push_interval": "2s",
                "wardready_agent_report_delay": 2,
                "wardready_collector_wheel": str(wheel_a),
                "wardready_collector_wheelhouse": str(collector_wh),
                "wardready_collector_profile": str(profile),
                "wardready_collector_fleet_file": str(fleet_file),
                "wardready_monitoring_scrape_token": roles,
                **tls_vars,
            },
        )
        site = Site(
            net,
            city,
            wards,
            ward_ids,
            inventory,
            ansible_env(work),
            url,
            version_a,
            version_b,
            wheel_b,
            work,
            seconds=seconds,
            ca=ca,
        )
        # What an officer sees first: --check --diff on hosts where nothing is installed yet.
        site.runs["preview"] = site.play(
            "site.yml --check on new hosts", "site.yml", "--check", "--diff"
        )
        site.untouched = {
            h.name: net.ssh(h, "ls /opt /etc/systemd/system").stdout for h in net.hosts.values()
        }
        site.runs["first"] = site.play("site.yml, first run", "site.yml")
        assert site.runs["first"].rc == 0, site.runs["first"].output[-6000:]
        site.token = (
            net.ssh(city, "wardready-collector token create --role viewer --name test")
            .stdout.strip()
            .splitlines()[-1]
            if roles
            else None
        )
        site.runs["second"] = site.play("site.yml, second run", "site.yml")
        site.runs["check"] = site.play("site.yml --check --diff", "site.yml", "--check", "--diff")
        yield site
        print("\nseconds:", json.dumps({k: round(v, 1) for k, v in site.seconds.items()}, indent=1))


def _collector_has_tls(tree: Path) -> bool:
    """HTTPS exists once `serve` offers --tls-cert."""
    return "--tls-cert" in (tree / "collector/cli.py").read_text()


def _collector_has_roles(tree: Path) -> bool:
    """Token roles (viewer) exist once the collector's CLI offers them."""
    return "--role" in (tree / "collector/cli.py").read_text()


def test_site_yml_converges_and_a_second_run_changes_nothing(site: Site) -> None:
    first, second = site.runs["first"], site.runs["second"]
    assert set(first.hosts) == {site.city.name, *(h.name for h in site.wards.values())}
    assert all(n > 0 for n in first.changed().values()), first.changed()
    assert second.rc == 0, second.output[-6000:]
    assert second.changed() == dict.fromkeys(second.hosts, 0), second.output[-6000:]
    assert all(r["failed"] == 0 and r["unreachable"] == 0 for r in second.hosts.values())


def test_check_mode_on_new_hosts_shows_changes_and_makes_none(site: Site) -> None:
    preview = site.runs["preview"]
    assert preview.rc == 0, preview.output[-6000:]
    assert len(preview.hosts) == 4 and all(n > 0 for n in preview.changed().values())
    assert "wardready-agent.service" in preview.output  # --diff shows the unit to be written
    for name, listing in site.untouched.items():
        assert "wardready" not in listing, (name, listing)


def test_check_mode_on_converged_hosts_reports_no_change(site: Site) -> None:
    check = site.runs["check"]
    assert check.rc == 0, check.output[-6000:]
    assert len(check.hosts) == 4
    assert check.changed() == dict.fromkeys(check.hosts, 0), check.output[-6000:]


def test_each_agent_runs_as_its_own_user_with_cap_net_raw_alone(site: Site) -> None:
    for host in site.wards.values():
        pid = site.fleet.ssh(host, f"systemctl show -P MainPID {AGENT_UNIT}").stdout.strip()
        assert pid not in ("", "0"), f"{host.name}: the agent is not running"
        status = dict(
            line.split(":\t", 1)
            for line in site.fleet.ssh(host, f"cat /proc/{pid}/status").stdout.splitlines()
            if ":\t" in line
        )
        uid = site.fleet.ssh(host, "id -u wardready").stdout.strip()
        assert status["Uid"].split()[0] == uid != "0", status["Uid"]
        for kind in ("CapEff", "CapPrm", "CapAmb", "CapBnd"):
            assert int(status[kind], 16) == CAP_NET_RAW, (host.name, kind, status[kind])
        assert status["NoNewPrivs"].strip() == "1"
        token = site.fleet.ssh(host, "stat -c '%U:%G %a' /etc/wardready/token").stdout.split()
        assert token == ["root:wardready", "640"], token


def test_agents_enrolled_got_their_plan_reported_and_the_wards_are_ready(site: Site) -> None:
    for host in site.wards.values():
        # The agent's own config has no checks: the icmp check came from the collector's plan.
        config = yaml.safe_load(site.fleet.ssh(host, "cat /etc/wardready/agent.yaml").stdout)
        assert "checks" not in config and config["collector"]["plan"] is True, config
        plan = json.loads(site.fleet.ssh(host, "cat /var/lib/wardready/spool.db.plan.json").stdout)
        assert [c["name"] for c in plan["checks"]] == ["wan-city"], plan
        site.wait(f"{host.name} ready", lambda h=host: site.ward(h)["verdict"] == "ready")
        # Ready because the plan's icmp check of the line to the city succeeds, run by this agent.
        (criterion,) = site.ward(host)["criteria"]  # type: ignore[misc]
        evidence = criterion["evidence"][0]
        assert evidence["series"] == f"{host.name}/wan-city" and evidence["observed"] == 1.0
        assert site.reported_version(host) == site.version_a
        # No token was ever written into the inventory or its variables.
        token = site.fleet.ssh(host, "cat /etc/wardready/token").stdout.strip()
        assert len(token) >= 20
        for path in site.inventory.rglob("*"):
            if path.is_file():
                assert token not in path.read_text(errors="replace"), path


def test_systemd_analyze_verify_accepts_every_unit(site: Site) -> None:
    units = {
        site.city.name: "/etc/systemd/system/wardready-collector*.service "
        "/etc/systemd/system/wardready-collector-backup.timer"
    }
    for host in (site.city, *site.wards.values()):
        paths = units.get(host.name, f"/etc/systemd/system/{AGENT_UNIT}")
        done = site.fleet.ssh(host, f"systemd-analyze verify {paths}", check=False)
        assert done.returncode == 0 and "wardready" not in done.stderr, done.stderr


def test_the_collector_backs_up_its_database_while_running(site: Site) -> None:
    net, city = site.fleet, site.city
    net.ssh(city, "systemctl start wardready-collector-backup.service")
    listed = net.ssh(city, "ls /var/backups/wardready-collector").stdout.split()
    assert len(listed) == 1 and listed[0].endswith(".db"), listed
    wards = net.ssh(
        city,
        'python3 -c "import sqlite3,sys; print(sqlite3.connect('
        f"'/var/backups/wardready-collector/{listed[0]}').execute("
        "'select count(*) from wards').fetchone()[0])\"",
    ).stdout
    assert int(wards) >= 100


def test_prometheus_and_alertmanager_run_with_the_wardready_rules(site: Site) -> None:
    net, city = site.fleet, site.city
    for unit in MONITORING:
        assert net.ssh(city, f"systemctl is-active {unit}", check=False).stdout.strip() == "active"
    site.wait(
        "prometheus answers",
        lambda: (
            net.ssh(city, _GET.format("http://127.0.0.1:9090/api/v1/rules"), check=False).returncode
            == 0
        ),
    )
    rules = json.loads(net.ssh(city, _GET.format("http://127.0.0.1:9090/api/v1/rules")).stdout)
    names = {g["name"] for g in rules["data"]["groups"]}
    assert names and all(
        g["file"].startswith("/etc/prometheus/rules/") for g in rules["data"]["groups"]
    ), names
    targets = json.loads(net.ssh(city, _GET.format("http://127.0.0.1:9090/api/v1/targets")).stdout)
    jobs = {t["labels"]["job"] for t in targets["data"]["activeTargets"]}
    assert "wardready-collector" in jobs

    def collector_up() -> bool:
        found = json.loads(
            net.ssh(city, _GET.format("http://127.0.0.1:9090/api/v1/targets")).stdout
        )
        return any(
            t["labels"]["job"] == "wardready-collector" and t["health"] == "up"
            for t in found["data"]["activeTargets"]
        )

    site.wait("prometheus scrapes the collector", collector_up, timeout=90)
    site.wait(
        "alertmanager ready",
        lambda: (
            net.ssh(city, _GET.format("http://127.0.0.1:9093/-/ready"), check=False).returncode == 0
        ),
    )


_GET = (
    "python3 -c \"import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('{}',"
    ' timeout=5).read().decode())"'
)


@pytest.fixture(scope="module")
def upgraded(site: Site) -> dict[str, object]:
    """upgrade.yml to B with group 2's agent unable to start under B."""
    net = site.fleet
    g1, g2, g3 = (site.wards[g] for g in GROUPS)
    fault = (
        '[Service]\nExecStartPre=/bin/sh -c \'case "$(readlink /opt/wardready/current)" in'
        f" */{site.version_b}) echo planted by the test >&2; exit 1;; esac'\n"
    )
    net.put(g2, f"/etc/systemd/system/{AGENT_UNIT}.d/wardready-test-fault.conf", fault)
    net.ssh(g2, "systemctl daemon-reload")
    before = net.ssh(g3, f"systemctl show -P ActiveEnterTimestampMonotonic {AGENT_UNIT}").stdout
    extra = ["-e", f"wardready_agent_wheel={site.wheel_b}"]
    if site.token:
        vault = site.work / "vault.yml"
        vault.write_text(json.dumps({"wardready_viewer_token": site.token}))
        password = site.work / "vault-password"
        password.write_text("test-only vault password\n")
        encrypted = run(
            [
                shutil.which("ansible-vault") or "ansible-vault",
                "encrypt",
                vault,
                "--vault-password-file",
                password,
            ],
            env=site.env,
        )
        assert encrypted.returncode == 0, encrypted.stderr
        assert site.token not in vault.read_text()
        extra += ["-e", f"@{vault}", "--vault-password-file", str(password)]
    recap = site.play("upgrade.yml", "upgrade.yml", *extra)
    return {"recap": recap, "before": before, "g1": g1, "g2": g2, "g3": g3}


def current(site: Site, host: Host) -> str:
    return site.fleet.ssh(host, "readlink /opt/wardready/current").stdout.strip()


def test_upgrade_stops_at_the_group_that_fails_and_rolls_it_back(
    site: Site, upgraded: dict[str, object]
) -> None:
    recap = upgraded["recap"]
    assert isinstance(recap, Recap)
    g1, g2, g3 = (upgraded[k] for k in ("g1", "g2", "g3"))
    assert isinstance(g1, Host) and isinstance(g2, Host) and isinstance(g3, Host)
    venvs = "/opt/wardready/venvs"
    assert recap.rc != 0, recap.output[-6000:]
    assert "wg_2" in recap.output and "no later" in recap.output, recap.output[-6000:]
    # Group 1 runs B, and said so to the collector.
    assert current(site, g1) == f"{venvs}/{site.version_b}"
    assert site.reported_version(g1) == site.version_b
    # Group 2 is back on A, running, and reporting A.
    assert current(site, g2) == f"{venvs}/{site.version_a}"
    assert site.fleet.ssh(g2, f"systemctl is-active {AGENT_UNIT}").stdout.strip() == "active"
    assert site.reported_version(g2) == site.version_a
    # Group 3 was never touched: still A, B not even installed, the agent not restarted.
    assert current(site, g3) == f"{venvs}/{site.version_a}"
    assert site.fleet.ssh(g3, f"test -e {venvs}/{site.version_b}", check=False).returncode == 1
    after = site.fleet.ssh(g3, f"systemctl show -P ActiveEnterTimestampMonotonic {AGENT_UNIT}")
    assert after.stdout == upgraded["before"]
    assert g3.name not in recap.hosts or recap.hosts[g3.name]["changed"] == 0
