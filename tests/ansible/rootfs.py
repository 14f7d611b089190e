"""A Debian root file system for the nspawn hosts, built once by debootstrap and kept.

The tree is keyed by the suite and the package list, built under a lock into a temporary
folder and renamed into place only when complete, so a crashed build is never used and two
test runs never build at once. The hosts boot from an overlay over it, never from the tree
itself, so no test changes the cache. Containers have no route to a mirror: every Debian
package a role needs must be in this list.

Run ``python -m tests.ansible.rootfs`` (as root) to build it ahead of the tests.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = (
    # Every host: what systemd, sshd and Ansible's modules need.
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "sudo",
    "python3",
    "python3-venv",
    "python3-apt",
    "iproute2",
    "iputils-ping",
    "ca-certificates",
    # The city host's monitoring role installs these; there is no mirror inside the test.
    "prometheus",
    "prometheus-alertmanager",
)
CACHE = Path(os.environ.get("WARDREADY_ROOTFS_CACHE", "/var/cache/wardready"))
BUILD_TIMEOUT = 1200


def key() -> str:
    text = "\n".join([SUITE, MIRROR, *sorted(PACKAGES)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def path() -> Path:
    return CACHE / f"rootfs-{SUITE}-{key()}"


def ensure(log: Path | None = None) -> Path:
    """The cached tree, built first when it does not exist yet."""
    done = path()
    if (done / "etc/os-release").exists():
        return done
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / f"{done.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (done / "etc/os-release").exists():
            return done
        work = CACHE / f"{done.name}.tmp-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        argv = [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(PACKAGES)}",
            SUITE,
            str(work),
            MIRROR,
        ]
        out = log.open("ab") if log else subprocess.DEVNULL
        try:
            started = time.monotonic()
            subprocess.run(
                argv, stdout=out, stderr=subprocess.STDOUT, check=True, timeout=BUILD_TIMEOUT
            )
            _settle(work)
            os.rename(work, done)
            print(f"rootfs: built {done} in {time.monotonic() - started:.0f} s", file=sys.stderr)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        finally:
            if log and not isinstance(out, int):
                out.close()
    return done


def _settle(tree: Path) -> None:
    """Make the tree boot quietly in a container that has no network but its veth."""
    wants = tree / "etc/systemd/system"
    # Nothing inside may reach a mirror: apt's daily timers would try.
    for unit in ("apt-daily.timer", "apt-daily-upgrade.timer"):
        (wants / unit).unlink(missing_ok=True)
        (wants / unit).symlink_to("/dev/null")
    (tree / "etc/machine-id").write_text("")


if __name__ == "__main__":
    print(ensure())
