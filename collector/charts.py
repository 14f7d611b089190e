"""Charts of a ward's last hours, drawn as SVG on the server from stored results.

No chart library and no script: the page stays readable with JavaScript off and prints. The
WAN chart follows SmokePing: per run, a grey band from the fastest to the slowest reply, a
mark at the average coloured by that run's loss, and a red mark on top when nothing came back.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from html import escape

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from collector import db

CHART_CHECKS = ("icmp", "stream", "bandwidth")
# A chart of a few hours needs no more points than pixels; a cap keeps a page cheap.
MAX_ROWS = 20_000
W, H = 640, 170
LEFT, RIGHT, TOP, BOTTOM = 52, 8, 10, 24
PALETTE = ("#1f5fa8", "#c0541d", "#2e7d32", "#6a3d9a", "#8c6d00", "#00838f")
# Loss colours, SmokePing-like: none, a little, a lot, everything.
LOSS_STEPS = ((0.0, "#2e7d32"), (0.05, "#1f5fa8"), (0.2, "#c77700"), (1.0, "#c62828"))


@dataclass
class Point:
    t: float
    metrics: dict[str, float]
    success: bool


@dataclass
class Series:
    key: str
    check: str
    labels: dict[str, str]
    points: list[Point] = field(default_factory=list)


def load(engine: Engine, ward: str, since: float) -> list[Series]:
    """The ward's icmp, stream and bandwidth results since ``since``, one series per
    (agent, check name, target), oldest first."""
    r = db.results
    query = (
        sa.select(
            r.c.agent,
            r.c.name,
            r.c.target,
            r.c.check,
            r.c.labels,
            r.c.started,
            r.c.success,
            r.c.metrics,
        )
        .where(r.c.ward_id == ward, r.c.started >= since, r.c.check.in_(CHART_CHECKS))
        .order_by(r.c.started)
        .limit(MAX_ROWS)
    )
    found: dict[str, Series] = {}
    with engine.connect() as conn:
        for row in conn.execute(query):
            key = f"{row.agent}/{row.name}" + ("" if row.target == row.name else f"→{row.target}")
            s = found.get(key)
            if s is None:
                s = found[key] = Series(key, row.check, json.loads(row.labels))
            s.points.append(Point(row.started, json.loads(row.metrics), bool(row.success)))
    return sorted(found.values(), key=lambda s: s.key)


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    step = 10 ** len(str(int(value))) / 10 if value >= 1 else 1.0
    if value < 1:
        scale = 1.0
        while value * scale < 1:
            scale *= 10
        return _nice_max(value * scale) / scale
    for mult in (1, 2, 2.5, 5, 10):
        if step * mult >= value:
            return step * mult
    return value


class _Frame:
    def __init__(self, start: float, end: float, top: float) -> None:
        self.start, self.end, self.top = start, max(end, start + 1), top

    def x(self, t: float) -> float:
        return LEFT + (t - self.start) / (self.end - self.start) * (W - LEFT - RIGHT)

    def y(self, v: float) -> float:
        return TOP + (1 - min(max(v / self.top, 0.0), 1.0)) * (H - TOP - BOTTOM)


def _axes(f: _Frame, unit: Callable[[float], str], tz: tzinfo) -> list[str]:
    out = []
    for frac in (0.0, 0.5, 1.0):
        v = f.top * frac
        y = f.y(v)
        out.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        out.append(f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">{unit(v)}</text>')
    for frac in (0.0, 0.5, 1.0):
        t = f.start + (f.end - f.start) * frac
        anchor = ("start", "middle", "end")[int(frac * 2)]
        label = datetime.fromtimestamp(t, tz).strftime("%H:%M")
        out.append(f'<text x="{f.x(t):.1f}" y="{H - 6}" text-anchor="{anchor}">{label}</text>')
    return out


def _svg(title: str, body: list[str], legend: Sequence[tuple[str, str]]) -> str:
    items = "".join(
        f'<span class="key"><i style="background:{c}"></i>{escape(name)}</span>'
        for name, c in legend
    )
    return (
        # Focusable: on a phone the chart scrolls sideways in its box, by keyboard too.
        f'<figure class="chart" tabindex="0"><figcaption>{escape(title)}</figcaption>'
        f'<svg viewBox="0 0 {W} {H}" role="img" aria-label="{escape(title)}">'
        f"{''.join(body)}</svg>"
        f'<div class="legend">{items}</div></figure>'
    )


def loss_colour(loss: float) -> str:
    for limit, colour in LOSS_STEPS:
        if loss <= limit:
            return colour
    return LOSS_STEPS[-1][1]


def smoke(
    title: str, series: Sequence[Series], start: float, end: float, tz: tzinfo,
    loss_words: Sequence[str],
) -> str | None:  # fmt: skip
    """RTT band (min..max), average mark coloured by loss; None when there is nothing to draw."""
    pts = [(s, p) for s in series for p in s.points]
    if not pts:
        return None
    top = _nice_max(max(p.metrics.get("rtt_max_seconds", 0.0) for _, p in pts) * 1000)
    f = _Frame(start, end, top)
    body = _axes(f, lambda v: f"{v:g} ms", tz)
    step = max((W - LEFT - RIGHT) / max(len(pts) / max(len(series), 1), 1), 2.0)
    half = min(step / 2, 4.0)
    for _s, p in pts:
        x = f.x(p.t)
        m = p.metrics
        loss = m.get("loss_ratio", 0.0 if p.success else 1.0)
        if "rtt_avg_seconds" not in m:
            body.append(f'<rect x="{x - half:.1f}" y="{TOP}" width="{2 * half:.1f}" height="6" '
                        f'fill="{loss_colour(1.0)}"/>')  # fmt: skip
            continue
        rtt = ("rtt_min_seconds", "rtt_avg_seconds", "rtt_max_seconds")
        lo, avg, hi = (m.get(k, m["rtt_avg_seconds"]) * 1000 for k in rtt)
        body.append(
            f'<rect x="{x - half:.1f}" y="{f.y(hi):.1f}" width="{2 * half:.1f}" '
            f'height="{max(f.y(lo) - f.y(hi), 1):.1f}" class="band"/>'
        )
        body.append(
            f'<rect x="{x - half:.1f}" y="{f.y(avg) - 1.5:.1f}" width="{2 * half:.1f}" '
            f'height="3" fill="{loss_colour(loss)}"/>'
        )
    legend = [(word, colour) for word, (_l, colour) in zip(loss_words, LOSS_STEPS, strict=True)]
    return _svg(title, body, legend)


def lines(
    title: str,
    named: Sequence[tuple[str, list[tuple[float, float]]]],
    start: float,
    end: float,
    tz: tzinfo,
    unit: Callable[[float], str],
    floor: float | None = None,
) -> str | None:
    """One polyline per named series of (time, value); None when there is nothing to draw."""
    named = [(n, pts) for n, pts in named if pts]
    if not named:
        return None
    top = _nice_max(max(v for _, pts in named for _, v in pts))
    f = _Frame(start, end, top)
    body = _axes(f, unit, tz)
    if floor is not None:
        y = f.y(floor)
        body.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
                    'class="limit"/>')  # fmt: skip
    legend = []
    for i, (name, pts) in enumerate(named):
        colour = PALETTE[i % len(PALETTE)]
        coords = " ".join(f"{f.x(t):.1f},{f.y(v):.1f}" for t, v in pts)
        body.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" '
                    'stroke-width="1.5"/>')  # fmt: skip
        if len(pts) == 1:
            t, v = pts[0]
            body.append(f'<circle cx="{f.x(t):.1f}" cy="{f.y(v):.1f}" r="2.5" fill="{colour}"/>')
        legend.append((name, colour))
    return _svg(title, body, legend)


def metric_points(series: Series, metric: str, scale: float = 1.0) -> list[tuple[float, float]]:
    return [(p.t, p.metrics[metric] * scale) for p in series.points if metric in p.metrics]
