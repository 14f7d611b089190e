"""Network namespaces joined by veth pairs, made and removed by the tests themselves.

Addresses live only inside the namespaces (and on a veth end the test made), so every packet a
test sends stays on links it created.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=30)


def nsexec(ns: str | None, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv] if ns else list(argv)


@dataclass
class Lab:
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    namespaces: list[str] = field(default_factory=list)
    root_links: list[str] = field(default_factory=list)
    subnet: int = field(default_factory=lambda: 200 + int.from_bytes(os.urandom(1)) % 50)
    _links: int = 0

    def netns(self, role: str) -> str:
        name = f"wr-{role}-{self.tag}"
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def link(self, a: str | None, b: str) -> tuple[str, str]:
        """Join namespace a (None: this one) to b; return (address in a, address in b)."""
        self._links += 1
        net = f"10.{self.subnet}.{self._links}"
        dev_a, dev_b = f"wa{self.tag}{self._links}", f"wb{self.tag}{self._links}"
        sh("ip", "link", "add", dev_a, "type", "veth", "peer", "name", dev_b)
        if a is None:
            self.root_links.append(dev_a)
        else:
            sh("ip", "link", "set", dev_a, "netns", a)
        sh("ip", "link", "set", dev_b, "netns", b)
        for ns, dev, host in ((a, dev_a, 1), (b, dev_b, 2)):
            prefix = ["ip"] if ns is None else ["ip", "-n", ns]
            sh(*prefix, "addr", "add", f"{net}.{host}/24", "dev", dev)
            sh(*prefix, "link", "set", dev, "up")
        return f"{net}.1", f"{net}.2"

    def route(self, ns: str, dest: str, via: str) -> None:
        sh("ip", "-n", ns, "route", "add", dest, "via", via)

    def nft(self, ns: str, script: str) -> None:
        subprocess.run(
            ["ip", "netns", "exec", ns, "nft", "-f", "-"],
            input=script, text=True, check=True, capture_output=True, timeout=30,
        )  # fmt: skip

    def cleanup(self) -> None:
        for dev in self.root_links:
            sh("ip", "link", "del", dev, check=False)
        for ns in self.namespaces:
            sh("ip", "netns", "del", ns, check=False)


@contextlib.contextmanager
def lab() -> Iterator[Lab]:
    made = Lab()
    try:
        yield made
    finally:
        made.cleanup()


def drop_table(percent: int, proto: str = "icmp", saddr: str | None = None) -> str:
    """An nftables input filter dropping `percent`% (100: everything) of one protocol."""
    match = f"ip saddr {saddr} " if saddr else ""
    verdict = "drop" if percent >= 100 else f"numgen random mod 100 < {percent} drop"
    return (
        "table inet wardready_test {\n"
        "  chain input {\n"
        "    type filter hook input priority 0; policy accept;\n"
        f"    {match}ip protocol {proto} {verdict}\n"
        "  }\n"
        "}\n"
    )


def remove_table(lab_: Lab, ns: str) -> None:
    lab_.nft(ns, "delete table inet wardready_test\n")
