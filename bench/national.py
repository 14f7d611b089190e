"""The national push load on one collector: 3,321 agents, each pushing ~4 results every 5 s.

Starts a collector (SQLite, or a throwaway PostgreSQL server, or both in turn) holding the
3,321 wards, one agent token each, and drives it with wrk (a C load generator from Debian)
and ``bench/national.lua``, which builds every push with the ward's own token and its next
sequence numbers, paced to the offered rate. Prints, beside each goal of issue 13:

- offered and achieved requests/s, p50 and p99 ack time (wrk --latency);
- the collector's and wrk's own CPU, as % of one core (so a saturated load generator is never
  taken for a slow server);
- judge time (from the collector's own /metrics);
- /metrics time and size per shard (``--metrics-shards`` when ``serve`` offers it);
- series per ward in the exposition, and the collector's RSS;
- exactly-once: results stored versus results wrk saw acknowledged.

    python bench/national.py [--db sqlite|postgresql|both] [--duration 30] [--rate 664]

Every process it starts (collector, wrk, PostgreSQL) is stopped by its PID or data directory.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts"), str(ROOT / "bench")]

from collector_scale import metrics_for, plan, synthetic_units  # noqa: E402
from fleet import Proc, free_port, wait_until  # noqa: E402

from collector import db, tokens, wards  # noqa: E402

PROFILE = ROOT / "collector" / "profiles" / "default.yaml"
LUA = ROOT / "bench" / "national.lua"
AGENT = "pc-01"
JUDGE = "wardready_collector_judge_duration_seconds"
# The measured run's seqs start here, past any warm-up's.
WARM_SEQS = 10_000_000
SAMPLE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? ")
WARD_LABEL = re.compile(r'ward="([^"]*)"')


@dataclass
class Run:
    """What one database's run measured."""

    db: str
    offered: float
    achieved: float
    p50: float
    p99: float
    errors: int
    collector_cpu: float
    wrk_cpu: float
    judge: float | None
    shards: list[tuple[float, int, int]]  # seconds, bytes, samples
    series_per_ward: tuple[float, int]
    rss: int
    acked_results: int
    stored_results: int
    # The machine's 1-minute load average before and after the load: above the number of
    # cores, other programs took CPU from the collector and the figures are pessimistic.
    load: tuple[float, float]


def write_inputs(work: Path, jobs: list[tuple[str, str]], per_push: int) -> tuple[Path, Path]:
    """The Lua script's two files: who pushes (ward, agent, stream, token), and the results
    it pushes, each split around seq and started (see national.lua)."""
    wards_file = work / "wards.tsv"
    wards_file.write_text(
        "".join(f"{w}\t{AGENT}\t{uuid.uuid4().hex}\t{t}\n" for w, t in jobs), encoding="utf-8"
    )
    import json
    import random

    rng = random.Random(13)
    lines = []
    for check, name, target, labels in plan(jobs[0][0]):
        head = json.dumps({"check": check, "name": name, "target": target, "address": target,
                           "labels": labels, "interval_seconds": 30.0, "duration_seconds": 0.05,
                           "success": True, "reason": "ok", "metrics": metrics_for(check, rng)},
                          separators=(",", ":"))  # fmt: skip
        lines.append(f'{{"seq":\t,"started":\t,{head[1:]}\n')
    series_file = work / "series.tsv"
    series_file.write_text("".join(lines), encoding="utf-8")
    return wards_file, series_file


def seed(url: str, units: Path, ids: list[str]) -> list[tuple[str, str]]:
    engine = db.make_engine(url, synchronous="OFF")
    db.upgrade(engine)
    wards.import_csv(engine, units)
    made = tokens.create_agents(engine, [(w, AGENT) for w in ids])
    engine.dispose()
    return list(zip(ids, made, strict=True))


