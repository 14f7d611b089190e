"""The HTTP API: shapes of the ward list and detail, health, OpenAPI, and a real server process."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from collector import cli, tokens
from collector.service import Service

from .conftest import BROKEN, READY, auth, batch, body, broken_results, healthy_results

ROOT = Path(__file__).resolve().parents[2]


def test_healthz(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_ward_list_shape_and_filters(client: TestClient, service: Service) -> None:
    good = tokens.create(service.engine, READY)
    bad = tokens.create(service.engine, BROKEN)
    assert (
        client.post(
            "/api/v1/ingest",
            content=body(batch(READY, results=healthy_results())),
            headers=auth(good),
        ).status_code
        == 200
    )
    assert (
        client.post(
            "/api/v1/ingest",
            content=body(batch(BROKEN, results=broken_results())),
            headers=auth(bad),
        ).status_code
        == 200
    )

    listed = client.get("/api/v1/wards").json()
    assert len(listed) == 4
    for w in listed:
        assert set(w) == {
            "id",
            "name",
            "kind",
            "former_district",
            "working_group",
            "verdict",
            "reasons",
        }
    by_id = {w["id"]: w for w in listed}
    assert by_id[READY]["verdict"] == "ready" and by_id[READY]["reasons"] == []
    assert by_id[BROKEN]["verdict"] == "not_ready"
    assert any(r.startswith("wan_loss:") for r in by_id[BROKEN]["reasons"])
    assert by_id["commune-can-gio"]["verdict"] == "not_ready"
    assert by_id["commune-can-gio"]["reasons"] == ["no_data: no agent has reported"]

    not_ready = client.get("/api/v1/wards", params={"verdict": "not_ready"}).json()
    assert {w["id"] for w in not_ready} == {BROKEN, "commune-can-gio", "ward-binh-thoi"}
    group1 = client.get("/api/v1/wards", params={"verdict": "not_ready", "working_group": "1"})
    assert {w["id"] for w in group1.json()} == {BROKEN, "ward-binh-thoi"}
    assert (
        client.get("/api/v1/wards", params={"kind": "commune"}).json()[0]["id"] == "commune-can-gio"
    )
    assert client.get("/api/v1/wards", params={"verdict": "maybe"}).status_code == 422


def test_ward_detail_has_criteria_evidence_and_agents(client: TestClient, service: Service) -> None:
    bad = tokens.create(service.engine, BROKEN, "pc-01")
    client.post(
        "/api/v1/ingest", content=body(batch(BROKEN, results=broken_results())), headers=auth(bad)
    )
    d = client.get(f"/api/v1/wards/{BROKEN}").json()
    assert d["id"] == BROKEN and d["name"] == "Phường Minh Phụng" and d["verdict"] == "not_ready"
    assert d["working_group"] == "1" and d["kind"] == "ward"
    crit = {c["id"]: c for c in d["criteria"]}
    assert set(crit) == {"wan_loss", "dms_up", "disk_free"}
    assert crit["wan_loss"]["status"] == "failed" and crit["wan_loss"]["severity"] == "blocker"
    (ev,) = crit["wan_loss"]["evidence"]
    assert ev["observed"] == pytest.approx(0.5) and ev["threshold"] == 0.01 and ev["op"] == "<"
    assert ev["series"] == "pc-01/wan-city→gw" and ev["samples"] == 2
    assert crit["dms_up"]["status"] == "ok"
    (agent,) = d["agents"]
    assert agent["agent"] == "pc-01" and agent["spool_depth"] == 7 and agent["last_seq"] == 5
    assert agent["version"] == "0.1.0"
    assert d["last_seen"] == agent["last_seen"] and d["evaluated_at"] >= d["last_seen"]


def test_unknown_ward_is_404_naming_it(client: TestClient) -> None:
    for ward in ("ward-nowhere", "Phường Không Có", "%00"):
        r = client.get(f"/api/v1/wards/{ward}")
        assert r.status_code == 404
        assert "is not a known ward" in r.json()["detail"]
    assert "ward-nowhere" in client.get("/api/v1/wards/ward-nowhere").json()["detail"]


def test_ward_imported_after_start_shows_up(
    client: TestClient, service: Service, tmp_path: Path
) -> None:
    from collector import wards

    path = tmp_path / "more.csv"
    path.write_text(
        "id,name,kind,former_district,working_group\nward-moi,Phường Mới,ward,,4\n", "utf-8"
    )
    wards.import_csv(service.engine, path)
    r = client.get("/api/v1/wards/ward-moi")
    assert r.status_code == 200 and r.json()["name"] == "Phường Mới"


def test_openapi_documents_every_endpoint_and_the_batch(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {
        "/healthz",
        "/api/v1/wards",
        "/api/v1/wards/{ward_id}",
        "/api/v1/ingest",
        "/metrics",
    } <= set(spec["paths"])
    ingest = spec["paths"]["/api/v1/ingest"]["post"]
    ref = ingest["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/Batch"
    schemas = spec["components"]["schemas"]
    assert {"Batch", "ResultRecord", "AgentStatus", "Ack", "WardDetail"} <= set(schemas)
    assert {"401", "403", "413", "422"} <= set(ingest["responses"])
    assert {"bearer", "cookie"} <= set(spec["components"]["securitySchemes"])
    # Every $ref resolves inside the document.
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            refs.extend(v for k, v in node.items() if k == "$ref")
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(spec)
    assert refs and all(r.split("/")[-1] in schemas for r in refs)


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """The first stdout line of ``proc``, waiting at most ``timeout`` seconds."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        buf = b""
        while b"\n" not in buf and time.monotonic() < deadline:
            if sel.select(timeout=max(0.0, deadline - time.monotonic())):
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                buf += chunk
    return buf.decode().splitlines()[0] if b"\n" in buf else ""


