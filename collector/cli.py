"""``wardready-collector``: serve, manage wards and tokens, and show the readiness table.

Global options come before the subcommand: ``--db URL`` (or ``WARDREADY_DB``) and
``--profile FILE`` (or ``WARDREADY_PROFILE``). Exit status: 0 done, 1 failed (e.g. the
server could not be reached), 2 bad input (the message names the file, line and field).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
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

from collector import auditlog, db, heap, i18n, summary
from collector import tokens as tokenstore
from collector import wards as wardlist
from collector.profile import ProfileError, read_profile
from collector.state import DEFAULT_AGENT_SERIES, DEFAULT_WARD_SERIES
from collector.summary import WardSummary
from shared.version import installed_version

log = logging.getLogger("collector")

DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_PRUNE_EVERY = 3600.0
# Seconds between reads of what other collector processes stored (PostgreSQL).
DEFAULT_FOLLOW = 1.0
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
    _audit(engine, "wards.import", f"{args.file}: {added} added, {updated} updated")
    print(f"{args.file}: {len(found)} wards ({added} added, {updated} updated)")
    return 0


def _audit(engine: sa.Engine, action: str, detail: str) -> None:
    with db.writer(engine).begin() as conn:
        auditlog.record(conn, auditlog.cli_user(), action, detail)


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
    if args.role == "agent" and not args.ward:
        raise UsageError("--ward: an agent token writes one ward (or give --role viewer|admin)")
    if args.role != "agent" and (args.ward or args.agent):
        raise UsageError(f"--ward/--agent: a {args.role} token is not tied to a ward")
    if args.role != "agent" and not args.name:
        raise UsageError(f"--name: say who holds this {args.role} token")
    engine = _engine(args)
    try:
        token = tokenstore.create(
            engine,
            args.ward,
            args.agent,
            role=args.role,
            name=args.name or "",
            by=auditlog.cli_user(),
        )
    except tokenstore.TokenError as exc:
        raise UsageError(str(exc)) from None
    prefix = token[: tokenstore.PREFIX_LENGTH]
    if args.role == "agent":
        scope = f"ward {args.ward}" + (f", agent {args.agent}" if args.agent else ", any agent")
        where = "put it in the agent's token file"
    else:
        scope = f"{args.role} {args.name}"
        where = "give it to its holder (board login, or a Prometheus credentials file)"
    print(f"Token for {scope}, prefix {prefix}. It is shown only now: {where}.", file=sys.stderr)
    print(token)
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    found = tokenstore.list_all(_engine(args))
    ward_w = max((width(t.ward or "-") for t in found), default=4)
    agent_w = max((width(t.agent or "*") for t in found), default=5)
    name_w = min(max((width(t.name) for t in found), default=4), NAME_COLUMN)
    print(
        f"PREFIX    ROLE    {fit('NAME', name_w)}  {fit('WARD', ward_w)}  {fit('AGENT', agent_w)}"
        f"  {fit('CREATED', 25)}  REVOKED"
    )
    for t in found:
        agent = (t.agent or "*") if t.role == "agent" else "-"
        print(
            f"{t.prefix:<8}  {t.role:<6}  {fit(t.name, name_w)}  {fit(t.ward or '-', ward_w)}  "
            f"{fit(agent, agent_w)}  {fit(when(t.created_at), 25)}  "
            f"{when(t.revoked_at) if t.revoked_at else '-'}"
        )
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    try:
        info = tokenstore.revoke(_engine(args), args.prefix, by=auditlog.cli_user())
    except tokenstore.TokenError as exc:
        raise UsageError(str(exc)) from None
    held = f"ward {info.ward}" if info.role == "agent" else f"{info.role} {info.name}"
    print(
        f"revoked {info.prefix} ({held}); a running collector refuses it within "
        f"{tokenstore.CACHE_SECONDS:g} s"
    )
    return 0


def cmd_audit_log_list(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 100_000:
        raise UsageError("--limit: must be between 1 and 100000")
    since = time.time() - args.days * 86400 if args.days is not None else None
    entries = auditlog.recent(_engine(args), args.limit, since)
    if args.json:
        print(json.dumps([vars(e) for e in entries], ensure_ascii=False, indent=2))
        return 0
    who_w = min(max((width(e.who) for e in entries), default=3), NAME_COLUMN)
    print(f"{fit('WHEN', 25)}  {fit('WHO', who_w)}  {fit('ACTION', 14)}  DETAIL")
    for e in entries:
        print(f"{fit(when(e.at), 25)}  {fit(e.who, who_w)}  {fit(e.action, 14)}  {e.detail}")
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


def _summaries_from_db(args: argparse.Namespace, lang: str) -> tuple[list[WardSummary], float]:
    from collector.service import Service

    _engine(args).dispose()  # the same "no database here" check as the other commands
    service = Service.open(args.db, args.profile)
    try:
        now = time.time()
        verdicts = service.verdicts(now)
        rows = summary.in_order(
            (summary.summarize(w, verdicts.get(w.id)) for w in service.wards().values()), lang
        )
        return rows, now
    finally:
        service.close()


def _read_token(args: argparse.Namespace) -> str | None:
    if args.token_file is None:
        return os.environ.get("WARDREADY_TOKEN") or None
    try:
        token = Path(args.token_file).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--token-file: cannot read {args.token_file}: {exc}") from None
    if not token:
        raise UsageError(f"--token-file: {args.token_file} is empty")
    return token


def read_api(args: argparse.Namespace, path: str) -> Any:
    """``path`` of the collector at ``--url``, read with the ``status`` options' token and CA;
    RuntimeError names the address when it cannot be read."""
    url = f"{args.url.rstrip('/')}{path}"
    token = _read_token(args)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.get(url, timeout=HTTP_TIMEOUT, headers=headers, verify=args.ca_file or True)
        r.raise_for_status()
        return r.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise RuntimeError(f"--url: cannot read {url}: {exc}") from None


def _summaries_from_url(args: argparse.Namespace) -> tuple[list[WardSummary], float]:
    rows = read_api(args, "/api/v1/wards")
    if not isinstance(rows, list):
        raise RuntimeError(f"--url: {args.url}/api/v1/wards did not return a list")
    try:
        return [WardSummary(**{k: row[k] for k in _SUMMARY_FIELDS}) for row in rows], time.time()
    except (KeyError, TypeError) as exc:
        raise RuntimeError(f"--url: {args.url}/api/v1/wards: a ward lacks {exc}") from None


_SUMMARY_FIELDS = tuple(f.name for f in dataclasses.fields(WardSummary))


def _titles(profile: str | None, lang: str) -> dict[str, str]:
    from collector.profile import load_profile
    from collector.service import profile_path

    return summary.titles(load_profile(profile_path(profile)), lang)


def cli_lang(explicit: str | None) -> str:
    """``--lang``, else the terminal's locale when it is Vietnamese, else English: a shell
    whose locale says nothing (C, POSIX) is more often a script than an officer."""
    if explicit:
        return explicit
    for name in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = os.environ.get(name)
        if value:
            return "vi" if value.lower().startswith("vi") else "en"
    return "en"


def render_status(
    rows: Sequence[WardSummary],
    now: float,
    columns: int = 100,
    lang: str = "en",
    titles: dict[str, str] | None = None,
) -> str:
    """The readiness table: N/M ready overall and per working group, each ward's reasons."""
    _ = i18n.gettext_for(lang).gettext
    words = {v: verdict_word(v, lang) for v in VERDICT_ORDER}
    total = len(rows)
    ready = sum(1 for r in rows if r.verdict == "ready")
    counts = {v: sum(1 for r in rows if r.verdict == v) for v in VERDICT_ORDER}
    out = [
        _("{ready}/{total} ready  (not ready {not_ready}, unknown {unknown})  at {when}").format(
            ready=ready,
            total=total,
            not_ready=counts["not_ready"],
            unknown=counts["unknown"],
            when=when(now),
        )
    ]
    if not rows:
        return out[0] + "\n"
    names = {r.id: summary.shown_name(r, lang) for r in rows}
    id_w = max(width(r.id) for r in rows)
    name_w = min(max(width(n) for n in names.values()), NAME_COLUMN)
    verdict_w = max(width(w) for w in words.values())
    indent = 2 + id_w + 2 + name_w + 2 + verdict_w + 2
    reason_w = max(columns - indent, 30)
    groups: dict[str, list[WardSummary]] = {}
    for r in rows:
        groups.setdefault(str(r.working_group), []).append(r)
    for group in sorted(groups, key=summary.group_key):
        members = sorted(
            groups[group],
            key=lambda r: (VERDICT_ORDER.get(r.verdict, 1), i18n.sort_key(r.name, lang), r.id),
        )
        n_ready = sum(1 for r in members if r.verdict == "ready")
        out.append("")
        out.append(
            _("Working group {group}: {ready}/{total} ready").format(
                group=group, ready=n_ready, total=len(members)
            )
        )
        for r in members:
            word = words.get(r.verdict, r.verdict)
            head = f"  {fit(r.id, id_w)}  {fit(names[r.id], name_w)}  {fit(word, verdict_w)}"
            lines: list[str] = []
            for reason in summary.reasons_text(r.reasons, lang, titles or {}):
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


