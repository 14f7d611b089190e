"""scanner_usb against a sysfs tree made in tmp_path, and the real scanimage.

No USB scanner is plugged into a test machine (and there may be no USB bus at all), so the
USB side reads a directory laid out as Linux's /sys/bus/usb/devices is: that tree is the one
seam, handed over as the check's ``sysfs_root`` parameter. SANE's side runs the installed
``scanimage -L`` for real, with SANE_CONFIG_DIR pointing at a dll.conf that names only SANE's
"test" backend (two virtual devices) or no backend at all, so no backend searches a network.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from checks.scanner_usb import Params, sane_listing, usb_devices
from tests.checks.conftest import RunCheck
from tests.helpers import need_program

LIDE = "04a9:1912"  # Canon CanoScan LiDE 400
DS = "04b8:0155"  # Epson WorkForce DS-530


def _device(root: Path, entry: str, files: dict[str, str]) -> None:
    d = root / "devices" / entry
    d.mkdir(parents=True)
    for name, text in files.items():
        (d / name).write_text(text + "\n")
    # As in sysfs: bus/usb/devices/<entry> is a symlink into devices/.
    link = root / "bus" / "usb" / "devices" / entry
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(d)


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    root = tmp_path / "sys"
    _device(root, "usb1", {"idVendor": "1d6b", "idProduct": "0002", "busnum": "1",
                           "devnum": "1", "product": "EHCI Host Controller"})  # fmt: skip
    _device(root, "1-1", {"idVendor": "04A9", "idProduct": "1912", "busnum": "1", "devnum": "4",
                          "manufacturer": "Canon", "product": "CanoScan"})  # fmt: skip
    _device(root, "1-1:1.0", {"bInterfaceClass": "ff"})  # an interface: no ids
    return root


@pytest.fixture
def sane(tmp_path: Path) -> dict[str, str]:
    """SANE config dirs: one naming the test backend, one naming no backend."""
    need_program("scanimage")
    test, empty = tmp_path / "sane-test", tmp_path / "sane-none"
    test.mkdir()
    empty.mkdir()
    (test / "dll.conf").write_text("test\n")
    (empty / "dll.conf").write_text("")
    return {"test": str(test), "none": str(empty)}


def test_present_scanner(run: RunCheck, sysfs: Path) -> None:
    r = run("scanner_usb", "localhost", devices=[LIDE], sysfs_root=str(sysfs), scanimage="")
    assert (r.success, r.reason) == (True, "ok"), r.info
    assert r.metrics == {"devices_expected": 1, "devices_present": 1,
                         "device_present__04a9_1912": 1}  # fmt: skip
    assert r.info == {"found": "04a9:1912 Canon CanoScan (bus 1 device 4)", "sane": "not asked"}


def test_missing_scanner(run: RunCheck, sysfs: Path) -> None:
    r = run("scanner_usb", "localhost", devices=[LIDE, DS], sysfs_root=str(sysfs), scanimage="")
    assert (r.success, r.reason) == (False, "missing")
    assert r.info["missing"] == DS
    m = r.metrics
    assert (m["device_present__04a9_1912"], m["device_present__04b8_0155"]) == (1, 0)
    assert (m["devices_expected"], m["devices_present"]) == (2, 1)


def test_unplugged_while_running(run: RunCheck, sysfs: Path) -> None:
    params = {"devices": [LIDE], "sysfs_root": str(sysfs), "scanimage": ""}
    assert run("scanner_usb", "localhost", **params).success
    (sysfs / "bus" / "usb" / "devices" / "1-1").unlink()
    r = run("scanner_usb", "localhost", **params)
    assert (r.success, r.reason, r.info["missing"]) == (False, "missing", LIDE)


def test_no_usb_at_all(run: RunCheck, tmp_path: Path) -> None:
    r = run("scanner_usb", "localhost", devices=[LIDE], sysfs_root=str(tmp_path / "no-sys"),
            scanimage="")  # fmt: skip
    assert (r.success, r.reason) == (False, "missing")
    assert "no bus/usb/devices" in r.info["sysfs"]


def test_the_real_sysfs(run: RunCheck) -> None:
    # ffff:ffff is no real device, whatever this machine has plugged in.
    r = run("scanner_usb", "localhost", devices=["ffff:ffff"], scanimage="")
    assert (r.success, r.reason, r.metrics["devices_present"]) == (False, "missing", 0)


def test_sane_lists_its_devices(run: RunCheck, sysfs: Path, sane: dict[str, str]) -> None:
    r = run("scanner_usb", "localhost", devices=[LIDE], sysfs_root=str(sysfs),
            sane_config_dir=sane["test"])  # fmt: skip
    assert (r.success, r.reason) == (True, "ok"), r.info
    assert r.metrics["sane_devices"] == 2
    assert r.info["sane"] == (
        "test:0: Noname frontend-tester virtual device; "
        "test:1: Noname frontend-tester virtual device"
    )


def test_sane_with_no_devices(run: RunCheck, sysfs: Path, sane: dict[str, str]) -> None:
    r = run("scanner_usb", "localhost", devices=[LIDE], sysfs_root=str(sysfs),
            sane_config_dir=sane["none"])  # fmt: skip
    assert (r.success, r.metrics["sane_devices"], r.info["sane"]) == (True, 0, "no devices")


def test_scanimage_not_installed(run: RunCheck, sysfs: Path) -> None:
    r = run("scanner_usb", "localhost", devices=[LIDE], sysfs_root=str(sysfs),
            scanimage="wardready-no-such-scanimage")  # fmt: skip
    assert (r.success, r.info["sane"]) == (True, "scanimage not installed")
    assert "sane_devices" not in r.metrics


def test_scanimage_failing(run: RunCheck, sysfs: Path) -> None:
    # `false -L` is a real program exiting 1, as scanimage does when SANE fails.
    false = need_program("false")
    r = run("scanner_usb", "localhost", devices=[LIDE], sysfs_root=str(sysfs), scanimage=false)
    assert (r.success, r.reason) == (False, "scanimage_error")
    assert "exited with status 1" in r.info["error"]
    # A missing scanner explains more than SANE's trouble.
    r = run("scanner_usb", "localhost", devices=[DS], sysfs_root=str(sysfs), scanimage=false)
    assert (r.reason, "exited with status 1" in r.info["error"]) == ("missing", True)


def test_params() -> None:
    p = Params.model_validate({"devices": ["04A9:1912", "04a9:1912", " 04b8:0155 "]})
    assert p.devices == [LIDE, DS]
    with pytest.raises(ValidationError, match=r"devices\[1\] '04a9-1912': expected vendor:product"):
        Params.model_validate({"devices": [LIDE, "04a9-1912"]})
    with pytest.raises(ValidationError):
        Params.model_validate({"devices": []})


def test_pieces(sysfs: Path) -> None:
    assert [d.usb_id for d in usb_devices(str(sysfs))] == [LIDE, "1d6b:0002"]
    assert sane_listing(
        "device `epson2:libusb:001:004' is a Epson PID 0x0131 flatbed scanner\n"
        "device `airscan:e0:Canon iR-ADV C3530' is an eSCL network scanner\nnoise\n"
    ) == [
        "epson2:libusb:001:004: Epson PID 0x0131 flatbed scanner",
        "airscan:e0:Canon iR-ADV C3530: eSCL network scanner",
    ]
