"""The fleet's HTTP routes: enrollment, the agents' plan, plans and inventory acceptance.

``POST /api/v1/enroll`` takes no bearer token (the code is the credential) and limits failed
attempts per client address. ``GET /api/v1/plan`` answers an agent token with its ward's plan
and an ``ETag``, and 304 to a matching ``If-None-Match``. Admin-only routes go through
``collector.auth``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Security
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer
from pydantic import BaseModel, Field

from collector import auditlog, db
from collector import enroll as enrollment
from collector import fleet as fleetstore
from collector.auth import DENIED, Principal, admin, reader
from collector.service import Service

log = logging.getLogger(__name__)


class Refusal(BaseModel):
    detail: str


class WardFleet(BaseModel):
    plan_version: int | None = Field(description="the ward's current plan; null: no plan")
    plan_updated_at: float | None
    agents: list[enrollment.EnrolledAgent]


class PlanOut(BaseModel):
    ward: str
    version: int
    checks: list[dict[str, Any]]


class PlanShown(PlanOut):
    sources: dict[str, dict[str, str]] = Field(
        description="check name -> field -> the layer it came from (defaults, group N, "
        "inventory, ward)"
    )
    updated_at: float


class OutdatedOut(BaseModel):
    ward: str
    agent: str
    running: int | None
    current: int
    plan_error: str | None


class FleetOut(BaseModel):
    plans: dict[str, int] = Field(description="ward -> current plan version")
    outdated: list[OutdatedOut] = Field(description="agents on an old plan, or refusing one")
    plan_requests: dict[str, int] = Field(description="plan requests answered, by outcome")


class AcceptIn(BaseModel):
    devices: list[str] | None = Field(None, description="addresses; default: every device")
    community: str = "public"
    snmp_port: int = Field(161, ge=1, le=65535)


class AcceptOut(BaseModel):
    accepted: list[dict[str, Any]]
    plan_version: int | None


def ward_fleet(service: Service, ward_id: str) -> dict[str, Any]:
    """The ``fleet`` part of a ward's detail: its plan version and enrolled agents."""
    plan = fleetstore.get_plan(service.engine, ward_id)
    return {
        "plan_version": plan.version if plan else None,
        "plan_updated_at": plan.updated_at if plan else None,
        "agents": enrollment.agents(service.engine, ward_id),
    }


def fleet_routes(service: Service) -> APIRouter:
    router = APIRouter()
    bearer = HTTPBearer(auto_error=False, description="an agent token")

    limiter = enrollment.FailureLimiter()

    @router.post(
        "/api/v1/enroll",
        response_model=enrollment.EnrollAnswer,
        responses={
            400: {"description": "a body that is not JSON"},
            401: {"model": Refusal, "description": "unknown code"},
            403: {"model": Refusal, "description": "code expired, revoked or used up"},
            409: {"model": Refusal, "description": "agent name taken by another machine"},
            429: {"model": Refusal, "description": "too many failed attempts from here"},
        },
    )
    def enroll(body: enrollment.EnrollRequest, request: Request) -> Any:
        address = request.client.host if request.client else "unknown"
        wait = limiter.wait_seconds(address)
        if wait > 0:
            return JSONResponse(
                {
                    "detail": "too many failed enrollment attempts from this address; "
                    f"try again in {int(wait) + 1} s"
                },
                status_code=429,
                headers={"Retry-After": str(int(wait) + 1)},
            )
        try:
            answer = enrollment.redeem(service.engine, body, service.clock())
        except enrollment.EnrollError as exc:
            if exc.status in (401, 403):
                limiter.failed(address)
            log.warning("enrollment of %r from %s refused: %s", body.agent, address, exc)
            return JSONResponse({"detail": str(exc)}, status_code=exc.status)
        log.info("agent %s of ward %s enrolled from %s", answer.agent, answer.ward, address)
        return answer

    @router.get(
        "/api/v1/plan",
        response_model=PlanOut,
        responses={
            304: {"description": "the plan named by If-None-Match is current"},
            401: {"model": Refusal, "description": "missing, unknown or revoked token"},
            403: {"model": Refusal, "description": "not an agent token"},
            404: {"model": Refusal, "description": "no plan for the token's ward"},
        },
        dependencies=[Security(bearer)],
    )
    def get_plan(request: Request) -> Any:
        grant = service.authorize(request.headers.get("authorization"))
        if grant.role != "agent" or grant.ward is None:
            raise HTTPException(403, f"authorization: a {grant.role} token has no plan")
        ward, agent = grant.ward, grant.agent or "*"
        plan = fleetstore.get_plan(service.engine, ward)
        now = service.clock()
        if plan is None:
            service.plan_book.sent(ward, agent, None, "no_plan", now)
            return JSONResponse(
                {"detail": f"ward {ward}: no plan (the fleet file names no check for it)"},
                status_code=404,
            )
        headers = {"ETag": plan.etag, "X-Wardready-Plan-Version": str(plan.version)}
        asked = [t.strip() for t in request.headers.get("if-none-match", "").split(",")]
        if plan.etag in asked:
            service.plan_book.sent(ward, agent, plan.version, "not_modified", now)
            return Response(status_code=304, headers=headers)
        service.plan_book.sent(ward, agent, plan.version, "sent", now)
        return JSONResponse(plan.body(), headers=headers)

    @router.get("/api/v1/fleet", response_model=FleetOut, responses=DENIED)
    def fleet_overview(_who: Annotated[Principal, Depends(reader)]) -> dict[str, Any]:
        return {
            "plans": {w: v for w, (v, _) in fleetstore.plan_versions(service.engine).items()},
            "outdated": [dataclasses.asdict(o) for o in fleetstore.outdated(service.engine)],
            "plan_requests": dict(service.plan_book.requests),
        }

    @router.get(
        "/api/v1/wards/{ward_id}/plan",
        response_model=PlanShown,
        responses={**DENIED, 404: {"model": Refusal, "description": "no plan for this ward"}},
    )
    def ward_plan(ward_id: str, _who: Annotated[Principal, Depends(reader)]) -> dict[str, Any]:
        plan = fleetstore.get_plan(service.engine, ward_id)
        if plan is None:
            raise HTTPException(404, f"ward: {ward_id!r} has no plan")
        return {**plan.body(), "sources": plan.sources, "updated_at": plan.updated_at}

    @router.post(
        "/api/v1/wards/{ward_id}/inventory/accept",
        response_model=AcceptOut,
        responses={
            **DENIED,
            400: {"description": "a body that is not JSON"},
            404: {"model": Refusal, "description": "no such ward"},
            # No model: FastAPI's own 422 (a body that does not validate) has another shape.
            422: {"description": "nothing to accept, or a body that does not validate"},
        },
    )
    def accept_inventory(
        ward_id: str, body: AcceptIn, who: Annotated[Principal, Depends(admin)]
    ) -> dict[str, Any]:
        if ward_id not in service.wards(refresh=True):
            raise HTTPException(404, f"ward: {ward_id!r} is not a known ward")
        try:
            checks, plan = fleetstore.accept_inventory(
                service.engine,
                ward_id,
                body.devices,
                body.community,
                body.snmp_port,
                service.clock(),
            )
        except fleetstore.FleetError as exc:
            raise HTTPException(422, "; ".join(exc.messages)) from None
        service.plan_book.forget()
        with db.writer(service.engine).begin() as conn:
            detail = f"ward={ward_id}: {len(checks)} checks"
            auditlog.record(conn, who.who, "inventory.accept", detail)
        return {"accepted": checks, "plan_version": plan.version if plan else None}

    return router