def serve_help() -> str:
    done = subprocess.run(
        [sys.executable, "-m", "collector", "serve", "--help"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    return done.stdout


def start_collector(work: Path, url: str, args: argparse.Namespace, shards: int) -> Proc:
    port = free_port()
    argv = [
        sys.executable, "-m", "collector", "--db", url, "--profile", str(PROFILE),
        "serve", "--listen", f"127.0.0.1:{port}", "--metrics-open",
        "--verdict-seconds", str(args.verdict_seconds), *args.serve_arg,
    ]  # fmt: skip
    if shards > 1:
        argv += ["--metrics-shards", str(shards)]
    proc = Proc("collector", argv, work / "collector.log").start()
    proc.env["URL"] = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200,
            120,
            what="collector /healthz",
        )
    except TimeoutError:
        proc.stop()
        print(proc.tail(), file=sys.stderr)
        raise
    return proc


def scrape(url: str, shard: int | None) -> tuple[float, bytes]:
    path = "/metrics" if shard is None else f"/metrics?shard={shard}"
    t0 = time.perf_counter()
    r = httpx.get(url + path, timeout=120, headers={"Accept-Encoding": "identity"})
    took = time.perf_counter() - t0
    r.raise_for_status()
    return took, r.content


def judge_totals(url: str) -> tuple[float, float]:
    """(sum, count) of the collector's judge duration histogram, from its own /metrics."""
    total = count = 0.0
    # The collector's own metrics come on shard 0 (and on the unsharded /metrics).
    text = scrape(url, None)[1].decode()
    for line in text.splitlines():
        if line.startswith(JUDGE + "_sum"):
            total = float(line.rsplit(" ", 1)[1])
        elif line.startswith(JUDGE + "_count"):
            count = float(line.rsplit(" ", 1)[1])
    return total, count


def count_samples(text: str, per_ward: dict[str, int]) -> int:
    n = 0
    for line in text.splitlines():
        if not line or line[0] == "#" or not SAMPLE.match(line):
            continue
        n += 1
        found = WARD_LABEL.search(line)
        if found is not None:
            per_ward[found.group(1)] = per_ward.get(found.group(1), 0) + 1
    return n


def run_wrk(
    url: str,
    inputs: tuple[Path, Path],
    args: argparse.Namespace,
    duration: float,
    first_seq: int = 0,
) -> tuple[dict[str, int], float]:
    """wrk's NATIONAL line as numbers, and the wall time it ran. Each ward's seqs start after
    ``first_seq``, so a second run never repeats the first's."""
    argv = [
        "wrk", "-t", str(args.threads), "-c", str(args.connections),
        "-d", f"{round(duration)}s", "--timeout", "10s", "--latency",
        "-s", str(LUA), url, "--",
        str(inputs[0]), str(inputs[1]), str(args.rate), str(args.per_push), str(first_seq),
    ]  # fmt: skip
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=duration + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    # communicate() reaped it: its CPU time is now in this process's children's totals.
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {out}{err}")
    if err.strip():
        print(err.strip(), file=sys.stderr)
    line = next((x for x in out.splitlines() if x.startswith("NATIONAL ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no NATIONAL line:\n{out}")
    fields = {k: int(v) for k, v in (p.split("=") for p in line.split()[1:])}
    return fields, wall


def children_cpu() -> float:
    usage = os.times()
    return usage.children_user + usage.children_system


def measure(name: str, url: str, args: argparse.Namespace, work: Path) -> Run:
    units = work / "units.csv"
    ids = synthetic_units(units, args.wards)
    t0 = time.monotonic()
    jobs = seed(url, units, ids)
    print(f"[{name}] {len(ids)} wards and tokens seeded in {time.monotonic() - t0:.1f} s",
          flush=True)  # fmt: skip
    inputs = write_inputs(work, jobs, args.per_push)
    shards = args.metrics_shards if "--metrics-shards" in serve_help() else 1
    proc = start_collector(work, url, args, shards)
    base = proc.env["URL"]
    # The PID lets py-spy (or top) watch the collector while the load runs.
    print(f"[{name}] collector PID {proc.pid} at {base}, load for {args.duration:g} s", flush=True)
    try:
        me = psutil.Process(proc.pid)
        warm_acked = 0
        if args.warmup > 0:
            # The first minute is not the steady state: every ward's verdict and criteria are
            # recorded from nothing, and the first full judgements see every ward change.
            warm, _ = run_wrk(base, inputs, args, args.warmup)
            warm_acked = (warm["requests"] - warm["errors_status"]) * args.per_push
        judged = judge_totals(base)
        cpu0, wrk0 = me.cpu_times(), children_cpu()
        load0 = os.getloadavg()[0]
        fields, wall = run_wrk(base, inputs, args, args.duration, WARM_SEQS if args.warmup else 0)
        load1 = os.getloadavg()[0]
        cpu1, wrk1 = me.cpu_times(), children_cpu()
        judged_after = judge_totals(base)
        took = fields["duration_us"] / 1e6
        runs = judged_after[1] - judged[1]
        judge = (judged_after[0] - judged[0]) / runs if runs else None
        per_ward: dict[str, int] = {}
        shard_figures = []
        for k in range(shards):
            seconds, body = scrape(base, k if shards > 1 else None)
            shard_figures.append((seconds, len(body), count_samples(body.decode(), per_ward)))
        rss = me.memory_info().rss
        collector_cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / wall
    finally:
        proc.stop(timeout=30)
    engine = db.make_engine(url)
    with engine.connect() as conn:
        stored = conn.execute(sa.select(sa.func.count()).select_from(db.results)).scalar_one()
    engine.dispose()
    ok = fields["requests"] - fields["errors_status"]
    counts = list(per_ward.values()) or [0]
    return Run(
        db=name,
        offered=args.rate,
        achieved=fields["requests"] / took,
        p50=fields["p50_us"] / 1e6,
        p99=fields["p99_us"] / 1e6,
        errors=sum(v for k, v in fields.items() if k.startswith("errors_")),
        collector_cpu=collector_cpu,
        wrk_cpu=(wrk1 - wrk0) / wall,
        judge=judge,
        shards=shard_figures,
        series_per_ward=(statistics.mean(counts), max(counts)),
        rss=rss,
        acked_results=ok * args.per_push + warm_acked,
        stored_results=stored,
        load=(load0, load1),
    )


def report(r: Run, args: argparse.Namespace) -> None:
    def row(what: str, value: str, goal: str) -> None:
        print(f"  {what:<26} {value:<34} {goal}")

    print(f"\n{r.db}: {args.wards} wards, pushes of {args.per_push} results, "
          f"{args.connections} connections, {args.duration:g} s after {args.warmup:g} s of "
          f"warm-up; load average "
          f"{r.load[0]:.1f} -> {r.load[1]:.1f} on {os.cpu_count()} cores")  # fmt: skip
    if r.db == "postgresql":
        print("  (the throwaway PostgreSQL server runs with fsync off, as in the tests)")
    offered = f"{r.offered:,.0f} offered" if r.offered else "flat out"
    row("requests/s", f"{r.achieved:,.0f} achieved, {offered}", "goal: 664 held")
    row("ack time", f"p50 {r.p50 * 1000:.0f} ms, p99 {r.p99 * 1000:.0f} ms", "goal: p99 < 250 ms")
    row("errors", f"{r.errors} (connect, read, timeout, non-200)", "goal: 0")
    per = r.collector_cpu / r.achieved * 1000 if r.achieved else float("nan")
    row("collector CPU", f"{r.collector_cpu:.0%} of a core, {per:.2f} ms per request",
        "goal: <= 100% at 664/s")  # fmt: skip
    row("wrk CPU", f"{r.wrk_cpu:.0%} of a core", "(the load generator's own cost)")
    judge = "no judgement finished" if r.judge is None else f"{r.judge:.3f} s per judgement"
    row("judge time", judge, "goal: < 1 s")
    for k, (seconds, size, samples) in enumerate(r.shards):
        label = f"/metrics shard {k}" if len(r.shards) > 1 else "/metrics (unsharded)"
        row(label, f"{seconds:.3f} s, {size / 2**20:.1f} MiB, {samples:,} samples",
            "goal: each shard well under its sample_limit")  # fmt: skip
    mean, most = r.series_per_ward
    row("series per ward", f"{mean:.0f} mean, {most} most", "goal: within the per-ward budget")
    row("collector RSS", f"{r.rss / 2**20:.0f} MiB", "goal: <= 500 MB with full history")
    # Stored may exceed acked by the pushes in flight when wrk stopped counting; the unique
    # key (ward, agent, stream, seq) forbids a second copy of any result.
    kept = "none lost" if r.stored_results >= r.acked_results else "RESULTS LOST"
    row("results", f"{r.stored_results:,} stored, {r.acked_results:,} acked", kept)


@contextlib.contextmanager
def database(kind: str, work: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{work / 'collector.db'}"
        return
    from tests.pg import serve

    servers = serve()
    server = next(servers)
    try:
        url = server.database(tcp=True)
        yield url
    finally:
        with contextlib.suppress(StopIteration):
            next(servers)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="sqlite")
    p.add_argument("--wards", type=int, default=3321)
    p.add_argument("--duration", type=float, default=30.0, help="seconds of load per database")
    p.add_argument("--warmup", type=float, default=20.0,
                   help="seconds of the same load before measuring (0: none)")  # fmt: skip
    p.add_argument("--rate", type=float, default=664.0, help="requests/s offered (0: flat out)")
    p.add_argument("--per-push", type=int, default=4, help="results in each push")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="wrk threads")
    p.add_argument("--verdict-seconds", type=float, default=2.0)
    p.add_argument("--metrics-shards", type=int, default=4)
    p.add_argument("--serve-arg", action="append", default=[],
                   help="one more argument for `serve` (repeat)")  # fmt: skip
    args = p.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install wrk (scripts/setup.sh installs it)")
    kinds = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    runs = []
    for kind in kinds:
        work = Path(tempfile.mkdtemp(prefix=f"wardready-national-{kind}-"))
        try:
            with database(kind, work) as url:
                runs.append(measure(kind, url, args, work))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    for r in runs:
        report(r, args)


if __name__ == "__main__":
    main()
