"""The collector at national scale: 3,321 communes, each with the profile's full history.

0. State and judging, in this process: every commune's full retention window of the plan
   below added to a State (as a rebuild does), then the RSS of this process; evaluate_all
   for every commune; and incremental judging (readiness.Judge) after one second of the
   national push load (664 pushes of 4 results, each from another commune).
1. Ingest: every commune's agent pushes one batch holding 20 minutes of its plan (two WAN
   lines, seven shared systems, mail, DNS and the host check, every 30 s) over HTTP to a real
   collector process, from several client processes at once. Prints results per second.
2. Judgement: the same database opened in this process; evaluate_all for every commune with
   the shipped default profile, and /metrics rendered (in process and over HTTP).
3. The judge's CPU share: with ingest over, the collector process left alone for
   ``--judge-window`` seconds; from its own metrics, the CPU time its judge thread spent
   judging and that of the whole process, each as a share of one core.

    python bench/collector_scale.py [--wards 3321] [--clients 3] [--judge-window 30]
                                    [--state-only]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from fleet import Collector, stopping  # noqa: E402

from collector import db, tokens, wards  # noqa: E402
from collector.exposition import registry_for, render  # noqa: E402
from collector.profile import load_profile  # noqa: E402
from collector.readiness import Judge, evaluate_all  # noqa: E402
from collector.service import Service  # noqa: E402
from collector.state import State  # noqa: E402
from shared.wire import AgentStatus, Batch, ResultRecord  # noqa: E402

INTERVAL = 30.0
PROFILE = ROOT / "collector" / "profiles" / "default.yaml"
# The whole window the shipped profile keeps (its longest window plus the margin): 20 min.
HISTORY = load_profile(PROFILE).retention_seconds()
# The national push load: 3,321 agents each pushing ~4 results every 5 s.
PUSHES_PER_SECOND = 664
RESULTS_PER_PUSH = 4
SYSTEMS = ["dms", "portal-1022", "tthc", "dichvucong", "hotich", "vbdlis", "mail-web"]


def plan(ward: str) -> list[tuple[str, str, str, dict[str, str]]]:
    """(check, name, target, labels) of one commune's agent."""
    series = [
        ("icmp", "wan-fibre", "10.0.0.1", {"role": "wan", "line": "fibre"}),
        ("icmp", "wan-backup", "10.0.1.1", {"role": "wan", "line": "backup"}),
        ("tcp", "mail", "mail.city:587", {"role": "mail"}),
        ("dns", "dns", "dichvucong.gov.vn", {"role": "dns"}),
        ("host", "host", "localhost", {}),
    ]
    series += [("http", s, f"https://{s}.city/", {"role": "shared_system"}) for s in SYSTEMS]
    # The rest of what the shipped profile asks of a center, so a healthy ward is ready.
    series += [
        ("stream", "vc-stream", "reflector.city:862", {"role": "vc", "line": "fibre"}),
        ("sip", "mcu", "mcu.city", {"role": "vc"}),
        ("stun", "stun", "turn.city", {"role": "vc"}),
        ("turn", "turn", "turn.city", {"role": "vc"}),
        ("bandwidth", "bw-fibre", "iperf.city:5201", {"role": "wan", "line": "fibre"}),
        ("pmtu", "mtu-fibre", "10.0.0.1", {"role": "wan", "line": "fibre"}),
        ("link", "nics", "localhost", {"role": "wan"}),
        ("traceroute", "path-fibre", "10.0.0.1", {"role": "wan", "line": "fibre"}),
        ("printer_ipp", "counter-1-printer", "ipp://printer-1/ipp/print",
         {"role": "counter_device", "device": "printer"}),
        ("scanner_escl", "counter-1-scanner", "http://scanner-1", {"role": "counter_device"}),
    ]  # fmt: skip
    return series


