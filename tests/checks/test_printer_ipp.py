"""printer_ipp against ippeveprinter (CUPS' IPP Everywhere printer simulator).

Faults are set while it runs through its own web forms (/supplies and /media), which update
printer-supply, printer-input-tray and printer-state-reasons as a real printer would. A second
instance loads marker-levels/marker-names/marker-types from an attributes file (-a).
The last tests feed the results to the collector's readiness evaluation with the shipped
default profile.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from checks.core import Result
from checks.printer_ipp import as_list, judge, parse_uri, split_reason
from collector.profile import Profile, default_profile_path, load_profile
from collector.readiness import Verdict, evaluate
from collector.state import State
from shared.wire import ResultRecord
from tests.checks.conftest import Certs, RunCheck
from tests.devices import Printer, ippeveprinter, private_bus

pytestmark = pytest.mark.peer

MARKERS = """ATTR integer marker-levels 80,7,-3
ATTR name marker-names "Black Toner","Cyan Toner","Drum Unit"
ATTR keyword marker-types toner,toner-cartridge,opc
"""


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ipp")


@pytest.fixture(scope="module")
def bus(work: Path) -> Iterator[str]:
    with private_bus(work) as address:
        yield address


@pytest.fixture(scope="module")
def printer(work: Path, bus: str, certs: Certs) -> Iterator[Printer]:
    """Answers ipp and ipps on one port, with a certificate from the test CA for localhost."""
    keys = work / "keys"
    keys.mkdir()
    shutil.copyfile(certs.valid[0], keys / "localhost.crt")
    shutil.copyfile(certs.valid[1], keys / "localhost.key")
    with ippeveprinter(work, bus, "Quay1", keys=keys) as p:
        yield p


@pytest.fixture(scope="module")
def marker_printer(work: Path, bus: str) -> Iterator[Printer]:
    with ippeveprinter(work, bus, "Markers", attrs=MARKERS) as p:
        yield p


def set_state(p: Printer, toner: int = 75, paper: int = 250) -> None:
    """Black toner level (%) and sheets in the main tray, through the web forms."""
    p.form("supplies", supply0=25, supply1=toner)
    p.form("media", size1="iso_a4_210x297mm", type1="stationery", level1=paper,
           size3="iso_dl_110x220mm", type3="envelope", level3=-2)  # fmt: skip


def test_normal(run: RunCheck, printer: Printer) -> None:
    set_state(printer)
    r = run("printer_ipp", printer.uri)
    assert (r.success, r.reason) == (True, "ok"), r.info
    assert r.info["state_reasons"] == "none" and "warnings" not in r.info
    assert r.info["printer_state"] == "idle"
    m = r.metrics
    assert (m["printer_state"], m["queued_jobs"]) == (3, 0)
    assert m["toner_min_ratio"] == 0.75
    assert m["supply_level_ratio__1"] == 0.25  # the waste tank: not a toner
    assert m["input_level_ratio__2"] == 1.0  # 250 of 250 sheets in "main"
    assert m["request_seconds"] > 0
    assert "2 Black Toner (toner): 75%" in r.info["supplies"]


def test_toner_low_is_a_warning(run: RunCheck, printer: Printer) -> None:
    set_state(printer, toner=5)
    r = run("printer_ipp", printer.uri)
    assert (r.success, r.reason) == (True, "ok"), r.info
    assert r.info["state_reasons"] == "toner-low-report"
    assert r.info["warnings"] == "toner_low"
    assert r.metrics["toner_min_ratio"] == 0.05


def test_toner_empty(run: RunCheck, printer: Printer) -> None:
    set_state(printer, toner=0)
    r = run("printer_ipp", printer.uri)
    assert (r.success, r.reason) == (False, "toner_empty"), r.info
    assert r.info["state_reasons"] == "toner-empty-report"
    assert r.metrics["toner_min_ratio"] == 0.0


def test_media_empty(run: RunCheck, printer: Printer) -> None:
    set_state(printer, paper=0)
    r = run("printer_ipp", printer.uri)
    assert (r.success, r.reason) == (False, "media_empty"), r.info
    assert r.metrics["input_level_ratio__2"] == 0.0


def test_media_low_is_a_warning(run: RunCheck, printer: Printer) -> None:
    set_state(printer, paper=5)
    r = run("printer_ipp", printer.uri)
    assert (r.success, r.info.get("warnings")) == (True, "media_low"), r.info


def test_several_faults_at_once(run: RunCheck, printer: Printer) -> None:
    # pyipp hands printer-state-reasons over as a list now, not a str.
    set_state(printer, toner=0, paper=0)
    r = run("printer_ipp", printer.uri)
    assert (r.success, r.reason) == (False, "toner_empty")
    assert r.info["faults"] == "toner_empty,media_empty"
    assert sorted(r.info["state_reasons"].split(",")) == ["media-empty-report",
                                                          "toner-empty-report"]  # fmt: skip


def test_marker_levels(run: RunCheck, marker_printer: Printer) -> None:
    r = run("printer_ipp", f"localhost:{marker_printer.port}")  # bare host:port means ipp
    assert (r.success, r.reason) == (True, "ok"), r.info
    # Cyan at 7%: low by the level alone, the printer itself raised nothing.
    assert (r.info["state_reasons"], r.info["warnings"]) == ("none", "toner_low")
    m = r.metrics
    assert (m["supply_level_ratio__1"], m["supply_level_ratio__2"]) == (0.80, 0.07)
    assert "supply_level_ratio__3" not in m  # -3: some remaining
    assert m["toner_min_ratio"] == 0.07
    assert "3 Drum Unit (opc): some remaining" in r.info["supplies"]


def test_ipps(run: RunCheck, printer: Printer, marker_printer: Printer, certs: Certs) -> None:
    set_state(printer)
    secure = f"ipps://localhost:{printer.port}/ipp/print"
    r = run("printer_ipp", secure, ca_file=str(certs.ca))
    assert (r.success, r.reason) == (True, "ok"), r.info
    r = run("printer_ipp", secure)  # the test CA is not in the system's trust store
    assert (r.success, r.reason) == (False, "tls_error"), r.info
    assert "certificate" in r.info["error"].lower()
    assert run("printer_ipp", secure, verify=False).success
    # This one has no certificate and drops the handshake.
    r = run("printer_ipp", f"ipps://localhost:{marker_printer.port}/ipp/print", verify=False)
    assert (r.success, r.reason) == (False, "tls_error"), r.info


def test_wrong_path_is_an_ipp_error(run: RunCheck, printer: Printer) -> None:
    r = run("printer_ipp", f"ipp://localhost:{printer.port}/ipp/nothing-here")
    assert (r.success, r.reason) == (False, "ipp_error")
    assert "not-found" in r.info["error"]


def test_refused_and_timeout(run: RunCheck, closed_port: int, silent_port: int) -> None:
    r = run("printer_ipp", f"ipp://127.0.0.1:{closed_port}/ipp/print")
    assert (r.success, r.reason) == (False, "refused")
    r = run("printer_ipp", f"ipp://127.0.0.1:{silent_port}/ipp/print", timeout=1.0)
    assert (r.success, r.reason) == (False, "timeout")
    # The check's own deadline fired, not the runner's abandonment.
    assert r.info["error"] == "no IPP answer within 1 s"


class _NotIpp(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        status = 200 if self.path.startswith("/ok") else 401
        body = b"\x00\x01hello, not IPP"
        self.send_response(status)
        self.send_header("Content-Type", "application/ipp")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_answers_that_are_not_ipp(run: RunCheck) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotIpp)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        port = server.server_address[1]
        r = run("printer_ipp", f"ipp://127.0.0.1:{port}/ok")
        assert (r.success, r.reason) == (False, "bad_response"), r.info
        r = run("printer_ipp", f"ipp://127.0.0.1:{port}/locked")
        assert (r.success, r.reason) == (False, "ipp_error"), r.info
        assert "401" in r.info["error"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_bad_addresses(run: RunCheck) -> None:
    for address, says in (
        ("http://localhost/ipp/print", "scheme must be ipp or ipps"),
        ("ipp:///ipp/print", "no host"),
        ("ipp://localhost:99999/", "port must be"),
    ):
        r = run("printer_ipp", address)
        assert (r.reason, says in r.info["error"]) == ("error", True), r.info


# ---- pieces --------------------------------------------------------------------------------------


def test_reason_suffixes() -> None:
    assert split_reason("toner-low-report") == ("toner-low", "report")
    assert split_reason("media-jam-warning") == ("media-jam", "warning")
    assert split_reason("door-open-error") == ("door-open", "error")
    assert split_reason("media-jam") == ("media-jam", "error")  # RFC 8011: no suffix = error
    assert as_list("toner-low") == ["toner-low"]
    assert as_list(["a", "b"]) == ["a", "b"]
    assert as_list(None) == []


def test_judging_keywords_whatever_their_suffix() -> None:
    j = judge({"printer-state": 5, "printer-state-reasons": ["media-jam-error", "cover-open"]},
              0.1)  # fmt: skip
    assert j.faults == ["media_jam", "door_open", "stopped"]
    j = judge({"printer-state": 3, "printer-state-reasons": "marker-supply-low-warning"}, 0.1)
    assert (j.faults, j.warnings) == ([], ["toner_low"])
    j = judge({"printer-state": 3, "printer-is-accepting-jobs": False}, 0.1)
    assert j.faults == ["not_accepting"]
    # Unknown keywords are only listed.
    j = judge({"printer-state": 3, "printer-state-reasons": "spool-area-full-error"}, 0.1)
    assert (j.faults, j.warnings, j.info["state_reasons"]) == ([], [], "spool-area-full-error")


def test_parse_uri() -> None:
    u = parse_uri("ipps://[::1]/ipp/print")
    assert (u.tls, u.host, u.port, u.path) == (True, "::1", 631, "/ipp/print")
    u = parse_uri("ipp://printer.phuong-ben-thanh.local:8631")
    assert (u.tls, u.port, u.path) == (False, 8631, "/ipp/print")


# ---- the verdict ------------------------------------------------------------------------------

WARD = "ward-ben-thanh"
COUNTER = {"role": "counter_device", "device": "printer"}


def record(result: Result, seq: int) -> ResultRecord:
    r = result.as_dict()
    return ResultRecord(
        seq=seq,
        check=r["check"],
        name="quay-1-may-in",
        target="quay-1-may-in",
        address=r["address"],
        labels=COUNTER,
        interval_seconds=60,
        started=r["started"],
        duration_seconds=r["duration_seconds"],
        success=r["success"],
        reason=r["reason"],
        metrics=r["metrics"],
        info=r["info"],
    )


def verdict(result: Result, profile: Profile) -> Verdict:
    state = State(3600)
    state.add(WARD, "pc-01", [record(result, 1)])
    return evaluate(profile, state.ward(WARD), time.time())


def status(v: Verdict, cid: str) -> str:
    (found,) = [c.status for c in v.criteria if c.id == cid]
    return found


@pytest.fixture(scope="module")
def profiles() -> tuple[Profile, Profile]:
    """The shipped default profile, and the same restricted to its counter-device criteria
    (a ward whose only checks are printers can pass only those)."""
    full = load_profile(default_profile_path())
    mine = [c for c in full.criteria if c.id in ("counter_devices", "counter_toner")]
    assert len(mine) == 2
    return full, Profile(version=1, silence_seconds=full.silence_seconds, criteria=mine)


@pytest.mark.parametrize(("toner", "paper", "reason"),
                         [(0, 250, "toner_empty"), (75, 0, "media_empty")])  # fmt: skip
def test_an_empty_printer_makes_the_ward_not_ready(
    run: RunCheck,
    printer: Printer,
    profiles: tuple[Profile, Profile],
    toner: int,
    paper: int,
    reason: str,
) -> None:
    set_state(printer, toner=toner, paper=paper)
    result = run("printer_ipp", printer.uri)
    for profile in profiles:
        v = verdict(result, profile)
        assert v.verdict == "not_ready"
        assert status(v, "counter_devices") == "failed"
        (line,) = [x for x in v.reasons if x.startswith("counter_devices:")]
        assert line.endswith(f"latest run: {reason}")


def test_toner_low_leaves_the_ward_ready_with_a_warning(
    run: RunCheck, printer: Printer, profiles: tuple[Profile, Profile]
) -> None:
    set_state(printer, toner=5)
    result = run("printer_ipp", printer.uri)
    full, counter = profiles
    v = verdict(result, counter)
    assert v.verdict == "ready"
    assert v.reasons == [
        "warning: counter_toner: Toner of every counter printer at 10% or more (empty toner "
        "fails counter_devices) — pc-01/quay-1-may-in: toner_min_ratio last 0.05 over last 1 "
        "(1 sample) < 0.1"
    ]
    v = verdict(result, full)
    assert (status(v, "counter_devices"), status(v, "counter_toner")) == ("ok", "failed")
    assert not any(x.startswith("counter_devices") for x in v.reasons)


def test_figures_outside_their_range_are_not_reported() -> None:
    # A declared metric stays within its range: the runner would refuse the whole result.
    j = judge({"printer-state": 9, "queued-job-count": -1}, 0.1)
    assert "printer_state" not in j.metrics and "queued_jobs" not in j.metrics
    assert j.info["printer_state"] == "9"
    j = judge({"printer-state": 4, "queued-job-count": 2}, 0.1)
    assert (j.metrics["printer_state"], j.metrics["queued_jobs"]) == (4, 2)
