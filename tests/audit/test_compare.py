"""Two trial runs side by side: the ward whose line was cut in one and not the other."""

from __future__ import annotations

from collector import audit_compare, audits
from collector.service import Service

from .conftest import CUT, HEALTHY, JUNE_12, JUNE_22, OUTAGE, SILENT, Fed, take


def take_both(service: Service, fed: Fed) -> tuple[audits.Audit, audits.Audit]:
    return take(service, JUNE_12), take(service, JUNE_22, title="Chạy thử ngày 22/6")


def test_compare_finds_the_ward_whose_line_was_cut_in_one_window(
    service: Service, fed: Fed
) -> None:
    june_12, june_22 = take_both(service, fed)
    result = audit_compare.compare(june_12, june_22)
    assert result.same_profile
    by_id = {w.id: w for w in result.wards}
    assert by_id[CUT].change == "improved"
    assert (by_id[CUT].a_ready_seconds, by_id[CUT].b_ready_seconds) == (4530, 7200)
    cut = {c.id: c for c in by_id[CUT].criteria}
    assert set(cut) == {"wan_up", "wan_loss"}
    assert cut["wan_up"].change == "improved"
    assert (cut["wan_up"].a_failed_seconds, cut["wan_up"].b_failed_seconds) == (1860, 0)
    assert by_id[OUTAGE].change == "improved"
    assert by_id[HEALTHY].change == "stayed" and by_id[HEALTHY].criteria == []
    assert by_id[SILENT].change == "stayed"
    assert {c.change for c in by_id[SILENT].criteria} == {"stayed"}
    assert result.counts() == {"improved": 2, "regressed": 0, "stayed": 2}
    # The other way round, the same ward regressed, and it is listed first.
    back = audit_compare.compare(june_22, june_12)
    assert back.wards[0].id in (CUT, OUTAGE) and back.wards[0].change == "regressed"
    assert {c.id: c.change for c in next(w for w in back.wards if w.id == CUT).criteria} == {
        "wan_up": "regressed",
        "wan_loss": "regressed",
    }


def test_compare_text_in_both_languages(service: Service, fed: Fed) -> None:
    june_12, june_22 = take_both(service, fed)
    result = audit_compare.compare(june_12, june_22)
    vi = audit_compare.text(result, june_12, june_22, "vi")
    assert "2 tốt lên, 0 kém đi, 2 giữ nguyên" in vi
    assert "[tốt lên] ward-minh-phung  Phường Minh Phụng  sẵn sàng 62,9% → 100,0%" in vi
    assert (
        "wan_up: WAN line to the city answers: không đạt 31 phút → đạt suốt khoảng thời gian" in vi
    )
    en = audit_compare.text(result, june_12, june_22, "en")
    assert "[improved] ward-minh-phung  Ward Minh Phụng  ready 62.9% → 100.0%" in en
    assert "wan_up: WAN line to the city answers: failed 31 min → met throughout  (improved)" in en


def test_wards_in_only_one_audit_are_named(service: Service, fed: Fed) -> None:
    june_12, _ = take_both(service, fed)
    only_some = take(service, JUNE_22, title="Một phần", ward_ids=[CUT])
    result = audit_compare.compare(june_12, only_some)
    changes = {w.id: w.change for w in result.wards}
    assert changes == {CUT: "improved", HEALTHY: "only_a", OUTAGE: "only_a", SILENT: "only_a"}
    assert f"chỉ có trong biên bản #{june_12.id}" in audit_compare.text(
        result, june_12, only_some, "vi"
    )
