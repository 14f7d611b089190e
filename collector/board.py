"""The readiness board (``/``), a ward's page (``/wards/{id}``), and signing in with a viewer
token (``/login``, ``/logout``): server-rendered pages for the people who read them.

Pages are Jinja2 templates in ``templates/``; the only script (``static/board.js``) filters
tiles as one types and refreshes the board, and the board works without it (the filter form
submits, a ``<noscript>`` refresh reloads). Vietnamese is the default language; ``?lang=en``
or the browser's Accept-Language picks English. Wards are listed in Vietnamese alphabetical
order (ICU), not code points.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode
from zoneinfo import ZoneInfo

import jinja2
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from collector import charts, history, i18n, summary
from collector.auth import COOKIE, READERS, Principal, lookup, reader_or_none
from collector.readiness import format_age
from collector.service import Service
from collector.summary import VERDICTS, WardSummary, fold, shown_name

HERE = Path(__file__).resolve().parent
# The centers the board serves are in Ho Chi Minh City: times read in its clock.
TZ = ZoneInfo("Asia/Ho_Chi_Minh")
REFRESH_SECONDS = 30
CHART_HOURS = 6.0
MIN_CHART_SECONDS = 600.0
TIMELINE_HOURS = 24.0
TILE_REASONS = 2
MAX_LOGIN_BYTES = 8192
ICONS = {"ready": "✓", "not_ready": "✗", "unknown": "?"}

def _viewer(found: Annotated[Principal | None, Depends(reader_or_none)]) -> Principal:
    # A person without a token is sent to the login form, not shown a 401 in JSON.
    if found is None:
        raise HTTPException(303, "log in first", headers={"Location": "/login"})
    return found


Viewer = Annotated[Principal, Depends(_viewer)]


@functools.cache
def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )


class Page:
    """What every template gets: language, translations, time formatting, the viewer."""

    def __init__(self, request: Request, who: Principal | None) -> None:
        self.request = request
        self.lang = i18n.pick(
            request.query_params.get("lang"), request.headers.get("accept-language")
        )
        self.gettext = i18n.gettext_for(self.lang).gettext
        self.who = who
        self.now = time.time()

    def verdict_word(self, verdict: str) -> str:
        _ = self.gettext
        return {"ready": _("Ready"), "not_ready": _("Not ready"), "unknown": _("Unknown")}.get(
            verdict, verdict
        )

    def status_word(self, status: str) -> str:
        _ = self.gettext
        words = {"ok": _("OK"), "failed": _("Failed"), "unknown": _("Unknown"),
                 "stale": _("Stale"), "ready": _("Ready"), "not_ready": _("Not ready"),
                 None: _("none")}  # fmt: skip
        return words.get(status, status)

    def when(self, ts: float | None) -> str:
        if ts is None:
            return "—"
        return datetime.fromtimestamp(ts, TZ).strftime("%Y-%m-%d %H:%M:%S")

    def ago(self, ts: float | None) -> str:
        if ts is None:
            return "—"
        return self.gettext("{age} ago").format(age=format_age(self.now - ts))

    def link(self, path: str, **params: str) -> str:
        """``path`` keeping the language the page was asked in."""
        if "lang" in self.request.query_params:
            params.setdefault("lang", self.lang)
        query = urlencode({k: v for k, v in params.items() if v})
        return f"{path}?{query}" if query else path

    def render(self, template: str, **context: Any) -> HTMLResponse:
        html = (
            _env().get_template(template).render(page=self, _=self.gettext, icons=ICONS, **context)
        )
        return HTMLResponse(html, headers={"Content-Language": self.lang})


def _counts(rows: list[WardSummary]) -> dict[str, int]:
    return {v: sum(1 for r in rows if r.verdict == v) for v in VERDICTS}


def _ward_charts(service: Service, ward: str, page: Page) -> list[str]:
    _ = page.gettext
    end = page.now
    found = charts.load(service.engine, ward, end - CHART_HOURS * 3600)
    # A ward that started reporting an hour ago gets an hour wide chart, not a sliver at
    # the right edge of six hours.
    first = min((s.points[0].t for s in found if s.points), default=end)
    start = max(end - CHART_HOURS * 3600, min(first, end - MIN_CHART_SECONDS))
    wan = [s for s in found if s.check == "icmp"]
    stream = [s for s in found if s.check == "stream"]
    bw = [s for s in found if s.check == "bandwidth"]
    ms: Callable[[float], str] = lambda v: f"{v:g} ms"  # noqa: E731
    out = [
        charts.smoke(_("WAN round trip (band: fastest to slowest reply; mark: average, "
                       "coloured by loss)"),
                     wan, start, end, TZ,
                     [_("no loss"), _("loss ≤ 5%"), _("loss ≤ 20%"), _("loss > 20%")]),
        charts.lines(_("Jitter"),
                     [(s.key, charts.metric_points(s, "jitter_seconds", 1000))
                      for s in wan + stream], start, end, TZ, ms),
        charts.lines(_("Call quality (MOS)"),
                     [(s.key, charts.metric_points(s, "mos")) for s in stream],
                     start, end, TZ, lambda v: f"{v:.1f}", floor=4.0),
        charts.lines(_("Bandwidth"),
                     [(f"{s.key} {_(d)}", charts.metric_points(s, f"{d}_bytes_per_second", 8e-6))
                      for s in bw for d in ("upload", "download")],
                     start, end, TZ, lambda v: f"{v:g} Mbit/s"),
    ]  # fmt: skip
    return [c for c in out if c]


def read_form(body: bytes) -> dict[str, str]:
    fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=8)
    return {k: v[0] for k, v in fields.items()}


def router(service: Service) -> APIRouter:
    r = APIRouter(include_in_schema=False)

    @r.get("/", response_class=HTMLResponse)
    def board(
        request: Request,
        who: Viewer,
        group: Annotated[str | None, Query(max_length=64)] = None,
        verdict: Annotated[str | None, Query(max_length=16)] = None,
        q: Annotated[str | None, Query(max_length=100)] = None,
    ) -> HTMLResponse:
        page = Page(request, who)
        rows = summary.summaries(service, page.lang)
        titles = summary.titles(service.profile, page.lang)
        counts = _counts(rows)
        groups: dict[str, list[dict[str, Any]]] = {}
        needle = fold(q or "")
        for w in rows:
            name = shown_name(w, page.lang)
            search = fold(f"{name} {w.former_district} {w.id}")
            hidden = (
                (group and w.working_group != group)
                or (verdict and w.verdict != verdict)
                or (needle and needle not in search)
            )
            groups.setdefault(w.working_group, []).append(
                {
                    "w": w,
                    "name": name,
                    "search": search,
                    "reasons": summary.reasons_text(w.reasons[:TILE_REASONS], page.lang, titles),
                    "more": max(len(w.reasons) - TILE_REASONS, 0),
                    "hidden": bool(hidden),
                }
            )
        ordered = [(g, groups[g]) for g in sorted(groups, key=summary.group_key)]
        return page.render(
            "board.html",
            rows=rows,
            counts=counts,
            groups=ordered,
            verdicts=VERDICTS,
            chosen={"group": group or "", "verdict": verdict or "", "q": q or ""},
            refresh=REFRESH_SECONDS,
            words={v: page.verdict_word(v) for v in VERDICTS},
            ward_link=page.link("/wards/{}"),
        )

    @r.get("/wards/{ward_id}", response_class=HTMLResponse)
    def ward_page(request: Request, ward_id: str, who: Viewer) -> HTMLResponse:
        page = Page(request, who)
        found = summary.detail(service, ward_id)
        if found is None:
            raise HTTPException(404, f"ward: {ward_id!r} is not a known ward")
        titles = summary.titles(service.profile, page.lang)
        since = page.now - TIMELINE_HOURS * 3600
        timeline = history.changes(service.engine, ward_id, since, page.now)
        crit_titles = {c.id: summary.criterion_title(c, titles) for c in found.criteria}
        return page.render(
            "ward.html",
            w=found,
            name=shown_name(found, page.lang),
            reasons=summary.reasons_text(found.reasons, page.lang, titles),
            title_of=lambda c: summary.criterion_title(c, titles),
            charts=_ward_charts(service, ward_id, page),
            timeline=list(reversed(timeline)),
            crit_titles=crit_titles,
            reason_of=lambda text: summary.reason_text(text, page.lang, titles),
            ready_since=history.became_ready(service.engine, ward_id, page.now),
            chart_hours=CHART_HOURS,
            timeline_hours=TIMELINE_HOURS,
        )

    @r.get("/login", response_class=HTMLResponse)
    def login_form(request: Request) -> HTMLResponse:
        page = Page(request, None)
        return page.render("login.html", failed=False)

    @r.post("/login")
    async def login(request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_LOGIN_BYTES:
            raise HTTPException(413, f"body: larger than {MAX_LOGIN_BYTES} bytes")
        token = read_form(body).get("token", "").strip()
        who = lookup(request, token)
        if who is None or who.role not in READERS:
            # The same answer for an unknown token and an agent's: nothing to probe with.
            page = Page(request, None)
            response = page.render("login.html", failed=True)
            response.status_code = 401
            return response
        out = RedirectResponse("/", status_code=303)
        out.set_cookie(
            COOKIE,
            token,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            max_age=30 * 86400,
        )
        return out

    @r.get("/logout")
    def logout(request: Request) -> Response:
        out = RedirectResponse("/login", status_code=303)
        out.delete_cookie(
            COOKIE, httponly=True, samesite="strict", secure=request.url.scheme == "https"
        )
        return out

    return r


def install(app: FastAPI, service: Service) -> None:
    """Mount the pages and their static files on the collector's app."""
    app.include_router(router(service))
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
