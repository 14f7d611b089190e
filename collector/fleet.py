"""The fleet file and each ward's check plan, with inheritance in the style of nornir.

A ward's plan is its agents' ``checks:`` list, built from four layers, later ones winning::

    defaults          the shared systems, the city's reflector, iperf3 server and MCU
    group N           the ward's working group (from the ward list)
    inventory         checks an admin accepted from the ward's discovered devices
    ward              its lines and interfaces, its printers and scanners

A layer's entry with the name of an inherited check changes only the fields it gives
(``labels`` and ``params`` key by key), and ``enabled: false`` drops the check. Every value
of the result remembers the layer it came from, for ``plan show``. Layout of the file::

    version: 1
    defaults:
      checks: [ {name: dms, type: http, target: "https://...", labels: {role: shared_system}} ]
    groups:
      "1": {checks: [...]}
    wards:
      ward-minh-phung: {checks: [...]}

``fleet import`` stores the file in the database and recomputes every ward's plan; a ward's
plan ``version`` goes up by one whenever its content changes, so agents and verdicts can tell
which plan a result was taken under.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.engine import Engine

from collector import db
from shared.confload import LoadError, Loc, field_errors, line_of, located, read_mapping
from shared.devicechecks import device_checks
from shared.wire import Device, Ident, Name

DEFAULTS = "defaults"
INVENTORY = "inventory"
WARD = "ward"
MERGED = ("labels", "params")


class FleetError(LoadError):
    """A fleet file (or plan) that cannot be used; one ``file:line: field: problem`` each."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Entry(_Strict):
    name: Name
    enabled: bool = True
    type: str | None = None
    target: str | None = None
    target_name: str | None = None
    interval: str | float | None = None
    timeout: str | float | None = None
    labels: dict[str, str] | None = None
    params: dict[str, Any] | None = None


class Layer(_Strict):
    checks: list[Entry] = Field(default_factory=list)


class FleetFile(_Strict):
    version: int = Field(1, ge=1, le=1)
    defaults: Layer = Layer()
    groups: dict[str, Layer] = Field(default_factory=dict)
    wards: dict[Ident, Layer] = Field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    ward: str
    version: int
    checks: list[dict[str, Any]]
    sources: dict[str, dict[str, str]]  # check name -> field path -> layer
    updated_at: float

    @property
    def etag(self) -> str:
        return f'"v{self.version}"'

    def body(self) -> dict[str, Any]:
        return {"ward": self.ward, "version": self.version, "checks": self.checks}


def _entry_layer(
    entries: Sequence[Entry],
    layer: str,
    acc: dict[str, dict[str, Any]],
    sources: dict[str, dict[str, str]],
) -> None:
    for e in entries:
        given = e.model_dump(exclude_unset=True)
        name = given.pop("name")
        check = acc.setdefault(name, {"name": name})
        where = sources.setdefault(name, {"name": layer})
        for key, value in given.items():
            if key in MERGED:
                merged = check.setdefault(key, {})
                for k, v in value.items():
                    merged[k] = copy.deepcopy(v)
                    where[f"{key}.{k}"] = layer
            else:
                check[key] = value
                where[key] = layer


def effective(
    doc: FleetFile, ward: str, group: str, accepted: Sequence[dict[str, Any]] = ()
) -> tuple[list[dict[str, Any]], dict[str, dict[str, str]]]:
    """The ward's checks (agent config entries) and where each value came from."""
    acc: dict[str, dict[str, Any]] = {}
    sources: dict[str, dict[str, str]] = {}
    _entry_layer(doc.defaults.checks, DEFAULTS, acc, sources)
    if group in doc.groups:
        _entry_layer(doc.groups[group].checks, f"group {group}", acc, sources)
    _entry_layer([Entry.model_validate(c) for c in accepted], INVENTORY, acc, sources)
    if ward in doc.wards:
        _entry_layer(doc.wards[ward].checks, WARD, acc, sources)
    checks = []
    for name, check in acc.items():
        if check.pop("enabled", True) is False:
            sources.pop(name, None)
            continue
        for key in MERGED:
            if key in check and not check[key]:
                del check[key]
        checks.append(check)
    return checks, {c["name"]: sources[c["name"]] for c in checks}


def _messages(exc: ValidationError, shown: str, lines: dict[Loc, int]) -> list[str]:
    out = []
    for loc, bad_key, err in field_errors(exc):
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        out.append(located(shown, lines, loc, f"invalid key: {msg}" if bad_key else msg))
    return out


