"""Notifications people can read in a mass outage: prometheus/templates/wardready.tmpl rendered
by a real Alertmanager, with prometheus/alertmanager.yml's routes, into a local server standing
in for Telegram's Bot API and a local SMTP server.

One Alertmanager receives, at once: 50 wards of working group 3 not ready (Vietnamese names,
long reasons), 3 alerts of working group 5, 64 alerts of every kind with absurd names, reasons
and group names in two more groups, and a fleet alert. Each group must give one Telegram
message within 4,096 characters and one e-mail, naming its wards intact.
"""

from __future__ import annotations

import email
import email.policy
import html
import re
import threading
import time
import unicodedata
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from aiosmtpd.controller import Controller

from tests.helpers import need_program
from tests.monitoring import ALERTMANAGER_YML, free_port, run, tail, wait_for
from tests.monitoring.alertmanager_peer import Hooks, absolute_templates, running, serving

pytestmark = pytest.mark.peer

TELEGRAM_LIMIT = 4096
LISTED = 20  # alerts a Telegram message lists; the rest are counted and linked
NAME_CHARS, REASON_CHARS, GROUP_CHARS = 48, 100, 24
BOARD = "https://wardready.example/"
NOT_LISTED_TELEGRAM = "…and {n} more: {link}"
GROUP_INTERVAL_S = 2

# Ward names as the collector exports them: NFC, with their diacritics.
NAMES = [
    f"Phường {n}"
    for n in [
        *("Sài Gòn", "Tân Định", "Bến Thành", "Cầu Ông Lãnh", "Bàn Cờ", "Xuân Hòa", "Nhiêu Lộc"),
        *("Xóm Chiếu", "Khánh Hội", "Vĩnh Hội", "Chợ Quán", "An Đông", "Chợ Lớn", "Bình Tây"),
        *("Bình Tiên", "Bình Phú", "Phú Lâm", "Tân Thuận", "Phú Thuận", "Tân Mỹ", "Tân Hưng"),
        *("Chánh Hưng", "Phú Định", "Bình Đông", "Diên Hồng", "Vườn Lài", "Hòa Hưng"),
        *("Minh Phụng", "Bình Thới", "Hòa Bình", "Phú Thọ", "Đông Hưng Thuận", "Trung Mỹ Tây"),
        *("Tân Thới Hiệp", "Thới An", "An Phú Đông", "An Lạc", "Tân Tạo", "Bình Tân"),
        *("Bình Trị Đông", "Bình Hưng Hòa", "Gia Định", "Bình Thạnh", "Bình Lợi Trung"),
        *("Thạnh Mỹ Tây", "Bình Quới", "Hạnh Thông", "An Nhơn", "Gò Vấp", "An Hội Đông"),
    ]
]
MASS_GROUP = "3"
SMALL_GROUP = "5"
# The longest group name shown whole, of characters Telegram counts twice and URLs encode in
# 12: the worst case for the title and the link.
WIDE_GROUP = "🏙" * GROUP_CHARS
LONG_GROUP = "Nhóm công tác " * 40
KINDS = [
    "WardSilent",
    "WardNotReady",
    "LineLossHigh",
    "LineLatencyHigh",
    "VCQualityLow",
    "PrinterOrScannerDown",
    "SomethingNew",
]


def reason_of(i: int) -> str:
    return (
        f"shared_systems failed (+{i % 4 + 1} more): Hệ thống quản lý văn bản và điều hành không "
        "phản hồi; cổng dịch vụ công quốc gia từ chối kết nối sau 5 giây; thư công vụ "
        "không gửi được qua máy chủ của Sở Thông tin và Truyền thông"
    )


def ward_id(name: str) -> str:
    plain = unicodedata.normalize("NFKD", name.replace("đ", "d").replace("Đ", "D"))
    return "ward-" + "-".join(plain.encode("ascii", "ignore").decode().lower().split()[1:])


def mass_outage() -> list[dict[str, Any]]:
    return [
        {
            "labels": {
                "alertname": "WardNotReady",
                "severity": "critical",
                "working_group": MASS_GROUP,
                "ward": ward_id(name),
                "ward_name": name,
            },
            "annotations": {"reason": reason_of(i), "summary": f"{name} is not ready"},
        }
        for i, name in enumerate(NAMES)
    ]