def verdict_word(verdict: str, lang: str) -> str:
    """English keeps the API's words (scripts grep them); Vietnamese reads as words."""
    if lang == "en":
        return verdict
    _ = i18n.gettext_for(lang).gettext
    return {"ready": _("ready"), "not_ready": _("not ready"), "unknown": _("unknown")}.get(
        verdict, verdict
    )


def cmd_status(args: argparse.Namespace) -> int:
    lang = cli_lang(args.lang)
    if args.url:
        rows, now = _summaries_from_url(args)
    else:
        rows, now = _summaries_from_db(args, lang)
    if args.working_group is not None:
        rows = [r for r in rows if str(r.working_group) == args.working_group]
    from collector import fleet_cli

    outdated = fleet_cli.outdated(args)
    if args.json:
        doc = {
            "ready": sum(1 for r in rows if r.verdict == "ready"),
            "total": len(rows),
            "evaluated_at": now,
            "wards": [dataclasses.asdict(r) for r in rows],
            "outdated_plans": outdated,
        }
        print(json.dumps(doc, ensure_ascii=False, indent=2))
        return 0
    columns = args.width or int(os.environ.get("COLUMNS", "0")) or 100
    # English keeps the API's reasons word for word: scripts read them.
    titles = _titles(args.profile, lang) if lang != "en" else {}
    sys.stdout.write(
        render_status(rows, now, columns, lang, titles) + fleet_cli.render_outdated(outdated)
    )
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


