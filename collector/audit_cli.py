"""``wardready-collector audit ...``: take, list, show, verify, export and compare audits.

Exit status as for every collector command: 0 done, 1 failed (``verify`` found the audit
changed; ``compare --fail-on-regression`` found a regression), 2 bad input (an unknown audit,
a time without a zone, a window in the future).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from collector import audit_compare, audit_export, auditlog, audits, i18n
from collector.cli import UsageError, _engine, when
from collector.profile import load_profile
from collector.service import profile_path


def _lang(args: argparse.Namespace) -> str:
    return str(args.lang or os.environ.get("WARDREADY_LANG") or i18n.DEFAULT)


def _load(args: argparse.Namespace, audit_id: int) -> audits.Audit:
    try:
        return audits.load(_engine(args), audit_id)
    except audits.AuditError as exc:
        raise UsageError(str(exc)) from None


def _warn_if_changed(args: argparse.Namespace, audit_id: int) -> list[str]:
    problems = audits.verify(_engine(args), audit_id)
    _ = i18n.gettext_for(_lang(args)).gettext
    for p in problems:
        print(_("warning: audit {id} fails verification: {problem}").format(id=audit_id, problem=p),
              file=sys.stderr)  # fmt: skip
    return problems


def cmd_create(args: argparse.Namespace) -> int:
    _ = i18n.gettext_for(_lang(args)).gettext
    engine = _engine(args)
    profile = load_profile(profile_path(args.profile))
    try:
        start = audits.parse_time(args.start, "--from")
        end = audits.parse_time(args.end, "--to")
        taken = audits.take(
            engine,
            profile,
            start=start,
            end=end,
            title=args.title,
            signed_off_by=args.signed_off_by,
            created_by=auditlog.cli_user(),
            step=args.step,
            ward_ids=args.ward or None,
        )
    except audits.AuditError as exc:
        raise UsageError(str(exc)) from None
    win = taken.content["window"]
    print(
        _("audit {id} stored: {n} wards, {start} to {end}").format(
            id=taken.id, n=len(taken.content["wards"]), start=win["from"], end=win["to"]
        )
    )
    print(f"SHA-256 {taken.sha256}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    found = audits.list_all(_engine(args))
    if args.json:
        print(json.dumps([vars(a) for a in found], ensure_ascii=False, indent=2))
        return 0
    _ = i18n.gettext_for(_lang(args)).gettext
    window, signed, title = _("WINDOW"), _("SIGNED OFF BY"), _("TITLE")
    print(f"{'ID':>4}  {window:<53}  {signed:<24}  {title}")
    for a in found:
        window = f"{when(a.window_from)} – {when(a.window_to)}"
        print(f"{a.id:>4}  {window:<53}  {a.signed_off_by:<24}  {a.title}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    taken = _load(args, args.id)
    _warn_if_changed(args, args.id)
    if args.json:
        sys.stdout.write(taken.text + "\n")
        return 0
    sys.stdout.write(audit_export.text(taken, _lang(args)))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    _ = i18n.gettext_for(_lang(args)).gettext
    try:
        problems = audits.verify(_engine(args), args.id, args.expect)
    except audits.AuditError as exc:
        raise UsageError(str(exc)) from None
    if problems:
        for p in problems:
            print(_("audit {id}: FAILED: {problem}").format(id=args.id, problem=p), file=sys.stderr)
        return 1
    taken = _load(args, args.id)
    print(_("audit {id}: intact, SHA-256 {sha}").format(id=args.id, sha=taken.sha256))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    _ = i18n.gettext_for(_lang(args)).gettext
    taken = _load(args, args.id)
    problems = audits.verify(_engine(args), args.id)
    if problems:
        for p in problems:
            print(_("audit {id}: FAILED: {problem}").format(id=args.id, problem=p), file=sys.stderr)
        print(_("audit {id} was changed after it was taken; not exported").format(id=args.id),
              file=sys.stderr)  # fmt: skip
        return 1
    _type, render = audit_export.FORMATS[args.format]
    data = render(taken, _lang(args))
    if str(args.out) == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return 0
    try:
        Path(args.out).write_bytes(data)
    except OSError as exc:
        raise UsageError(f"--out: cannot write {args.out}: {exc.strerror or exc}") from None
    print(_("audit {id} written to {path}").format(id=args.id, path=args.out), file=sys.stderr)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    a, b = _load(args, args.a), _load(args, args.b)
    _warn_if_changed(args, args.a)
    _warn_if_changed(args, args.b)
    result = audit_compare.compare(a, b)
    if args.json:
        doc: dict[str, Any] = result.as_dict()
        print(json.dumps(doc, ensure_ascii=False, indent=2))
    else:
        sys.stdout.write(audit_compare.text(result, a, b, _lang(args)))
    if args.fail_on_regression and result.counts()[audit_compare.REGRESSED]:
        return 1
    return 0


def add_parser(sub: Any) -> None:
    """The ``audit`` command and its actions, under the collector's subcommands."""
    au = sub.add_parser("audit", help="judge a past window, store it signed off, export it")
    lang = argparse.ArgumentParser(add_help=False)
    lang.add_argument(
        "--lang", choices=i18n.LANGS, help="vi or en (default: $WARDREADY_LANG or vi)"
    )
    actions = au.add_subparsers(dest="audit_command", required=True, metavar="ACTION")

    c = actions.add_parser(
        "create", parents=[lang], help="judge every ward over a window, store it"
    )
    c.add_argument("--from", dest="start", required=True, metavar="TIME",
                   help="window start, ISO 8601 with zone: 2026-06-12T08:00+07:00")  # fmt: skip
    c.add_argument("--to", dest="end", required=True, metavar="TIME", help="window end")
    c.add_argument("--title", required=True)
    c.add_argument("--signed-off-by", required=True, metavar="NAME", help="who signs it off")
    c.add_argument("--step", type=int, default=audits.DEFAULT_STEP_SECONDS, metavar="SECONDS",
                   help="judge every this many seconds (default %(default)s)")  # fmt: skip
    c.add_argument("--ward", action="append", metavar="ID", help="only this ward (repeatable)")
    c.set_defaults(func=cmd_create)

    ls = actions.add_parser("list", parents=[lang], help="the stored audits")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)

    sh = actions.add_parser("show", parents=[lang], help="one audit, ward by ward")
    sh.add_argument("id", type=int)
    sh.add_argument("--json", action="store_true", help="the stored canonical JSON")
    sh.set_defaults(func=cmd_show)

    v = actions.add_parser(
        "verify", parents=[lang], help="recompute the SHA-256; exit 1 if changed"
    )
    v.add_argument("id", type=int)
    v.add_argument("--expect", metavar="SHA256", help="the hash printed on the signed copy")
    v.set_defaults(func=cmd_verify)

    e = actions.add_parser("export", parents=[lang], help="write the audit as HTML, PDF or CSV")
    e.add_argument("id", type=int)
    e.add_argument("--format", required=True, choices=sorted(audit_export.FORMATS))
    e.add_argument("--out", required=True, type=Path, metavar="FILE", help="'-' for stdout")
    e.set_defaults(func=cmd_export)

    cp = actions.add_parser("compare", parents=[lang], help="wards improved, regressed, stayed")
    cp.add_argument("a", type=int, metavar="A")
    cp.add_argument("b", type=int, metavar="B")
    cp.add_argument("--json", action="store_true")
    cp.add_argument("--fail-on-regression", action="store_true", help="exit 1 if any regressed")
    cp.set_defaults(func=cmd_compare)