def metrics_for(check: str, rng: random.Random) -> dict[str, float]:
    if check == "icmp":
        rtt = rng.uniform(0.005, 0.04)
        return {
            "rtt_avg_seconds": rtt,
            "rtt_min_seconds": rtt * 0.8,
            "rtt_max_seconds": rtt * 1.5,
            "jitter_seconds": rtt * 0.1,
            "loss_ratio": rng.choice([0.0] * 9 + [0.1]),
            "packets_sent": 5,
            "packets_received": 5,
        }
    if check == "http":
        return {
            "duration_seconds": rng.uniform(0.05, 0.3),
            "status_code": 200,
            "cert_expiry_seconds": 90 * 86400,
            "content_length_bytes": 5120,
        }
    if check == "host":
        return {"cpu_ratio": 0.1, "memory_used_ratio": 0.5, "disk_free_ratio_min": 0.6}
    extra = {
        "stream": {"mos": rng.uniform(4.1, 4.4), "loss_ratio": 0.0, "jitter_seconds": 0.003,
                   "rtt_p95_seconds": rng.uniform(0.01, 0.05), "r_factor": 90.0},
        "sip": {"status_code": 200.0, "rtt_seconds": 0.02},
        "bandwidth": {"upload_bytes_per_second": 9e6 / 8, "download_bytes_per_second": 9.5e6 / 8},
        "pmtu": {"path_mtu_bytes": 1500.0},
        "traceroute": {"path_changed": 0.0, "path_hops": 6.0},
        "printer_ipp": {"toner_min_ratio": rng.uniform(0.2, 0.9), "queued_jobs": 0.0},
    }  # fmt: skip
    if check in extra:
        return extra[check]
    return {"connect_seconds": rng.uniform(0.001, 0.01)}


def history(ward: str, now: float, rng: random.Random, validate: bool = True) -> list[ResultRecord]:
    """HISTORY seconds of ``ward``'s plan up to ``now``."""
    make = ResultRecord if validate else ResultRecord.model_construct
    records, seq = [], 0
    for step in range(int(HISTORY / INTERVAL)):
        started = now - HISTORY + step * INTERVAL + rng.uniform(0, 1)
        for check, name, target, labels in plan(ward):
            seq += 1
            records.append(
                make(
                    seq=seq,
                    check=check,
                    name=name,
                    target=target,
                    address=target,
                    labels=labels,
                    interval_seconds=INTERVAL,
                    started=started,
                    duration_seconds=0.05,
                    success=True,
                    reason="ok",
                    metrics=metrics_for(check, rng),
                    info={},
                )
            )
    return records


def make_batch(ward: str, now: float, rng: random.Random) -> bytes:
    records = history(ward, now, rng)
    status = AgentStatus(
        version="bench",
        spool_depth=0,
        spool_dropped_total=0,
        resident_memory_bytes=30 << 20,
        cpu_seconds_total=1.0,
        checks=12,
    )
    batch = Batch(
        ward=ward,
        agent="pc-01",
        stream=uuid.uuid4().hex,
        sent_at=now,
        status=status,
        results=records,
    )
    return batch.model_dump_json().encode()


