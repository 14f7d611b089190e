"""The link check on veth pairs the tests make (and remove), in this process so that the
counters the check keeps between runs are the real ones.

Drops are made by sending Ethernet frames of an unregistered EtherType (0x88B5, "local
experimental") from one end of a pair: the other end's kernel has no handler and counts each
one as a receive drop. Frames stay on the pair: no address, no route, IPv6 off.
"""

from __future__ import annotations

import re
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from pydantic import ValidationError

from checks import _items, link
from checks.core import Result
from shared.wire import MAX_INFO, MAX_METRICS
from tests.helpers import need, need_root

RunCheck = Callable[..., Result]
WIRE_WORD = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
EXPERIMENTAL_ETHERTYPE = b"\x88\xb5"


def ip(*argv: str) -> None:
    path = shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin")
    need(path is not None, "ip (iproute2) is not installed")
    assert path is not None
    subprocess.run([path, *argv], check=True, capture_output=True, timeout=30)


@dataclass
class Pair:
    a: str
    b: str

    def make(self) -> None:
        ip("link", "add", self.a, "type", "veth", "peer", "name", self.b)
        for dev in (self.a, self.b):
            with open(f"/proc/sys/net/ipv6/conf/{dev}/disable_ipv6", "w") as f:
                f.write("1")
            ip("link", "set", dev, "up")

    def remove(self) -> None:
        subprocess.run(["ip", "link", "del", self.a], capture_output=True, timeout=30)

    def send_unknown_frames(self, count: int) -> None:
        """``count`` frames out of ``a``: ``b`` drops every one."""
        frame = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + EXPERIMENTAL_ETHERTYPE
        frame += b"wardready".ljust(46, b"\0")
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
            s.bind((self.a, 0))
            for _ in range(count):
                s.send(frame)


@pytest.fixture
def pair() -> Iterator[Pair]:
    need_root()
    tag = secrets.token_hex(3)
    made = Pair(f"wrl{tag}a", f"wrl{tag}b")
    made.make()
    try:
        wait_up(made.a)
        yield made
    finally:
        made.remove()


def wait_up(name: str, state: str = "up") -> None:
    """A veth gets (or loses) carrier a moment after its peer changes: wait for the kernel to
    say so (at most 5 s)."""
    for _ in range(100):
        with open(f"/sys/class/net/{name}/operstate") as f:
            if f.read().strip() == state:
                return
        time.sleep(0.05)
    raise AssertionError(f"{name} never became {state}")


def test_a_healthy_pair_and_its_drop_rate(run: RunCheck, pair: Pair) -> None:
    first = run("link", "localhost", interfaces=[pair.a, pair.b])
    assert (first.success, first.reason) == (True, "ok"), first.info
    for dev in (pair.a, pair.b):
        assert first.metrics[f"up__{dev}"] == 1
        assert first.metrics[f"speed_bytes_per_second__{dev}"] == 10e9 / 8  # veth says 10 Gbit/s
        assert first.metrics[f"duplex_full__{dev}"] == 1
        assert first.metrics[f"mtu_bytes__{dev}"] == 1500
        assert first.info[f"state__{dev}"] == "up"
        assert first.info[f"duplex__{dev}"] == "full"
    # The first run has nothing to compare with: no rates.
    assert not [m for m in first.metrics if m.startswith(("errors_per", "drops_per"))]

    done_first = time.monotonic()
    pair.send_unknown_frames(100)
    started_second = time.monotonic()
    second = run("link", "localhost", interfaces=[pair.a, pair.b])
    done_second = time.monotonic()

    assert second.success, second.info
    # 100 drops over the time between the runs' counter reads, which lies between these.
    longest = done_second - (done_first - first.duration_seconds)
    shortest = started_second - done_first
    drops = second.metrics[f"drops_per_second__{pair.b}"]
    assert 100 / longest <= drops <= 100 / shortest
    assert second.metrics[f"drops_per_second__{pair.a}"] == 0
    assert second.metrics[f"errors_per_second__{pair.a}"] == 0
    assert second.metrics[f"errors_per_second__{pair.b}"] == 0


def test_no_carrier_and_admin_down_are_link_down(run: RunCheck, pair: Pair) -> None:
    ip("link", "set", pair.b, "down")
    wait_up(pair.a, "lowerlayerdown")
    r = run("link", "localhost", interfaces=[pair.a, pair.b])
    assert (r.success, r.reason) == (False, "link_down")
    assert r.metrics[f"up__{pair.a}"] == 0 and r.metrics[f"up__{pair.b}"] == 0
    assert r.info[f"state__{pair.a}"] == "no_carrier"  # up, but its peer is down
    assert r.info[f"state__{pair.b}"] == "admin_down"
    assert r.info["failures"] == f"link_down: {pair.a} no carrier, {pair.b} admin down"

    ip("link", "set", pair.b, "up")
    wait_up(pair.a)
    r = run("link", "localhost", interfaces=[pair.a, pair.b])
    assert (r.success, r.reason) == (True, "ok"), r.info


def test_a_missing_interface_comes_before_a_down_one(run: RunCheck, pair: Pair) -> None:
    ip("link", "set", pair.b, "down")
    r = run("link", "localhost", interfaces=[pair.b, "wrlnosuch0"])
    assert (r.success, r.reason) == (False, "interface_missing")
    assert r.info["failures"] == f"interface_missing: wrlnosuch0; link_down: {pair.b} admin down"
    assert "up__wrlnosuch0" not in r.metrics


def test_a_recreated_interface_gives_no_rate(run: RunCheck, pair: Pair) -> None:
    first = run("link", "localhost", interfaces=[pair.b])
    assert first.success, first.info
    # The pair is made anew under the same names: its counters start again from zero.
    pair.remove()
    pair.make()
    wait_up(pair.b)
    second = run("link", "localhost", interfaces=[pair.b])
    assert second.success, second.info
    assert f"drops_per_second__{pair.b}" not in second.metrics
    third = run("link", "localhost", interfaces=[pair.b])
    assert third.metrics[f"drops_per_second__{pair.b}"] == 0


def test_names_are_wire_words_within_the_limits(run: RunCheck) -> None:
    r = run("link", "localhost", interfaces=["lo"])
    assert r.success, r.info
    assert r.metrics["up__lo"] == 1
    assert r.info["state__lo"] == "up"
    assert all(WIRE_WORD.match(name) for name in [*r.metrics, *r.info])
    # Eight interfaces, every metric and info present, stay within the wire's limits.
    assert 6 * _items.MAX_ITEMS <= MAX_METRICS
    assert 2 * _items.MAX_ITEMS + 1 <= MAX_INFO


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"interfaces": []},
        {"interfaces": ["eth-0", "eth_0"]},  # the same metric suffix
        {"interfaces": [f"eth{i}" for i in range(_items.MAX_ITEMS + 1)]},
        {"interfaces": ["has space"]},
        {"interfaces": ["x" * 16]},
    ],
)
def test_bad_params_are_rejected(params: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        link.Params.model_validate(params)
