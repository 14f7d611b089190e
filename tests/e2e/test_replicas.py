"""Two collector replicas on one PostgreSQL behind a real HAProxy, with real agents pushing
under load: ingest spreads over both; kill -9 of a replica loses and duplicates nothing (the
agents fail over); kill -9 of the judge lease's holder makes the other one judge, and serve
its own fresh verdicts."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
import yaml
from fleet import Agent, Collector, Proc, free_port, stopping, wait_until

from collector import lease
from tests.e2e.test_ward_pc_realities import PROFILE
from tests.helpers import need
from tests.pg import PgServer

pytestmark = pytest.mark.e2e

WARDS = ("ward-minh-phung", "ward-binh-thoi", "ward-phu-tho")
PERIOD = 1.0  # --verdict-seconds: the judging period


@dataclass
class Replica(Collector):
    """A collector process on the shared PostgreSQL database."""

    name: str = ""
    url_db: str = ""

    @property
    def db(self) -> str:
        return self.url_db


@dataclass
class Pusher(Agent):
    """An agent given several collector URLs, tried in turn."""

    urls: list[str] = field(default_factory=list)

    def write_config(self, token: str) -> Path:
        path = super().write_config(token)
        config = yaml.safe_load(path.read_text())
        del config["collector"]["url"]
        config["collector"]["urls"] = self.urls
        path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False))
        return path

    def last_seq(self) -> int:
        """The highest sequence number the agent ever gave a result (its spool's counter)."""
        spool = self.workdir / f"{self.ward}.{self.name}.spool.db"
        with sqlite3.connect(spool) as conn:
            row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'results'").fetchone()
            waiting = conn.execute("SELECT count(*) FROM results").fetchone()[0]
        assert waiting == 0, f"{self.ward}: {waiting} results still in the spool"
        return int(row[0])


def haproxy(workdir: Path, port: int, replicas: list[Replica]) -> Proc:
    servers = "\n".join(
        f"    server {r.name} 127.0.0.1:{r.port} check inter 300ms fall 2 rise 2" for r in replicas
    )
    cfg = workdir / "haproxy.cfg"
    cfg.write_text(
        f"""global
    maxconn 512
defaults
    mode http
    timeout connect 2s
    timeout client 20s
    timeout server 20s
    retries 2
    option redispatch
frontend ingest
    bind 127.0.0.1:{port}
    default_backend collectors
backend collectors
    balance roundrobin
    option httpchk GET /healthz
    http-check expect status 200
{servers}
"""
    )
    return Proc("haproxy", ["haproxy", "-f", str(cfg), "-db"], workdir / "haproxy.log").start()


def kill9(replica: Replica) -> None:
    assert replica.proc is not None and replica.proc.popen is not None
    os.kill(replica.proc.popen.pid, signal.SIGKILL)
    replica.proc.popen.wait(10)


def metric(replica: Replica, name: str) -> float:
    for line in str(replica.get("/metrics")).splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{replica.name}: no {name} in /metrics")


def ingested(replica: Replica) -> float:
    return metric(replica, "wardready_collector_ingest_results_total")


def holds(replica: Replica) -> float:
    return metric(replica, "wardready_collector_judge_lease_held")


def test_two_replicas_behind_haproxy_survive_kill_9_of_each(
    tmp_path: Path, pg_server: PgServer
) -> None:
    need(shutil.which("haproxy") is not None, "haproxy is not installed (Debian package)")
    url = pg_server.database(tcp=True)
    engine = sa.create_engine(url)
    profile = tmp_path / "profile.yaml"
    profile.write_text(PROFILE)
    serve = ["--ingest-rate", "0", "--verdict-seconds", f"{PERIOD:g}"]
    a, b = (
        Replica(tmp_path / n, profile, serve_args=[*serve, "--name", n], name=n, url_db=url)
        for n in ("replica-a", "replica-b")
    )
    a.setup()
    shutil.copy(a.viewer_token_file, b.viewer_token_file)
    lb_port = free_port()
    lb = f"http://127.0.0.1:{lb_port}"
    checks = [{"name": f"port-{i}", "type": "tcp", "target": f"127.0.0.1:{lb_port}"}
              for i in range(8)]  # fmt: skip
    timing = {"interval": "500ms", "timeout": "400ms", "push_interval": "300ms"}
    agents = [
        Pusher(tmp_path / w, w, "pc-01", a, checks, **timing, urls=urls)  # type: ignore[arg-type]
        for w, urls in zip(WARDS, ([lb, a.url], [lb, b.url], [a.url, b.url]), strict=True)
    ]
    proxy: Proc | None = None

    def stored() -> list[tuple[str, str, int]]:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT ward_id, stream, seq FROM results")).all()
        return [(str(w), str(s), int(q)) for w, s, q in rows]

    def holder() -> str:
        found = lease.holder(engine)
        return found.holder if found is not None else ""

    def more(n: int, what: str) -> None:
        before = len(stored())
        wait_until(lambda: len(stored()) >= before + n, 90, what=what)

    with stopping(a, b, *agents):
        a.start()
        wait_until(lambda: holder() == "replica-a", 30, what="replica-a holds the lease")
        b.start()
        proxy = haproxy(tmp_path, lb_port, [a, b])
        try:
            wait_until(lambda: healthy(lb), 30, what="HAProxy with a healthy replica")
            for agent in agents:
                agent.start()
            more(300, "results under load")
            # Both replicas took batches: through the balancer and directly.
            wait_until(lambda: ingested(a) > 0 and ingested(b) > 0, 30, what="ingest on both")
            print(f"\ningested: replica-a {ingested(a):.0f}, replica-b {ingested(b):.0f}")

            kill9(b)  # the standby, under load
            more(200, "delivery with replica-b dead")
            b.start()
            more(100, "delivery with replica-b back")
            assert holder() == "replica-a"
            assert (holds(a), holds(b)) == (1.0, 0.0)

            snap = lease.snapshot_judged_at(engine)
            assert snap is not None and snap[0] == "replica-a"
            kill9(a)  # the judge
            killed = time.time()
            wait_until(lambda: holder() == "replica-b", 30, what="replica-b takes the lease")
            took_over = time.time() - killed

            def judged_by_b() -> bool:
                now = lease.snapshot_judged_at(engine)
                return now is not None and now[0] == "replica-b" and now[1] > killed

            wait_until(judged_by_b, 30, what="a snapshot from replica-b")
            print(f"lease taken over {took_over:.2f} s after kill -9 (period {PERIOD:g} s)")
            # The survivor serves its own fresh verdicts, directly and through the balancer.
            for ward in WARDS:
                detail = b.ward(ward)
                assert detail["evaluated_at"] > killed, ward
            token = b.viewer_token_file.read_text().strip()
            via_lb = httpx.get(f"{lb}/api/v1/wards/{WARDS[0]}", timeout=5,
                               headers={"Authorization": f"Bearer {token}"})  # fmt: skip
            assert via_lb.status_code == 200 and via_lb.json()["evaluated_at"] > killed
            assert b.healthy()
            assert holds(b) == 1.0
            more(200, "delivery with replica-a dead")
            # The agent that pushes to replica-a directly moved on to replica-b by itself.
            log = agents[2].workdir / f"{agents[2].ward}.pc-01.log"
            assert f"trying {b.url}/api/v1/ingest" in log.read_text()
            for agent in agents:
                assert agent.stop() == 0  # a clean stop drains the spool
        finally:
            if proxy is not None:
                proxy.stop()
    rows = stored()
    engine.dispose()
    assert len(rows) == len(set(rows)), "a result was stored twice"
    for agent in agents:
        mine = [(s, q) for w, s, q in rows if w == agent.ward]
        assert len({s for s, _ in mine}) == 1, f"{agent.ward}: more than one stream"
        seqs = sorted(q for _, q in mine)
        assert seqs == list(range(1, agent.last_seq() + 1)), f"{agent.ward}: results lost"
        assert len(seqs) >= 200


def healthy(base: str) -> bool:
    return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
