#!/usr/bin/env python3
"""Dynamic inventory: the ward PCs, grouped as the units CSV groups their wards.

Ward facts (id, name, kind, former district, working group) come from the units CSV
(``data/hcmc_pilot_units*.csv``, or the files named in ``WARDREADY_UNITS``, separated by
``:``); which PC serves which ward, and at what address, comes from ``ward_pcs.csv`` next to
this script (or ``WARDREADY_WARD_PCS``), the one piece of site data kept by hand:

    host,ward,address,agent
    pc-minh-phung,ward-minh-phung,10.11.1.10,
    pc-ben-thanh-2,ward-ben-thanh,10.12.1.11,pc-02

Groups: ``wardready_agents`` (every PC), ``wg_<N>`` per working group and
``former_<district>`` per former district (slugified). Host variables: ``ward_id``,
``ward_name`` (NFC, diacritics kept), ``ward_kind``, ``former_district``, ``working_group``,
``wardready_agent_name`` (the ``agent`` column, else the host name) and ``ansible_host``.
Standard library only: Ansible runs this with whatever ``python3`` the controller has.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import re
import sys
import unicodedata
from pathlib import Path

HERE = Path(__file__).parent
REPO = Path(__file__).resolve().parent.parent.parent
UNIT_COLUMNS = ("id", "name", "kind", "former_district", "working_group")
PC_COLUMNS = ("host", "ward", "address")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class InventoryError(Exception):
    pass


def slug(text: str) -> str:
    """ASCII group-name form of a district: 'Quận Gò Vấp' -> 'quan_go_vap'."""
    plain = unicodedata.normalize("NFKD", text.replace("đ", "d").replace("Đ", "D"))
    plain = "".join(c for c in plain if not unicodedata.combining(c))
    return re.sub(r"[^a-z0-9]+", "_", plain.lower()).strip("_")


def rows(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise InventoryError(f"{path}:1: missing column(s) {', '.join(missing)}")
            return [
                (reader.line_num, {k: (v or "").strip() for k, v in r.items() if k}) for r in reader
            ]
    except OSError as exc:
        raise InventoryError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def load_units(paths: list[Path]) -> dict[str, dict[str, object]]:
    units: dict[str, dict[str, object]] = {}
    for path in paths:
        for line, r in rows(path, UNIT_COLUMNS):
            where = f"{path}:{line}"
            for column in UNIT_COLUMNS:
                if not r[column]:
                    raise InventoryError(f"{where}: {column}: empty")
            if not r["working_group"].isdigit():
                raise InventoryError(
                    f"{where}: working_group: not a number: {r['working_group']!r}"
                )
            unit: dict[str, object] = {
                "ward_id": r["id"],
                "ward_name": unicodedata.normalize("NFC", r["name"]),
                "ward_kind": r["kind"],
                "former_district": unicodedata.normalize("NFC", r["former_district"]),
                "working_group": int(r["working_group"]),
            }
            if r["id"] in units and units[r["id"]] != unit:
                raise InventoryError(f"{where}: id: {r['id']} is listed twice, differently")
            units[r["id"]] = unit
    return units


def build(units: dict[str, dict[str, object]], pcs: Path) -> dict[str, object]:
    hostvars: dict[str, dict[str, object]] = {}
    groups: dict[str, list[str]] = {}
    for line, r in rows(pcs, PC_COLUMNS):
        where = f"{pcs}:{line}"
        host, ward = r["host"], r["ward"]
        if not NAME.match(host):
            raise InventoryError(f"{where}: host: not a host name: {host!r}")
        if host in hostvars:
            raise InventoryError(f"{where}: host: {host} is listed twice")
        if ward not in units:
            raise InventoryError(f"{where}: ward: {ward!r} is not in the units CSV")
        if not r["address"]:
            raise InventoryError(f"{where}: address: empty")
        unit = units[ward]
        hostvars[host] = {
            **unit,
            "ansible_host": r["address"],
            "wardready_agent_name": r.get("agent") or host,
        }
        for group in (
            "wardready_agents",
            f"wg_{unit['working_group']}",
            f"former_{slug(str(unit['former_district']))}",
        ):
            groups.setdefault(group, []).append(host)
    inventory: dict[str, object] = {g: {"hosts": hosts} for g, hosts in sorted(groups.items())}
    inventory["_meta"] = {"hostvars": hostvars}
    return inventory


def unit_files() -> list[Path]:
    named = os.environ.get("WARDREADY_UNITS")
    if named:
        return [Path(p) for p in named.split(":") if p]
    found = sorted(glob.glob(str(REPO / "data" / "hcmc_pilot_units*.csv")))
    if not found:
        raise InventoryError(f"no units CSV under {REPO / 'data'} (or set WARDREADY_UNITS)")
    return [Path(p) for p in found]


def main(argv: list[str]) -> int:
    if len(argv) > 1 and argv[1] == "--host":
        print("{}")  # every host variable is in _meta
        return 0
    try:
        pcs = Path(os.environ.get("WARDREADY_WARD_PCS") or HERE / "ward_pcs.csv")
        inventory = build(load_units(unit_files()), pcs)
    except InventoryError as exc:
        print(f"wards.py: {exc}", file=sys.stderr)
        return 1
    json.dump(inventory, sys.stdout, ensure_ascii=False, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