@contextmanager
def serving(db_url: str, profile_path: Path, units_csv: Path, log_path: Path) -> Iterator[str]:
    """``python3 -m collector serve`` on a port the OS picks; yields its base URL and stops it
    with SIGTERM, as a service manager would."""
    argv = [
        sys.executable,
        "-m",
        "collector",
        "--db",
        db_url,
        "--profile",
        str(profile_path),
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--wards",
        str(units_csv),
        "--verdict-seconds",
        "0",
    ]
    log = log_path.open("wb")
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=log)
    try:
        line = read_line(proc, 30)
        assert line.startswith("wardready-collector listening on http://127.0.0.1:"), (
            line,
            log_path.read_text(),
        )
        yield line.rsplit(" ", 1)[-1]
        os.kill(proc.pid, signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught, as daemons do.
        assert proc.wait(15) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()


@pytest.fixture
def server(db_url: str, profile_path: Path, units_csv: Path, tmp_path: Path) -> Iterator[str]:
    with serving(db_url, profile_path, units_csv, tmp_path / "serve.log") as url:
        yield url


def test_real_server_process_ingests_and_serves(
    server: str,
    db_url: str,
    profile_path: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["--db", db_url, "token", "create", "--ward", READY, "--agent", "pc-01"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert cli.main(["--db", db_url, "token", "create", "--role", "viewer", "--name", "ops"]) == 0
    viewer = capsys.readouterr().out.strip().splitlines()[-1]
    with httpx.Client(base_url=server, timeout=10) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        r = http.post(
            "/api/v1/ingest",
            content=body(batch(READY, results=healthy_results())),
            headers={**auth(token), "Content-Type": "application/json"},
        )
        assert r.status_code == 200 and r.json()["accepted"] == 5
        assert http.get(f"/api/v1/wards/{READY}").status_code == 401
        assert http.get("/metrics").status_code == 401
        http.headers["Authorization"] = f"Bearer {viewer}"
        assert http.get(f"/api/v1/wards/{READY}").json()["verdict"] == "ready"
        metrics = http.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain")
        assert f'wardready_ward_ready{{ward="{READY}",ward_name="Phường Bến Thành"' in metrics.text
        r = http.post("/api/v1/ingest", content=b"x" * 100, headers=auth("nope"))
        assert r.status_code == 401

    assert cli.main(["status", "--url", server]) == 1
    assert "401" in capsys.readouterr().err
    token_file = tmp_path / "viewer.token"
    token_file.write_text(viewer + "\n")
    assert cli.main(["status", "--url", server, "--token-file", str(token_file)]) == 0
    out = capsys.readouterr().out
    assert "1/4 ready" in out and "Phường Bến Thành" in out
