"""Scanners plugged into the agent's own machine over USB: present on the bus, seen by SANE.

Target address: ignored (write ``localhost``).

``devices`` lists the scanners expected, as ``vendor:product`` USB ids in hex (``04a9:1912``,
as ``lsusb`` prints them). Each is looked for in ``{sysfs_root}/bus/usb/devices/*/idVendor``
and ``idProduct`` (``sysfs_root`` is ``/sys``; another root serves tests and containers).
Then, when SANE's ``scanimage`` is installed, ``scanimage -L`` lists the devices SANE can
drive, within what is left of the timeout; ``sane_config_dir`` sets SANE_CONFIG_DIR for it.
``scanimage -L`` asks every configured SANE backend, and some of them search the local
network: list only the backends the ward's scanners need in ``dll.conf`` to keep it fast.
``scanimage: ""`` skips it. A machine without scanimage is not a failure: ``info.sane`` says
``scanimage not installed``.

Metrics:
- ``devices_expected``, ``devices_present``;
- ``device_present__<vvvv_pppp>``: 1 or 0 for each expected device (``04a9:1912`` gives
  ``device_present__04a9_1912``);
- ``sane_devices``: how many devices ``scanimage -L`` listed (when it ran).

Info: ``found`` (each expected device present, with the manufacturer and product strings
and bus/device numbers from sysfs), ``missing``, ``sane`` (the devices SANE listed, or why
it did not run), ``sysfs`` (when the USB devices directory is missing), ``error``.

Reasons: ``missing`` (an expected device is not on the USB bus), ``scanimage_error``
(``scanimage -L`` exited with an error or did not finish in time).

Privileges: none to read sysfs; SANE may need the agent's user in the ``scanner`` group (or
a udev rule) to open a USB scanner.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, field_validator

from checks import core
from checks.core import CheckFailed, Outcome, Target

MISSING = "missing"
SCANIMAGE_ERROR = "scanimage_error"

REASONS = frozenset({MISSING, SCANIMAGE_ERROR})

_USB_ID = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{4}$")
_SANE_LINE = re.compile(r"^device `(?P<name>[^']*)' is an? (?P<what>.*)$")
# sysfs entries looked at: a bus has at most 127 devices, and interfaces add a few each.
MAX_ENTRIES = 4096
MAX_DEVICES = 16
MAX_INFO = 1000
# A SANE listing longer than this is cut: the check only counts and shows it.
MAX_OUTPUT_BYTES = 64 * 1024


class Params(core.Params):
    devices: list[str] = Field(min_length=1, max_length=MAX_DEVICES)
    sysfs_root: str = Field(default="/sys", min_length=1)
    scanimage: str = "scanimage"
    sane_config_dir: str | None = Field(default=None, min_length=1)

    @field_validator("devices")
    @classmethod
    def _usb_ids(cls, value: list[str]) -> list[str]:
        out = []
        for i, item in enumerate(value):
            word = item.strip().lower()
            if not _USB_ID.match(word):
                raise ValueError(
                    f"devices[{i}] {item!r}: expected vendor:product in hex, e.g. 04a9:1912"
                )
            if word not in out:
                out.append(word)
        return out


@dataclass(frozen=True)
class UsbDevice:
    usb_id: str
    manufacturer: str
    product: str
    bus: int | None
    number: int | None

    def describe(self) -> str:
        name = " ".join(x for x in (self.manufacturer, self.product) if x) or "unnamed"
        where = f" (bus {self.bus} device {self.number})" if self.bus is not None else ""
        return f"{self.usb_id} {name}{where}"


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


def usb_devices(sysfs_root: str) -> list[UsbDevice]:
    """Every USB device in sysfs (interfaces and entries without ids are skipped)."""
    base = Path(sysfs_root) / "bus" / "usb" / "devices"
    try:
        entries = sorted(os.listdir(base))[:MAX_ENTRIES]
    except OSError:
        return []
    out = []
    for entry in entries:
        d = base / entry
        vendor, product = _read(d / "idVendor").lower(), _read(d / "idProduct").lower()
        if not vendor or not product:
            continue
        bus, number = _read(d / "busnum"), _read(d / "devnum")
        out.append(
            UsbDevice(
                f"{vendor}:{product}",
                _read(d / "manufacturer"),
                _read(d / "product"),
                int(bus) if bus.isdigit() else None,
                int(number) if number.isdigit() else None,
            )
        )
    return out


def sane_listing(output: str) -> list[str]:
    """``scanimage -L`` lines -> ['name: description', ...]."""
    found = []
    for line in output.splitlines():
        m = _SANE_LINE.match(line.strip())
        if m:
            found.append(f"{m['name']}: {m['what']}")
    return found


def _scanimage(params: Params, seconds: float) -> tuple[list[str] | None, str]:
    """(devices, note); devices is None when scanimage did not give a listing."""
    program = shutil.which(params.scanimage) if params.scanimage else None
    if program is None:
        return None, "scanimage not installed" if params.scanimage else "not asked"
    env = dict(os.environ)
    if params.sane_config_dir is not None:
        env["SANE_CONFIG_DIR"] = params.sane_config_dir
    if seconds <= 0:
        raise CheckFailed(SCANIMAGE_ERROR, "no time left to run scanimage -L")
    try:
        done = subprocess.run(
            [program, "-L"],
            capture_output=True,
            timeout=seconds,
            env=env,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise CheckFailed(
            SCANIMAGE_ERROR, f"scanimage -L did not finish within {seconds:.3g} s"
        ) from None
    except OSError as exc:
        raise CheckFailed(SCANIMAGE_ERROR, f"cannot run {program}: {exc.strerror or exc}") from exc
    out = done.stdout[:MAX_OUTPUT_BYTES].decode("utf-8", "replace")
    if done.returncode != 0:
        err = done.stderr[:MAX_OUTPUT_BYTES].decode("utf-8", "replace").strip()
        last = err.splitlines()[-1] if err else "no message"
        raise CheckFailed(
            SCANIMAGE_ERROR, f"scanimage -L exited with status {done.returncode}: {last}"
        )
    return sane_listing(out), ""


def _suffix(usb_id: str) -> str:
    return usb_id.replace(":", "_")


def probe(target: Target, params: Params, timeout: float) -> Outcome:
    deadline = time.monotonic() + timeout
    present = {d.usb_id: d for d in reversed(usb_devices(params.sysfs_root))}
    found = [present[u] for u in params.devices if u in present]
    missing = [u for u in params.devices if u not in present]
    metrics = {
        "devices_expected": float(len(params.devices)),
        "devices_present": float(len(found)),
        **{f"device_present__{_suffix(u)}": float(u in present) for u in params.devices},
    }
    info: dict[str, str] = {}
    if found:
        info["found"] = "; ".join(d.describe() for d in found)[:MAX_INFO]
    if missing:
        info["missing"] = ", ".join(missing)
    try:
        listing, note = _scanimage(params, deadline - time.monotonic())
    except CheckFailed as exc:
        listing, note = None, ""
        info["error"] = exc.message[:MAX_INFO]
    if listing is not None:
        metrics["sane_devices"] = float(len(listing))
        info["sane"] = "; ".join(listing)[:MAX_INFO] or "no devices"
    elif note:
        info["sane"] = note
    if missing:
        if not Path(params.sysfs_root, "bus", "usb", "devices").is_dir():
            info["sysfs"] = f"no bus/usb/devices under {params.sysfs_root}: no USB here"
        return Outcome(False, MISSING, metrics, info)
    if "error" in info:
        return Outcome(False, SCANIMAGE_ERROR, metrics, info)
    return Outcome(True, metrics=metrics, info=info)


CHECK = core.CheckType(
    params=Params,
    probe=probe,
    reasons=REASONS,
    metrics={
        "devices_expected": core.gauge("USB scanners the check was told to expect.", 0),
        "devices_present": core.gauge("Expected USB scanners found on the bus.", 0),
        "device_present": core.per_item(
            core.gauge("1 when this expected USB scanner is on the bus, else 0.", 0, 1)
        ),
        "sane_devices": core.gauge("Devices SANE's scanimage -L listed.", 0),
    },
    doc=__doc__ or "",
)
