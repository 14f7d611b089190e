from __future__ import annotations

import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest
from pydantic import ValidationError

from checks import _items, host
from checks.core import Result
from shared.wire import MAX_METRICS
from tests.helpers import need

RunCheck = Callable[..., Result]

GENEROUS = {
    "cpu_max_ratio": 1.0,
    "memory_max_ratio": 1.0,
    "disk_min_free_ratio": 0.0,
    "cpu_sample_seconds": 0.05,
}
WIRE_WORD = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


@pytest.fixture
def down_link() -> Iterator[str]:
    """A link that exists in this namespace and is down (a dummy, or a veth pair's end)."""
    ip = shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin")
    need(ip is not None, "ip (iproute2) is not installed")
    assert ip is not None
    name = f"wrt{secrets.token_hex(3)}"
    for kind in (["type", "dummy"], ["type", "veth", "peer", "name", f"{name}p"]):
        made = subprocess.run([ip, "link", "add", name, *kind], capture_output=True, timeout=30)
        if made.returncode == 0:
            break
    else:
        need(False, f"cannot create a test link: {made.stderr.decode().strip()}")
    try:
        yield name
    finally:
        subprocess.run([ip, "link", "del", name], capture_output=True, timeout=30)


def test_generous_thresholds_pass(run: RunCheck) -> None:
    r = run("host", "localhost", interfaces=["lo"], **GENEROUS)
    assert (r.success, r.reason) == (True, "ok"), r.info
    m = r.metrics
    assert 0 <= m["cpu_ratio"] <= 1
    assert 0 < m["memory_used_ratio"] < 1
    assert m["memory_available_bytes"] > 0
    assert m["disk_free_bytes__"] > 0
    assert 0 < m["disk_free_ratio__"] <= 1
    assert m["disk_free_ratio_min"] == m["disk_free_ratio__"]
    assert m["nic_up__lo"] == 1
    assert m["nic_errors_total__lo"] >= 0 and m["nic_drops_total__lo"] >= 0
    assert m["boot_time_seconds"] < time.time()
    assert m["uptime_seconds"] == pytest.approx(time.time() - m["boot_time_seconds"], abs=60)


def test_metric_names_fit_the_wire(run: RunCheck) -> None:
    r = run("host", "localhost", mounts=["/", "/proc"], **GENEROUS)
    assert r.metrics
    assert len(r.metrics) <= MAX_METRICS
    assert all(WIRE_WORD.match(k) for k in r.metrics), sorted(r.metrics)
    assert "disk_free_bytes__proc" in r.metrics


def test_default_interfaces_skip_loopback_and_do_not_judge_links(
    run: RunCheck, down_link: str
) -> None:
    r = run("host", "localhost", **GENEROUS)
    assert r.success, r.info
    assert "nic_up__lo" not in r.metrics
    if f"nic_up__{down_link}" in r.metrics:
        assert r.metrics[f"nic_up__{down_link}"] == 0
    else:  # a host with more than MAX_ITEMS links lists the surplus, down ones first
        assert down_link in r.info["interfaces_omitted"]


def test_disk_low(run: RunCheck) -> None:
    r = run("host", "localhost", **{**GENEROUS, "disk_min_free_ratio": 1.0})
    assert (r.success, r.reason) == (False, "disk_low")
    assert "disk_low: / " in r.info["failures"]


def test_memory_threshold(run: RunCheck) -> None:
    r = run("host", "localhost", **{**GENEROUS, "memory_max_ratio": 0.000001})
    assert r.reason == "memory_high"


def test_missing_interface(run: RunCheck) -> None:
    r = run("host", "localhost", interfaces=["lo", "wrnope0"], **GENEROUS)
    assert (r.success, r.reason) == (False, "interface_missing")
    assert "wrnope0" in r.info["failures"]
    assert r.metrics["nic_up__lo"] == 1


def test_missing_mount(run: RunCheck) -> None:
    r = run("host", "localhost", mounts=["/", "/wardready-not-mounted"], **GENEROUS)
    assert (r.success, r.reason) == (False, "mount_missing")
    assert "/wardready-not-mounted" in r.info["failures"]
    assert "disk_free_bytes__" in r.metrics


def test_link_down(run: RunCheck, down_link: str) -> None:
    r = run("host", "localhost", interfaces=[down_link], **GENEROUS)
    assert (r.success, r.reason) == (False, "link_down")
    assert r.metrics[f"nic_up__{down_link}"] == 0
    relaxed = run("host", "localhost", interfaces=[down_link], require_link_up=False, **GENEROUS)
    assert relaxed.success, relaxed.info


def test_reasons_in_precedence_order(run: RunCheck) -> None:
    r = run(
        "host",
        "localhost",
        interfaces=["wrnope0"],
        **{**GENEROUS, "disk_min_free_ratio": 1.0},
    )
    assert r.reason == "interface_missing"
    assert r.info["failures"].index("interface_missing") < r.info["failures"].index("disk_low")


def test_suffix() -> None:
    assert _items.suffix("/") == ""
    assert _items.suffix("/var/lib") == "var_lib"
    assert _items.suffix("br-LAN.10") == "br_lan_10"


def test_params() -> None:
    assert host.Params().mounts == ["/"]
    for bad, field in [
        ({"mounts": ["var"]}, "absolute"),
        ({"mounts": ["/var-lib", "/var_lib"]}, "same metric name"),
        ({"mounts": [f"/m{i}" for i in range(9)]}, "mounts"),
        ({"interfaces": ["eth0/1"]}, "not an interface name"),
        ({"interfaces": ["x" * 16]}, "not an interface name"),
        ({"cpu_max_ratio": 1.5}, "cpu_max_ratio"),
        ({"disk_min_free_ratio": -0.1}, "disk_min_free_ratio"),
        ({"cpu_sample_seconds": 60}, "cpu_sample_seconds"),
        ({"mount": ["/"]}, "mount"),
    ]:
        with pytest.raises(ValidationError, match=field):
            host.Params.model_validate(bad)
