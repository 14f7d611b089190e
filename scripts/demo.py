"""The two-ward demo: a collector on SQLite, two agents acting as two wards, real local targets.

Ward Minh Phụng reaches its shared system (a local web server) over a healthy line and turns
ready; ward Bình Thới's Document Management System address answers nothing, so it turns
not_ready with that reason. Runs until Ctrl-C, or exits after the verdicts with --once.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from fleet import ROOT, Agent, Collector, free_port, http_server, stopping, wait_until

READY_WARD = "ward-minh-phung"
BROKEN_WARD = "ward-binh-thoi"


def line_and_dms(dms_url: str) -> list[dict[str, object]]:
    return [
        {
            "name": "wan-city",
            "type": "icmp",
            "target": "127.0.0.1",
            "labels": {"role": "wan", "line": "fibre"},
            "params": {"count": 5, "interval_seconds": 0.05, "timeout_seconds": 0.5},
        },
        {
            "name": "dms",
            "type": "http",
            "target": dms_url,
            "labels": {"role": "shared_system"},
        },
        {"name": "host", "type": "host", "target": "localhost", "labels": {"role": "host"}},
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--once", action="store_true", help="exit once both verdicts are shown")
    parser.add_argument("--workdir", type=Path, default=ROOT / "demo-run")
    parser.add_argument("--within", type=float, default=60.0, help="seconds to reach the verdicts")
    args = parser.parse_args()

    shutil.rmtree(args.workdir, ignore_errors=True)
    site = args.workdir / "site"
    site.mkdir(parents=True)
    (site / "index.html").write_text("<h1>Hệ thống quản lý văn bản và điều hành</h1>\n")

    collector = Collector(args.workdir, ROOT / "collector" / "profiles" / "demo.yaml")
    collector.setup()
    web_port, dead_port = free_port(), free_port()
    web = http_server(site, web_port, args.workdir / "dms.log")
    good = Agent(args.workdir, READY_WARD, "pc-01", collector,
                 line_and_dms(f"http://127.0.0.1:{web_port}/"))  # fmt: skip
    bad = Agent(args.workdir, BROKEN_WARD, "pc-01", collector,
                line_and_dms(f"http://127.0.0.1:{dead_port}/"))  # fmt: skip

    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    with stopping(web, collector, good, bad):
        collector.start()
        good.start()
        bad.start()
        print(f"collector on {collector.url}, two agents started; waiting for verdicts...")
        t0 = time.monotonic()
        wait_until(
            lambda: (
                collector.ward(READY_WARD)["verdict"] == "ready"
                and (broken := collector.ward(BROKEN_WARD))["verdict"] == "not_ready"
                # Until its first dms result lands, the only reason is "no check matches".
                and any("dms" in reason for reason in broken["reasons"])
            ),
            args.within,
            step=1,
            what="one ward ready and one not ready",
        )
        print(f"verdicts reached after {time.monotonic() - t0:.0f} s\n")
        print(
            f"All {len(collector.get('/api/v1/wards'))} pilot wards are listed; the other wards "
            "have no agent yet (no_data). Working group 1, which holds both demo wards:\n"
        )
        status = collector.cli(
            "status", "--url", collector.url, "--working-group", "1",
            "--token-file", str(collector.viewer_token_file), check=False,
        )  # fmt: skip
        print(status.stdout or status.stderr)
        print(f"Where to look (reads take the viewer token in {collector.viewer_token_file};")
        print("  the board asks for it once at /login;")
        print('  curl: -H "Authorization: Bearer $(cat FILE)"):')
        print(f"  board         {collector.url}/   (tiếng Việt; ?lang=en for English)")
        print(f"  ward page     {collector.url}/wards/{BROKEN_WARD}")
        print(f"  wards API     {collector.url}/api/v1/wards")
        print(f"  one ward      {collector.url}/api/v1/wards/{BROKEN_WARD}")
        print(f"  metrics       {collector.url}/metrics")
        print(f"  agent metrics http://127.0.0.1:{good.metrics_port}/metrics")
        print(f"  API docs      {collector.url}/docs")
        print(f"  logs          {args.workdir}/")
        if args.once:
            return 0
        print("\nRunning; Ctrl-C stops the demo.")
        try:
            while not stop and all(p.alive() for p in (collector.proc, good.proc, bad.proc) if p):
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (TimeoutError, subprocess.CalledProcessError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        if isinstance(exc, subprocess.CalledProcessError):
            print(exc.stderr, file=sys.stderr)
        sys.exit(1)
