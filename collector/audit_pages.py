"""The audits on the board (``/audits``): the list with each one's verification and exports,
taking one (admins), and two side by side (``/audits/compare``).

The same facts as ``wardready-collector audit ...`` and ``/api/v1/audits``, for an auditor
with a browser; the exports are the API's, which read the board's cookie.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from collector import audit_compare, audits
from collector.board import MAX_LOGIN_BYTES, Page, Viewer, read_form
from collector.service import Service
from shared.wire import MAX_INT64

AuditNumber = Annotated[int, Query(ge=1, le=MAX_INT64)]


def router(service: Service) -> APIRouter:
    r = APIRouter(include_in_schema=False)
    engine = service.engine

    def listing(request: Request, who: Viewer, problem: str = "") -> HTMLResponse:
        page = Page(request, who)
        rows = [(a, audits.verify(engine, a.id)) for a in reversed(audits.list_all(engine))]
        response = page.render(
            "audits.html", rows=rows, problem=problem, admin=who.role == "admin"
        )
        if problem:
            response.status_code = 422
        return response

    @r.get("/audits", response_class=HTMLResponse)
    def audits_page(request: Request, who: Viewer) -> HTMLResponse:
        return listing(request, who)

    @r.post("/audits")
    async def take(request: Request, who: Viewer) -> Response:
        if who.role != "admin":
            raise HTTPException(403, "taking an audit needs an admin token")
        body = await request.body()
        if len(body) > MAX_LOGIN_BYTES:
            raise HTTPException(413, f"body: larger than {MAX_LOGIN_BYTES} bytes")
        form = read_form(body)
        try:
            taken = audits.take(
                engine,
                service.profile,
                start=audits.parse_time(form.get("from", ""), "from"),
                end=audits.parse_time(form.get("to", ""), "to"),
                title=form.get("title", "").strip(),
                signed_off_by=form.get("signed_off_by", "").strip(),
                created_by=who.who,
                now=service.clock(),
            )
        except audits.AuditError as exc:
            return listing(request, who, str(exc))
        return RedirectResponse(Page(request, who).link("/audits", taken=str(taken.id)), 303)

    @r.get("/audits/compare", response_class=HTMLResponse)
    def compare_page(request: Request, who: Viewer, a: AuditNumber, b: AuditNumber) -> Response:
        page = Page(request, who)
        try:
            compared = audit_compare.compare(audits.load(engine, a), audits.load(engine, b))
        except audits.AuditError as exc:
            raise HTTPException(404, str(exc)) from None
        wards = sorted(compared.wards, key=lambda w: (audit_compare.ORDER.get(w.change, 3), w.name))
        return page.render("audits_compare.html", c=compared, wards=wards)

    return r
