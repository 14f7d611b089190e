"""The E-model against ITU-T G.107 / G.109 reference points and hand-worked examples."""

from __future__ import annotations

import itertools

import pytest

from checks import emodel


@pytest.mark.parametrize(
    ("r", "mos"),
    # G.107 Annex B / G.109 Table: R 93.2 (all defaults) 4.41; band limits 80, 70, 60, 50.
    [(93.2, 4.41), (80.0, 4.02), (70.0, 3.60), (60.0, 3.10), (50.0, 2.58)],
)
def test_mos_reference_points(r: float, mos: float) -> None:
    assert emodel.mos(r) == pytest.approx(mos, abs=0.006)


def test_mos_is_bounded_and_never_decreases_with_r() -> None:
    assert emodel.mos(-5.0) == emodel.mos(0.0) == 1.0
    assert emodel.mos(100.0) == emodel.mos(120.0) == 4.5
    grid = [emodel.mos(r / 10) for r in range(0, 1001)]
    assert min(grid) == 1.0 and max(grid) == 4.5
    assert all(b >= a for a, b in itertools.pairwise(grid))


@pytest.mark.parametrize("codec", sorted(emodel.CODECS))
def test_no_loss_leaves_the_codec_impairment(codec: str) -> None:
    c = emodel.CODECS[codec]
    for bpl in (c.bpl, c.bpl_plc):
        assert emodel.effective_equipment_impairment(c.ie, bpl, 0.0) == c.ie
        assert emodel.effective_equipment_impairment(c.ie, bpl, 0.0, burst_ratio=3.0) == c.ie


def test_codec_table() -> None:
    # G.113 Appendix I: G.711 Ie 0, Bpl 4.3 (no PLC) / 25.1 (PLC); G.729A Ie 11, Bpl 19.
    assert emodel.CODECS["g711"] == emodel.Codec(0.0, 4.3, 25.1)
    assert emodel.CODECS["g729a"] == emodel.Codec(11.0, 19.0, 19.0)
    assert emodel.r_factor(0.05, 0.0, "g711") == pytest.approx(93.2)
    assert emodel.r_factor(0.05, 0.0, "g729a") == pytest.approx(82.2)


def test_loss_worked_by_hand() -> None:
    # G.711 with PLC, 2% random loss: Ie,eff = 95·2/(2 + 25.1) = 7.011; R = 86.19.
    assert emodel.r_factor(0.0, 2.0, "g711", plc=True) == pytest.approx(93.2 - 7.011, abs=0.01)
    # Without PLC: 95·2/(2 + 4.3) = 30.16; R = 63.04.
    assert emodel.r_factor(0.0, 2.0, "g711", plc=False) == pytest.approx(63.04, abs=0.01)
    # G.729A, 1%: 11 + 84·1/(1 + 19) = 15.2; R = 78.0.
    assert emodel.r_factor(0.0, 1.0, "g729a") == pytest.approx(78.0, abs=0.01)
    # The same 2% in bursts (BurstR 2) hurts more: 95·2/(2/2 + 25.1) = 7.28.
    bursty = emodel.effective_equipment_impairment(0.0, 25.1, 2.0, burst_ratio=2.0)
    assert bursty == pytest.approx(7.280, abs=0.001)
    # Total loss is as bad as the model goes: Ie,eff → 95·100/(100 + Bpl).
    assert emodel.effective_equipment_impairment(0.0, 4.3, 100.0) == pytest.approx(91.08, 0.001)


def test_delay_impairment_worked_by_hand() -> None:
    assert emodel.delay_impairment(0.0) == 0.0
    assert emodel.delay_impairment(0.100) == 0.0
    # Ta 200 ms: X = 1; 25·(2^(1/6) − 3·(1 + 3^-6)^(1/6) + 2) = 25·0.121777 = 3.044.
    assert emodel.delay_impairment(0.200) == pytest.approx(3.044, abs=0.002)
    # Ta 400 ms: X = 2; 25·(65^(1/6) − 3·(1 + (2/3)^6)^(1/6) + 2) = 25·0.9628 = 24.07.
    assert emodel.delay_impairment(0.400) == pytest.approx(24.07, abs=0.02)
    assert emodel.r_factor(0.400, 0.0) == pytest.approx(93.2 - 24.07, abs=0.02)


def test_burst_ratio_from_a_loss_pattern() -> None:
    # Two-state Markov: BurstR = mean burst length × (1 − loss). Bursts of 4 at 5%: 3.8.
    assert emodel.burst_ratio(0.05, 4.0) == pytest.approx(3.8)
    # Isolated losses are random loss; spread-out loss is never credited below 1.
    assert emodel.burst_ratio(0.05, 1.0) == 1.0
    assert emodel.burst_ratio(0.0, 0.0) == 1.0
    assert emodel.burst_ratio(0.5, 1.0) == 1.0


def test_unknown_codec_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        emodel.r_factor(0.0, 0.0, "g726")
