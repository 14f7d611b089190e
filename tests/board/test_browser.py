"""The board and a ward page in a real browser (Debian's chromium, driven by playwright),
served by a collector fed by real agents; accessibility checked by axe-core in the page;
and the verdict history surviving a restart of that collector.

Screenshots land in ``artifacts/board/`` (git-ignored) at 1366×768 and at phone size.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from demo import line_and_dms
from fleet import ROOT, Agent, Collector, free_port, http_server, stopping, wait_until

from tests.helpers import need

pytestmark = pytest.mark.e2e

READY = "ward-ben-thanh"
BROKEN = "ward-minh-phung"
CHROMIUM = "/usr/bin/chromium"
AXE = Path(__file__).with_name("vendor") / "axe.min.js"
ARTIFACTS = ROOT / "artifacts" / "board"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
DESKTOP = {"width": 1366, "height": 768}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def fleet() -> Iterator[Collector]:
    work = Path(tempfile.mkdtemp(prefix="wardready-board-"))
    site = work / "site"
    site.mkdir()
    (site / "index.html").write_text("<h1>Hệ thống quản lý văn bản</h1>\n", "utf-8")
    collector = Collector(work, ROOT / "collector" / "profiles" / "demo.yaml")
    collector.setup()
    web_port, dead_port = free_port(), free_port()
    web = http_server(site, web_port, work / "web.log")
    good = Agent(work, READY, "pc-01", collector, line_and_dms(f"http://127.0.0.1:{web_port}/"))
    bad = Agent(work, BROKEN, "pc-01", collector, line_and_dms(f"http://127.0.0.1:{dead_port}/"))
    try:
        with stopping(web, collector, good, bad):
            collector.start()
            good.start()
            bad.start()
            wait_until(
                lambda: (
                    collector.ward(READY)["verdict"] == "ready"
                    and [r.split(":")[0] for r in collector.ward(BROKEN)["reasons"]]
                    == ["shared_system"]
                    and "pc-01/dms" in collector.ward(BROKEN)["reasons"][0]
                ),
                90,
                step=1,
                what="one ward ready, one not ready for its shared system",
            )
            yield collector
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    need(Path(CHROMIUM).exists(), "chromium is not installed (scripts/setup.sh installs it)")
    need(importlib.util.find_spec("playwright") is not None, "playwright is not installed")
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="wardready-chromium-")
    with sync_playwright() as p:
        # A persistent context is the way to hand chromium a fresh --user-data-dir.
        context = p.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            args=FLAGS,
            headless=True,
            viewport=DESKTOP,
            locale="vi-VN",
        )
        try:
            yield context
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def signed_in(fleet: Collector, browser: Any) -> Any:
    """The browser after an officer signed in the way the board asks: the board sends a
    visitor without a token to /login, where a viewer token is pasted once."""
    page = browser.new_page()
    page.goto(fleet.url + "/", wait_until="load")
    assert page.url == fleet.url + "/login", page.url
    page.fill("input[name=token]", "not-a-token")
    page.click("button[type=submit]")
    assert page.locator("[role=alert]").count() == 1
    shot(page, "login-refused")
    page.fill("input[name=token]", fleet.viewer_token_file.read_text().strip())
    page.click("button[type=submit]")
    page.wait_for_url(fleet.url + "/")
    page.close()
    return browser


def open_page(context: Any, url: str, size: dict[str, int]) -> tuple[Any, list[str]]:
    page = context.new_page()
    page.set_viewport_size(size)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    response = page.goto(url, wait_until="load")
    assert response is not None and response.status == 200, url
    return page, errors


def shot(page: Any, name: str, full: bool = False) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full)
    assert path.stat().st_size > 10_000
    return path


def serious_violations(page: Any) -> list[str]:
    page.add_script_tag(path=str(AXE))
    found = page.evaluate(
        "async () => (await axe.run(document)).violations"
        ".map(v => ({id: v.id, impact: v.impact, n: v.nodes.length,"
        " first: v.nodes[0] && v.nodes[0].target.join(' ')}))"
    )
    return [f"{v['id']} ({v['impact']}, {v['n']}×, e.g. {v['first']})" for v in found
            if v["impact"] in ("serious", "critical")]  # fmt: skip


def test_board_renders_matches_the_api_and_filters(fleet: Collector, signed_in: Any) -> None:
    browser = signed_in
    page, errors = open_page(browser, fleet.url + "/", DESKTOP)
    assert page.locator("html").get_attribute("lang") == "vi"
    api = {w["id"]: w["verdict"] for w in fleet.get("/api/v1/wards")}
    shown = dict(
        page.evaluate(
            "[...document.querySelectorAll('.tile')].map(t => [t.dataset.ward, t.dataset.verdict])"
        )
    )
    assert len(shown) == len(api) == 102
    assert shown == api
    ready_tile = page.locator(f'.tile[data-ward="{READY}"]')
    assert "Phường Bến Thành" in ready_tile.inner_text()
    assert "Sẵn sàng" in ready_tile.inner_text()
    broken_tile = page.locator(f'.tile[data-ward="{BROKEN}"]').inner_text()
    assert "Phường Minh Phụng" in broken_tile and "Chưa sẵn sàng" in broken_tile
    assert "Hệ thống dùng chung trả lời" in broken_tile  # the Vietnamese title of the reason
    headline = page.locator(".headline").inner_text()
    ready_n = sum(1 for v in api.values() if v == "ready")
    assert f"{ready_n}/102" in headline.replace("\n", "")
    shot(page, "board-1366x768")
    assert serious_violations(page) == []

    page.fill("#f-q", "ben thanh")
    visible = page.evaluate(
        "[...document.querySelectorAll('.tile:not([hidden])')].map(t => t.dataset.ward)"
    )
    assert visible == [READY]
    assert "q=ben+thanh" in page.url
    shot(page, "board-filtered-ben-thanh")
    page.fill("#f-q", "")
    page.select_option("#f-verdict", "ready")
    visible = page.evaluate(
        "[...document.querySelectorAll('.tile:not([hidden])')].map(t => t.dataset.ward)"
    )
    assert READY in visible and BROKEN not in visible
    page.select_option("#f-verdict", "")
    page.select_option("#f-group", "1")
    groups = set(page.evaluate(
        "[...document.querySelectorAll('.tile:not([hidden])')].map(t => t.dataset.group)"
    ))  # fmt: skip
    assert groups == {"1"}
    assert errors == []
    page.close()

    english, errors = open_page(browser, fleet.url + "/?lang=en", DESKTOP)
    assert english.locator("html").get_attribute("lang") == "en"
    tile = english.locator(f'.tile[data-ward="{BROKEN}"]').inner_text()
    assert "Ward Minh Phụng" in tile and "Not ready" in tile
    assert "Shared system answers (Document Management System)" in tile
    shot(english, "board-en-1366x768")
    assert errors == []
    english.close()

    phone, errors = open_page(browser, fleet.url + "/", PHONE)
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], "the board scrolls sideways on a phone"
    shot(phone, "board-phone")
    assert errors == []
    phone.close()


def test_ward_page_renders_with_charts_and_is_accessible(fleet: Collector, signed_in: Any) -> None:
    browser = signed_in
    for size, tag in ((DESKTOP, "1366x768"), (PHONE, "phone")):
        page, errors = open_page(browser, f"{fleet.url}/wards/{BROKEN}", size)
        assert page.locator("h1").inner_text() == "Phường Minh Phụng"
        assert "Chưa sẵn sàng" in page.locator(".verdict-box").inner_text()
        rows = page.locator("table.criteria tbody tr").count()
        assert rows == 3
        assert page.locator(".chart svg").count() >= 2  # WAN band and jitter
        assert "pc-01" in page.locator("#h-agents + div").inner_text()
        assert page.locator(".timeline li").count() >= 1
        shot(page, f"ward-{tag}")
        shot(page, f"ward-{tag}-full", full=True)
        assert serious_violations(page) == []
        assert errors == []
        if tag == "phone":
            # Wide tables scroll inside their box; the page itself does not.
            assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        page.close()


def test_audits_page_lists_a_sealed_audit_and_is_accessible(
    fleet: Collector, signed_in: Any
) -> None:
    # An audit of the last two minutes of the running fleet, taken from the CLI.
    end = datetime.now(UTC) - timedelta(seconds=5)
    window = [(end - timedelta(minutes=2)).isoformat(), end.isoformat()]
    fleet.cli("audit", "create", "--from", window[0], "--to", window[1], "--title",
              "Chạy thử tại chỗ", "--signed-off-by", "Nguyễn Văn An")  # fmt: skip
    for size, tag in ((DESKTOP, "1366x768"), (PHONE, "phone")):
        page, errors = open_page(signed_in, fleet.url + "/audits", size)
        assert page.locator("table.audits tbody tr").count() >= 1
        row = page.locator("table.audits tbody tr").first.inner_text()
        assert "Chạy thử tại chỗ" in row and "Nguyên vẹn" in row and "Nguyễn Văn An" in row
        shot(page, f"audits-{tag}")
        assert serious_violations(page) == []
        assert errors == []
        page.close()


def test_history_survives_a_collector_restart(fleet: Collector) -> None:
    before = fleet.get(f"/api/v1/wards/{READY}/history")
    firsts = [c for c in before["changes"] if c["criterion"] is None]
    assert firsts and firsts[-1]["to_state"] == "ready"
    assert before["ready_since"] == firsts[-1]["at"]
    # The first record of a ward starts from nothing: there was no state before it.
    assert firsts[0]["from_state"] is None

    fleet.stop()
    fleet.start()
    wait_until(lambda: fleet.ward(READY)["verdict"] == "ready", 30, what="ready after restart")
    after = fleet.get(f"/api/v1/wards/{READY}/history")
    # Nothing new from nothing: the restarted collector took up the stored states.
    assert [c for c in after["changes"] if c["from_state"] is None] == [
        c for c in before["changes"] if c["from_state"] is None
    ]
    assert after["ready_since"] == before["ready_since"]
