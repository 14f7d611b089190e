"""``wardready-collector`` commands of the fleet: enroll, agent, fleet, plan, inventory.

Output for people goes to stdout, except that ``enroll create`` puts the code alone on the
last stdout line (its explanation goes to stderr), so a script can take it with ``tail -1``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from typing import Any

from collector import enroll as enrollment
from collector import fleet as fleetstore
from collector.cli import (
    UsageError,
    _audit,
    _engine,
    fit,
    read_api,
    when,
    width,
)
from shared.confload import parse_duration

DAY_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _expires(text: str) -> float:
    try:
        seconds = parse_duration(text, DAY_UNITS)
    except ValueError:
        raise UsageError(f"--expires: {text!r} is not a duration such as 30m, 12h or 7d") from None
    if seconds <= 0:
        raise UsageError("--expires: must be longer than 0 s")
    return seconds


def cmd_enroll_create(args: argparse.Namespace) -> int:
    engine = _engine(args)
    try:
        code = enrollment.create(engine, args.ward, _expires(args.expires), args.uses)
    except enrollment.EnrollError as exc:
        raise UsageError(str(exc)) from None
    # The code's prefix names it for `enroll revoke`; the code itself is never logged.
    _audit(engine, "enroll.create", f"ward={args.ward} prefix={code[:4]} uses={args.uses}")
    uses = "once" if args.uses == 1 else f"{args.uses} times"
    until = when(time.time() + _expires(args.expires))
    print(
        f"Enrollment code for ward {args.ward}, usable {uses} until {until}. On the ward PC: "
        f"wardready-agent enroll --collector URL --code {code}",
        file=sys.stderr,
    )
    print(code)
    return 0


def cmd_enroll_list(args: argparse.Namespace) -> int:
    found = enrollment.list_codes(_engine(args), args.ward)
    now = time.time()
    ward_w = max([4, *(width(c.ward) for c in found)])
    print(f"PREFIX  {fit('WARD', ward_w)}  {fit('STATE', 8)}  USES   {fit('EXPIRES', 25)}")
    for c in found:
        uses = f"{c.uses}/{c.max_uses}"
        print(
            f"{c.prefix:<6}  {fit(c.ward, ward_w)}  {fit(c.state(now), 8)}  {uses:<5}  "
            f"{when(c.expires_at)}"
        )
    return 0


def cmd_enroll_revoke(args: argparse.Namespace) -> int:
    engine = _engine(args)
    try:
        info = enrollment.revoke(engine, args.prefix)
    except enrollment.EnrollError as exc:
        raise UsageError(str(exc)) from None
    _audit(engine, "enroll.revoke", f"ward={info.ward} prefix={info.prefix}")
    print(f"revoked enrollment code {info.prefix}… of ward {info.ward} ({info.uses} used)")
    return 0


def cmd_agent_list(args: argparse.Namespace) -> int:
    found = enrollment.agents(_engine(args), args.ward)
    if args.json:
        print(json.dumps([dataclasses.asdict(a) for a in found], ensure_ascii=False, indent=2))
        return 0
    ward_w = max([4, *(width(a.ward) for a in found)])
    agent_w = max([5, *(width(a.agent) for a in found)])
    print(
        f"{fit('WARD', ward_w)}  {fit('AGENT', agent_w)}  {fit('HOST', 16)}  VERSION  PLAN  "
        f"{fit('ENROLLED', 25)}  STATE"
    )
    for a in found:
        plan = "-" if a.plan_version is None else f"v{a.plan_version}"
        if a.plan_error:
            plan += "!"
        state = f"revoked {when(a.revoked_at)}" if a.revoked_at else "active"
        print(
            f"{fit(a.ward, ward_w)}  {fit(a.agent, agent_w)}  {fit(a.hostname or '-', 16)}  "
            f"{fit(a.version or '-', 7)}  {fit(plan, 4)}  {fit(when(a.enrolled_at), 25)}  {state}"
        )
    return 0


def cmd_agent_revoke(args: argparse.Namespace) -> int:
    engine = _engine(args)
    try:
        n = enrollment.revoke_agent(engine, args.ward, args.agent)
    except enrollment.EnrollError as exc:
        raise UsageError(str(exc)) from None
    _audit(engine, "agent.revoke", f"ward={args.ward} agent={args.agent} tokens={n}")
    print(
        f"revoked agent {args.agent} of ward {args.ward} ({n} token{'' if n == 1 else 's'}); "
        "the ward's other agents are untouched; a running collector refuses it within 10 s"
    )
    return 0


def cmd_fleet_import(args: argparse.Namespace) -> int:
    engine = _engine(args)
    known = fleetstore.known_wards(engine)
    try:
        doc = fleetstore.read_file(args.file, None if args.no_validate else known)
    except fleetstore.FleetError as exc:
        for message in exc.messages:
            print(message, file=sys.stderr)
        print(f"{args.file}: nothing imported", file=sys.stderr)
        return 2
    changed = fleetstore.import_fleet(engine, doc, str(args.file))
    _audit(engine, "fleet.import", f"{args.file}: {len(changed)} ward plans changed")
    plans = fleetstore.plan_versions(engine)
    print(f"{args.file}: imported; {len(plans)} ward plans, {len(changed)} changed")
    listed = sorted(changed.items())
    for ward, version in listed[:20]:
        print(f"  {ward}: plan v{version}")
    if len(listed) > 20:
        print(f"  ... and {len(listed) - 20} more")
    return 0


def cmd_plan_show(args: argparse.Namespace) -> int:
    plan = fleetstore.get_plan(_engine(args), args.ward)
    if plan is None:
        raise UsageError(f"--ward: ward {args.ward!r} has no plan (fleet import a fleet file)")
    if args.json:
        doc = {**plan.body(), "sources": plan.sources, "updated_at": plan.updated_at}
        print(json.dumps(doc, ensure_ascii=False, indent=2))
    else:
        sys.stdout.write(fleetstore.render_plan(plan))
    return 0


def cmd_inventory_accept(args: argparse.Namespace) -> int:
    engine = _engine(args)
    devices = [d.strip() for d in args.devices.split(",") if d.strip()] if args.devices else None
    try:
        checks, plan = fleetstore.accept_inventory(
            engine, args.ward, devices, args.community, args.snmp_port
        )
    except fleetstore.FleetError as exc:
        raise UsageError("; ".join(exc.messages)) from None
    _audit(engine, "inventory.accept", f"ward={args.ward}: {len(checks)} checks")
    print(
        f"ward {args.ward}: {len(checks)} checks accepted into plan "
        f"v{plan.version if plan else '?'}"
    )
    for c in checks:
        print(f"  {c['name']}: {c['type']} {c['target']}")
    return 0


def outdated(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Agents on an old plan (or refusing the current one), from the DB or ``--url``."""
    if getattr(args, "url", None):
        # The ward table already said whether the collector can be read: this is an extra.
        try:
            rows: list[dict[str, Any]] = read_api(args, "/api/v1/fleet")["outdated"]
        except (RuntimeError, KeyError, TypeError):
            return []
        return rows
    return [dataclasses.asdict(o) for o in fleetstore.outdated(_engine(args))]


