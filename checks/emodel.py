"""Call quality from line figures: the ITU-T G.107 E-model, simplified transmission-planning form.

    R = (Ro − Is) − Id − Ie,eff + A

- ``Ro − Is`` = 93.2: the basic signal-to-noise ratio less the simultaneous impairments with
  every G.107 default (R is 93.2 for a perfect G.711 call).
- ``Id``: the delay impairment. Only the pure-delay term ``Idd`` of G.107 (section 7.4) is
  kept, from the one-way delay Ta in ms: 0 for Ta ≤ 100, else with X = log2(Ta / 100),
  ``Idd = 25·((1 + X⁶)^(1/6) − 3·(1 + (X/3)⁶)^(1/6) + 2)``. The echo terms (Idte, Idle) are
  taken as 0: video-conference endpoints cancel echo, and the figures a line check can see say
  nothing about the talker's handset.
- ``Ie,eff = Ie + (95 − Ie) · Ppl / (Ppl / BurstR + Bpl)``: the equipment impairment under
  packet loss, with Ppl the packet-loss probability in percent, Bpl the codec's robustness to
  loss and BurstR the burst ratio (1 for random loss, above 1 for bursty loss). From a loss
  pattern, BurstR = mean observed burst length × (1 − Ppl/100), the two-state Markov form of
  G.107 Appendix I (BurstR = 1 / (p + q)). Values below 1 (losses more spread out than random)
  are raised to 1: the model then never credits a line for it.
- ``A``: the advantage factor, 0 for wired lines (G.107 Table 3).

MOS (conversational quality, G.107 Annex B): 1 for R ≤ 0; 4.5 for R ≥ 100; otherwise
``MOS = 1 + 0.035·R + R·(R − 60)·(100 − R)·7·10⁻⁶`` (never under 1: the cubic dips to 0.99
near R = 3). Reference points: R 93.2 → 4.41,
80 → 4.02, 70 → 3.60, 60 → 3.10, 50 → 2.58. ITU-T G.109 names the bands: R ≥ 90 best,
≥ 80 high, ≥ 70 medium, ≥ 60 low, ≥ 50 poor.

Codec impairment values (Ie, Bpl), from ITU-T G.113 Appendix I where it has them:

| codec | Ie | Bpl without PLC | Bpl with PLC | source |
|-------|----|-----------------|--------------|--------|
| g711  | 0  | 4.3             | 25.1         | G.113 App. I (PLC: G.711 Appendix I) |
| g729a | 11 | 19.0            | 19.0         | G.113 App. I (G.729A + VAD; built-in PLC) |
| g722  | 0  | 4.3             | 25.1         | assumption: G.711's figures |
| opus  | 0  | 4.3             | 25.1         | assumption: G.711's figures |

G.722 and Opus are wideband codecs, rated on the wideband scale of G.107.1 (R up to 129). On
this narrowband scale they are taken to be as good as G.711 and as robust to loss as G.711 with
its concealment: an assumption, not a published value, which keeps the score comparable across
codecs while judging the line, not the codec.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

RO_MINUS_IS = 93.2


@dataclass(frozen=True)
class Codec:
    ie: float
    bpl: float  # without packet-loss concealment
    bpl_plc: float  # with it


CODECS: dict[str, Codec] = {
    "g711": Codec(ie=0.0, bpl=4.3, bpl_plc=25.1),
    "g729a": Codec(ie=11.0, bpl=19.0, bpl_plc=19.0),
    "g722": Codec(ie=0.0, bpl=4.3, bpl_plc=25.1),
    "opus": Codec(ie=0.0, bpl=4.3, bpl_plc=25.1),
}


def delay_impairment(ta_seconds: float) -> float:
    """G.107's Idd for a one-way (mouth-to-ear) delay of ``ta_seconds``."""
    ta_ms = ta_seconds * 1000.0
    if ta_ms <= 100.0:
        return 0.0
    x = math.log2(ta_ms / 100.0)
    return 25.0 * (math.pow(1 + x**6, 1 / 6) - 3 * math.pow(1 + (x / 3) ** 6, 1 / 6) + 2)


def effective_equipment_impairment(
    ie: float, bpl: float, ppl_percent: float, burst_ratio: float = 1.0
) -> float:
    """Ie,eff: the codec's impairment under ``ppl_percent`` % packet loss."""
    ppl = min(max(ppl_percent, 0.0), 100.0)
    if ppl == 0.0:
        return ie
    burst = max(burst_ratio, 1.0)
    return ie + (95.0 - ie) * ppl / (ppl / burst + bpl)


def burst_ratio(loss_ratio: float, mean_burst_packets: float) -> float:
    """BurstR from the loss ratio (0..1) and the mean length of runs of lost packets."""
    if loss_ratio <= 0.0 or mean_burst_packets <= 0.0:
        return 1.0
    return max(mean_burst_packets * (1.0 - loss_ratio), 1.0)


def r_factor(
    ta_seconds: float,
    ppl_percent: float,
    codec: str = "g711",
    plc: bool = True,
    burst: float = 1.0,
    advantage: float = 0.0,
) -> float:
    """The transmission rating R for one direction of a call."""
    c = CODECS[codec]
    ie_eff = effective_equipment_impairment(c.ie, c.bpl_plc if plc else c.bpl, ppl_percent, burst)
    return RO_MINUS_IS - delay_impairment(ta_seconds) - ie_eff + advantage


def mos(r: float) -> float:
    """Estimated conversational MOS (1..4.5) from R (G.107 Annex B)."""
    if r <= 0.0:
        return 1.0
    if r >= 100.0:
        return 4.5
    # The cubic dips just under 1 for R below about 6.5: MOS has no value under 1.
    return max(1.0, 1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7e-6)
