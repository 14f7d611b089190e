"""``wardready-agent discover``: subnet limits, confinement, classification, the checks
snippet (validated by the agent's own config loader), SNMP probes against snmpsim on
loopback, and the inventory report to a real collector on loopback."""

from __future__ import annotations

import ipaddress
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from agent import cli
from agent import discover as disc
from agent.config import load_config
from agent.discover_net import Announced, Pace, SnmpAnswer, snmp_probe
from collector import tokens, wards
from collector.api import create_app
from collector.profile import default_profile_path
from collector.service import Service
from tests.devices import free_port, snmpsim, wait_for

NET = ipaddress.IPv4Network("10.9.8.0/24")


def ann(service: str, address: str, port: int = 631, **txt: str) -> Announced:
    return Announced(service, f"dev-{address}", address, port, f"host-{address}", dict(txt))


def snmp(address: str, descr: str = "", oid: str = "", printer: bool = False) -> SnmpAnswer:
    return SnmpAnswer(address, descr, oid, f"sys-{address}", printer)


# ---- subnet and confinement -----------------------------------------------------------------


def test_subnets_larger_than_a_22_need_force() -> None:
    assert disc.plan_subnet("192.0.2.0/22").num_addresses == 1024
    with pytest.raises(disc.DiscoverError, match=r"--subnet '10.0.0.0/21'.*--force"):
        disc.plan_subnet("10.0.0.0/21")
    assert disc.plan_subnet("10.0.0.0/21", force=True).prefixlen == 21
    with pytest.raises(disc.DiscoverError, match="only IPv4"):
        disc.plan_subnet("2001:db8::/120")
    with pytest.raises(disc.DiscoverError, match="--subnet 'ten'"):
        disc.plan_subnet("ten")
    assert str(disc.plan_subnet("10.9.8.77/24")) == "10.9.8.0/24"


def test_confine_keeps_only_hosts_of_the_subnet() -> None:
    net = ipaddress.IPv4Network("10.9.8.0/26")
    given = ["10.9.8.5", "10.9.8.64", "10.9.8.0", "10.9.8.63", "10.9.7.5", "printer.local",
             "::1", "10.9.8.5", "10.9.8.62", "127.0.0.1"]  # fmt: skip
    assert disc.confine(net, given) == ["10.9.8.5", "10.9.8.62"]


def test_sweep_targets_are_the_subnet_hosts_but_ours() -> None:
    net = ipaddress.IPv4Network("10.9.8.0/29")
    assert disc.sweep_targets(net, ["10.9.8.2"]) == [f"10.9.8.{i}" for i in (1, 3, 4, 5, 6)]
    big = ipaddress.IPv4Network("10.9.0.0/22")
    every = disc.sweep_targets(big)
    assert len(every) == 1022 and all(ipaddress.ip_address(a) in big for a in every)


def test_merge_drops_what_lies_outside_the_subnet() -> None:
    hosts = disc.merge(
        NET,
        {"10.9.8.7": "aa:bb:cc:dd:ee:07", "10.9.9.7": "aa:bb:cc:dd:ee:99"},
        [ann("ipp", "10.9.8.20"), ann("ipp", "192.0.2.1")],
        [snmp("10.9.8.30", printer=True), snmp("198.51.100.1", printer=True)],
        gateway="10.9.7.1",
    )
    assert [h.address for h in hosts] == ["10.9.8.7", "10.9.8.20", "10.9.8.30"]


# ---- classification -------------------------------------------------------------------------


def kind_of(announced: list[Announced] = (), answer: SnmpAnswer | None = None,  # type: ignore[assignment]
            gateway: str | None = None) -> str:  # fmt: skip
    hosts = disc.merge(NET, {"10.9.8.5": "aa:bb:cc:dd:ee:05"}, announced,
                       [answer] if answer else [], gateway)  # fmt: skip
    (host,) = hosts
    return host.kind


def test_classification_from_evidence() -> None:
    a = "10.9.8.5"
    assert kind_of() == "unknown"
    assert kind_of([ann("ipp", a)]) == "printer"
    assert kind_of([ann("pdl-datastream", a, 9100)]) == "printer"
    assert kind_of(answer=snmp(a, "Brother HL-L5100DN", printer=True)) == "printer"
    assert kind_of([ann("uscan", a, 80)]) == "scanner"
    assert kind_of([ann("ipp", a), ann("uscans", a, 443)]) == "multifunction"
    assert kind_of([ann("uscan", a, 80)], snmp(a, printer=True)) == "multifunction"
    assert kind_of([ann("sip", a, 5060)]) == "vc"
    assert kind_of(answer=snmp(a, "RouterOS RB4011")) == "router"
    assert kind_of(answer=snmp(a, "Linux box", "1.3.6.1.4.1.9.1.1208")) == "router"
    assert kind_of(answer=snmp(a, "Linux box", "1.3.6.1.4.1.8072.3.2.10")) == "unknown"
    assert kind_of(gateway=a) == "router"
    # A printer that is also the gateway is still the printer.
    assert kind_of([ann("ipp", a)], gateway=a) == "printer"


