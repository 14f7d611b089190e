"""The collector's HTTP API (FastAPI): ward verdicts, ingest, health and Prometheus metrics.

Every endpoint has a response model, so the OpenAPI document at /openapi.json describes what
clients get; the ingest body is documented from the wire schema although the endpoint reads
it raw (to cap its size before parsing and to answer with field-named errors).

Blocking work (database, evaluation, building /metrics) runs in the thread pool so the
event loop keeps accepting requests.

Who may call what (see collector.auth): ``/healthz``, ``/openapi.json`` and ``/docs`` are open
(the schema describes the API, it holds no data); ingest and inventory take an agent token;
the ward list, a ward's page and ``/metrics`` take a viewer or admin token (``/metrics`` is
open when the server runs with ``--metrics-open``); tokens and the audit log take an admin
token.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Security
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from collector import audit, auth, exposition
from collector import inventory as inventory_store
from collector import tokens as tokenstore
from collector.auth import Principal, RateLimiter
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


class TokenOut(BaseModel):
    prefix: str
    role: tokenstore.Role
    name: str
    ward: str | None
    agent: str | None
    created_at: float
    revoked_at: float | None


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    role: tokenstore.Role
    name: str = Field("", max_length=tokenstore.MAX_NAME, description="who holds it")
    ward: str | None = Field(None, max_length=64, description="agent tokens only")
    agent: str | None = Field(None, max_length=64, description="agent tokens only")


class TokenCreated(TokenOut):
    token: str = Field(description="the token itself: shown only in this answer")


class AuditEntryOut(BaseModel):
    id: int
    at: float
    who: str
    action: str
    detail: str


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


_DENIED: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "missing, unknown or revoked token"},
    403: {"model": Problem, "description": "the token's role may not do this"},
    503: {"model": Problem, "description": "database unavailable; retry later"},
}

_ERRORS: dict[int | str, dict[str, Any]] = {
    **_DENIED,
    403: {"model": Problem, "description": "not an agent token, or not for this ward or agent"},
    413: {"model": Problem, "description": f"body larger than {MAX_BATCH_BYTES} bytes"},
    422: {"model": Problem, "description": "invalid batch; each error names its field"},
    429: {
        "model": Problem,
        "description": "too many requests from this token; wait Retry-After seconds",
        "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}},
    },
}


def _token_out(t: tokenstore.TokenInfo) -> TokenOut:
    return TokenOut(
        prefix=t.prefix,
        role=t.role,
        name=t.name,
        ward=t.ward,
        agent=t.agent,
        created_at=t.created_at,
        revoked_at=t.revoked_at,
    )


def create_app(
    service: Service,
    *,
    metrics_open: bool = False,
    ingest_rate: float | None = tokenstore.DEFAULT_INGEST_RATE,
    ingest_burst: float = tokenstore.DEFAULT_INGEST_BURST,
) -> FastAPI:
    """The app. ``metrics_open`` serves /metrics without a token; ``ingest_rate`` (requests
    a second per agent token, with bursts of ``ingest_burst``) of None sets no limit."""
    app = FastAPI(
        title="wardready collector",
        version="1",
        description="Readiness of ward Public Administration Service Centers.",
    )
    # /metrics for thousands of wards is tens of MB of repetitive text; Prometheus asks for
    # gzip, and level 1 shrinks it ~30 times for a small fraction of the time to build it.
    app.add_middleware(GZipMiddleware, minimum_size=64 * 1024, compresslevel=1)
    app.state.tokens = service.tokens
    registry = exposition.registry_for(service)
    limiter = RateLimiter(ingest_rate, ingest_burst) if ingest_rate is not None else None

    def agent(authorization: str | None) -> tokenstore.Grant:
        return auth.agent_grant(service.authorize(authorization), limiter)

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

    @app.get("/api/v1/wards", response_model=list[WardSummary], responses=_DENIED)
    def list_wards(
        _who: Reader,
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
        responses={**_DENIED, 404: {"model": Problem, "description": "no such ward"}},
    )
    def ward_detail(ward_id: str, _who: Reader) -> dict[str, Any]:
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
        return out

    @app.post(
        "/api/v1/ingest",
        response_model=Ack,
        responses=_ERRORS,
        dependencies=[Security(auth.bearer_scheme)],
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
        grant = await run_in_threadpool(agent, request.headers.get("authorization"))
        body = await _read_body(request, MAX_BATCH_BYTES)
        return await run_in_threadpool(service.accept, grant, body)

    @app.post(
        "/api/v1/inventory",
        response_model=InventoryAck,
        responses=_ERRORS,
        dependencies=[Security(auth.bearer_scheme)],
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
        grant = await run_in_threadpool(agent, request.headers.get("authorization"))
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
        responses={
            200: {"content": {exposition.CONTENT_TYPE: {}}, "description": "metrics"},
            **({} if metrics_open else _DENIED),
        },
        dependencies=[] if metrics_open else [Depends(auth.reader)],
    )
    def metrics() -> Response:
        return Response(exposition.render(registry), media_type=exposition.CONTENT_TYPE)

    _admin_routes(app, service)

    app.openapi = _with_batch_schema(app)  # type: ignore[method-assign]
    return app


Reader = Annotated[Principal, Depends(auth.reader)]
Admin = Annotated[Principal, Depends(auth.admin)]


def _admin_routes(app: FastAPI, service: Service) -> None:
    @app.get("/api/v1/tokens", response_model=list[TokenOut], responses=_DENIED)
    def list_tokens(_who: Admin) -> list[TokenOut]:
        return [_token_out(t) for t in tokenstore.list_all(service.engine)]

    @app.post(
        "/api/v1/tokens",
        response_model=TokenCreated,
        status_code=201,
        responses={**_DENIED, 400: {"model": Problem, "description": "what is wrong"}},
    )
    def create_token(spec: TokenCreate, who: Admin) -> TokenCreated:
        try:
            token = tokenstore.create(
                service.engine, spec.ward, spec.agent, role=spec.role, name=spec.name, by=who.who
            )
        except tokenstore.TokenError as exc:
            raise HTTPException(400, str(exc)) from None
        prefix = token[: tokenstore.PREFIX_LENGTH]
        info = next(t for t in tokenstore.list_all(service.engine) if t.prefix == prefix)
        return TokenCreated(**_token_out(info).model_dump(), token=token)

    @app.delete(
        "/api/v1/tokens/{prefix}",
        response_model=TokenOut,
        responses={**_DENIED, 404: {"model": Problem, "description": "no token has it"}},
    )
    def revoke_token(
        prefix: Annotated[
            str,
            Path(
                min_length=tokenstore.PREFIX_LENGTH,
                max_length=tokenstore.PREFIX_LENGTH,
                pattern="^[A-Za-z0-9]+$",
            ),
        ],
        who: Admin,
    ) -> TokenOut:
        try:
            info = service.tokens.revoke(prefix, by=who.who)
        except tokenstore.TokenError as exc:
            raise HTTPException(404, str(exc)) from None
        return _token_out(info)

    @app.get("/api/v1/audit-log", response_model=list[AuditEntryOut], responses=_DENIED)
    def audit_log(
        _who: Admin,
        limit: Annotated[int, Query(ge=1, le=1000, description="newest N entries")] = 100,
        since: Annotated[
            float | None, Query(ge=0, le=1e11, description="only entries at or after (Unix)")
        ] = None,
    ) -> list[AuditEntryOut]:
        return [AuditEntryOut(**vars(e)) for e in audit.recent(service.engine, limit, since)]
