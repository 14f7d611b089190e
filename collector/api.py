"""The collector's HTTP API (FastAPI): ward verdicts, ingest, health and Prometheus metrics.

Every endpoint has a response model, so the OpenAPI document at /openapi.json describes what
clients get; the ingest body is documented from the wire schema although the endpoint reads
it raw (to cap its size before parsing and to answer with field-named errors).

Blocking work (database, evaluation, building /metrics) runs in the thread pool so the
event loop keeps accepting requests.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import FastAPI, HTTPException, Query, Request, Security
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from collector import exposition
from collector import inventory as inventory_store
from collector.clock import ServerTime
from collector.fleet_api import WardFleet, fleet_routes, ward_fleet
from collector.ingest import IngestError
from collector.readiness import Verdict
from collector.service import AgentInfo, Service
from collector.wards import Ward
from shared.wire import MAX_BATCH_BYTES, Ack, Batch, Device, Inventory

log = logging.getLogger(__name__)

VerdictWord = Literal["ready", "not_ready", "unknown"]


class Health(BaseModel):
    status: Literal["ok"]


class WardSummary(BaseModel):
    id: str
    name: str
    kind: str
    former_district: str
    working_group: str
    verdict: VerdictWord
    reasons: list[str]


class EvidenceOut(BaseModel):
    series: str = Field(description="agent/name→target of the series judged; empty if none")
    observed: float | None
    threshold: float
    op: str
    agg: str
    window: str
    samples: int
    at: float | None = Field(description="start time of the newest result used (Unix time)")
    status: str
    detail: str


class CriterionOut(BaseModel):
    id: str
    title: str
    severity: str
    status: str
    evidence: list[EvidenceOut]


class AgentOut(BaseModel):
    agent: str
    first_seen: float
    last_seen: float
    version: str
    last_seq: int | None
    spool_depth: int
    spool_dropped_total: int
    resident_memory_bytes: int


class InventoryOut(BaseModel):
    agent: str
    taken_at: float
    received_at: float
    devices: list[Device]


class InventoryAck(BaseModel):
    stored: bool = Field(description="false when a newer inventory of this agent is held")
    devices: int


class WardDetail(WardSummary):
    criteria: list[CriterionOut]
    agents: list[AgentOut]
    inventory: list[InventoryOut] = Field(
        default_factory=list, description="each agent's newest device inventory"
    )
    last_seen: float | None = Field(description="the latest contact of any of its agents")
    evaluated_at: float
    fleet: WardFleet | None = Field(None, description="the ward's plan and enrolled agents")


class FieldError(BaseModel):
    field: str
    message: str


class Problem(BaseModel):
    detail: str
    errors: list[FieldError] = Field(default_factory=list)


def _summary(ward: Ward, verdict: Verdict | None) -> dict[str, Any]:
    return {
        "id": ward.id,
        "name": ward.name,
        "kind": ward.kind,
        "former_district": ward.former_district,
        "working_group": ward.working_group,
        "verdict": verdict.verdict if verdict else "unknown",
        "reasons": list(verdict.reasons) if verdict else ["not evaluated yet"],
    }


def _agent(a: AgentInfo) -> dict[str, Any]:
    return {
        "agent": a.agent,
        "first_seen": a.first_seen,
        "last_seen": a.last_seen,
        "version": a.version,
        "last_seq": a.last_seq,
        "spool_depth": a.spool_depth,
        "spool_dropped_total": a.spool_dropped_total,
        "resident_memory_bytes": a.resident_memory_bytes,
    }


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise IngestError(413, f"body: larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise IngestError(413, f"body: larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _problem(exc: IngestError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers or None)


def _with_batch_schema(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """app.openapi, plus the wire schema's Batch under components for the ingest body."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        spec = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        batch = Batch.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(batch.pop("$defs", {}))
        schemas["Batch"] = batch
        inv = Inventory.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(inv.pop("$defs", {}))
        schemas["Inventory"] = inv
        app.openapi_schema = spec
        return spec

    return openapi


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "missing, unknown or revoked token"},
    403: {"model": Problem, "description": "the token may not write this ward or agent"},
    413: {"model": Problem, "description": f"body larger than {MAX_BATCH_BYTES} bytes"},
    422: {"model": Problem, "description": "invalid batch; each error names its field"},
    503: {"model": Problem, "description": "database unavailable; retry later"},
}


