"""``wardready-agent``: validate a config, run the daemon, or run one check on the spot.

Exit codes: 0 success; 1 a failed check (``check``) or a start-up failure (``run``); 2 bad
input (config errors, unknown check type, bad parameters).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import math
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import yaml
from pydantic import ValidationError

from agent import __version__
from agent.config import Config, ConfigError, error_messages, load_config, parse_duration
from agent.metrics import AgentCollector, Board, MetricsServer, make_registry
from agent.plan import Plan, PlanPoller, load_cached
from agent.scheduler import CheckSpec, Scheduler
from agent.shipper import Shipper
from agent.spool import Spool
from checks.core import CheckType, Result, Target, run_check
from shared.version import installed_version

log = logging.getLogger("agent")

DRAIN_SECONDS = 5.0


def merge_checks(
    local: Sequence[CheckSpec], plan: Sequence[CheckSpec], warn: bool = True
) -> tuple[CheckSpec, ...]:
    """The plan's checks, then the local ones; a local check replaces the plan's of its name."""
    mine = {s.name for s in local}
    clash = [s.name for s in plan if s.name in mine]
    if clash and warn:
        log.warning(
            "the local config replaces the plan's check(s) of the same name: %s", ", ".join(clash)
        )
    return (*(s for s in plan if s.name not in mine), *local)


class Agent:
    """The daemon's parts, wired: scheduler -> spool (+ board for metrics) -> shipper."""

    def __init__(self, config: Config, drain_seconds: float = DRAIN_SECONDS) -> None:
        self.config = config
        self.drain_seconds = drain_seconds
        self.spool = Spool(config.spool_path, config.spool_max_results)
        self.poller: PlanPoller | None = None
        checks = config.checks
        if config.collector.plan:
            cached = load_cached(config)
            if cached is not None:
                checks = merge_checks(config.checks, cached.checks)
            self.poller = PlanPoller(config, self.apply_plan, cached)
        self.board = Board(checks)
        c = config.collector
        self.shipper = Shipper(
            self.spool,
            url=c.urls or c.url,
            token=c.token,
            ward=config.ward,
            agent=config.agent,
            push_interval=c.push_interval,
            timeout=c.timeout,
            batch_size=c.batch_size,
            checks=len(checks),
            ca_file=c.ca_file,
            client_cert=c.client_cert,
            client_key=c.client_key,
        )
        self.shipper.plan = self.poller
        self.scheduler = Scheduler(checks, self._sink, workers=config.workers)
        self.metrics: MetricsServer | None = None

    def apply_plan(self, plan: Plan) -> None:
        """Run ``plan`` (with the local checks) from now on, without a restart."""
        checks = merge_checks(self.config.checks, plan.checks)
        added, changed, removed = self.scheduler.update(checks)
        self.board.retain(s.name for s in checks)
        self.shipper.checks = len(checks)
        log.info(
            "plan v%d applied: %d checks (%d new, %d changed, %d removed, %d unchanged)",
            plan.version,
            len(checks),
            len(added),
            len(changed),
            len(removed),
            len(checks) - len(added) - len(changed),
        )

    def _sink(self, spec: CheckSpec, result: Result) -> None:
        # A run of a check removed while it ran is still shipped, but no longer shown.
        if any(s.name == spec.name for s in self.scheduler.specs):
            self.board.record(spec, result)
        self.spool.append(result, spec.interval)
        self.shipper.notify(self.spool.depth())

    def start(self) -> None:
        cfg = self.config
        log.info(
            "agent %s of ward %s starting (version %s): %d checks, collector %s, "
            "spool %s (%d waiting, stream %s)",
            cfg.agent,
            cfg.ward,
            __version__,
            len(self.scheduler.specs),
            cfg.collector.url,
            cfg.spool_path,
            self.spool.depth(),
            self.spool.stream,
        )
        if cfg.metrics_listen is not None:
            collector = AgentCollector(
                self.board,
                ward=cfg.ward,
                agent=cfg.agent,
                version=__version__,
                spool=self.spool,
                pushes=self.shipper,
                plan=self.poller,
            )
            host, port = cfg.metrics_listen
            self.metrics = MetricsServer(make_registry(collector), host, port)
        self.shipper.start()
        self.scheduler.start()
        if self.poller is not None:
            self.poller.start()

    def stop(self, drain: bool = True) -> None:
        """Finish runs in flight into the spool, push what can be pushed, close."""
        if self.poller is not None:
            self.poller.stop()
        self.scheduler.stop(wait=True)
        self.shipper.stop()
        if drain:
            self.shipper.drain(time.monotonic() + self.drain_seconds)
        self.shipper.close()
        if self.metrics is not None:
            self.metrics.close()
        self.spool.close()
        log.info("agent stopped")


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # httpx logs every request at INFO; httpcore at DEBUG goes down to the socket.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# -- commands --------------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print("\n".join(exc.messages), file=sys.stderr)
        return 2
    n = len(config.checks)
    plan = ""
    if config.collector.plan:
        cached = load_cached(config)
        plan = (
            f"; plus the collector's plan ({len(cached.checks)} in v{cached.version})"
            if (cached)
            else "; plus the collector's plan (not fetched yet)"
        )
    print(f"{args.config}: OK ({n} check{'' if n == 1 else 's'}{plan})")
    return 0


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas before the worker threads start.

    glibc gives each thread that contends for the heap an arena of its own (up to 8 per
    core), and memory freed in one arena is not reused by the others: with a pool of check
    threads that is most of the agent's resident memory beyond its imports.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc: nothing to tune
    m_arena_max = -8
    libc.mallopt(m_arena_max, arenas)


