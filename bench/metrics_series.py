"""Series per ward on the collector's /metrics, with the plan of bench/collector_scale.py.

Builds the state of ``--wards`` communes in process (each agent pushing 15 minutes of its
22 checks, as in collector_scale.py), then counts the samples of one unsharded scrape per
ward, and the size of each of ``--shards`` shards. With ``--silent`` the wards are judged
10 minutes later, every agent silent: the worst case, where the budget cuts.

    python bench/metrics_series.py [--wards 300] [--shards 4]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "scripts")]

from collector_scale import make_batch, plan, synthetic_units  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from collector import db, exposition, tokens, wards  # noqa: E402
from collector.service import Service  # noqa: E402


def per_ward(text: str) -> tuple[Counter[str], int]:
    """Samples per ward label, and samples without one."""
    counts: Counter[str] = Counter()
    other = 0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if "ward" in s.labels:
                counts[s.labels["ward"]] += 1
            else:
                other += 1
    return counts, other


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--wards", type=int, default=300)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--silent", action="store_true", help="judge 10 minutes later")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wardready-series-"))
    units = work / "units.csv"
    ids = synthetic_units(units, args.wards)
    url = f"sqlite:///{work / 'wardready.db'}"
    engine = db.make_engine(url)
    db.upgrade(engine)
    wards.import_csv(engine, units)
    jobs = [(w, tokens.create(engine, w, "pc-01")) for w in ids]
    engine.dispose()
    profile = ROOT / "collector" / "profiles" / "default.yaml"
    service = Service.open(url, profile)
    rng = random.Random(1)
    now = time.time()
    for ward, token in jobs:
        service.ingest(f"Bearer {token}", make_batch(ward, now, rng))
    # Judged as of the end of ingest, as collector_scale.py does: in-process ingest of a
    # national fleet takes minutes, after which every ward would read as silent (and then
    # fills its budget with a reason and a failed criterion for each criterion).
    judged_at = now + (600 if args.silent else 0)
    service.clock = lambda: judged_at
    t0 = time.perf_counter()
    text = exposition.render(exposition.registry_for(service)).decode("utf-8")
    whole = time.perf_counter() - t0
    counts, other = per_ward(text)
    series = list(counts.values())
    print(f"/metrics with {args.wards} communes, {len(plan(ids[0]))} checks each")
    print(
        f"  series per ward     min {min(series)}  median {statistics.median(series):.0f}  "
        f"max {max(series)}   (+{other} without a ward label)"
    )
    print(
        f"  unsharded scrape    {len(text.encode()) / 1024:.0f} KiB of text, "
        f"{sum(series) + other} samples, built in {whole:.3f} s"
    )
    collector = exposition.ReadinessCollector(service)
    if hasattr(collector, "families"):
        for k in range(args.shards):
            t0 = time.perf_counter()
            shard = exposition.render_families(collector.families(k, args.shards)).decode()
            took = time.perf_counter() - t0
            counts, other = per_ward(shard)
            print(
                f"  shard {k}/{args.shards}           {len(counts)} wards, "
                f"{sum(counts.values()) + other} samples ({other} fleet-level), "
                f"{len(shard.encode()) / 1024:.0f} KiB, built in {took:.3f} s"
            )
        print(f"  budget              {collector.budget} series per ward")
    service.close()


if __name__ == "__main__":
    main()
