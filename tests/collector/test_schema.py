"""The schema tells the truth: what /openapi.json allows is what ingest accepts, no more.

Strict types (no "7" for an integer, no "yes" for a boolean), 64-bit integers, closed maps,
and no control characters in text that reaches /metrics; Vietnamese text passes untouched.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from shared.wire import MAX_INT64, Batch

from .conftest import auth, batch, body, result


def _post(client: TestClient, token: str, doc: dict[str, Any]) -> Any:
    return client.post("/api/v1/ingest", content=body(doc), headers=auth(token))


def _fields(r: Any) -> set[str]:
    return {e["field"] for e in r.json()["errors"]}


def test_schema_closes_maps_and_bounds_integers(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    record = schemas["ResultRecord"]["properties"]
    for name in ("labels", "metrics", "info"):
        assert record[name]["additionalProperties"] is False, name
        assert list(record[name]["patternProperties"]) == ["^[a-z][a-z0-9_]{0,63}$"]
    assert record["seq"]["maximum"] == MAX_INT64 == 2**63 - 1
    status = schemas["AgentStatus"]["properties"]
    for name in ("spool_depth", "spool_dropped_total", "resident_memory_bytes", "checks"):
        assert status[name]["maximum"] == MAX_INT64, name
    label = record["labels"]["patternProperties"]["^[a-z][a-z0-9_]{0,63}$"]
    assert label["maxLength"] == 128 and "\u2028" in label["pattern"]
    assert schemas["ResultRecord"]["additionalProperties"] is False


@pytest.mark.sqlite_only("the wire schema refuses these before anything reaches the database")
@pytest.mark.parametrize(
    ("where", "value", "field"),
    [
        ("seq", "7", "results.0.seq"),
        ("seq", 7.0, "results.0.seq"),
        ("seq", 2**63, "results.0.seq"),
        ("success", "yes", "results.0.success"),
        ("success", 1, "results.0.success"),
        ("duration_seconds", "0.5", "results.0.duration_seconds"),
        ("started", True, "results.0.started"),
    ],
)
def test_nothing_is_coerced(
    client: TestClient, token: str, where: str, value: Any, field: str
) -> None:
    record = result(1)
    record[where] = value
    r = _post(client, token, batch(results=[record]))
    assert r.status_code == 422, r.text
    assert _fields(r) == {field}


def test_status_integers_are_strict_and_bounded(client: TestClient, token: str) -> None:
    doc = batch()
    doc["status"]["spool_depth"] = "7"
    doc["status"]["checks"] = 2**63
    r = _post(client, token, doc)
    assert r.status_code == 422 and _fields(r) == {"status.spool_depth", "status.checks"}


def test_unknown_map_keys_are_refused(client: TestClient, token: str) -> None:
    r = _post(client, token, batch(results=[result(1, labels={"Role": "wan"})]))
    assert r.status_code == 422 and _fields(r) == {"results.0.labels.Role"}


CONTROLS = ["\x00", "\r", "\n", "\t", "\x1b", "\x7f", "\x85", "\x9f", "\u2028", "\u2029"]


@pytest.mark.sqlite_only("the wire schema refuses these before anything reaches the database")
@pytest.mark.parametrize("char", CONTROLS, ids=[f"U+{ord(c):04X}" for c in CONTROLS])
def test_control_characters_are_refused_where_they_could_reach_metrics(
    client: TestClient, token: str, char: str
) -> None:
    bad = f"cáp{char}quang"
    r = _post(client, token, batch(results=[result(1, labels={"role": "wan", "line": bad})]))
    assert r.status_code == 422
    assert r.json()["errors"] == [
        {
            "field": "results.0.labels.line",
            "message": f"must not contain control characters (U+{ord(char):04X} at position 3)",
        }
    ]
    r = _post(client, token, batch(results=[result(1, address=bad, info={"model": bad})]))
    assert _fields(r) == {"results.0.address", "results.0.info.model"}
    doc = batch()
    doc["status"]["version"] = f"1.0{char}"
    assert _fields(_post(client, token, doc)) == {"status.version"}


def test_vietnamese_text_passes_and_parses_back(client: TestClient, token: str) -> None:
    labels = {"role": "wan", "line": "Cáp quang Viettel — Phường Bến Thành"}
    # Decomposed (NFD) letters are combining marks, not controls: accepted as sent.
    nfd = "Phu\u031bo\u031b\u0300ng"
    r = _post(client, token, batch(results=[result(1, labels={**labels, "site": nfd})]))
    assert r.status_code == 200, r.text
    text = client.get("/metrics").text
    # prometheus_client's own parser reads every line (it fails on a raw CR or U+2028).
    families = {f.name: f for f in text_string_to_metric_families(text)}
    lines = {s.labels.get("line") for s in families["wardready_icmp_loss_ratio"].samples}
    assert labels["line"] in lines


def test_agent_built_batches_validate_strictly(token: str) -> None:
    # The agent builds its body from these models: what it sends must pass the strict parse.
    doc = batch(results=[result(i) for i in range(1, 4)])
    built = Batch.model_validate(doc)
    again = Batch.model_validate_json(built.model_dump_json())
    assert again == built
    assert json.loads(built.model_dump_json())["results"][0]["seq"] == 1
