"""`status --lang vi`: the same summary as the API and the board, read in Vietnamese."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from collector import cli
from collector.service import Service
from tests.collector.test_cli import feed

from .conftest import READY

VI_PROFILE_LINE = "    title: WAN line loss under 1% over 15 min\n"


def test_status_in_vietnamese_uses_vietnamese_titles_words_and_order(
    client: TestClient,
    service: Service,
    db_url: str,
    profile_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = profile_path.read_text("utf-8")
    profile_path.write_text(
        text.replace(VI_PROFILE_LINE, VI_PROFILE_LINE + "    title_vi: Mất gói WAN dưới 1%\n"),
        "utf-8",
    )
    feed(client, service)
    argv = ["--db", db_url, "--profile", str(profile_path), "status", "--width", "200"]
    assert cli.main([*argv, "--lang", "vi"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("1/4 sẵn sàng  (chưa sẵn sàng 3, chưa rõ 0)")
    assert "Tổ công tác 1: 0/2 sẵn sàng" in lines
    assert "Mất gói WAN dưới 1% — pc-01/wan-city→gw: loss_ratio avg 0.5" in out
    assert "chưa có máy trạm nào gửi báo cáo" in out
    ready = next(line for line in lines if READY in line)
    assert "Phường Bến Thành" in ready and "sẵn sàng" in ready
    # Within a group, not-ready wards first, then by Vietnamese name: Bình before Minh.
    group1 = lines[lines.index("Tổ công tác 1: 0/2 sẵn sàng") + 1 :][:2]
    assert "ward-binh-thoi" in group1[0] and "ward-minh-phung" in group1[1]

    assert cli.main([*argv, "--lang", "en"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("1/4 ready")
