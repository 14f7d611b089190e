#!/usr/bin/env python3
"""Back up the collector's database while it runs, then keep only the newest copies.

Usage: backup.py DIR KEEP, with the database URL in WARDREADY_DB. SQLite is copied with its
online backup API (a consistent copy, the collector keeps writing); PostgreSQL with pg_dump.
A copy is written under a temporary name and renamed only when complete.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

PREFIX = "wardready-"


def sqlite_path(url: str) -> str | None:
    for scheme in ("sqlite:///", "sqlite+pysqlite:///"):
        if url.startswith(scheme):
            return url[len(scheme) :]
    return None


def backup(url: str, folder: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = sqlite_path(url)
    if path is not None:
        done = folder / f"{PREFIX}{stamp}.db"
        tmp = done.with_suffix(".db.tmp")
        source = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            target = sqlite3.connect(tmp)
            try:
                source.backup(target)
            finally:
                target.close()
        finally:
            source.close()
    elif url.startswith("postgresql"):
        done = folder / f"{PREFIX}{stamp}.pgdump"
        tmp = done.with_suffix(".pgdump.tmp")
        plain = "postgresql:" + url.split(":", 1)[1]  # pg_dump knows no SQLAlchemy driver suffix
        subprocess.run(
            ["pg_dump", "--format=custom", f"--file={tmp}", plain], check=True, timeout=3600
        )
    else:
        raise SystemExit(f"backup: WARDREADY_DB: no backup method for {url.split(':', 1)[0]}")
    os.replace(tmp, done)
    return done


def prune(folder: Path, keep: int) -> list[Path]:
    copies = sorted(
        (p for p in folder.iterdir() if p.name.startswith(PREFIX) and not p.name.endswith(".tmp")),
        key=lambda p: p.name,
        reverse=True,
    )
    old = copies[keep:]
    for p in old:
        p.unlink()
    return old


def main(argv: list[str]) -> int:
    if len(argv) != 3 or not argv[2].isdigit() or int(argv[2]) < 1:
        print(
            "usage: backup.py DIR KEEP (KEEP >= 1), WARDREADY_DB in the environment",
            file=sys.stderr,
        )
        return 2
    url = os.environ.get("WARDREADY_DB", "")
    if not url:
        print("backup: WARDREADY_DB is not set", file=sys.stderr)
        return 2
    folder = Path(argv[1])
    done = backup(url, folder)
    removed = prune(folder, int(argv[2]))
    print(f"backup: wrote {done} ({done.stat().st_size} bytes); removed {len(removed)} old")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