def test_evidence_and_name_come_from_what_answered() -> None:
    a = "10.9.8.5"
    (host,) = disc.merge(NET, {a: "aa:bb:cc:dd:ee:05"}, [ann("ipp", a)],
                         [snmp(a, printer=True)], a)  # fmt: skip
    assert host.name == "host-10.9.8.5"
    assert host.evidence == ["mdns ipp:631", "snmp answered", "Printer MIB", "default gateway",
                             "arp"]  # fmt: skip
    table = disc.render_table([host])
    assert table.splitlines()[0].split() == ["address", "mac", "name", "kind", "evidence"]
    assert "10.9.8.5  aa:bb:cc:dd:ee:05  host-10.9.8.5  printer  mdns ipp:631" in table


# ---- the checks snippet ---------------------------------------------------------------------

LAN = [
    ([ann("ipp", "10.9.8.10", 631, rp="ipp/print"), ann("ipps", "10.9.8.10", 631)],
     snmp("10.9.8.10", "HP LaserJet", printer=True)),
    ([ann("ipps", "10.9.8.11", 443, rp="printers/q1"),
      ann("uscan", "10.9.8.11", 8080, rs="/eSCL/")], None),
    ([ann("uscans", "10.9.8.12", 443)], None),
    ([ann("sip", "10.9.8.13", 5060)], None),
    ([], snmp("10.9.8.1", "MikroTik RouterOS")),
    ([], None),
]  # fmt: skip


def lan_hosts() -> list[disc.Host]:
    announced = [a for services, _ in LAN for a in services]
    answers = [s for _, s in LAN if s is not None]
    arp = {f"10.9.8.{i}": f"aa:bb:cc:dd:ee:{i:02x}" for i in (1, 10, 11, 12, 13, 14)}
    return disc.merge(NET, arp, announced, answers, None)


def load_snippet(tmp_path: Path, text: str) -> dict[tuple[str, str], Any]:
    config = tmp_path / "agent.yaml"
    config.write_text(
        "ward: phuong-ben-thanh\ncollector: {url: 'http://127.0.0.1:9', token: t}\n" + text,
        encoding="utf-8",
    )
    return {(c.check, c.target.address): c for c in load_config(config).checks}


def test_snippet_validates_and_carries_the_profile_labels(tmp_path: Path) -> None:
    hosts = lan_hosts()
    assert [h.kind for h in hosts] == ["router", "printer", "multifunction", "scanner", "vc",
                                       "unknown"]  # fmt: skip
    checks = load_snippet(tmp_path, disc.snippet_yaml(disc.checks_snippet(hosts)))
    printer = {"role": "counter_device", "device": "printer", "ward": "phuong-ben-thanh"}
    expected = {
        ("printer_ipp", "ipp://10.9.8.10:631/ipp/print"): printer,
        ("printer_snmp", "10.9.8.10"): printer,
        ("printer_ipp", "ipps://10.9.8.11:443/printers/q1"): printer,
        ("scanner_escl", "http://10.9.8.11:8080/eSCL"): {"role": "counter_device",
                                                          "ward": "phuong-ben-thanh"},
        ("scanner_escl", "https://10.9.8.12:443/eSCL"): {"role": "counter_device",
                                                          "ward": "phuong-ben-thanh"},
        ("sip", "10.9.8.13:5060"): {"role": "vc", "ward": "phuong-ben-thanh"},
        ("icmp", "10.9.8.1"): {"role": "lan", "device": "router", "ward": "phuong-ben-thanh"},
    }  # fmt: skip
    assert {k: dict(c.target.labels) for k, c in checks.items()} == expected
    assert checks[("printer_snmp", "10.9.8.10")].params.community.get_secret_value() == "public"


def test_snippet_keeps_community_and_port_and_is_private(tmp_path: Path) -> None:
    hosts = disc.merge(NET, {}, [], [snmp("10.9.8.10", printer=True)], None)
    text = disc.snippet_yaml(disc.checks_snippet(hosts, "s3cret-ward", 1161))
    (check,) = load_snippet(tmp_path, text).values()
    assert check.target.address == "10.9.8.10:1161"
    assert check.params.community.get_secret_value() == "s3cret-ward"
    out = tmp_path / "found.yaml"
    disc.write_private(str(out), text)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600


# ---- SNMP against a real agent on loopback ----------------------------------------------


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[int]:
    with snmpsim(tmp_path) as port:
        yield port


