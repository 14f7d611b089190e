"""``wardready-collector``: serve, manage wards and tokens, and show the readiness table.

Global options come before the subcommand: ``--db URL`` (or ``WARDREADY_DB``) and
``--profile FILE`` (or ``WARDREADY_PROFILE``). Exit status: 0 done, 1 failed (e.g. the
server could not be reached), 2 bad input (the message names the file, line and field).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import textwrap
import threading
import time
import unicodedata
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from collector import db
from collector import tokens as tokenstore
from collector import wards as wardlist
from collector.profile import ProfileError

log = logging.getLogger("collector")

DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_PRUNE_EVERY = 3600.0
HTTP_TIMEOUT = 10.0
NAME_COLUMN = 32
VERDICT_ORDER = {"not_ready": 0, "unknown": 1, "ready": 2}


class UsageError(Exception):
    """Bad input from the user: exit status 2."""


# Alignment goes by terminal cells, not len(): combining accents take none, CJK takes two.


def _char_width(ch: str) -> int:
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def width(text: str) -> int:
    return sum(_char_width(ch) for ch in unicodedata.normalize("NFC", text))


def fit(text: str, cells: int) -> str:
    """``text`` NFC-normalized, cut to ``cells`` terminal cells (with '…'), padded to them."""
    text = unicodedata.normalize("NFC", text)
    if width(text) > cells:
        out, used = [], 0
        for ch in text:
            w = _char_width(ch)
            if used + w > cells - 1:
                break
            out.append(ch)
            used += w
        text = "".join(out) + "…"
    return text + " " * (cells - width(text))


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S %z")


def _engine(args: argparse.Namespace, create: bool = False) -> sa.Engine:
    url = db.database_url(args.db)
    parsed = make_url(url)
    if not create and parsed.get_backend_name() == "sqlite":
        path = parsed.database
        if path and path != ":memory:" and not Path(path).exists():
            raise UsageError(f"--db: no database at {path} (import the ward list first)")
    engine = db.make_engine(url)
    db.upgrade(engine)
    return engine


def cmd_wards_import(args: argparse.Namespace) -> int:
    try:
        found = wardlist.read_csv(args.file)
    except wardlist.WardImportError as exc:
        for message in exc.messages:
            print(message, file=sys.stderr)
        print(f"{args.file}: nothing imported", file=sys.stderr)
        return 2
    engine = _engine(args, create=True)
    added, updated = wardlist.upsert(engine, found)
    print(f"{args.file}: {len(found)} wards ({added} added, {updated} updated)")
    return 0


def cmd_wards_list(args: argparse.Namespace) -> int:
    found = wardlist.load(_engine(args))
    if args.json:
        rows = [vars(w) for w in found.values()]
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    id_w = max((width(w) for w in found), default=2)
    name_w = min(max((width(w.name) for w in found.values()), default=4), NAME_COLUMN)
    print(f"{fit('ID', id_w)}  {fit('NAME', name_w)}  {fit('KIND', 8)}  GROUP  FORMER DISTRICT")
    for w in found.values():
        print(
            f"{fit(w.id, id_w)}  {fit(w.name, name_w)}  {fit(w.kind, 8)}  "
            f"{fit(w.working_group, 5)}  {w.former_district}"
        )
    print(f"{len(found)} wards")
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    engine = _engine(args)
    try:
        token = tokenstore.create(engine, args.ward, args.agent)
    except tokenstore.TokenError as exc:
        raise UsageError(str(exc)) from None
    scope = f"ward {args.ward}" + (f", agent {args.agent}" if args.agent else ", any agent")
    print(
        f"Token for {scope}, prefix {token[: tokenstore.PREFIX_LENGTH]}. It is shown only now: "
        "put it in the agent's token file.",
        file=sys.stderr,
    )
    print(token)
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    found = tokenstore.list_all(_engine(args))
    ward_w = max((width(t.ward) for t in found), default=4)
    agent_w = max((width(t.agent or "*") for t in found), default=5)
    print(
        f"PREFIX    {fit('WARD', ward_w)}  {fit('AGENT', agent_w)}  {fit('CREATED', 25)}  REVOKED"
    )
    for t in found:
        print(
            f"{t.prefix:<8}  {fit(t.ward, ward_w)}  {fit(t.agent or '*', agent_w)}  "
            f"{fit(when(t.created_at), 25)}  {when(t.revoked_at) if t.revoked_at else '-'}"
        )
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    try:
        info = tokenstore.revoke(_engine(args), args.prefix)
    except tokenstore.TokenError as exc:
        raise UsageError(str(exc)) from None
    print(
        f"revoked {info.prefix} (ward {info.ward}); a running collector refuses it within "
        f"{tokenstore.CACHE_SECONDS:g} s"
    )
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from collector.service import prune

    if args.days <= 0:
        raise UsageError("--days: must be greater than 0")
    removed = prune(_engine(args), args.days, time.time())
    print(f"removed {removed} results older than {args.days:g} days")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    engine = _engine(args, create=True)
    print(f"schema at revision {db.current_revision(engine)}")
    return 0


def _summaries_from_db(args: argparse.Namespace) -> tuple[list[dict[str, Any]], float]:
    from collector.service import Service

    _engine(args).dispose()  # the same "no database here" check as the other commands
    service = Service.open(args.db, args.profile)
    try:
        now = time.time()
        verdicts = service.verdicts(now)
        rows = []
        for w in service.wards().values():
            v = verdicts.get(w.id)
            rows.append(
                {
                    "id": w.id,
                    "name": w.name,
                    "kind": w.kind,
                    "working_group": w.working_group,
                    "verdict": v.verdict if v else "unknown",
                    "reasons": list(v.reasons) if v else [],
                }
            )
        return rows, now
    finally:
        service.close()


def _summaries_from_url(url: str) -> tuple[list[dict[str, Any]], float]:
    try:
        r = httpx.get(f"{url.rstrip('/')}/api/v1/wards", timeout=HTTP_TIMEOUT)
        r.raise_for_status()
        rows = r.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise RuntimeError(f"--url: cannot read {url}/api/v1/wards: {exc}") from None
    if not isinstance(rows, list):
        raise RuntimeError(f"--url: {url}/api/v1/wards did not return a list")
    return rows, time.time()


def _group_key(group: str) -> tuple[int, int, str]:
    return (0, int(group), "") if group.isdigit() else (1, 0, group)


def render_status(rows: Sequence[dict[str, Any]], now: float, columns: int = 100) -> str:
    """The readiness table: N/M ready overall and per working group, each ward's reasons."""
    total = len(rows)
    ready = sum(1 for r in rows if r["verdict"] == "ready")
    counts = {v: sum(1 for r in rows if r["verdict"] == v) for v in VERDICT_ORDER}
    out = [
        f"{ready}/{total} ready  (not ready {counts['not_ready']}, unknown {counts['unknown']})"
        f"  at {when(now)}"
    ]
    if not rows:
        return out[0] + "\n"
    id_w = max(width(r["id"]) for r in rows)
    name_w = min(max(width(r["name"]) for r in rows), NAME_COLUMN)
    verdict_w = max(len(v) for v in VERDICT_ORDER)
    indent = 2 + id_w + 2 + name_w + 2 + verdict_w + 2
    reason_w = max(columns - indent, 30)
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(str(r["working_group"]), []).append(r)
    for group in sorted(groups, key=_group_key):
        members = sorted(
            groups[group],
            key=lambda r: (
                VERDICT_ORDER.get(r["verdict"], 1),
                unicodedata.normalize("NFC", r["name"]),
            ),
        )
        n_ready = sum(1 for r in members if r["verdict"] == "ready")
        out.append("")
        out.append(f"Working group {group}: {n_ready}/{len(members)} ready")
        for r in members:
            head = (
                f"  {fit(r['id'], id_w)}  {fit(r['name'], name_w)}  {fit(r['verdict'], verdict_w)}"
            )
            lines: list[str] = []
            for reason in r.get("reasons") or []:
                wrapped = textwrap.wrap(
                    unicodedata.normalize("NFC", reason), reason_w, subsequent_indent="  "
                )
                lines.extend(wrapped or [""])
            if not lines:
                out.append(head.rstrip())
                continue
            out.append(f"{head}  {lines[0]}")
            out.extend(" " * indent + line for line in lines[1:])
    return "\n".join(out) + "\n"