def small_group() -> list[dict[str, Any]]:
    rows = [
        ("WardSilent", "critical", "Xã Cần Giờ", "no agent heard for 6m 0s"),
        ("WardNotReady", "critical", "Xã Thạnh An", "wan_loss failed"),
        ("LineLossHigh", "warning", "Phường Tân Sơn Nhất", "fibre line: 5% packet loss"),
    ]
    return [
        {
            "labels": {
                "alertname": alertname,
                "severity": severity,
                "working_group": SMALL_GROUP,
                "ward": ward_id(name),
                "ward_name": name,
            },
            "annotations": {"reason": reason, "summary": f"{name}: {alertname}"},
        }
        for alertname, severity, name, reason in rows
    ]


def absurd(group: str, count: int) -> list[dict[str, Any]]:
    """Alerts of every kind whose every text is far too long, with markup, line breaks,
    control characters and emoji; some without a reason, some without a ward."""
    out = []
    for i in range(count):
        labels = {
            "alertname": KINDS[i % len(KINDS)],
            "severity": "critical",
            "working_group": group,
        }
        if i % 9:
            labels["ward"] = f"ward-absurd-{len(group)}-{i:03d}"
            labels["ward_name"] = f"Phường <b>Thử</b> & {i}\n\t" + "Đường Dài 🏙 " * 40
        annotations = {"summary": "Tóm tắt\x07 rất dài " * 300}
        if i % 4:
            annotations["reason"] = f"Lý do {i} \u200b" + "quá dài 🚨 & <i>x</i> " * 400
        out.append({"labels": labels, "annotations": annotations})
    return out


FLEET = [
    {
        "labels": {"alertname": "CollectorDown", "severity": "critical", "scope": "fleet"},
        "annotations": {"summary": "Prometheus cannot scrape the wardready collector"},
    }
]


def shown(text: str, limit: int) -> str:
    """What the template makes of a text: one line, cut to ``limit`` characters (as Go's
    regexp sees them: ``\\s`` is ASCII, ``\\p{C}`` is Cc, Cf, Co and Cs)."""
    text = re.sub(r"[\t\n\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+", " ", text)
    text = "".join(c for c in text if unicodedata.category(c) not in ("Cc", "Cf", "Co", "Cs"))
    text = re.sub("[\U00010000-\U0010ffff]", "\ufffd", text)
    if len(text) > limit:
        return text[: limit - 1] + "…"
    return text


def link(group: str) -> str:
    if 1 <= len(group) <= GROUP_CHARS and "\n" not in group:
        return f"{BOARD}?group={urllib.parse.quote_plus(group)}"
    return BOARD


# --- the peers ------------------------------------------------------------------------------