def client(
    url: str, jobs: list[tuple[str, str]], now: float, out: mp.Queue[tuple[int, float]]
) -> None:
    rng = random.Random(hash(jobs[0][0]))
    bodies = [(token, make_batch(ward, now, rng)) for ward, token in jobs]
    sent = 0
    with httpx.Client(timeout=60) as http:
        out.put((0, time.time()))  # ready
        t0 = time.perf_counter()
        for token, body in bodies:
            r = http.post(
                f"{url}/api/v1/ingest",
                content=body,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
            r.raise_for_status()
            sent += r.json()["accepted"]
        out.put((sent, time.perf_counter() - t0))


def synthetic_units(path: Path, n: int) -> list[str]:
    ids = [f"commune-{i:05d}" for i in range(1, n + 1)]
    lines = ["id,name,kind,former_district,working_group"]
    lines += [
        f"{w},Xã Thử Nghiệm Đồng Tháp {i},commune,Huyện {i % 700},{i % 34 + 1}"
        for i, w in enumerate(ids, 1)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return ids


def agent_tokens(collector: Collector, units: Path, ids: list[str]) -> list[tuple[str, str]]:
    """A fresh database for ``collector`` holding the wards; (ward, agent token) for each."""
    engine = db.make_engine(collector.db)
    db.upgrade(engine)
    wards.import_csv(engine, units)
    jobs = [(w, tokens.create(engine, w, "pc-01")) for w in ids]
    engine.dispose()
    return jobs


def timed(fn: object, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def timed_cpu(fn: Callable[[], object], repeat: int = 3) -> tuple[float, float]:
    """Median wall and CPU seconds of this thread: on a shared machine the CPU time tells
    the work done, the wall time what a reader waits."""
    walls, cpus = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.thread_time()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.thread_time() - c0)
    return statistics.median(walls), statistics.median(cpus)


def self_metrics(url: str, names: tuple[str, ...]) -> dict[str, float]:
    """Values of unlabelled samples of the collector's own metrics, from one scrape."""
    text = httpx.get(f"{url}/metrics", timeout=120, headers={"Accept-Encoding": "identity"}).text
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in names:
            found[name] = float(value)
    return found


JUDGE_CPU = "wardready_collector_judge_cpu_seconds_total"
JUDGE_SUM = "wardready_collector_judge_duration_seconds_sum"
JUDGE_COUNT = "wardready_collector_judge_duration_seconds_count"
PROCESS_CPU = "process_cpu_seconds_total"
RSS = "process_resident_memory_bytes"


def judge_share(url: str, window: float) -> tuple[float, float, float]:
    """(judge's CPU share of one core, the process's, wall seconds per judgement) over an
    idle ``window``."""
    names = (JUDGE_CPU, JUDGE_SUM, JUDGE_COUNT, PROCESS_CPU)
    before, t0 = self_metrics(url, names), time.monotonic()
    time.sleep(window)
    after, elapsed = self_metrics(url, names), time.monotonic() - t0

    def grew(name: str) -> float:
        return after[name] - before[name]

    count = grew(JUDGE_COUNT)
    per = grew(JUDGE_SUM) / count if count else float("nan")
    return grew(JUDGE_CPU) / elapsed, grew(PROCESS_CPU) / elapsed, per


def rss_bytes(pid: int | str = "self", field: str = "VmRSS") -> int:
    """Resident memory of a process now (VmRSS), or at its peak (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def state_at_scale(ids: list[str]) -> None:
    """Section 0: memory of the full window, full and incremental judgement, in process."""
    profile = load_profile(PROFILE)
    rng = random.Random(13)
    now = time.time()
    before = rss_bytes()
    state = State.for_profile(profile)
    for ward in ids:
        state.add(ward, "pc-01", history(ward, now, rng, validate=False))
        state.heard(ward, "pc-01", now)
    held = sum(len(s.history.started) for w in ids for s in state.ward(w).series)
    after = rss_bytes()
    t_full, cpu_full = timed_cpu(lambda: evaluate_all(profile, state, ids, now + 1))
    judge = Judge(profile)
    verdicts = judge.judge(state, ids, now + 1)
    ready = sum(v.verdict == "ready" for v in verdicts.values())
    judged_rss = rss_bytes()
    t_none, cpu_none = timed_cpu(lambda: judge.judge(state, ids, now + 1.5))

    def one_second_of_pushes(at: float) -> None:
        # Each push: the next run of 4 of a commune's checks, one commune after another.
        for ward in rng.sample(ids, min(PUSHES_PER_SECOND, len(ids))):
            picked = plan(ward)[:RESULTS_PER_PUSH]
            state.add(ward, "pc-01", [
                ResultRecord.model_construct(
                    seq=1, check=c, name=n, target=t, address=t, labels=lb,
                    interval_seconds=INTERVAL, started=at, duration_seconds=0.05,
                    success=True, reason="ok", metrics=metrics_for(c, rng), info={},
                )
                for c, n, t, lb in picked
            ])  # fmt: skip
            state.heard(ward, "pc-01", at)

    times, cpus, judged = [], [], []
    for second in range(1, 6):
        one_second_of_pushes(now + 1 + second)
        t0, c0 = time.perf_counter(), time.thread_time()
        judge.judge(state, ids, now + 2 + second)
        times.append(time.perf_counter() - t0)
        cpus.append(time.thread_time() - c0)
        judged.append(judge.judged)
    per_sample = (after - before) / held
    print(
        f"state and judging in process: {len(ids)} communes, the profile's whole window "
        f"({HISTORY / 60:g} min of {len(plan(ids[0]))} checks every {INTERVAL:g} s)"
    )
    print(
        f"  RSS with the window {after / 2**20:9.0f} MiB     ({(after - before) / 2**20:.0f} MiB "
        f"for {held:,} results held, {per_sample:.0f} B each)   target <= 500 MB"
    )
    print(
        f"  RSS with verdicts   {judged_rss / 2**20:9.0f} MiB     (after a judgement, its verdicts "
        "held for the next)"
    )
    print(
        f"  evaluate_all (full) {t_full:9.3f} s wall, {cpu_full:.3f} s CPU  "
        f"({ready}/{len(ids)} ready)   target < 1 s"
    )
    print(
        f"  incremental, no new data {t_none:9.3f} s wall, {cpu_none:.3f} s CPU  "
        "(0 communes judged again)"
    )
    print(
        f"  incremental after 1 s of pushes {statistics.median(times):7.3f} s wall, "
        f"{statistics.median(cpus):.3f} s CPU  (median of 5; {statistics.median(judged):.0f} "
        f"communes judged again after {PUSHES_PER_SECOND} pushes of {RESULTS_PER_PUSH} "
        "results)   target: a verdict moves within 1 s"
    )
    print(f"  (load average while measuring: {', '.join(f'{x:.1f}' for x in os.getloadavg())})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--wards", type=int, default=3321)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--judge-window", type=float, default=30.0)
    parser.add_argument(
        "--state-only", action="store_true", help="only section 0 (no collector process)"
    )
    args = parser.parse_args()
    state_at_scale([f"commune-{i:05d}" for i in range(1, args.wards + 1)])
    if args.state_only:
        return
    work = Path(tempfile.mkdtemp(prefix="wardready-scale-"))
    units = work / "units.csv"
    ids = synthetic_units(units, args.wards)
    # The judging period advised for national scale (README, Collector).
    collector = Collector(
        work,
        PROFILE,
        wards_csv=units,
        serve_args=["--verdict-seconds", "10", "--metrics-open", "--ingest-rate", "0"],
    )
    jobs = agent_tokens(collector, units, ids)
    now = time.time()
    per_batch = len(plan(ids[0])) * int(HISTORY / INTERVAL)
    with stopping(collector):
        collector.start()
        queue: mp.Queue[tuple[int, float]] = mp.Queue()
        shares = [jobs[i :: args.clients] for i in range(args.clients)]
        procs = [mp.Process(target=client, args=(collector.url, s, now, queue)) for s in shares]
        for p in procs:
            p.start()
        for _ in procs:
            queue.get(timeout=600)  # batches built; clients now post
        t0 = time.perf_counter()
        done = [queue.get(timeout=1200) for _ in procs]
        wall = time.perf_counter() - t0
        # Judge as of the end of ingest: no agent keeps heartbeating here, so later every
        # commune would read as silent, which is not the case being measured.
        judged_at = time.time()
        for p in procs:
            p.join(30)
        accepted = sum(n for n, _ in done)
        # Before any /metrics scrape (rendering every ward's series takes memory of its
        # own), once the judge thread has judged the whole window.
        time.sleep(12)
        rss_judged = rss_bytes(collector.proc.pid)
        t_http = timed(lambda: httpx.get(f"{collector.url}/metrics", timeout=60).raise_for_status())
        size = len(
            httpx.get(
                f"{collector.url}/metrics", timeout=60, headers={"Accept-Encoding": "identity"}
            ).content
        )
        judge_cpu, process_cpu, per_judgement = judge_share(collector.url, args.judge_window)
        rss = self_metrics(collector.url, (RSS,))[RSS]
        peak = rss_bytes(collector.proc.pid, "VmHWM")

    service = Service.open(collector.db, PROFILE)
    ward_ids = list(service.wards())
    verdicts = evaluate_all(service.profile, service.state, ward_ids, judged_at)
    ready = sum(v.verdict == "ready" for v in verdicts.values())
    t_eval = timed(lambda: evaluate_all(service.profile, service.state, ward_ids, judged_at))
    registry = registry_for(service)
    t_render = timed(lambda: render(registry))

    print(
        f"collector at scale: {args.wards} communes, {per_batch} results each "
        f"({HISTORY / 60:g} min of {len(plan(ids[0]))} checks every 30 s)"
    )
    print(
        f"  ingest over HTTP    {accepted / wall:9,.0f} results/s   ({accepted:,} results, "
        f"{args.clients} clients, {wall:.1f} s)   target >= 20,000"
    )
    print(
        f"  evaluate_all        {t_eval:9.3f} s         ({ready}/{len(verdicts)} ready)   "
        "target < 1 s"
    )
    print(f"  /metrics in process {t_render:9.3f} s")
    print(
        f"  GET /metrics (HTTP) {t_http:9.3f} s         ({size / 2**20:.1f} MiB of text)   "
        "target < 2 s"
    )
    print(
        f"  judge CPU share     {judge_cpu:9.1%} of a core  ({per_judgement:.3f} s wall per "
        f"judgement every 10 s; the whole idle process {process_cpu:.1%}; "
        f"{args.judge_window:g} s window)"
    )
    print(
        f"  collector RSS       {rss_judged / 2**20:9.0f} MiB     (the whole window held and "
        "judged, before any /metrics scrape)   target <= 500 MB"
    )
    print(
        f"  collector RSS       {rss / 2**20:9.0f} MiB     (after the /metrics scrapes above; "
        f"peak {peak / 2**20:.0f} MiB)"
    )
    service.close()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