def read_file(path: str | Path, known_wards: dict[str, str] | None = None) -> FleetFile:
    """Parse and check a fleet file; raise FleetError naming file:line:field of each problem.

    ``known_wards`` (ward id -> working group) makes every ward's effective plan be checked
    too, exactly as an agent would check it.
    """
    shown = str(path)
    raw, lines = read_mapping(path, FleetError, "version:, defaults:, groups:, wards:")
    try:
        doc = FleetFile.model_validate(raw)
    except ValidationError as exc:
        raise FleetError(_messages(exc, shown, lines)) from None
    errors = _duplicates(doc, shown, lines)
    if known_wards is not None:
        for ward in doc.wards:
            if ward not in known_wards:
                errors.append(
                    located(
                        shown,
                        lines,
                        ("wards", ward),
                        f"{ward!r} is not a known ward (import the ward list)",
                    )
                )
        if not errors:
            errors += _plan_errors(doc, known_wards, shown, lines)
    if errors:
        raise FleetError(errors)
    return doc


def _layers(doc: FleetFile) -> list[tuple[Loc, Layer]]:
    out: list[tuple[Loc, Layer]] = [(("defaults",), doc.defaults)]
    out += [(("groups", g), layer) for g, layer in doc.groups.items()]
    out += [(("wards", w), layer) for w, layer in doc.wards.items()]
    return out


def _duplicates(doc: FleetFile, shown: str, lines: dict[Loc, int]) -> list[str]:
    errors = []
    for loc, layer in _layers(doc):
        first: dict[str, int] = {}
        for i, e in enumerate(layer.checks):
            at = (*loc, "checks", i, "name")
            if e.name in first:
                errors.append(
                    located(
                        shown,
                        lines,
                        at,
                        f"duplicate check name {e.name!r} (first at line {first[e.name]})",
                    )
                )
            else:
                first[e.name] = line_of(lines, at)
    return errors


def _origin(doc: FleetFile, layer: str, ward: str, name: str) -> Loc:
    """Where in the file the entry that set ``name``'s value sits, for the error's line."""
    if layer == DEFAULTS:
        loc: Loc = ("defaults",)
        checks = doc.defaults.checks
    elif layer.startswith("group "):
        loc = ("groups", layer[6:])
        checks = doc.groups[layer[6:]].checks
    else:
        loc = ("wards", ward)
        checks = doc.wards[ward].checks if ward in doc.wards else []
    for i, e in enumerate(checks):
        if e.name == name:
            return (*loc, "checks", i)
    return (*loc, "checks")


def _plan_errors(
    doc: FleetFile, wards: dict[str, str], shown: str, lines: dict[Loc, int]
) -> list[str]:
    """Each ward's effective plan through the agent's own validation; messages point at the
    layer entry that gave the faulty value."""
    from agent.config import ConfigError, load_plan

    errors: list[str] = []
    seen: set[str] = set()
    for ward, group in wards.items():
        if ward not in doc.wards and group not in doc.groups and not doc.defaults.checks:
            continue
        checks, sources = effective(doc, ward, group)
        try:
            load_plan(checks, "plan", ward)
        except ConfigError as exc:
            for message in exc.messages:
                layer, name, path, problem = _plan_problem(message, checks, sources)
                loc = _origin(doc, layer, ward, name)
                if loc[-1] != "checks" and path:
                    loc = (*loc, *path.split("."))
                text = located(shown, lines, loc, f"ward {ward}: check {name}: {problem}")
                if text not in seen:
                    seen.add(text)
                    errors.append(text)
    return errors


def _plan_problem(
    message: str, checks: list[dict[str, Any]], sources: dict[str, dict[str, str]]
) -> tuple[str, str, str, str]:
    """(layer, check name, field path, problem) from a ``plan:LINE: checks[i].field: ...``."""
    parts = message.split(": ", 2)
    if len(parts) == 3 and parts[1].startswith("checks[") and "]" in parts[1]:
        path, text = parts[1], parts[2]
        i = int(path[7 : path.index("]")])
        if 0 <= i < len(checks):
            name = checks[i]["name"]
            field = path[path.index("]") + 2 :]
            where = sources[name]
            layer = where.get(field) or where.get(field.split(".")[0]) or where["name"]
            return layer, name, field, text
    return DEFAULTS, "", "", message.split(": ", 1)[-1]


