"""The collector's ingest rate over plain HTTP and over HTTPS, side by side in one run.

Two workloads, each against a fresh collector process, first without and then with
``serve --tls-cert`` (a CA and an EC P-256 certificate made for the run):

1. bulk: each ward's agent pushes one batch of 15 minutes of its plan over a kept-alive
   connection (a backlog replay; TLS costs encryption only);
2. small: each ward pushes one batch of 10 results on a new connection (the worst case for
   TLS: a handshake per push, as agents whose keep-alive expired between pushes).

    python bench/collector_tls.py [--wards 600] [--clients 3]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import shutil
import socket
import ssl
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts"), str(ROOT / "bench")]

from collector_scale import agent_tokens, make_batch, plan, synthetic_units  # noqa: E402
from fleet import Collector, stopping  # noqa: E402

from shared.wire import Batch  # noqa: E402
from tests.pki import issue, make_ca  # noqa: E402

SMALL = 10


class TlsCollector(Collector):
    ca: Path | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.ca else 'http'}://127.0.0.1:{self.port}"

    def healthy(self) -> bool:
        verify: str | bool = str(self.ca) if self.ca else True
        return httpx.get(f"{self.url}/healthz", timeout=1, verify=verify).status_code == 200


def small_batch(body: bytes) -> bytes:
    batch = Batch.model_validate_json(body)
    return batch.model_copy(update={"results": batch.results[:SMALL]}).model_dump_json().encode()


def client(
    url: str,
    ca: str | None,
    jobs: list[tuple[str, str]],
    workload: str,
    now: float,
    out: mp.Queue[tuple[int, int, float]],
) -> None:
    rng = random.Random(hash(jobs[0][0]))
    bodies = [(token, make_batch(ward, now, rng)) for ward, token in jobs]
    if workload == "small":
        bodies = [(token, small_batch(body)) for token, body in bodies]
    # Made once: an httpx client builds an SSLContext from the whole system CA bundle when
    # given none (~40 ms), which would be charged to plain HTTP on every new connection.
    verify = ssl.create_default_context(cafile=ca)
    # A plain POST's headers and body go out as two writes; without TCP_NODELAY the second
    # waits for the server's delayed ACK on a new connection (~12 ms here), charging Linux's
    # Nagle to plain HTTP. TLS records happen to dodge it; give both the same footing.
    nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]

    def session() -> httpx.Client:
        transport = httpx.HTTPTransport(verify=verify, socket_options=nodelay)
        return httpx.Client(timeout=60, transport=transport)

    sent = 0
    out.put((0, 0, 0.0))  # ready
    t0 = time.perf_counter()
    if workload == "bulk":
        with session() as http:
            for token, body in bodies:
                sent += post(http, url, token, body)
    else:
        for token, body in bodies:
            with session() as http:
                sent += post(http, url, token, body)
    out.put((sent, len(bodies), time.perf_counter() - t0))


def post(http: httpx.Client, url: str, token: str, body: bytes) -> int:
    r = http.post(
        f"{url}/api/v1/ingest",
        content=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    r.raise_for_status()
    accepted: int = r.json()["accepted"]
    return accepted


def run_once(
    work: Path, units: Path, ids: list[str], workload: str, tls: bool, clients: int
) -> tuple[float, float]:
    """(results/s, requests/s) of one workload against a fresh collector."""
    here = work / f"{workload}-{'tls' if tls else 'plain'}"
    extra = ["--verdict-seconds", "10", "--ingest-rate", "0"]
    collector = TlsCollector(
        here, ROOT / "collector" / "profiles" / "default.yaml", wards_csv=units
    )
    if tls:
        ca = make_ca(work, "bench-ca") if not (work / "bench-ca.pem").exists() else None
        if ca is not None:
            issue(ca, work / "server.pem", work / "server.key")
        collector.ca = work / "bench-ca.pem"
        extra += ["--tls-cert", str(work / "server.pem"), "--tls-key", str(work / "server.key")]
    collector.serve_args = extra
    jobs = agent_tokens(collector, units, ids)
    now = time.time()
    with stopping(collector):
        collector.start()
        queue: mp.Queue[tuple[int, int, float]] = mp.Queue()
        shares = [jobs[i::clients] for i in range(clients)]
        ca_arg = str(collector.ca) if collector.ca else None
        procs = [
            mp.Process(target=client, args=(collector.url, ca_arg, s, workload, now, queue))
            for s in shares
        ]
        for p in procs:
            p.start()
        for _ in procs:
            queue.get(timeout=600)
        t0 = time.perf_counter()
        done = [queue.get(timeout=1200) for _ in procs]
        wall = time.perf_counter() - t0
        for p in procs:
            p.join(30)
    results = sum(n for n, _, _ in done)
    requests = sum(r for _, r, _ in done)
    return results / wall, requests / wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--wards", type=int, default=600)
    parser.add_argument("--clients", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wardready-tls-"))
    units = work / "units.csv"
    ids = synthetic_units(units, args.wards)
    per_batch = len(plan(ids[0])) * 30
    print(
        f"collector ingest, plain HTTP vs HTTPS (TLS 1.3, EC P-256): {args.wards} wards, "
        f"{args.clients} clients"
    )
    print(f"  {'workload':<46} {'HTTP':>14} {'HTTPS':>14} {'HTTPS/HTTP':>11}")
    try:
        for workload, what in (
            ("bulk", f"bulk: {per_batch} results a batch, kept-alive"),
            ("small", f"small: {SMALL} results a batch, new connection each"),
        ):
            plain = run_once(work, units, ids, workload, False, args.clients)
            tls = run_once(work, units, ids, workload, True, args.clients)
            print(
                f"  {what:<46} {plain[0]:>8,.0f} res/s {tls[0]:>8,.0f} res/s "
                f"{tls[0] / plain[0]:>10.2f}"
            )
            print(
                f"  {'':<46} {plain[1]:>8,.1f} req/s {tls[1]:>8,.1f} req/s "
                f"{tls[1] / plain[1]:>10.2f}"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
