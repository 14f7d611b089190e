"""Exports: the PDF keeps every Vietnamese letter, HTML and CSV read in either language."""

from __future__ import annotations

import csv
import io
import subprocess
import unicodedata
from pathlib import Path

import pytest

from collector import audit_export, audits
from collector.service import Service
from tests.helpers import need_program

from .conftest import Fed, take


@pytest.fixture
def taken(service: Service, fed: Fed) -> audits.Audit:
    return take(service, title="Chạy thử ngày 12/6 — Trung tâm Phục vụ hành chính công")


@pytest.mark.parametrize("lang", ["vi", "en"])
def test_pdf_text_has_the_names_intact_and_pages_are_drawn(
    taken: audits.Audit, artifacts: Path, lang: str
) -> None:
    pdftotext, pdftoppm = need_program("pdftotext"), need_program("pdftoppm")
    pdf = artifacts / f"audit-{lang}.pdf"
    pdf.write_bytes(audit_export.pdf(taken, lang))
    text = subprocess.run(
        [pdftotext, "-layout", str(pdf), "-"], capture_output=True, check=True, timeout=60
    ).stdout.decode("utf-8")
    text = unicodedata.normalize("NFC", text)
    kind = "Phường" if lang == "vi" else "Ward"
    for name in ("Bến Thành", "Minh Phụng", "Đa Kao"):
        assert f"{kind} {name}" in text
    assert ("Xã Cần Giờ" if lang == "vi" else "Commune Cần Giờ") in text
    assert "Nguyễn Văn An" in text and "Trung tâm Phục vụ hành chính công" in text
    assert taken.sha256 in text
    if lang == "vi":
        assert "Biên bản đánh giá mức độ sẵn sàng" in text and "62,9%" in text
    else:
        assert "Readiness audit" in text and "62.9%" in text
    fonts = subprocess.run(["pdffonts", str(pdf)], capture_output=True, check=True, timeout=60)
    assert b"Noto" in fonts.stdout or b"DejaVu" in fonts.stdout
    for old in artifacts.glob(f"audit-{lang}-*.png"):
        old.unlink()
    subprocess.run(
        [pdftoppm, "-png", "-r", "80", str(pdf), str(artifacts / f"audit-{lang}")],
        check=True,
        timeout=120,
    )
    pages = sorted(artifacts.glob(f"audit-{lang}-*.png"))
    assert len(pages) >= 2
    assert all(p.stat().st_size > 10_000 for p in pages)


def test_html_is_in_the_chosen_language_and_sorted_the_vietnamese_way(
    taken: audits.Audit, artifacts: Path
) -> None:
    vi = audit_export.html(taken, "vi")
    en = audit_export.html(taken, "en")
    (artifacts / "audit-vi.html").write_text(vi, encoding="utf-8")
    (artifacts / "audit-en.html").write_text(en, encoding="utf-8")
    assert '<html lang="vi">' in vi and '<html lang="en">' in en
    assert "Người xác nhận" in vi and "Signed off by" in en
    assert "không đạt 44 phút 30 giây" in vi
    # Bến, Cần, Đa, Minh: Đ sorts after D, not after Z as its code point would.
    names = ["Phường Bến Thành", "Xã Cần Giờ", "Phường Đa Kao", "Phường Minh Phụng"]
    found = [vi.index(f"{n}<br>") for n in names]
    assert found == sorted(found)
    # Evidence in Vietnamese is built from the stored numbers, in Vietnamese notation.
    assert "loss_ratio avg 0,033333 trong 15m (30 mẫu), yêu cầu &lt; 0,01" in vi
    assert "lần đo gần nhất: no_reply" in vi
    # In English it is the very sentence the live judge wrote.
    assert "loss_ratio avg 0.03333 over 15m (30 samples) ≥ 0.01; latest run: no_reply" in en


def test_html_escapes_what_people_typed(service: Service, fed: Fed) -> None:
    taken = take(service, title="<script>alert(1)</script>", signed_off_by="A & B")
    page = audit_export.html(taken, "en")
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "A &amp; B" in page


def test_csv_has_a_bom_nfc_names_and_one_row_per_ward(taken: audits.Audit, artifacts: Path) -> None:
    data = audit_export.csv_bytes(taken, "vi")
    (artifacts / "audit-vi.csv").write_bytes(data)
    assert data.startswith(b"\xef\xbb\xbf")
    text = data.decode("utf-8-sig")
    assert unicodedata.is_normalized("NFC", text)
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0][:4] == ["Mã phường, xã", "Phường, xã", "Tổ công tác", "Tỷ lệ thời gian sẵn sàng"]
    body = {r[0]: r for r in rows[1:]}
    assert [r[1] for r in rows[1:]] == [
        "Phường Bến Thành", "Xã Cần Giờ", "Phường Đa Kao", "Phường Minh Phụng"
    ]  # fmt: skip
    cut = body["ward-minh-phung"]
    assert cut[3] == "62,9%" and cut[4] == "4530" and cut[5] == "2670"
    assert cut[9] == "wan_loss (44 phút 30 giây); wan_up (31 phút)"
    assert cut[11:] == ["720", "60"]
    assert body["commune-can-gio"][7] == ""  # never ready: no time
    en = audit_export.csv_bytes(taken, "en").decode("utf-8-sig")
    assert en.startswith("Ward id,Ward,Working group,Ready share")
    assert "Ward Minh Phụng" in en and "62.9%" in en


def test_show_text_in_both_languages(taken: audits.Audit) -> None:
    vi = audit_export.text(taken, "vi")
    assert vi.splitlines()[0] == f"Biên bản #{taken.id}: {taken.content['title']}"
    assert "ward-minh-phung  Phường Minh Phụng  sẵn sàng 62,9%" in vi
    en = audit_export.text(taken, "en")
    assert "ward-minh-phung  Ward Minh Phụng  ready 62.9%" in en