# -- the database side --------------------------------------------------------------------


def _digest(checks: list[dict[str, Any]]) -> str:
    text = json.dumps(checks, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def stored_fleet(conn: sa.Connection) -> FleetFile | None:
    row = conn.execute(sa.select(db.fleet.c.body).where(db.fleet.c.id == 1)).first()
    return None if row is None else FleetFile.model_validate_json(row.body)


def _groups(conn: sa.Connection) -> dict[str, str]:
    w = db.wards
    return {r.id: r.working_group for r in conn.execute(sa.select(w.c.id, w.c.working_group))}


def known_wards(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        return _groups(conn)


def _accepted(conn: sa.Connection, ward: str) -> list[dict[str, Any]]:
    a = db.accepted_checks
    row = conn.execute(sa.select(a.c.checks).where(a.c.ward_id == ward)).first()
    return [] if row is None else list(json.loads(row.checks))


def _recompute(conn: sa.Connection, now: float, only: str | None = None) -> dict[str, int]:
    """Store every ward's effective plan; returns ward -> version for the plans that changed."""
    doc = stored_fleet(conn) or FleetFile()
    p = db.plans
    held = {r.ward_id: r for r in conn.execute(sa.select(p.c.ward_id, p.c.version, p.c.digest))}
    changed: dict[str, int] = {}
    for ward, group in _groups(conn).items():
        if only is not None and ward != only:
            continue
        checks, sources = effective(doc, ward, group, _accepted(conn, ward))
        digest = _digest(checks)
        old = held.get(ward)
        if old is not None and old.digest == digest:
            continue
        if old is None and not checks:
            continue  # a ward the fleet says nothing about has no plan: local configs alone
        values = {
            "version": (old.version + 1) if old is not None else 1,
            "digest": digest,
            "checks": json.dumps(checks, ensure_ascii=False),
            "sources": json.dumps(sources, ensure_ascii=False),
            "updated_at": now,
        }
        if old is None:
            conn.execute(sa.insert(p).values(ward_id=ward, **values))
        else:
            conn.execute(sa.update(p).where(p.c.ward_id == ward).values(**values))
        changed[ward] = int(values["version"])
    return changed


def import_fleet(
    engine: Engine, doc: FleetFile, source: str, now: float | None = None
) -> dict[str, int]:
    """Store ``doc`` as the fleet and recompute the plans; ward -> new version of changed ones."""
    now = time.time() if now is None else now
    f = db.fleet
    body = doc.model_dump_json(exclude_unset=True)
    with db.writer(engine).begin() as conn:
        conn.execute(sa.delete(f))
        conn.execute(sa.insert(f).values(id=1, source=source, body=body, imported_at=now))
        return _recompute(conn, now)


def get_plan(engine: Engine | sa.Connection, ward: str) -> Plan | None:
    p = db.plans
    query = sa.select(p).where(p.c.ward_id == ward)
    if isinstance(engine, sa.Connection):
        row = engine.execute(query).first()
    else:
        with engine.connect() as conn:
            row = conn.execute(query).first()
    if row is None:
        return None
    return Plan(
        row.ward_id, row.version, json.loads(row.checks), json.loads(row.sources), row.updated_at
    )


def plan_versions(engine: Engine) -> dict[str, tuple[int, float]]:
    """Ward -> (current plan version, when it was made)."""
    p = db.plans
    with engine.connect() as conn:
        rows = conn.execute(sa.select(p.c.ward_id, p.c.version, p.c.updated_at)).all()
    return {r.ward_id: (r.version, r.updated_at) for r in rows}


def plans_mark(engine: Engine) -> tuple[Any, ...]:
    """Changes whenever any plan does: versions only go up, so their sum and count tell."""
    p = db.plans
    with engine.connect() as conn:
        row = conn.execute(sa.select(sa.func.count(), sa.func.sum(p.c.version))).one()
    return tuple(row)


def all_plans(engine: Engine) -> dict[str, Plan]:
    p = db.plans
    with engine.connect() as conn:
        rows = conn.execute(sa.select(p)).all()
    return {
        r.ward_id: Plan(
            r.ward_id, r.version, json.loads(r.checks), json.loads(r.sources), r.updated_at
        )
        for r in rows
    }


def accept_inventory(
    engine: Engine,
    ward: str,
    devices: Sequence[str] | None = None,
    community: str = "public",
    snmp_port: int = 161,
    now: float | None = None,
) -> tuple[list[dict[str, Any]], Plan | None]:
    """Turn the ward's newest reported devices (all, or those at ``devices`` addresses) into
    its accepted checks; returns the checks and the ward's plan after."""
    from collector import inventory as inventory_store

    now = time.time() if now is None else now
    found: dict[str, Device] = {}
    for inv in inventory_store.latest(engine, ward):
        for d in inv["devices"]:
            device = Device.model_validate(d)
            found.setdefault(device.address, device)
    if not found:
        raise FleetError(
            [
                f"ward {ward}: no inventory reported (run wardready-agent discover "
                "--report on a ward PC first)"
            ]
        )
    if devices:
        missing = [a for a in devices if a not in found]
        if missing:
            known = ", ".join(sorted(found))
            raise FleetError(
                [f"--devices: {', '.join(missing)} not in ward {ward}'s inventory (found: {known})"]
            )
        chosen = [found[a] for a in devices]
    else:
        chosen = list(found.values())
    checks: list[dict[str, Any]] = []
    for d in chosen:
        checks += device_checks(d.address, d.kind, d.endpoints, d.printer_mib, community, snmp_port)
    if not checks:
        raise FleetError(
            [
                f"ward {ward}: no printer, scanner or VC endpoint among the devices "
                "chosen; nothing to accept"
            ]
        )
    a = db.accepted_checks
    with db.writer(engine).begin() as conn:
        merged = {c["name"]: c for c in _accepted(conn, ward)}
        merged.update({c["name"]: c for c in checks})
        body = json.dumps(list(merged.values()), ensure_ascii=False)
        stmt = db.insert_for(conn, a).values(ward_id=ward, checks=body, accepted_at=now)
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[a.c.ward_id], set_={"checks": body, "accepted_at": now}
            )
        )
        _recompute(conn, now, only=ward)
        return checks, get_plan(conn, ward)


