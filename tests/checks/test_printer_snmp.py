"""printer_snmp against snmpsimd serving hand-written printer recordings, and net-snmp's snmpd.

The recordings in tests/data/snmprec model a mono laser (one black toner, a drum) and a colour
MFP (CMYK toners, a drum that only says "some remaining", a waste toner box, a fuser of unknown
level), each in several states; the file name is the community (and the SNMPv3 context).
snmpsim does not answer bad SNMPv3 credentials with usmStats reports, so the auth-failure cases
run against snmpd, which does, as printers do.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from checks._printer import Supply, Tray, ratio
from checks.core import Target, run_check
from checks.printer_snmp import Params, Snapshot, error_names, judge
from checks.registry import REGISTRY
from tests.checks.conftest import RunCheck
from tests.devices import V3User, snmpd, snmpsim

pytestmark = pytest.mark.peer

USER = V3User("wardready", "auth-secret-1", "priv-secret-2")
# Where an answer is expected, room for a loaded machine; where none will come, wait little.
PATIENT = {"request_timeout_seconds": 2.0, "retries": 1}
FAST = {"request_timeout_seconds": 0.5, "retries": 0}


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with snmpsim(tmp_path_factory.mktemp("snmpsim"), USER) as port:
        yield f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with snmpd(tmp_path_factory.mktemp("snmpd"), USER) as port:
        yield f"127.0.0.1:{port}"


def v3(**extra: object) -> dict[str, object]:
    return {"version": "3", "user": USER.user, "auth_key": USER.auth_key,
            "priv_key": USER.priv_key, **PATIENT, **extra}  # fmt: skip


# community -> (success, reason, warnings, toner_min_ratio)
STATES = {
    "mono-normal": (True, "ok", None, 0.64),
    "mono-toner-low": (True, "ok", "toner_low", 0.06),
    "mono-toner-empty": (False, "toner_empty", None, 0.0),
    "mono-jam": (False, "jammed", None, 0.64),
    "mono-door-open": (False, "door_open", None, 0.64),
    "mono-paper-empty": (False, "paper_empty", None, 0.64),
    "colour-normal": (True, "ok", None, 0.40),
    "colour-toner-low": (True, "ok", "toner_low", 0.06),
    "colour-toner-empty": (False, "toner_empty", None, 0.0),
    "colour-jam": (False, "jammed", None, 0.40),
    "colour-door-open": (False, "door_open", None, 0.40),
    "colour-paper-low": (True, "ok", "paper_low", 0.40),
    "colour-paper-empty": (False, "paper_empty", None, 0.40),
}


@pytest.mark.parametrize("community", sorted(STATES))
def test_recorded_states(run: RunCheck, sim: str, community: str) -> None:
    success, reason, warning, toner = STATES[community]
    r = run("printer_snmp", sim, community=community, **PATIENT)
    assert (r.success, r.reason) == (success, reason), r.info
    assert r.info.get("warnings") == warning
    assert r.metrics["toner_min_ratio"] == pytest.approx(toner)
    assert r.metrics["query_seconds"] > 0
    if success:
        assert "faults" not in r.info
    else:
        assert r.info["faults"].split(",")[0] == reason


def test_mono_laser_in_detail(run: RunCheck, sim: str) -> None:
    r = run("printer_snmp", sim, community="mono-toner-empty", **PATIENT)
    m = r.metrics
    assert (m["device_status"], m["printer_status"], m["error_conditions"]) == (5, 1, 2)
    assert m["supply_level_ratio__1"] == 0.0
    assert m["supply_level_ratio__2"] == pytest.approx(41200 / 50000)  # drum, in impressions
    assert m["input_level_ratio__1"] == pytest.approx(180 / 250)
    assert "input_level_ratio__2" not in m  # the MP tray says only "some remaining"
    assert r.info["error_state"] == "noToner,serviceRequested"
    # The device is down: serviceRequested is a critical alert there, listed after the toner.
    assert r.info["faults"] == "toner_empty,service_requested"
    assert r.info["sys_descr"] == "Brother HL-L5100DN series"
    assert "1 Black Toner Cartridge TN-3480 (toner): 0%" in r.info["supplies"]
    assert "2 MP Tray: some remaining" in r.info["inputs"]


def test_colour_mfp_special_levels(run: RunCheck, sim: str) -> None:
    r = run("printer_snmp", sim, community="colour-normal", **PATIENT)
    m = r.metrics
    assert [m[f"supply_level_ratio__{i}"] for i in (1, 2, 3, 4)] == pytest.approx(
        [0.55, 0.70, 0.40, 0.81]
    )
    # Drum: level -3 (some remaining); fuser: -2 (unknown): no ratio, and neither is a fault.
    assert "supply_level_ratio__5" not in m and "supply_level_ratio__7" not in m
    assert m["supply_level_ratio__6"] == pytest.approx(0.20)  # the waste box, 20% full
    # The waste box is not a toner: the lowest toner is magenta at 40%.
    assert m["toner_min_ratio"] == pytest.approx(0.40)
    assert "5 Drum Unit (opc): some remaining" in r.info["supplies"]
    assert "7 Fuser Unit (fuser): unknown" in r.info["supplies"]
    assert "3 Multi-purpose Tray: unknown" in r.info["inputs"]


def test_toner_low_threshold_is_a_parameter(run: RunCheck, sim: str) -> None:
    # Magenta is at 40%: with the bar at 50% that is low, still a success.
    r = run("printer_snmp", sim, community="colour-normal", toner_low_ratio=0.5, **PATIENT)
    assert (r.success, r.info.get("warnings")) == (True, "toner_low")


def test_v3_auth_priv_reads_a_context(run: RunCheck, sim: str) -> None:
    r = run("printer_snmp", sim, **v3(context="colour-toner-empty"))
    assert (r.success, r.reason) == (False, "toner_empty"), r.info
    assert r.metrics["supply_level_ratio__3"] == 0.0


def test_wrong_community_is_a_timeout_with_a_hint(run: RunCheck, sim: str) -> None:
    r = run("printer_snmp", sim, community="not-the-community", **FAST)
    assert (r.success, r.reason) == (False, "timeout")
    assert "wrong community" in r.info["hint"]
    assert r.metrics == {}


@pytest.mark.parametrize(
    ("change", "reported"),
    [({"auth_key": "wrong-auth-key"}, "digest"), ({"user": "nobody"}, "unknown usm user")],
)
def test_wrong_v3_credentials_are_auth_failed(
    run: RunCheck, agent: str, change: dict[str, str], reported: str
) -> None:
    r = run("printer_snmp", agent, **v3(**change))
    assert (r.success, r.reason) == (False, "auth_failed"), r.info
    assert reported in r.info["error"].lower()


def test_wrong_privacy_key_is_a_timeout_with_a_hint(run: RunCheck, agent: str) -> None:
    # The agent cannot decrypt the request and drops it: nothing comes back to tell apart.
    r = run("printer_snmp", agent, **v3(priv_key="wrong-priv-key", **FAST))
    assert (r.success, r.reason) == (False, "timeout")
    assert "privacy key" in r.info["hint"]


def test_an_agent_without_a_printer_table(run: RunCheck, agent: str) -> None:
    r = run("printer_snmp", agent, **v3())
    assert (r.success, r.reason) == (False, "not_printer"), r.info


def test_no_agent_at_all(run: RunCheck) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        r = run("printer_snmp", f"127.0.0.1:{silent.getsockname()[1]}", timeout=2.0, **FAST)
    assert (r.success, r.reason) == (False, "timeout")


def test_secrets_stay_secret(
    sim: str, agent: str, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    kind = REGISTRY["printer_snmp"]
    caplog.set_level(logging.DEBUG)
    results = []
    for address, params in (
        (sim, {"community": "mono-normal", **PATIENT}),
        (sim, {"community": "secret-community-x", **FAST}),
        (agent, v3(auth_key="wrong-auth-key-y")),
    ):
        p = kind.params.model_validate(params)
        assert "secret" not in repr(p) and "wrong-auth" not in repr(p)
        results.append(run_check("printer_snmp", kind, Target("t", address), p, 5.0))
    text = repr([r.as_dict() for r in results]) + caplog.text
    for secret in ("mono-normal", "secret-community-x", "wrong-auth-key-y", USER.priv_key):
        assert secret not in text


def test_params_are_checked_without_echoing_keys() -> None:
    with pytest.raises(ValidationError) as caught:
        Params.model_validate({"version": "3", "user": "u", "auth_key": "short-1"})
    text = str(caught.value)
    assert "priv_key" in text and "short-1" not in text
    with pytest.raises(ValidationError) as caught:
        Params.model_validate(
            {"version": "3", "user": "u", "auth_key": "tiny", "priv_key": "x" * 9}
        )
    assert "auth_key must be at least 8 characters" in str(caught.value)
    assert "tiny" not in str(caught.value)
    # YAML reads a numeric community as a number.
    assert Params.model_validate({"community": 12345}).community.get_secret_value() == "12345"
    with pytest.raises(ValidationError):
        Params.model_validate({"comunity": "public"})


# ---- decoding, on values from RFC 3805 ---------------------------------------------------------


@pytest.mark.parametrize(
    ("octets", "names"),
    [
        (b"", []),
        (b"\x00", []),
        (b"\x80", ["lowPaper"]),
        (b"\x40", ["noPaper"]),
        (b"\x20", ["lowToner"]),
        (b"\x10", ["noToner"]),
        (b"\x08", ["doorOpen"]),
        (b"\x04", ["jammed"]),
        (b"\x02", ["offline"]),
        (b"\x01", ["serviceRequested"]),
        (b"\x00\x80", ["inputTrayMissing"]),
        (b"\x00\x40", ["outputTrayMissing"]),
        (b"\x00\x20", ["markerSupplyMissing"]),
        (b"\x00\x10", ["outputNearFull"]),
        (b"\x00\x08", ["outputFull"]),
        (b"\x00\x04", ["inputTrayEmpty"]),
        (b"\x00\x02", ["overduePreventMaint"]),
        (b"\x00\x01", []),  # bit 15 is not assigned
        (b"\x14\x04", ["noToner", "jammed", "inputTrayEmpty"]),
    ],
)
def test_error_state_bits(octets: bytes, names: list[str]) -> None:
    assert error_names(octets) == names


def test_ratio_special_values() -> None:
    assert ratio(50, 200) == 0.25
    assert ratio(0, 100) == 0.0
    assert ratio(250, 200) == 1.0  # clamped: some agents overshoot
    for level, maximum in ((-1, 100), (-2, 100), (-3, 100), (50, -1), (50, -2), (50, 0)):
        assert ratio(level, maximum) is None


def toner(index: int, level: int, maximum: int = 100) -> Supply:
    return Supply(index, 3, 3, f"toner {index}", maximum, level)


def test_judging_special_levels() -> None:
    # -3 is "some remaining": not empty, not low, no ratio.
    j = judge(Snapshot(device_status=2, supplies=[toner(1, -3)]), 0.1)
    assert (j.faults, j.warnings) == ([], [])
    assert "toner_min_ratio" not in j.metrics
    # -1 (no restriction) and -2 (unknown) conclude nothing either.
    j = judge(Snapshot(device_status=2, supplies=[toner(1, -1), toner(2, -2)]), 0.1)
    assert (j.faults, j.warnings) == ([], [])
    # Level 0 is empty even when the max capacity is unknown.
    j = judge(Snapshot(device_status=2, supplies=[toner(1, 0, -2), toner(2, 90)]), 0.1)
    assert j.faults == ["toner_empty"]
    assert j.metrics["toner_min_ratio"] == 0.9  # only known ratios count
    # A full waste box warns; its 100% is not a toner level.
    waste = Supply(3, 4, 4, "waste", 100, 100)
    j = judge(Snapshot(device_status=2, supplies=[toner(1, 50), waste]), 0.1)
    assert (j.warnings, j.metrics["toner_min_ratio"]) == (["waste_full"], 0.5)


def test_judging_device_status_and_trays() -> None:
    j = judge(Snapshot(device_status=5, error_state=b"\x01"), 0.1)
    assert j.faults == ["service_requested"]
    j = judge(Snapshot(device_status=3, error_state=b"\x01"), 0.1)
    assert (j.faults, j.warnings) == ([], ["service_requested"])
    j = judge(Snapshot(device_status=5), 0.1)
    assert j.faults == ["device_down"]
    j = judge(Snapshot(device_status=5, error_state=b"\x06"), 0.1)
    assert j.faults == ["jammed", "offline"]
    trays = [Tray(1, "a", 250, 0), Tray(2, "b", 250, -2)]
    # One empty tray and one unknown: every tray with a known level is empty.
    assert judge(Snapshot(device_status=2, trays=trays), 0.1).faults == ["paper_empty"]
    trays.append(Tray(3, "c", 100, -3))
    j = judge(Snapshot(device_status=2, trays=trays), 0.1)
    assert (j.faults, j.warnings) == ([], ["paper_low"])


def test_statuses_outside_their_enumeration_are_not_reported() -> None:
    # A declared metric stays within its range: the runner would refuse the whole result.
    j = judge(Snapshot(device_status=9, printer_status=0), 0.1)
    assert "device_status" not in j.metrics and "printer_status" not in j.metrics
    j = judge(Snapshot(device_status=2, printer_status=3), 0.1)
    assert (j.metrics["device_status"], j.metrics["printer_status"]) == (2, 3)
