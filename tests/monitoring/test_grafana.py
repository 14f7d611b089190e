"""grafana/: the dashboards are what grafana/generate.py makes, fit Grafana's dashboard model,
name only the provisioned datasource, and use every template variable they define.

Whether their PromQL runs and returns data is tested against a real Prometheus in
test_live.py.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.helpers import need
from tests.monitoring import DASHBOARDS, DATASOURCE_UID, GRAFANA_DIR, run

SCHEMA = GRAFANA_DIR / "dashboard.schema.json"
# $name, ${name} or ${name:format}, and the legacy [[name]].
VARIABLE_USE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)|\[\[([A-Za-z_][A-Za-z0-9_]*)")
BUILTIN = re.compile(r"^__")


def load(path: Any) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in dashboard["panels"]:
        yield p
        yield from p.get("panels", [])


def walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{path}[{i}]")


def validator() -> Any:
    need(importlib.util.find_spec("jsonschema") is not None, "jsonschema (PyPI) is not installed")
    import jsonschema

    schema = load(SCHEMA)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def need_sdk() -> None:
    need(
        importlib.util.find_spec("grafana_foundation_sdk") is not None,
        "grafana-foundation-sdk (PyPI) is not installed",
    )


def test_the_four_dashboards_exist() -> None:
    assert {p.name for p in DASHBOARDS} == {
        "fleet-readiness.json",
        "ward-detail.json",
        "shared-systems.json",
        "fleet-health.json",
    }
    uids = [load(p)["uid"] for p in DASHBOARDS]
    assert len(set(uids)) == len(uids)


def test_committed_json_is_what_the_generator_makes() -> None:
    need_sdk()
    done = run([sys.executable, str(GRAFANA_DIR / "generate.py"), "--check"])
    assert done.returncode == 0, done.stdout + done.stderr


def test_generator_check_notices_a_stale_file(tmp_path: Any) -> None:
    need_sdk()
    for path in DASHBOARDS:
        (tmp_path / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    stale = tmp_path / "ward-detail.json"
    stale.write_text(stale.read_text(encoding="utf-8").replace("Ward detail", "Ward"))
    done = run(
        [sys.executable, str(GRAFANA_DIR / "generate.py"), "--check", "--out", str(tmp_path)]
    )
    assert done.returncode == 1
    assert "ward-detail.json" in done.stderr and "fleet-health.json" not in done.stderr


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_matches_the_schema(path: Any) -> None:
    errors = sorted(validator().iter_errors(load(path)), key=lambda e: e.path)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:10])


def test_schema_rejects_what_grafana_would_not_load() -> None:
    check = validator()
    good = load(DASHBOARDS[0])
    broken = []
    no_targets = copy.deepcopy(good)
    del next(p for p in no_targets["panels"] if p["type"] != "row")["targets"]
    broken.append(no_targets)
    wide = copy.deepcopy(good)
    next(p for p in wide["panels"] if p["type"] != "row")["gridPos"]["w"] = 30
    broken.append(wide)
    other_ds = copy.deepcopy(good)
    next(p for p in other_ds["panels"] if p["type"] != "row")["datasource"]["type"] = "loki"
    broken.append(other_ds)
    for doc in broken:
        assert list(check.iter_errors(doc)), "schema accepted a broken dashboard"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_round_trips_through_the_sdk_model(path: Any) -> None:
    # The SDK's models are generated from Grafana's dashboard schema: a key they do not know
    # would be dropped on the way back.
    need_sdk()
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard

    data = load(path)
    back = json.loads(JSONEncoder(sort_keys=True).encode(Dashboard.from_json(data)))
    assert back == data


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_panel_ids_unique_and_grid_fits(path: Any) -> None:
    data = load(path)
    ids = [p["id"] for p in panels(data)]
    assert len(ids) == len(set(ids)), ids
    cells: dict[tuple[int, int], str] = {}
    for p in panels(data):
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[x, y]}"
                cells[x, y] = p["title"]
        refs = [t["refId"] for t in p.get("targets", [])]
        assert len(refs) == len(set(refs)), p["title"]


def test_provisioning_names_the_datasource_the_dashboards_use() -> None:
    sources = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "datasources" / "wardready.yml").read_text("utf-8")
    )
    assert sources["apiVersion"] == 1
    (source,) = sources["datasources"]
    assert source["uid"] == DATASOURCE_UID and source["type"] == "prometheus"
    assert source["url"].startswith("http")
    providers = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "dashboards" / "wardready.yml").read_text("utf-8")
    )
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    assert provider["allowUiUpdates"] is False


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_datasource_reference_is_the_provisioned_one(path: Any) -> None:
    data = load(path)
    refs = [(where, node) for where, node in walk(data) if where.endswith(".datasource")]
    assert refs
    for where, ref in refs:
        assert ref == {"type": "prometheus", "uid": DATASOURCE_UID}, where
    # Every panel that queries says where, and so does each of its queries.
    for p in panels(data):
        if p["type"] != "row":
            assert "datasource" in p and all("datasource" in t for t in p["targets"]), p["title"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_template_variable_is_defined_and_used(path: Any) -> None:
    data = load(path)
    variables = {v["name"]: v for v in data["templating"]["list"]}
    used: dict[str, set[str]] = {}
    for where, node in walk(data):
        if where.endswith(".repeat") and isinstance(node, str):
            used.setdefault(node, set()).add(where)
        if not isinstance(node, str):
            continue
        for m in VARIABLE_USE.finditer(node):
            name = m.group(1) or m.group(2)
            if not BUILTIN.match(name):
                used.setdefault(name, set()).add(where)
    assert set(used) <= set(variables), f"used but not defined: {set(used) - set(variables)}"
    for i, (name, variable) in enumerate(variables.items()):
        # Used by a panel, or by another variable (the working group narrows the ward list).
        own = f".templating.list[{i}]"
        elsewhere = {w for w in used.get(name, set()) if not w.startswith(own)}
        assert elsewhere, f"${name} is defined but nothing uses it"
        assert variable["query"].startswith("label_values(")