def report(
    conn: sa.Connection,
    ward: str,
    agent: str,
    version: int | None,
    error: str | None,
    now: float,
) -> None:
    """Remember the plan version (and plan error) an agent said it runs."""
    fa = db.fleet_agents
    values = {"plan_version": version, "plan_error": error, "plan_reported_at": now}
    stmt = db.insert_for(conn, fa).values(ward_id=ward, agent=agent, **values)
    conn.execute(stmt.on_conflict_do_update(index_elements=[fa.c.ward_id, fa.c.agent], set_=values))


@dataclass(frozen=True)
class Outdated:
    ward: str
    agent: str
    running: int | None
    current: int
    plan_error: str | None


def outdated(engine: Engine) -> list[Outdated]:
    """Agents that report a plan older than their ward's current one, or a plan error."""
    fa = db.fleet_agents
    current = plan_versions(engine)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(fa.c.ward_id, fa.c.agent, fa.c.plan_version, fa.c.plan_error)
            .where(fa.c.plan_reported_at.is_not(None), fa.c.revoked_at.is_(None))
            .order_by(fa.c.ward_id, fa.c.agent)
        ).all()
    out = []
    for r in rows:
        now_v = current.get(r.ward_id)
        if now_v is None:
            continue
        if r.plan_version != now_v[0] or r.plan_error:
            out.append(Outdated(r.ward_id, r.agent, r.plan_version, now_v[0], r.plan_error))
    return out


def render_plan(plan: Plan) -> str:
    """The plan as YAML, each value followed by the layer it came from."""
    lines = [
        f"# plan v{plan.version} of ward {plan.ward}, made "
        f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(plan.updated_at))}",
        "checks:",
    ]
    for check in plan.checks:
        where = plan.sources.get(check["name"], {})
        first = True
        for key, value in check.items():
            lead = "  - " if first else "    "
            first = False
            if key in MERGED and isinstance(value, dict):
                lines.append(f"{lead}{key}:")
                for k, v in value.items():
                    shown = json.dumps(v, ensure_ascii=False)
                    lines.append(f"        {k}: {shown}  # {where.get(f'{key}.{k}', '?')}")
            else:
                shown = json.dumps(value, ensure_ascii=False)
                lines.append(f"{lead}{key}: {shown}  # {where.get(key, '?')}")
    return "\n".join(lines) + "\n"
