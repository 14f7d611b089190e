"""The stream check against reflectors on loopback: ours, and scripted misbehaving ones.

Third-party reflector: none could be installed here. Debian 12 packages no TWAMP reflector
(``apt-cache search twamp`` and ``owamp`` find nothing) and PyPI has no ``twampy`` or other
TWAMP reflector distribution, so there is no peer-marked test against another implementation;
the packet layout is instead checked byte by byte against RFC 5357 in test_twamp.py.

Losses, duplicates, reordering and held packets are made by ``Scripted``, a reflector written
here that follows a script per sequence number, so every figure has an exact expected value.
Real line impairments (netns, nftables, NFQUEUE) are in tests/e2e/test_stream_impairment.py.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import ValidationError

from checks import stream, twamp
from checks.core import Result
from collector.reflector import Limits, Reflector
from tests.helpers import ROOT, need_root
from tests.netlab import lab, nsexec

RunCheck = Callable[..., Result]
FAST = {"rate_pps": 100, "duration_seconds": 0.3, "wait_seconds": 0.5}


@pytest.fixture
def reflector() -> Iterator[Reflector]:
    """Our reflector on 127.0.0.1, in a thread of the test process."""
    made = Reflector.bind("127.0.0.1", 0)
    stop = threading.Event()
    thread = threading.Thread(target=made.serve, args=(stop,), daemon=True)
    thread.start()
    try:
        yield made
    finally:
        stop.set()
        thread.join(5)
        made.close()


def target(r: Reflector | Scripted) -> str:
    host, port = r.address
    return f"{host}:{port}"


def check_clean(r: Result, count: int) -> None:
    assert (r.success, r.reason) == (True, "ok"), r.info
    m = r.metrics
    assert m["packets_sent"] == m["packets_received"] == count
    assert m["loss_ratio"] == m["packets_duplicate"] == m["reorder_ratio"] == 0
    assert m["loss_bursts"] == m["burst_loss_max_packets"] == m["burst_loss_mean_packets"] == 0
    assert 0 < m["rtt_min_seconds"] <= m["rtt_avg_seconds"] <= m["rtt_max_seconds"] < 0.5
    assert m["rtt_min_seconds"] <= m["rtt_p95_seconds"] <= m["rtt_max_seconds"]
    # One-way delays carry the same clock here, and always add up to the mean RTT.
    assert m["forward_delay_seconds"] > 0 and m["backward_delay_seconds"] > 0
    total = m["forward_delay_seconds"] + m["backward_delay_seconds"]
    assert total == pytest.approx(m["rtt_avg_seconds"], abs=1e-6)
    assert 0 <= m["jitter_seconds"] <= m["rtt_max_seconds"] - m["rtt_min_seconds"]
    assert 0 <= m["forward_jitter_seconds"] < 0.05
    assert m["packets_late"] == 0
    assert m["r_factor"] == pytest.approx(93.2)
    assert m["mos"] == pytest.approx(4.409, abs=0.001)
    assert r.info["clock_synced"] in {"yes", "no"}


def test_against_our_reflector(run: RunCheck, reflector: Reflector) -> None:
    r = run("stream", target(reflector), rate_pps=200, duration_seconds=0.5)
    check_clean(r, 100)
    assert r.info["address"] == target(reflector)
    assert r.info["forward_hops"] == "0"  # TTL 255 arrived untouched on loopback
    assert r.duration_seconds < 2.0  # ends when the last reply is in, not after the wait
    c = reflector.counters
    # The reflector counts a reply just after sending it: give its thread a moment.
    for _ in range(100):
        if c.reflected == 100:
            break
        time.sleep(0.01)
    assert (c.received, c.reflected, c.dropped_rate, c.dropped_size) == (100, 100, 0, 0)


def test_default_port_and_ipv6(run: RunCheck, request: Any) -> None:
    request.getfixturevalue("ipv6_loopback")
    made = Reflector.bind("::1", 0)
    stop = threading.Event()
    thread = threading.Thread(target=made.serve, args=(stop,), daemon=True)
    thread.start()
    try:
        r = run("stream", f"[::1]:{made.address[1]}", **FAST)
        check_clean(r, 30)
        assert r.info["address"] == f"[::1]:{made.address[1]}"
        assert r.info["forward_hops"] == "0"
    finally:
        stop.set()
        thread.join(5)
        made.close()
    # No port: 862. Nothing listens there in a test, so the answer is refused, not an error.
    assert run("stream", "127.0.0.1", **FAST).info["address"] == "127.0.0.1:862"


def test_reflector_subcommand(run: RunCheck) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "collector", "reflector", "--listen", "127.0.0.1:0",
         "--log-every", "0.2", "--max-pps", "500"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("wardready-collector reflector listening on udp://127.0.0.1:")
        r = run("stream", line.strip().rpartition("//")[2], **FAST)
        check_clean(r, 30)
        time.sleep(0.5)  # one more summary period
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "reflector: 30 received, 30 reflected" in err


def test_reflector_bad_listen_address() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "collector", "reflector", "--listen", "192.0.2.1:0"],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--listen: cannot listen on 192.0.2.1:0" in done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "collector", "reflector", "--max-pps", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--max-pps: must be greater than 0" in done.stderr


# ---- scripted reflectors -------------------------------------------------------------------


@dataclass
class Scripted:
    """A reflector on 127.0.0.1 that misbehaves as told, per sender sequence number.

    drop: never answered. duplicate: answered twice. swap: the reply is held back and sent
    after the next one. hold: seconds between receiving and answering (T3 − T2). shift: ns
    added to both T2 and T3, as a forward delay would (the reply leaves that much later by
    the reflector's clock). echo: send the request back as it came (a UDP echo service).
    """

    drop: set[int] = field(default_factory=set)
    duplicate: set[int] = field(default_factory=set)
    swap: set[int] = field(default_factory=set)
    hold: float = 0.0
    shift: Callable[[int], int] = lambda seq: 0
    echo: bool = False
    sock: socket.socket = field(
        default_factory=lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    )
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.address: tuple[str, int] = self.sock.getsockname()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        held: tuple[bytes, Any] | None = None
        while not self.stop.is_set():
            try:
                data, peer = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            t2 = time.time_ns()
            if self.echo:
                self.sock.sendto(data, peer)
                continue
            seq = twamp.SenderPacket.decode(data).seq
            if seq in self.drop:
                continue
            if self.hold:
                time.sleep(self.hold)
            shift = self.shift(seq)
            reply = twamp.reflect(
                data,
                twamp.ntp_from_ns(t2 + shift),
                twamp.ntp_from_ns(time.time_ns() + shift),
                twamp.error_estimate(False, 1.0),
                64,
            )
            if seq in self.swap:
                held = (reply, peer)
                continue
            for _ in range(2 if seq in self.duplicate else 1):
                self.sock.sendto(reply, peer)
            if held is not None:
                self.sock.sendto(*held)
                held = None

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def scripted() -> Iterator[Callable[..., Scripted]]:
    made: list[Scripted] = []

    def make(**kwargs: Any) -> Scripted:
        made.append(Scripted(**kwargs))
        return made[-1]

    yield make
    for s in made:
        s.close()


def test_loss_bursts_duplicates_and_reordering(
    run: RunCheck, scripted: Callable[..., Scripted]
) -> None:
    # 50 packets: a burst of 3 lost (10-12), one lost alone (30), 5 and 40 answered twice,
    # 20 and 44 overtaken by their successor.
    s = scripted(drop={10, 11, 12, 30}, duplicate={5, 40}, swap={20, 44})
    r = run("stream", target(s), rate_pps=100, duration_seconds=0.5, wait_seconds=0.3)
    assert (r.success, r.reason) == (True, "ok"), r.info
    m = r.metrics
    assert (m["packets_sent"], m["packets_received"]) == (50, 46)
    assert m["loss_ratio"] == pytest.approx(4 / 50)
    assert (m["loss_bursts"], m["burst_loss_max_packets"]) == (2, 3)
    assert m["burst_loss_mean_packets"] == 2.0
    assert m["packets_duplicate"] == 2
    assert m["reorder_ratio"] == pytest.approx(2 / 46)
    assert r.info["forward_hops"] == str(255 - 64)
    # 8% loss with G.711 + PLC, BurstR = 2 × 0.92 = 1.84:
    # Ie,eff = 95·8/(8/1.84 + 25.1) = 25.8, R = 67.4.
    assert m["r_factor"] == pytest.approx(93.2 - 95 * 8 / (8 / 1.84 + 25.1), abs=0.01)
    assert 3.3 < m["mos"] < 3.6


def test_time_held_by_the_reflector_is_not_line_delay(
    run: RunCheck, scripted: Callable[..., Scripted]
) -> None:
    s = scripted(hold=0.1)
    r = run("stream", target(s), rate_pps=5, duration_seconds=1.0, wait_seconds=0.5)
    assert r.success, r.info
    m = r.metrics
    assert m["packets_received"] == 5
    # Each round trip took 100 ms more, all of it between the reflector's T2 and T3.
    assert r.duration_seconds > 0.9
    assert m["rtt_max_seconds"] < 0.05
    assert m["forward_delay_seconds"] + m["backward_delay_seconds"] == pytest.approx(
        m["rtt_avg_seconds"], abs=1e-6
    )


def test_forward_jitter_and_late_packets(run: RunCheck, scripted: Callable[..., Scripted]) -> None:
    # Every other packet reaches the reflector 50 ms "later" by its clock: a forward delay
    # swinging by 50 ms, so |D| = 50 ms between every pair of consecutive packets (sent 62.5
    # ms apart, so they keep their order). A 40 ms jitter buffer loses every delayed packet:
    # half the stream.
    s = scripted(shift=lambda seq: 50_000_000 * (seq % 2))
    r = run(
        "stream", target(s), rate_pps=16, duration_seconds=1.25, wait_seconds=0.3,
        jitter_buffer_seconds=0.04,
    )  # fmt: skip
    assert r.success, r.info
    m = r.metrics
    assert m["forward_jitter_seconds"] == pytest.approx(0.050, abs=0.002)
    assert m["jitter_seconds"] < 0.01  # the round trip did not change
    assert m["packets_late"] == 10
    assert m["loss_ratio"] == 0
    # Ppl 50%, isolated (BurstR = 1 × 0.5 → 1): Ie,eff = 95·50/(50 + 25.1) = 63.2.
    assert m["r_factor"] == pytest.approx(93.2 - 95 * 50 / 75.1, abs=0.05)
    assert m["mos"] < 2.0
    # A buffer deep enough to absorb the swing loses nothing, and adds its depth to Ta.
    deep = run(
        "stream", target(s), rate_pps=16, duration_seconds=1.25, wait_seconds=0.3,
        jitter_buffer_seconds=0.08,
    ).metrics  # fmt: skip
    assert deep["packets_late"] == 0
    assert deep["r_factor"] == pytest.approx(93.2)


def test_late_replies_count_as_lost(run: RunCheck, scripted: Callable[..., Scripted]) -> None:
    s = scripted(hold=0.2)
    r = run("stream", target(s), rate_pps=10, duration_seconds=0.3, wait_seconds=0.1)
    assert (r.success, r.reason) == (False, "no_reply")
    assert r.metrics["loss_ratio"] == 1
    assert "rtt_avg_seconds" not in r.metrics and "mos" not in r.metrics


def test_an_echo_service_is_a_bad_reply(run: RunCheck, scripted: Callable[..., Scripted]) -> None:
    s = scripted(echo=True)
    r = run("stream", target(s), **FAST)
    assert (r.success, r.reason) == (False, "bad_reply")
    assert r.info["bad_replies"] == "30"
    assert r.metrics["packets_received"] == 0


def test_replies_are_matched_on_the_echoed_timestamp() -> None:
    run = stream._Run(wait=1.0, padding=b"")
    run.send_ns, run.send_mono, run.send_ntp = [1_000, 2_000], [10.0, 10.1], [111, 222]
    run.sent = 2

    def reply(seq: int, sender_ts: int) -> bytes:
        return twamp.ReflectorPacket(seq, 0, 1, 0, seq, sender_ts, 0, 255).encode()

    stream.note_reply(run, reply(0, 999), 5_000, 10.001)  # a stale or forged reply
    stream.note_reply(run, reply(7, 111), 5_000, 10.001)  # never sent
    stream.note_reply(run, b"short", 5_000, 10.001)
    assert run.bad == 3 and run.replies == {}
    stream.note_reply(run, reply(1, 222), 2_000_000, 10.102)
    stream.note_reply(run, reply(1, 222), 2_000_000, 10.102)
    stream.note_reply(run, reply(0, 111), 2_000_000, 10.102)
    assert sorted(run.replies) == [0, 1]
    assert (run.duplicates, run.reordered) == (1, 1)


# ---- failures and parameters ---------------------------------------------------------------


def test_nothing_listening_is_refused(run: RunCheck) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = run("stream", f"127.0.0.1:{port}", **FAST)
    assert (r.success, r.reason) == (False, "refused")
    assert r.metrics["loss_ratio"] == 1


def test_silent_port_is_no_reply(run: RunCheck) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        r = run("stream", f"127.0.0.1:{s.getsockname()[1]}", **FAST)
    assert (r.success, r.reason) == (False, "no_reply")
    m = r.metrics
    assert (m["packets_sent"], m["packets_received"], m["loss_ratio"]) == (30, 0, 1)
    assert (m["loss_bursts"], m["burst_loss_max_packets"]) == (1, 30)


def test_run_is_clamped_to_the_timeout(run: RunCheck, reflector: Reflector) -> None:
    r = run("stream", target(reflector), timeout=1.0, rate_pps=50, duration_seconds=5)
    assert r.success, r.info
    assert r.info["clamped"].startswith("duration 5 -> ")
    assert 20 <= r.metrics["packets_sent"] < 50
    assert r.duration_seconds < 1.5


def test_source_and_interface(run: RunCheck, reflector: Reflector) -> None:
    t = target(reflector)
    assert run("stream", t, source="127.0.0.1", interface="lo", **FAST).success
    assert run("stream", t, source="192.0.2.123", **FAST).reason == "source_unavailable"
    assert run("stream", t, source="::1", **FAST).reason == "resolve_failed"
    missing = run("stream", t, interface="wrnosuch0", **FAST)
    assert missing.reason == "source_unavailable"
    assert "wrnosuch0" in missing.info["error"]


def test_bad_targets(run: RunCheck) -> None:
    assert run("stream", "no-such-host.invalid:862", **FAST).reason == "resolve_failed"
    bad = run("stream", "127.0.0.1:99999", **FAST)
    assert bad.reason == "error" and "port" in bad.info["error"]


def test_params() -> None:
    p = stream.Params()
    assert (p.rate_pps, p.duration_seconds, p.payload_bytes, p.codec, p.plc) == (
        50, 5.0, 160, "g711", True,
    )  # fmt: skip
    assert stream.Params.model_validate({"family": 6}).family == "6"
    for bad, name in [
        ({"rate_pps": 0}, "rate_pps"),
        ({"rate_pps": 1001}, "rate_pps"),
        ({"payload_bytes": 40}, "payload_bytes"),
        ({"payload_bytes": 1473}, "payload_bytes"),
        ({"duration_seconds": 0}, "duration_seconds"),
        ({"codec": "g726"}, "codec"),
        ({"dscp": 64}, "dscp"),
        ({"interface": "eth0/1"}, "interface"),
        ({"count": 5}, "count"),
    ]:
        with pytest.raises(ValidationError, match=name):
            stream.Params.model_validate(bad)


def test_payload_size_and_dscp_reach_the_reflector(
    run: RunCheck, reflector: Reflector, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes: list[int] = []
    handle = reflector.handle

    def spy(data: bytes, ancdata: list[tuple[int, int, bytes]], peer: tuple[str, int]) -> None:
        sizes.append(len(data))
        handle(data, ancdata, peer)

    monkeypatch.setattr(reflector, "handle", spy)
    r = run("stream", target(reflector), payload_bytes=41, dscp=46, **FAST)
    assert r.success, r.info
    assert sizes == [41] * 30


# ---- reflector limits ----------------------------------------------------------------------


def _blast(address: tuple[str, int], packets: list[bytes], wait: float = 0.3) -> list[bytes]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(wait)
        for p in packets:
            s.sendto(p, address)
        got = []
        for _ in range(len(packets) * 2):
            try:
                got.append(s.recv(4096))
            except TimeoutError:
                break
    return got


def _request(size: int, seq: int = 0) -> bytes:
    return twamp.SenderPacket(seq, 0x1234, 0, bytes(size - twamp.SENDER_HEADER)).encode()


def test_reflector_never_amplifies(reflector: Reflector) -> None:
    sizes = [41, 160, 1400, 1500]
    replies = _blast(reflector.address, [_request(n, i) for i, n in enumerate(sizes)])
    assert sorted(len(r) for r in replies) == sizes
    small = _blast(reflector.address, [b"x", _request(14), _request(40)], wait=0.2)
    too_big = _blast(reflector.address, [_request(1501)], wait=0.2)
    assert small == too_big == []
    assert reflector.counters.dropped_size == 4


def test_reflector_rate_limits_per_source_and_in_all() -> None:
    made = Reflector.bind("127.0.0.1", 0, Limits(per_source_pps=10, global_pps=15))
    stop = threading.Event()
    thread = threading.Thread(target=made.serve, args=(stop,), daemon=True)
    thread.start()
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        # Two sources of 40 packets each, at once: a full bucket holds one second, so the
        # first gets its 10 and the second only what is left of the 15 in all. A third
        # socket of the first source shares its bucket: nothing left for it.
        for s, host in zip(socks, ("127.0.0.1", "127.0.0.2", "127.0.0.1"), strict=True):
            s.bind((host, 0))
            s.settimeout(0.3)
        for s in socks:
            for i in range(40):
                s.sendto(_request(60, i), made.address)
        got = []
        for s in socks:
            n = 0
            for _ in range(80):
                try:
                    s.recv(4096)
                except TimeoutError:
                    break
                n += 1
            got.append(n)
    finally:
        for s in socks:
            s.close()
        stop.set()
        thread.join(5)
        made.close()
    # A token or two may refill while the packets are on their way.
    assert 10 <= got[0] <= 11
    assert 5 <= got[1] <= 7
    assert got[2] <= 1
    c = made.counters
    assert c.received == 120
    assert c.reflected == sum(got)
    assert c.dropped_global >= 3
    assert c.dropped_rate + c.dropped_global == 120 - c.reflected


def test_reflector_forgets_the_oldest_source_past_its_limit() -> None:
    made = Reflector.bind("127.0.0.1", 0, Limits(max_sources=2))
    try:
        now = time.monotonic()
        for source in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
            assert made._admit(source, now)
        assert list(made._sources) == ["192.0.2.2", "192.0.2.3"]
        made._admit("192.0.2.2", now)  # heard again: now the most recent
        made._admit("192.0.2.4", now)
        assert list(made._sources) == ["192.0.2.2", "192.0.2.4"]
    finally:
        made.close()


def test_reflector_logs_a_summary(caplog: pytest.LogCaptureFixture) -> None:
    made = Reflector.bind("127.0.0.1", 0)
    made.log_every = 0.1
    stop = threading.Event()
    caplog.set_level(logging.INFO, logger="collector.reflector")
    thread = threading.Thread(target=made.serve, args=(stop,), daemon=True)
    thread.start()
    try:
        assert len(_blast(made.address, [_request(60, i) for i in range(3)] + [b"tiny"])) == 3
        time.sleep(0.7)
    finally:
        stop.set()
        thread.join(5)
        made.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "collector.reflector"]
    assert any("4 received, 3 reflected" in line and "1 by size" in line for line in lines)


@pytest.mark.netns
def test_reflector_on_a_wildcard_address_answers_from_the_address_asked() -> None:
    # In a namespace of its own, so that 0.0.0.0 means only that namespace's loopback. The
    # check's socket is connected: a reply from another address than 127.0.0.2 never reaches
    # it, so every reply counted proves the source address was right.
    need_root()
    with lab() as net:
        ns = net.netns("refl")
        proc = subprocess.Popen(
            nsexec(ns, sys.executable, "-m", "collector", "reflector", "--listen", "0.0.0.0:862"),
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            assert "udp://0.0.0.0:862" in proc.stdout.readline()
            done = subprocess.run(
                nsexec(ns, sys.executable, "-m", "agent", "check", "stream", "127.0.0.2",
                       "--param", "duration_seconds=0.2", "--param", "rate_pps=50", "--json"),
                cwd=ROOT, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
        finally:
            proc.terminate()
            proc.wait(10)
    result = json.loads(done.stdout)
    assert result["success"] is True, result
    assert result["metrics"]["packets_received"] == 10
    assert result["info"]["address"] == "127.0.0.2:862"