def create_app(service: Service) -> FastAPI:
    app = FastAPI(
        title="wardready collector",
        version="1",
        description="Readiness of ward Public Administration Service Centers.",
    )
    # /metrics for thousands of wards is tens of MB of repetitive text; Prometheus asks for
    # gzip, and level 1 shrinks it ~30 times for a small fraction of the time to build it.
    app.add_middleware(GZipMiddleware, minimum_size=64 * 1024, compresslevel=1)
    app.add_middleware(ServerTime)
    registry = exposition.registry_for(service)
    bearer = HTTPBearer(auto_error=False, description="a token from `token create`")

    @app.exception_handler(IngestError)
    async def on_ingest_error(_request: Request, exc: IngestError) -> JSONResponse:
        return _problem(exc)

    @app.exception_handler(sa.exc.OperationalError)
    async def on_db_error(_request: Request, exc: sa.exc.OperationalError) -> JSONResponse:
        log.error("database error: %s", exc.orig)
        return JSONResponse({"detail": "database unavailable; retry later"}, status_code=503)

    @app.get("/healthz", response_model=Health)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/v1/wards", response_model=list[WardSummary])
    def list_wards(
        verdict: Annotated[
            VerdictWord | None, Query(description="only wards with this verdict")
        ] = None,
        working_group: Annotated[
            str | None, Query(max_length=64, description="only this working group")
        ] = None,
        kind: Annotated[str | None, Query(max_length=32, description="ward or commune")] = None,
    ) -> list[dict[str, Any]]:
        verdicts = service.verdicts()
        out = []
        for ward in service.wards().values():
            if working_group is not None and ward.working_group != working_group:
                continue
            if kind is not None and ward.kind != kind:
                continue
            row = _summary(ward, verdicts.get(ward.id))
            if verdict is not None and row["verdict"] != verdict:
                continue
            out.append(row)
        return out

    @app.get(
        "/api/v1/wards/{ward_id}",
        response_model=WardDetail,
        responses={404: {"model": Problem, "description": "no such ward"}},
    )
    def ward_detail(ward_id: str) -> dict[str, Any]:
        ward = service.wards().get(ward_id)
        if ward is None:
            ward = service.wards(refresh=True).get(ward_id)
        if ward is None:
            raise HTTPException(404, f"ward: {ward_id!r} is not a known ward")
        verdict = service.verdicts().get(ward_id)
        agents = service.agents(ward_id)
        out = _summary(ward, verdict)
        out["criteria"] = [dataclasses.asdict(c) for c in verdict.criteria] if verdict else []
        out["agents"] = [_agent(a) for a in agents]
        out["last_seen"] = max((a.last_seen for a in agents), default=None)
        out["evaluated_at"] = verdict.evaluated_at if verdict else service.clock()
        out["inventory"] = inventory_store.latest(service.engine, ward_id)
        out["fleet"] = ward_fleet(service, ward_id)
        return out

    app.include_router(fleet_routes(service))

    @app.post(
        "/api/v1/ingest",
        response_model=Ack,
        responses=_ERRORS,
        dependencies=[Security(bearer)],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Batch"}}},
            }
        },
    )
    async def ingest(request: Request) -> Ack:
        # Who is asking is settled before the body is read: an unauthenticated client does
        # not get to upload 8 MiB.
        grant = await run_in_threadpool(service.authorize, request.headers.get("authorization"))
        body = await _read_body(request, MAX_BATCH_BYTES)
        return await run_in_threadpool(service.accept, grant, body)

    @app.post(
        "/api/v1/inventory",
        response_model=InventoryAck,
        responses=_ERRORS,
        dependencies=[Security(bearer)],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Inventory"}}
                },
            }
        },
    )
    async def post_inventory(request: Request) -> InventoryAck:
        grant = await run_in_threadpool(service.authorize, request.headers.get("authorization"))
        body = await _read_body(request, inventory_store.MAX_INVENTORY_BYTES)

        def accept() -> InventoryAck:
            inv = inventory_store.parse(body)
            now = service.clock()
            inventory_store.check(inv, grant, now)
            return InventoryAck(
                stored=inventory_store.store(service.engine, inv, now), devices=len(inv.devices)
            )

        return await run_in_threadpool(accept)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {exposition.CONTENT_TYPE: {}}, "description": "metrics"}},
    )
    def metrics() -> Response:
        return Response(exposition.render(registry), media_type=exposition.CONTENT_TYPE)

    app.openapi = _with_batch_schema(app)  # type: ignore[method-assign]
    return app