# Measured with bench/national.py (3,321 wards, 664 pushes/s, judging every 2 s): each of
# these halved the p99 ack time, and the two together the judge's time as well.
SWITCH_INTERVAL_SECONDS = 0.0005
# The shipped prometheus.yml scrapes this many /metrics shards: the default must match it,
# or the other shards answer 400 and Prometheus calls the collector down.
DEFAULT_METRICS_SHARDS = 4
GC_THRESHOLDS = (20_000, 20, 20)


def _tune_interpreter() -> None:
    """Set up the interpreter for a server whose judge thread runs for a second at a time.

    The event loop gives the GIL up on every socket operation and then waits for the judge
    to hand it back: every switch interval (5 ms by default), many times per request. The
    higher thresholds make collections of what ingest allocates rarer; the heap held for good
    is kept out of them by :func:`collector.heap.keep_collections_small`.
    """
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    gc.set_threshold(*GC_THRESHOLDS)


def _shard_count(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from collector.api import create_app
    from collector.service import Service
    from collector.tls import ServerTls, TlsError

    host, port = parse_listen(args.listen)
    for name in ("agent_series_budget", "ward_series_budget"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')}: must be at least 1")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UsageError("--tls-cert and --tls-key: give both, or neither")
    if args.tls_client_ca is not None and args.tls_cert is None:
        raise UsageError("--tls-client-ca: needs --tls-cert and --tls-key")
    if args.metrics_shards < 1:
        raise UsageError("--metrics-shards (or WARDREADY_METRICS_SHARDS): must be at least 1")
    if args.ingest_rate < 0 or args.ingest_burst < 1:
        raise UsageError("--ingest-rate: must be >= 0 (0: no limit); --ingest-burst: >= 1")
    if args.follow_seconds is not None and args.follow_seconds < 0:
        raise UsageError("--follow-seconds: must be >= 0 (0: a single collector process)")
    if args.name is not None and not args.name.strip():
        raise UsageError("--name: must not be empty")
    tls = None
    if args.tls_cert is not None:
        try:
            tls = ServerTls(args.tls_cert, args.tls_key, args.tls_client_ca)
        except TlsError as exc:
            raise UsageError(str(exc)) from None
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
    follow = args.follow_seconds
    if follow is None:
        # Several processes share a PostgreSQL database; SQLite serves one.
        follow = 0.0 if db.database_url(args.db).startswith("sqlite") else DEFAULT_FOLLOW
    service = Service.open(
        args.db,
        args.profile,
        verdict_seconds=args.verdict_seconds,
        agent_series_budget=args.agent_series_budget,
        ward_series_budget=args.ward_series_budget,
        name=args.name,
        follow_seconds=follow,
    )
    _tune_interpreter()
    sock = _bind(host, port)
    app = create_app(
        service,
        metrics_open=args.metrics_open,
        ingest_rate=args.ingest_rate or None,
        ingest_burst=args.ingest_burst,
        metrics_shards=args.metrics_shards,
    )
    config = uvicorn.Config(
        app,
        log_level=args.log_level,
        access_log=args.access_log,
        lifespan="off",
        server_header=False,
    )
    stop = threading.Event()
    if tls is not None:
        # Our own context instead of uvicorn's ssl_* options, so a renewed certificate can be
        # loaded into it while the server runs.
        config.load()
        config.ssl = tls.context
        tls.on_sighup()
        threading.Thread(target=tls.watch, args=(stop,), name="tls-watch", daemon=True).start()
    server = uvicorn.Server(config)
    threading.Thread(
        target=service.supervise_judge, args=(stop,), name="judge-supervisor", daemon=True
    ).start()
    if follow > 0:
        threading.Thread(
            target=service.follow_forever, args=(stop,), name="follow", daemon=True
        ).start()
    threading.Thread(
        target=heap.keep_collections_small, args=(stop,), name="gc", daemon=True
    ).start()
    if args.retention_days > 0:
        threading.Thread(
            target=_pruner,
            args=(service, args.retention_days, DEFAULT_PRUNE_EVERY, stop),
            name="prune",
            daemon=True,
        ).start()
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    scheme = "https" if tls is not None else "http"
    print(f"wardready-collector listening on {scheme}://{shown}:{bound_port}", flush=True)
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


def cmd_profile_check(args: argparse.Namespace) -> int:
    """Exit 0 for a usable profile (warnings or not), 2 when it has errors."""
    try:
        profile, warnings = read_profile(args.file)
    except ProfileError as exc:
        for message in exc.messages:
            print(message, file=sys.stderr)
        for warning in exc.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        return 2
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    n = len(profile.criteria)
    print(f"{args.file}: OK ({n} criteri{'on' if n == 1 else 'a'})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wardready-collector", description="Ward readiness collector.")
    p.add_argument("--version", action="version", version=f"%(prog)s {installed_version()}")
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
    s.add_argument(
        "--agent-series-budget",
        type=int,
        default=DEFAULT_AGENT_SERIES,
        help="the most series (check name and target) one agent may hold (default %(default)s)",
    )
    s.add_argument(
        "--ward-series-budget",
        type=int,
        default=DEFAULT_WARD_SERIES,
        help="the most series one ward may hold (default %(default)s)",
    )
    s.add_argument(
        "--metrics-open",
        action="store_true",
        help="serve /metrics without a token (for a Prometheus on a trusted network)",
    )
    s.add_argument(
        "--ingest-rate",
        type=float,
        default=tokenstore.DEFAULT_INGEST_RATE,
        help="requests/s each agent token may make on average (default %(default)g; 0: no limit)",
    )
    s.add_argument(
        "--ingest-burst",
        type=float,
        default=tokenstore.DEFAULT_INGEST_BURST,
        help="requests each agent token may make at once (default %(default)g)",
    )
    s.add_argument(
        "--metrics-shards",
        type=_shard_count,
        default=os.environ.get("WARDREADY_METRICS_SHARDS", str(DEFAULT_METRICS_SHARDS)),
        help="split /metrics?shard=K into this many shards by ward, for Prometheus to scrape "
        f"in parallel (default $WARDREADY_METRICS_SHARDS or {DEFAULT_METRICS_SHARDS}, as the "
        "shipped prometheus.yml scrapes)",
    )
    s.add_argument(
        "--name",
        default=os.environ.get("WARDREADY_NAME"),
        help="this collector process's name among several on one database, shown as the "
        "judge lease's holder (default: $WARDREADY_NAME, else HOST:PID)",
    )
    s.add_argument(
        "--follow-seconds",
        type=float,
        help="read what other collector processes stored this often, and judge only while "
        f"holding the judge lease (default: {DEFAULT_FOLLOW:g} on PostgreSQL; 0, a single "
        "process, on SQLite)",
    )
    s.add_argument("--tls-cert", type=Path, help="serve HTTPS with this certificate chain (PEM)")
    s.add_argument("--tls-key", type=Path, help="the certificate's private key (PEM)")
    s.add_argument(
        "--tls-client-ca",
        type=Path,
        help="require client certificates signed by this CA (mTLS)",
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
    tc.add_argument(
        "--role",
        choices=tokenstore.ROLES,
        default="agent",
        help="agent (writes its ward; the default), viewer (reads) or admin (reads, manages)",
    )
    tc.add_argument("--ward", help="the ward an agent token writes")
    tc.add_argument("--agent", help="limit an agent token to this agent name")
    tc.add_argument("--name", help="who holds a viewer or admin token (shown in the audit log)")
    tc.set_defaults(func=cmd_token_create)
    tl = t.add_parser(
        "list", help="list tokens (prefix, role, name, ward, agent, created, revoked)"
    )
    tl.set_defaults(func=cmd_token_list)
    tr = t.add_parser("revoke", help="revoke the token with this prefix")
    tr.add_argument("prefix")
    tr.set_defaults(func=cmd_token_revoke)

    st = sub.add_parser("status", help="readiness table: N/M ready, per working group, reasons")
    st.add_argument("--working-group", help="only this working group")
    st.add_argument("--json", action="store_true", help="JSON instead of the table")
    st.add_argument("--url", help="ask a running collector (e.g. http://127.0.0.1:8080)")
    st.add_argument(
        "--token-file", help="with --url: a viewer or admin token (default: $WARDREADY_TOKEN)"
    )
    st.add_argument("--ca-file", help="with an https --url: the CA that signed its certificate")
    st.add_argument("--width", type=int, help="wrap reasons to this many columns")
    st.add_argument(
        "--lang", choices=i18n.LANGS, help="vi or en (default: the terminal's locale, else en)"
    )
    st.set_defaults(func=cmd_status)

    al = sub.add_parser("audit-log", help="who changed what, when").add_subparsers(
        dest="audit_command", required=True, metavar="ACTION"
    )
    all_ = al.add_parser("list", help="the newest entries, oldest first")
    all_.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    all_.add_argument("--days", type=float, help="only entries of the last DAYS days")
    all_.add_argument("--json", action="store_true")
    all_.set_defaults(func=cmd_audit_log_list)

    pr = sub.add_parser("prune", help="delete stored results older than --days")
    pr.add_argument("--days", type=float, default=30.0)
    pr.set_defaults(func=cmd_prune)

    mg = sub.add_parser("migrate", help="bring the database schema up to date")
    mg.set_defaults(func=cmd_migrate)

    pf = sub.add_parser("profile", help="readiness profiles").add_subparsers(
        dest="profile_command", required=True, metavar="ACTION"
    )
    pc = pf.add_parser("check", help="validate a profile file: errors exit 2, warnings do not")
    pc.add_argument("file", type=Path)
    pc.set_defaults(func=cmd_profile_check)

    rf = sub.add_parser("reflector", help="answer the agents' stream checks (TWAMP-light, UDP)")
    rf.add_argument("--listen", default="127.0.0.1:862", help="HOST:PORT (default %(default)s)")
    rf.add_argument("--max-pps", type=float, default=1000.0, help="packets/s per source")
    rf.add_argument("--global-pps", type=float, default=20000.0, help="packets/s in all")
    rf.add_argument("--log-every", type=float, default=60.0, help="seconds between summaries")
    rf.set_defaults(func=cmd_reflector)

    from collector import audit_cli  # imported here: it imports this module

    audit_cli.add_parser(sub)

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