def render_outdated(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    out = ["", f"Agents not running their ward's current plan: {len(rows)}"]
    for r in rows:
        running = "no plan" if r["running"] is None else f"v{r['running']}"
        line = f"  {r['ward']}/{r['agent']}: runs {running}, current v{r['current']}"
        if r.get("plan_error"):
            line += f"; refused it: {r['plan_error']}"
        out.append(line)
    return "\n".join(out) + "\n"


def add_commands(sub: Any) -> None:
    e = sub.add_parser("enroll", help="enrollment codes for ward PCs").add_subparsers(
        dest="enroll_command", required=True, metavar="ACTION"
    )
    ec = e.add_parser("create", help="a code to enroll agents of a ward; printed once")
    ec.add_argument("--ward", required=True)
    ec.add_argument("--expires", default="7d", help="how long it is valid (default 7d)")
    ec.add_argument("--uses", type=int, default=1, help="agents it may enroll (default 1)")
    ec.set_defaults(func=cmd_enroll_create)
    el = e.add_parser("list", help="codes: prefix, ward, state, uses, expiry")
    el.add_argument("--ward")
    el.set_defaults(func=cmd_enroll_list)
    er = e.add_parser("revoke", help="revoke the code starting with PREFIX")
    er.add_argument("prefix")
    er.set_defaults(func=cmd_enroll_revoke)

    a = sub.add_parser("agent", help="enrolled agents").add_subparsers(
        dest="agent_command", required=True, metavar="ACTION"
    )
    al = a.add_parser("list", help="agents with their identity and plan version")
    al.add_argument("--ward")
    al.add_argument("--json", action="store_true")
    al.set_defaults(func=cmd_agent_list)
    ar = a.add_parser("revoke", help="revoke one agent's tokens (not its ward's other agents)")
    ar.add_argument("--ward", required=True)
    ar.add_argument("--agent", required=True)
    ar.set_defaults(func=cmd_agent_revoke)

    f = sub.add_parser("fleet", help="the fleet file: checks by defaults, group and ward")
    fs = f.add_subparsers(dest="fleet_command", required=True, metavar="ACTION")
    fi = fs.add_parser("import", help="import a fleet file and recompute every ward's plan")
    fi.add_argument("file")
    fi.add_argument(
        "--no-validate",
        action="store_true",
        help="skip checking each ward's plan as an agent would (for agents newer than this)",
    )
    fi.set_defaults(func=cmd_fleet_import)

    p = sub.add_parser("plan", help="ward plans").add_subparsers(
        dest="plan_command", required=True, metavar="ACTION"
    )
    ps = p.add_parser("show", help="a ward's effective plan, each value with its origin")
    ps.add_argument("--ward", required=True)
    ps.add_argument("--json", action="store_true")
    ps.set_defaults(func=cmd_plan_show)

    i = sub.add_parser("inventory", help="discovered devices").add_subparsers(
        dest="inventory_command", required=True, metavar="ACTION"
    )
    ia = i.add_parser("accept", help="put the ward's discovered devices into its plan")
    ia.add_argument("--ward", required=True)
    ia.add_argument("--devices", metavar="ADDR,...", help="only these (default: all found)")
    ia.add_argument("--community", default="public", help="SNMP community for printer_snmp")
    ia.add_argument("--snmp-port", type=int, default=161)
    ia.set_defaults(func=cmd_inventory_accept)