def cmd_run(args: argparse.Namespace) -> int:
    limit_malloc_arenas()
    setup_logging(args.log_level)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for message in exc.messages:
            log.error("%s", message)
        return 2

    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            log.info("already stopping")
        else:
            log.info("%s received: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        agent = Agent(config)
    except (OSError, sqlite3.Error) as exc:
        log.error("cannot open the spool %s: %s", config.spool_path, exc)
        return 1
    try:
        agent.start()
    except OSError as exc:  # typically the metrics port is taken
        log.error("cannot start: %s", exc)
        agent.stop(drain=False)
        return 1
    while not stop.wait(1.0):
        pass
    agent.stop()
    return 0


def _param_pairs(items: Sequence[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--param {item!r}: expected KEY=VALUE")
        if key in params:
            raise ValueError(f"--param {key}: given twice")
        try:
            params[key] = yaml.safe_load(text)
        except yaml.YAMLError:
            params[key] = text  # a regex such as [a-z]+ is meant as text
    return params


def cmd_check(args: argparse.Namespace, registry: Mapping[str, CheckType] | None = None) -> int:
    if registry is None:
        from checks.registry import REGISTRY

        registry = REGISTRY
    kind = registry.get(args.type)
    if kind is None:
        known = ", ".join(sorted(registry))
        print(f"unknown check type {args.type!r} (known: {known})", file=sys.stderr)
        return 2
    try:
        raw = _param_pairs(args.param)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        timeout = parse_duration(args.timeout)
        if not 0 < timeout <= 86400:
            raise ValueError(f"must be between 0 and 86400 s, got {args.timeout}")
    except ValueError as exc:
        print(f"--timeout: {exc}", file=sys.stderr)
        return 2
    try:
        params = kind.params.model_validate(raw)
    except ValidationError as exc:
        for loc, msg in error_messages(exc, kind.params):
            where = ".".join(str(p) for p in loc)
            print(f"--param {where}: {msg}" if where else f"--param: {msg}", file=sys.stderr)
        return 2
    if kind.parse_target is not None:
        try:
            kind.parse_target(args.target)
        except ValueError as exc:
            print(f"target: {exc}", file=sys.stderr)
            return 2
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    target = Target(name="cli", address=args.target)
    result = run_check(args.type, kind, target, params, timeout, name=args.type)
    if args.json:
        print(json.dumps(_result_json(result), ensure_ascii=False, indent=2))
    else:
        print(render_table(result))
    return 0 if result.success else 1


def _result_json(result: Result) -> dict[str, Any]:
    return {
        "check": result.check,
        "target": result.target.address,
        "success": result.success,
        "reason": result.reason,
        "started": result.started,
        "duration_seconds": result.duration_seconds,
        "metrics": dict(sorted(result.metrics.items())),
        "info": dict(sorted(result.info.items())),
    }


def cmd_discover(args: argparse.Namespace) -> int:
    import httpx

    from agent import discover as disc

    config: Config | None = None
    if args.report:
        if not args.config:
            print("--report: needs -c CONFIG (the collector URL and token)", file=sys.stderr)
            return 2
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            print("\n".join(exc.messages), file=sys.stderr)
            return 2
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    opts = disc.Options(
        subnet=args.subnet,
        interface=args.interface,
        force=args.force,
        rate=args.rate,
        browse_seconds=args.browse_seconds,
        community=args.community,
        snmp_port=args.snmp_port,
        snmp_timeout=args.snmp_timeout,
        arp=not args.no_arp,
        mdns=not args.no_mdns,
        snmp=not args.no_snmp,
    )
    try:
        found = disc.discover(opts)
    except disc.DiscoverError as exc:
        print(exc, file=sys.stderr)
        return 2
    for warning in found.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(disc.as_json(found.hosts, found.subnet), ensure_ascii=False, indent=2))
    else:
        print(disc.render_table(found.hosts))
    if args.out:
        checks = disc.checks_snippet(found.hosts, args.community, args.snmp_port)
        try:
            disc.write_private(args.out, disc.snippet_yaml(checks))
        except OSError as exc:
            print(f"--out {args.out}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        print(f"{args.out}: {len(checks)} checks written", file=sys.stderr)
    if config is not None:
        inv = disc.inventory(found.hosts, config.ward, config.agent)
        c = config.collector
        failed: httpx.HTTPError | None = None
        # Any collector stores it: the next one is tried when one is down or failing (5xx);
        # a refusal (4xx) would be the same everywhere.
        for url in c.urls or (c.url,):
            try:
                disc.post_inventory(url, c.token, inv, c.timeout)
            except httpx.HTTPStatusError as exc:
                failed = exc
                if exc.response.status_code < 500:
                    break
            except httpx.HTTPError as exc:
                failed = exc
            else:
                print(f"inventory of {len(inv.devices)} devices reported to {url}", file=sys.stderr)
                return 0
        print(f"--report: {failed}", file=sys.stderr)
        return 1
    return 0


def cmd_enroll(args: argparse.Namespace) -> int:
    from pathlib import Path

    from agent import enroll

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    try:
        done = enroll.enroll(
            args.collector,
            args.code,
            agent=args.agent,
            ca_file=Path(args.ca_file) if args.ca_file else None,
            config=Path(args.config),
            token_file=Path(args.token_file),
            spool=Path(args.spool),
            metrics_listen=args.metrics_listen,
        )
    except enroll.EnrollFailed as exc:
        print(f"enroll: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"enroll: cannot write {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"enrolled as agent {done.agent} of ward {done.ward}")
    print(f"token: {done.token_file} (mode 0600)")
    if done.plan_version is not None:
        print(f"plan: v{done.plan_version}, {done.plan_checks} checks")
    else:
        print(f"plan: {done.plan_problem}")
    print(f"config: {done.config}; start with: wardready-agent run -c {done.config}")
    return 0


# -- the on-site table -----------------------------------------------------------------------


def _sig(value: float) -> str:
    return f"{value:.3g}"


def humanize(metric: str, value: float) -> str:
    """A metric value for a person, in the unit its name carries (``rtt_avg_seconds``,
    ``bytes_free``, ``loss_ratio``, ``..._bytes_per_second``); other values as plain numbers."""
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    base = metric.split("__")[0]  # a per-item metric: disk_free_bytes__var_lib
    rate = base.endswith("_per_second")
    words = set(base.removesuffix("_per_second").split("_"))
    per = "/s" if rate else ""
    if "seconds" in words and not rate:
        if ("timestamp" in words or "time" in words) and value > 1e9:
            return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        size = abs(value)
        if 0 < size < 0.001:
            return f"{_sig(value * 1e6)} µs"
        if size < 1:
            return f"{_sig(value * 1000)} ms"
        for limit, div, unit in ((120, 1, "s"), (7200, 60, "min"), (172800, 3600, "h")):
            if size < limit:
                return f"{_sig(value / div)} {unit}"
        return f"{value / 86400:.1f} d"
    if "bytes" in words and rate:
        # Lines are sold and spoken of in bit/s: a 10 Mbit/s line, not 1.19 MiB/s.
        words, value = {"bits"}, value * 8
    if "bytes" in words:
        for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
            if abs(value) < 1024 or unit == "TiB":
                return f"{value:g} B{per}" if unit == "B" else f"{_sig(value)} {unit}{per}"
            value /= 1024
    if "bits" in words:
        for unit in ("bit", "kbit", "Mbit", "Gbit", "Tbit"):
            if abs(value) < 1000 or unit == "Tbit":
                return f"{_sig(value)} {unit}{per}"
            value /= 1000
    if "ratio" in words:
        return f"{_sig(value * 100)} %"
    if "celsius" in words:
        return f"{_sig(value)} °C"
    return str(int(value)) if value.is_integer() else f"{value:.6g}"


def render_table(result: Result) -> str:
    rows: list[tuple[str, str]] = [
        ("check", result.check),
        ("target", result.target.address),
        ("success", "yes" if result.success else "NO"),
        ("reason", result.reason),
        ("duration", humanize("duration_seconds", result.duration_seconds)),
    ]
    if result.metrics:
        rows.append(("metrics", ""))
        rows += [(f"  {k}", humanize(k, v)) for k, v in sorted(result.metrics.items())]
    if result.info:
        rows.append(("info", ""))
        rows += [(f"  {k}", v) for k, v in sorted(result.info.items())]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}".rstrip() for k, v in rows)


# -- parser ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wardready-agent", description="wardready agent: probes a ward's readiness."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {installed_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check a config file and exit")
    p.add_argument("-c", "--config", required=True, metavar="FILE")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("run", help="run the agent until SIGTERM or SIGINT")
    p.add_argument("-c", "--config", required=True, metavar="FILE")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("enroll", help="trade an enrollment code for a token and a config")
    p.add_argument("--collector", required=True, metavar="URL", help="the collector's URL")
    p.add_argument("--code", required=True, help="from `wardready-collector enroll create`")
    p.add_argument("--ca-file", metavar="FILE", help="trust this CA for an https:// collector")
    p.add_argument("--agent", metavar="NAME", help="agent name (default: the host name)")
    p.add_argument("--config", default="/etc/wardready/agent.yaml", metavar="PATH")
    p.add_argument("--token-file", default="/etc/wardready/token", metavar="PATH")
    p.add_argument("--spool", default="/var/lib/wardready/spool.db", metavar="PATH")
    p.add_argument("--metrics-listen", metavar="HOST:PORT", help="default 127.0.0.1:9430")
    p.set_defaults(func=cmd_enroll)

    p = sub.add_parser("check", help="run one check now and print its result")
    p.add_argument("type", help="check type, e.g. icmp, tcp, http, dns, host")
    p.add_argument("target", help="what to probe: address, host:port, URL or name")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a check parameter; VALUE is read as YAML (20, true, [200,301])",
    )
    p.add_argument("--timeout", default="10s", help="deadline of the check (default 10s)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("discover", help="find printers, scanners, VC endpoints on the LAN")
    p.add_argument("--subnet", metavar="CIDR", help="default: the default route's subnet")
    p.add_argument("--interface", metavar="NIC", help="the NIC to sweep from")
    p.add_argument("--force", action="store_true", help="allow a subnet larger than /22")
    p.add_argument("--rate", type=float, default=50.0, help="ARP and SNMP probes per second")
    p.add_argument("--browse-seconds", type=float, default=3.0, help="mDNS browse time")
    p.add_argument("--community", default="public", help="SNMP v2c community")
    p.add_argument("--snmp-port", type=int, default=161, help=argparse.SUPPRESS)
    p.add_argument("--snmp-timeout", type=float, default=1.0, help="seconds per SNMP request")
    p.add_argument("--no-arp", action="store_true", help="skip the ARP sweep")
    p.add_argument("--no-mdns", action="store_true", help="skip the mDNS browse")
    p.add_argument("--no-snmp", action="store_true", help="skip the SNMP probes")
    p.add_argument("--json", action="store_true", help="print the devices as JSON")
    p.add_argument("--out", metavar="FILE", help="write a checks snippet for the agent config")
    p.add_argument("--report", action="store_true", help="send the inventory to the collector")
    p.add_argument("-c", "--config", metavar="FILE", help="agent config, for --report")
    p.set_defaults(func=cmd_discover)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code