def cmd_status(args: argparse.Namespace) -> int:
    rows, now = _summaries_from_url(args.url) if args.url else _summaries_from_db(args)
    if args.working_group is not None:
        rows = [r for r in rows if str(r["working_group"]) == args.working_group]
    from collector import fleet_cli

    outdated = fleet_cli.outdated(args)
    if args.json:
        doc = {
            "ready": sum(1 for r in rows if r["verdict"] == "ready"),
            "total": len(rows),
            "evaluated_at": now,
            "wards": rows,
            "outdated_plans": outdated,
        }
        print(json.dumps(doc, ensure_ascii=False, indent=2))
        return 0
    columns = args.width or int(os.environ.get("COLUMNS", "0")) or 100
    sys.stdout.write(render_status(rows, now, columns) + fleet_cli.render_outdated(outdated))
    return 0


def parse_listen(text: str) -> tuple[str, int]:
    """'127.0.0.1:8080', '[::1]:8080' or ':8080' (loopback) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"--listen: {text!r} is not HOST:PORT (e.g. 127.0.0.1:8080)")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"--listen: cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _pruner(service: Any, days: float, every: float, stop: threading.Event) -> None:
    while not stop.wait(every):
        try:
            removed = service.prune(days)
        except Exception:  # a failed prune must not stop the next one, nor the server
            log.exception("pruning results older than %g days failed", days)
            continue
        if removed:
            log.info("pruned %d results older than %g days", removed, days)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from collector.api import create_app
    from collector.service import Service

    host, port = parse_listen(args.listen)
    logging.getLogger().setLevel(args.log_level.upper())
    if args.wards:
        # stdout carries only the "listening on" line, for whoever started the server.
        try:
            found = wardlist.read_csv(args.wards)
        except wardlist.WardImportError as exc:
            for message in exc.messages:
                print(message, file=sys.stderr)
            print(f"{args.wards}: nothing imported; not starting", file=sys.stderr)
            return 2
        added, updated = wardlist.upsert(_engine(args, create=True), found)
        print(
            f"{args.wards}: {len(found)} wards ({added} added, {updated} updated)", file=sys.stderr
        )
    service = Service.open(args.db, args.profile, verdict_seconds=args.verdict_seconds)
    sock = _bind(host, port)
    config = uvicorn.Config(
        create_app(service),
        log_level=args.log_level,
        access_log=args.access_log,
        lifespan="off",
        server_header=False,
    )
    server = uvicorn.Server(config)
    stop = threading.Event()
    threading.Thread(target=service.judge_forever, args=(stop,), name="judge", daemon=True).start()
    if args.retention_days > 0:
        threading.Thread(
            target=_pruner,
            args=(service, args.retention_days, DEFAULT_PRUNE_EVERY, stop),
            name="prune",
            daemon=True,
        ).start()
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    print(f"wardready-collector listening on http://{shown}:{bound_port}", flush=True)
    try:
        # On SIGTERM/SIGINT uvicorn finishes requests in flight (every acknowledged batch is
        # already committed), then re-raises the signal, so the exit status says why.
        server.run(sockets=[sock])
    finally:
        stop.set()
        sock.close()
        service.close()
    return 0


def cmd_reflector(args: argparse.Namespace) -> int:
    import signal

    from collector.reflector import Limits, Reflector

    host, port = parse_listen(args.listen)
    for name in ("max_pps", "global_pps", "log_every"):
        if getattr(args, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')}: must be greater than 0")
    logging.getLogger("collector.reflector").setLevel(logging.INFO)
    limits = Limits(per_source_pps=args.max_pps, global_pps=args.global_pps)
    try:
        reflector = Reflector.bind(host, port, limits)
    except OSError as exc:
        raise UsageError(f"--listen: cannot listen on {host}:{port}: {exc.strerror}") from None
    reflector.log_every = args.log_every
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    bound_host, bound_port = reflector.address
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    print(f"wardready-collector reflector listening on udp://{shown}:{bound_port}", flush=True)
    try:
        reflector.serve(stop)
    except KeyboardInterrupt:
        pass
    finally:
        reflector.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wardready-collector", description="Ward readiness collector.")
    p.add_argument("--db", help="database URL (default: $WARDREADY_DB or sqlite:///wardready.db)")
    p.add_argument(
        "--profile", help="readiness profile YAML (default: $WARDREADY_PROFILE or the shipped one)"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="run the API, ingest and /metrics")
    s.add_argument(
        "--listen", default=DEFAULT_LISTEN, help="HOST:PORT (default %(default)s; port 0 picks one)"
    )
    s.add_argument("--wards", type=Path, help="import this ward CSV before starting")
    s.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    s.add_argument("--access-log", action="store_true", help="log every request (never headers)")
    s.add_argument("--verdict-seconds", type=float, default=2.0, help="cache verdicts this long")
    s.add_argument(
        "--retention-days",
        type=float,
        default=30.0,
        help="prune results older than this every hour; 0 never prunes",
    )
    s.set_defaults(func=cmd_serve)

    w = sub.add_parser("wards", help="the ward list").add_subparsers(
        dest="wards_command", required=True, metavar="ACTION"
    )
    wi = w.add_parser("import", help="import (upsert) wards from a CSV; all or nothing")
    wi.add_argument("file", type=Path)
    wi.set_defaults(func=cmd_wards_import)
    wl = w.add_parser("list", help="list the wards")
    wl.add_argument("--json", action="store_true")
    wl.set_defaults(func=cmd_wards_list)

    t = sub.add_parser("token", help="agent tokens").add_subparsers(
        dest="token_command", required=True, metavar="ACTION"
    )
    tc = t.add_parser("create", help="create a token; printed once, stored hashed")
    tc.add_argument("--ward", required=True)
    tc.add_argument("--agent", help="limit the token to this agent name")
    tc.set_defaults(func=cmd_token_create)
    tl = t.add_parser("list", help="list tokens (prefix, ward, agent, created, revoked)")
    tl.set_defaults(func=cmd_token_list)
    tr = t.add_parser("revoke", help="revoke the token with this prefix")
    tr.add_argument("prefix")
    tr.set_defaults(func=cmd_token_revoke)

    st = sub.add_parser("status", help="readiness table: N/M ready, per working group, reasons")
    st.add_argument("--working-group", help="only this working group")
    st.add_argument("--json", action="store_true", help="JSON instead of the table")
    st.add_argument("--url", help="ask a running collector (e.g. http://127.0.0.1:8080)")
    st.add_argument("--width", type=int, help="wrap reasons to this many columns")
    st.set_defaults(func=cmd_status)

    pr = sub.add_parser("prune", help="delete stored results older than --days")
    pr.add_argument("--days", type=float, default=30.0)
    pr.set_defaults(func=cmd_prune)

    mg = sub.add_parser("migrate", help="bring the database schema up to date")
    mg.set_defaults(func=cmd_migrate)

    rf = sub.add_parser("reflector", help="answer the agents' stream checks (TWAMP-light, UDP)")
    rf.add_argument("--listen", default="127.0.0.1:862", help="HOST:PORT (default %(default)s)")
    rf.add_argument("--max-pps", type=float, default=1000.0, help="packets/s per source")
    rf.add_argument("--global-pps", type=float, default=20000.0, help="packets/s in all")
    rf.add_argument("--log-every", type=float, default=60.0, help="seconds between summaries")
    rf.set_defaults(func=cmd_reflector)

    from collector import fleet_cli

    fleet_cli.add_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        code: int = args.func(args)
        return code
    except ProfileError as exc:
        for message in exc.messages:
            print(message, file=sys.stderr)
        return 2
    except UsageError as exc:
        print(f"wardready-collector: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"wardready-collector: {exc}", file=sys.stderr)
        return 1
    except sa.exc.SQLAlchemyError as exc:
        print(f"wardready-collector: database error: {exc}", file=sys.stderr)
        return 1
