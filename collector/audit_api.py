"""Audits over HTTP: take one (admin), list, read, verify, export and compare them (reader).

Mounted by :func:`collector.api.create_app`. Taking an audit replays every ward's stored
results over the window, which takes seconds for a city: the endpoints are plain functions,
so FastAPI runs them in its thread pool and the event loop keeps serving.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from collector import audit_compare, audit_export, audits, auth, i18n
from collector.service import Service
from shared.wire import MAX_INT64

# Ids are 64-bit in the database: a larger number is a 422 here, not an overflow there.
AuditId = Annotated[int, Path(ge=1, le=MAX_INT64, description="the audit's id")]

_ERRORS: dict[int | str, dict[str, Any]] = {
    **auth.DENIED,
    404: {"description": "no such audit"},
    422: {"description": "bad input; the detail names the field"},
}


class AuditRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    start: str = Field(alias="from", description="ISO 8601 with zone: 2026-06-12T08:00+07:00")
    end: str = Field(alias="to", description="ISO 8601 with zone, not in the future")
    title: str = Field(min_length=1, max_length=audits.MAX_TEXT)
    signed_off_by: str = Field(min_length=1, max_length=audits.MAX_TEXT)
    step_seconds: int = Field(default=audits.DEFAULT_STEP_SECONDS, ge=1, le=3600)
    wards: list[str] | None = Field(default=None, description="only these wards; default all")


class AuditSummary(BaseModel):
    id: int
    title: str
    window_from: float = Field(description="Unix time")
    window_to: float
    created_at: float
    signed_off_by: str
    sha256: str


class Verification(BaseModel):
    id: int
    intact: bool
    sha256: str
    problems: list[str]


class AuditOut(Verification):
    content: dict[str, Any] = Field(description="the stored canonical content, parsed")


def _not_found(exc: audits.AuditError) -> HTTPException:
    status = 404 if isinstance(exc, audits.AuditNotFound) else 422
    return HTTPException(status, str(exc))


def router(service: Service) -> APIRouter:
    r = APIRouter(prefix="/api/v1/audits", tags=["audits"])
    engine = service.engine

    def load(audit_id: int) -> audits.Audit:
        try:
            return audits.load(engine, audit_id)
        except audits.AuditError as exc:
            raise _not_found(exc) from None

    def summary(a: audits.Audit) -> AuditSummary:
        doc = a.content
        return AuditSummary(
            id=a.id,
            title=doc["title"],
            window_from=audits.epoch(doc["window"]["from"]),
            window_to=audits.epoch(doc["window"]["to"]),
            created_at=audits.epoch(doc["created_at"]),
            signed_off_by=doc["signed_off_by"],
            sha256=a.sha256,
        )

    @r.post(
        "",
        status_code=201,
        response_model=AuditSummary,
        responses={**_ERRORS, 400: {"description": "a body that is not JSON"}},
    )
    def create(
        body: AuditRequest, who: Annotated[auth.Principal, Depends(auth.admin)]
    ) -> AuditSummary:
        try:
            taken = audits.take(
                engine,
                service.profile,
                start=audits.parse_time(body.start, "from"),
                end=audits.parse_time(body.end, "to"),
                title=body.title,
                signed_off_by=body.signed_off_by,
                created_by=who.who,
                step=body.step_seconds,
                ward_ids=body.wards,
                now=service.clock(),
            )
        except audits.AuditError as exc:
            raise _not_found(exc) from None
        return summary(taken)

    @r.get(
        "",
        response_model=list[AuditSummary],
        responses=auth.DENIED,
        dependencies=[Depends(auth.reader)],
    )
    def list_audits() -> list[AuditSummary]:
        return [AuditSummary(**vars(a)) for a in audits.list_all(engine)]

    @r.get("/compare", responses=_ERRORS, dependencies=[Depends(auth.reader)])
    def compare(
        a: Annotated[int, Query(ge=1, le=MAX_INT64, description="the earlier audit's id")],
        b: Annotated[int, Query(ge=1, le=MAX_INT64, description="the later audit's id")],
    ) -> dict[str, Any]:
        return audit_compare.compare(load(a), load(b)).as_dict()

    @r.get(
        "/{audit_id}",
        response_model=AuditOut,
        responses=_ERRORS,
        dependencies=[Depends(auth.reader)],
    )
    def read(audit_id: AuditId) -> AuditOut:
        a = load(audit_id)
        problems = audits.verify(engine, audit_id)
        return AuditOut(
            id=a.id, intact=not problems, sha256=a.sha256, problems=problems, content=a.content
        )

    @r.get(
        "/{audit_id}/verify",
        response_model=Verification,
        responses=_ERRORS,
        dependencies=[Depends(auth.reader)],
    )
    def verify(audit_id: AuditId) -> Verification:
        a = load(audit_id)
        problems = audits.verify(engine, audit_id)
        return Verification(id=a.id, intact=not problems, sha256=a.sha256, problems=problems)

    @r.get(
        "/{audit_id}/export",
        response_class=Response,
        responses={
            **_ERRORS,
            409: {"description": "the stored audit fails verification"},
            200: {
                "content": {"application/pdf": {}, "text/html": {}, "text/csv": {}},
                "description": "the audit as a file",
            },
        },
        dependencies=[Depends(auth.reader)],
    )
    def export(
        audit_id: AuditId,
        format: Annotated[Literal["html", "pdf", "csv"], Query()] = "pdf",
        lang: Annotated[Literal["vi", "en"] | None, Query()] = None,
        accept_language: Annotated[str | None, Header()] = None,
    ) -> Response:
        a = load(audit_id)
        problems = audits.verify(engine, audit_id)
        if problems:
            raise HTTPException(409, f"audit {audit_id} fails verification: {problems[0]}")
        chosen = i18n.pick(lang, accept_language)
        media_type, render = audit_export.FORMATS[format]
        name = f"wardready-audit-{audit_id}-{chosen}.{format}"
        return Response(
            render(a, chosen),
            media_type=media_type,
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    return r