def test_snmp_probe_reads_sysdescr_and_printer_mib(sim: int) -> None:
    (answer,) = snmp_probe(["127.0.0.1"], sim, "mono-normal", timeout=2.0)
    assert answer.sys_descr == "Brother HL-L5100DN series"
    assert answer.sys_object_id == "1.3.6.1.4.1.2435.2.3.9.1"
    assert answer.sys_name == "quay-3-may-in"
    assert answer.printer_mib is True


def test_snmp_probe_without_an_answer_finds_nothing(sim: int) -> None:
    # snmpsim stays silent for a community it has no recording for, as a device does.
    assert snmp_probe(["127.0.0.1", "127.0.0.2"], sim, "no-such-community", timeout=0.3) == []


def test_snmp_probe_takes_addresses_only() -> None:
    with pytest.raises(ValueError):
        snmp_probe(["printer.example"], 161)


def test_pace_spaces_probes() -> None:
    import asyncio

    async def run() -> list[float]:
        pace = Pace(20.0)
        stamps = []
        for _ in range(5):
            await pace.wait()
            stamps.append(time.monotonic())
        return stamps

    stamps = asyncio.run(run())
    # The guarantee is a budget, not a spacing: by the k-th event at least k gaps have passed,
    # however late the event loop woke any one of them.
    assert all(t - stamps[0] >= k * 0.05 - 0.002 for k, t in enumerate(stamps))


# ---- the command line -------------------------------------------------------------------


def test_cli_refuses_a_large_subnet(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["discover", "--subnet", "10.0.0.0/16", "--no-mdns"]) == 2
    assert "--force" in capsys.readouterr().err


def test_cli_report_needs_a_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["discover", "--subnet", "127.0.0.0/30", "--report"]) == 2
    assert "-c CONFIG" in capsys.readouterr().err


def test_cli_rejects_a_silly_rate(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["discover", "--subnet", "127.0.0.0/30", "--rate", "0"]) == 2
    assert "--rate" in capsys.readouterr().err


# ---- report to a real collector on loopback ---------------------------------------------

UNITS = (
    "id,name,kind,former_district,working_group\nphuong-ben-thanh,Phường Bến Thành,ward,Quận 1,2\n"
)


@pytest.fixture
def collector(db_url: str, tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """A collector on loopback: its URL, an agent token, and a viewer token for the reads."""
    (tmp_path / "units.csv").write_text(UNITS, encoding="utf-8")
    service = Service.open(db_url, default_profile_path())
    wards.import_csv(service.engine, tmp_path / "units.csv")
    token = tokens.create(service.engine, "phuong-ben-thanh", "pc-01")
    viewer = tokens.create(service.engine, role="viewer", name="test")
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for("collector", lambda: server.started, 15)
        yield f"http://127.0.0.1:{port}", token, viewer
    finally:
        server.should_exit = True
        thread.join(15)
        service.close()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_report_reaches_the_ward_page(collector: tuple[str, str, str], tmp_path: Path) -> None:
    import httpx

    url, token, viewer = collector
    inv = disc.inventory(lan_hosts(), "phuong-ben-thanh", "pc-01")
    assert disc.post_inventory(url, token, inv, 10) == {"stored": True, "devices": 6}
    page = httpx.get(
        f"{url}/api/v1/wards/phuong-ben-thanh", timeout=10, headers=_bearer(viewer)
    ).json()
    devices = {d["address"]: d for d in page["inventory"][0]["devices"]}
    assert devices["10.9.8.11"]["kind"] == "multifunction"
    assert devices["10.9.8.11"]["services"] == ["ipps", "uscan"]
    assert devices["10.9.8.1"]["sys_descr"] == "MikroTik RouterOS"

    with pytest.raises(httpx.HTTPStatusError, match="403"):
        disc.post_inventory(url, token, disc.inventory([], "phuong-ben-thanh", "pc-02"), 10)


def test_cli_report_posts_with_the_agent_config(
    collector: tuple[str, str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import httpx

    url, token, viewer = collector
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens: the report goes to the next
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"ward: phuong-ben-thanh\nagent: pc-01\n"
        f"collector: {{urls: ['{down}', '{url}'], token: '{token}'}}\n"
        "checks: [{name: gw, type: icmp, target: 127.0.0.1}]\n",
        encoding="utf-8",
    )
    # Nothing to probe (all methods off): an empty inventory still goes through the real path.
    argv = ["discover", "--subnet", "127.0.0.0/30", "--no-arp", "--no-mdns", "--no-snmp",
            "--report", "-c", str(config)]  # fmt: skip
    assert cli.main(argv) == 0
    assert f"reported to {url}" in capsys.readouterr().err
    page = httpx.get(
        f"{url}/api/v1/wards/phuong-ben-thanh", timeout=10, headers=_bearer(viewer)
    ).json()
    assert page["inventory"][0]["agent"] == "pc-01" and page["inventory"][0]["devices"] == []
    assert token not in capsys.readouterr().out
