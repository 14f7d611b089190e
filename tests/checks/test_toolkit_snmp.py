"""checks._snmp, the SNMP client the printer check and discovery share, against snmpsimd."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from checks import _snmp
from checks.core import CheckFailed
from tests.devices import snmpsim

pytestmark = pytest.mark.peer

ROOT = Path(__file__).resolve().parents[2]
SYS_DESCR = (1, 3, 6, 1, 2, 1, 1, 1, 0)
SYS_OBJECT_ID = (1, 3, 6, 1, 2, 1, 1, 2, 0)
NOT_THERE = (1, 3, 6, 1, 2, 1, 1, 99, 0)
SUPPLY_DESCR = (1, 3, 6, 1, 2, 1, 43, 11, 1, 1, 6)
SUPPLY_LEVEL = (1, 3, 6, 1, 2, 1, 43, 11, 1, 1, 9)


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with snmpsim(tmp_path_factory.mktemp("snmpsim")) as port:
        yield port


def _ask(port: int, community: str, work: Any, timeout: float = 2.0) -> Any:
    async def go() -> Any:
        with _snmp.engine() as engine:
            session = await _snmp.Session.open(
                engine, _snmp.community(community), ("127.0.0.1", port), socket.AF_INET,
                timeout, 0,
            )  # fmt: skip
            return await work(session)

    return asyncio.run(go())


def test_get_gives_plain_values(sim: int) -> None:
    values = _ask(sim, "mono-normal", lambda s: s.get([SYS_DESCR, SYS_OBJECT_ID, NOT_THERE]))
    assert values == {
        SYS_DESCR: b"Brother HL-L5100DN series",
        SYS_OBJECT_ID: "1.3.6.1.4.1.2435.2.3.9.1",
        NOT_THERE: None,
    }


def test_columns_walk_side_by_side(sim: int) -> None:
    table = _ask(sim, "mono-normal", lambda s: s.columns([SUPPLY_DESCR, SUPPLY_LEVEL], 32))
    assert table[SUPPLY_DESCR] == {
        (1, 1): b"Black Toner Cartridge TN-3480",
        (1, 2): b"Drum Unit DR-3455",
    }
    assert table[SUPPLY_LEVEL] == {(1, 1): 64, (1, 2): 41200}


def test_columns_stop_at_max_rows(sim: int) -> None:
    table = _ask(sim, "mono-normal", lambda s: s.columns([SUPPLY_LEVEL], 1))
    assert table == {SUPPLY_LEVEL: {(1, 1): 64}}


def test_small_bulk_still_walks_every_row(sim: int) -> None:
    async def work(session: _snmp.Session) -> Any:
        session.bulk = 1
        return await session.columns([SUPPLY_DESCR, SUPPLY_LEVEL], 32)

    table = _ask(sim, "mono-normal", work)
    assert len(table[SUPPLY_DESCR]) == len(table[SUPPLY_LEVEL]) == 2


def test_no_answer_is_a_timeout(sim: int) -> None:
    # snmpsim stays silent for a community it has no recording for, as a device does.
    with pytest.raises(CheckFailed) as failed:
        _ask(sim, "no-such-community", lambda s: s.get([SYS_DESCR]), timeout=0.3)
    assert failed.value.reason == "timeout"
    assert "no-such-community" not in failed.value.message


def test_pysnmp_is_not_loaded_until_used() -> None:
    code = (
        "import sys, checks._snmp, checks.registry, agent.cli, agent.discover_net\n"
        "assert not [m for m in sys.modules if m.startswith('pysnmp')], 'pysnmp imported'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