@dataclass
class Mailbox:
    """Every message a local SMTP server received, with its envelope recipients."""

    messages: list[tuple[list[str], EmailMessage]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self.lock:
            self.messages.append((list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[EmailMessage]:
        with self.lock:
            return [m for rcpt, m in self.messages if address in rcpt]


@pytest.fixture(scope="module")
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield box, controller.port
    finally:
        controller.stop()


def notifying_copy(tmp: Path, hooks_url: str, smtp_port: int) -> Path:
    """alertmanager.yml as shipped (routes, grouping, templates, receivers' messages), with
    every address turned to this test's servers and notification delays shortened."""
    config = yaml.safe_load(ALERTMANAGER_YML.read_text(encoding="utf-8"))
    absolute_templates(config, ALERTMANAGER_YML)
    smtp = config["global"]
    del smtp["smtp_auth_username"], smtp["smtp_auth_password_file"]
    smtp.update(smtp_smarthost=f"127.0.0.1:{smtp_port}", smtp_require_tls=False)
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = f"{hooks_url}/{receiver['name']}"
        for telegram in receiver.get("telegram_configs", []):
            telegram["api_url"] = hooks_url
    config["route"].update(group_wait="2s", group_interval=f"{GROUP_INTERVAL_S}s")
    path = tmp / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


@dataclass
class Told:
    telegram: list[dict[str, Any]]  # sendMessage requests, in order
    chat_id: str
    mail: Mailbox
    resolved: list[str]  # Telegram texts sent once the small group's alerts ended


def telegram_settings() -> tuple[str, str]:
    config = yaml.safe_load(ALERTMANAGER_YML.read_text(encoding="utf-8"))
    (receiver,) = [r for r in config["receivers"] if r["name"] == "dtc-telegram"]
    (telegram,) = receiver["telegram_configs"]
    return f"bot{telegram['bot_token']}/sendMessage", str(telegram["chat_id"])


@pytest.fixture(scope="module")
def told(tmp_path_factory: pytest.TempPathFactory, mailbox: tuple[Mailbox, int]) -> Iterator[Told]:
    """Every alert posted to one Alertmanager at once; what it sent once it settled."""
    need_program("prometheus-alertmanager")
    box, smtp_port = mailbox
    tmp = tmp_path_factory.mktemp("notifications")
    path, chat_id = telegram_settings()
    alerts = [
        *mass_outage(),
        *small_group(),
        *absurd(WIDE_GROUP, 32),
        *absurd(LONG_GROUP, 32),
        *FLEET,
    ]
    # Telegram is told of critical alerts: every group's, and the fleet's.
    groups = {MASS_GROUP, SMALL_GROUP, WIDE_GROUP, LONG_GROUP, ""}
    hooks: Hooks
    with serving() as hooks:
        config = notifying_copy(tmp, hooks.url, smtp_port)
        check = run([need_program("amtool"), "check-config", str(config)])
        assert check.returncode == 0, check.stdout + check.stderr
        with running(config, tmp) as api, httpx.Client(timeout=5) as http:
            assert http.post(f"{api}/alerts", json=alerts).status_code == 200

            def all_sent() -> bool:
                ward_groups = {
                    body["alerts"][0]["labels"].get("working_group", "")
                    for receiver in ("wg-3-oncall", "wg-5-oncall", "dtc-oncall")
                    for body in hooks.bodies(receiver)
                }
                return (
                    len(hooks.bodies(path)) >= len(groups)
                    and ward_groups >= groups
                    and len(box.messages) >= len(groups)
                )

            try:
                wait_for(all_sent, 60, "a notification for every group", step=0.5)
            except AssertionError as exc:
                got = [(p, str(b)[:300]) for p, b in hooks.received], len(box.messages)
                log = tail(tmp / "alertmanager.log")
                raise AssertionError(f"{exc}; received {got}\n{log}") from None
            # A group split over two flushes would send again one group interval later.
            sent = (len(hooks.bodies(path)), len(box.messages))
            time.sleep(3 * GROUP_INTERVAL_S)
            assert (len(hooks.bodies(path)), len(box.messages)) == sent, "sent again"
            firing = hooks.bodies(path)

            ended = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
            over = [{**a, "endsAt": ended} for a in small_group()]
            assert http.post(f"{api}/alerts", json=over).status_code == 200
            wait_for(lambda: len(hooks.bodies(path)) > len(firing), 30, "resolved", step=0.5)
            resolved = [m["text"] for m in hooks.bodies(path)[len(firing) :]]
        yield Told(firing, chat_id, box, resolved)


def telegram_for(told: Told, group: str) -> list[str]:
    where = f"working group {shown(group, GROUP_CHARS)}" if group else "city-wide"
    title = re.compile(rf"^(🔴|✅) wardready, {re.escape(where)}: ")
    return [m["text"] for m in told.telegram if title.match(m["text"])]


def bullets(text: str) -> list[tuple[str, str]]:
    out = []
    for line in text.splitlines():
        if line.startswith("• "):
            who, sep, why = line[2:].partition(" — ")
            assert sep, line
            out.append((who, why))
    return out


def within_telegram_limit(text: str) -> None:
    assert len(text) < TELEGRAM_LIMIT, len(text)
    # Telegram counts UTF-16 code units: an emoji counts twice.
    assert len(text.encode("utf-16-le")) // 2 < TELEGRAM_LIMIT


# --- Telegram -------------------------------------------------------------------------------


def test_mass_outage_is_one_telegram_message_naming_the_wards(told: Told) -> None:
    (text,) = telegram_for(told, MASS_GROUP)
    within_telegram_limit(text)
    assert unicodedata.is_normalized("NFC", text)
    lines = text.splitlines()
    assert lines[0] == f"🔴 wardready, working group {MASS_GROUP}: 50 firing"
    assert "Not ready: 50" in lines
    listed = bullets(text)
    assert len(listed) == LISTED
    reasons = {name: reason_of(i) for i, name in enumerate(NAMES)}
    for name, why in listed:
        assert name in reasons, f"{name!r}: not one of the names posted, intact"
        assert why == shown(reasons[name], REASON_CHARS)
        assert why.endswith("…") and len(why) == REASON_CHARS
    assert len({name for name, _ in listed}) == LISTED
    assert lines[-1] == NOT_LISTED_TELEGRAM.format(n=50 - LISTED, link=link(MASS_GROUP))
    assert lines[-1].endswith(f"{BOARD}?group=3")


def test_telegram_request_is_plain_text_to_the_configured_chat(told: Told) -> None:
    for message in told.telegram:
        assert message["chat_id"] == told.chat_id
        # Plain text: Telegram parses no markup that a name could break.
        assert not message.get("parse_mode")


def test_a_small_group_is_listed_whole_with_the_board_link(told: Told) -> None:
    (text,) = telegram_for(told, SMALL_GROUP)
    lines = text.splitlines()
    # Only the critical alerts reach Telegram: the packet loss warning does not.
    assert lines[0] == f"🔴 wardready, working group {SMALL_GROUP}: 2 firing"
    assert "Silent, no agent reporting: 1" in lines and "Not ready: 1" in lines
    assert bullets(text) == [
        ("Xã Cần Giờ", "no agent heard for 6m 0s"),
        ("Xã Thạnh An", "wan_loss failed"),
    ]
    assert lines[-1] == f"Board: {BOARD}?group={SMALL_GROUP}"
    assert "more" not in text


@pytest.mark.parametrize("group", [WIDE_GROUP, LONG_GROUP], ids=["wide", "long"])
def test_absurd_texts_stay_within_telegram_limit(told: Told, group: str) -> None:
    (text,) = telegram_for(told, group)
    within_telegram_limit(text)
    lines = text.splitlines()
    assert lines[0].endswith(": 32 firing")
    listed = bullets(text)
    assert len(listed) == LISTED
    for who, why in listed:
        assert len(who) <= NAME_CHARS and len(why) <= REASON_CHARS, (who, why)
        assert "\n" not in who and "\x07" not in why and "\u200b" not in why
        assert not re.search("[\U00010000-\U0010ffff]", who + why), "emoji count twice"
    # Markup is shown as typed: the message is not parsed as HTML.
    assert any(who.startswith("Phường <b>Thử</b> & ") for who, _ in listed)
    # Each kind is counted, listed or not; the others are counted under "Other".
    for heading in ("Silent, no agent reporting", "Not ready", "Printers and scanners", "Other"):
        assert any(re.fullmatch(rf"{heading}: \d+", line) for line in lines), heading
    assert lines[-1] == NOT_LISTED_TELEGRAM.format(n=32 - LISTED, link=link(group))


def test_the_end_of_an_outage_is_one_message(told: Told) -> None:
    (text,) = told.resolved
    assert text.splitlines() == [
        f"✅ wardready, working group {SMALL_GROUP}: 0 firing, 2 resolved",
        "",
        f"Board: {BOARD}?group={SMALL_GROUP}",
    ]


def test_fleet_alerts_come_as_one_city_wide_message(told: Told) -> None:
    (text,) = telegram_for(told, "")
    assert bullets(text) == [("CollectorDown", "Prometheus cannot scrape the wardready collector")]
    assert text.splitlines()[-1] == f"Board: {BOARD}"


def test_one_telegram_message_per_group(told: Told) -> None:
    groups = [MASS_GROUP, SMALL_GROUP, WIDE_GROUP, LONG_GROUP, ""]
    assert sorted(len(telegram_for(told, g)) for g in groups) == [1] * len(groups)
    assert len(told.telegram) == len(groups)


# --- e-mail ---------------------------------------------------------------------------------


def parts(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(preferencelist=("plain",))
    page = message.get_body(preferencelist=("html",))
    assert text is not None and page is not None, message
    return text.get_content(), page.get_content()


def test_mass_outage_is_one_email_listing_every_ward(told: Told) -> None:
    (message,) = told.mail.to("wg-3-oncall@example.gov.vn")
    assert message["Subject"] == f"[wardready] working group {MASS_GROUP}: 50 firing"
    assert message["To"] == "wg-3-oncall@example.gov.vn"
    text, page = parts(message)
    assert unicodedata.is_normalized("NFC", text) and unicodedata.is_normalized("NFC", page)
    # The mail has room for the whole group.
    listed = [line for line in text.splitlines() if line.startswith("- ")]
    assert len(listed) == len(NAMES)
    for i, name in enumerate(NAMES):
        assert f"- {name}: {shown(reason_of(i), REASON_CHARS)} (since " in text
        assert f"<td>{name}</td>" in page
    assert "Not ready: 50" in text and "Not ready: 50</h3>" in page
    assert f"Board: {BOARD}?group=3" in text
    assert f'<a href="{BOARD}?group=3">' in page


def test_email_escapes_markup_in_names(told: Told) -> None:
    (message,) = [
        m for m in told.mail.to("dtc-oncall@example.gov.vn") if LONG_GROUP[:12] in m["Subject"]
    ]
    _, page = parts(message)
    assert "<b>Thử</b>" not in page
    assert "Phường &lt;b&gt;Thử&lt;/b&gt; &amp; " in page
    names = re.findall(r"<tr><td>(.*?)</td>", page)
    assert len(names) == 32
    for name in names:
        assert len(html.unescape(name)) <= NAME_CHARS, name
