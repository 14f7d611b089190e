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

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Security
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from collector import audit_api, audit_pages, auditlog, auth, board, exposition, history, summary
from collector import inventory as inventory_store
from collector import tokens as tokenstore
from collector.auth import Principal, RateLimiter
from collector.clock import ServerTime
from collector.fleet_api import fleet_routes
from collector.ingest import IngestError
from collector.ingest_route import IngestHandler, IngestRoute, read_body
from collector.service import Service
from collector.summary import VerdictWord, WardDetail, WardSummary
from shared.wire import MAX_BATCH_BYTES, Ack, Batch, Inventory

log = logging.getLogger(__name__)


class Health(BaseModel):
    status: Literal["ok", "unhealthy"]
    reason: str | None = Field(default=None, description="why the collector is unhealthy")



class InventoryAck(BaseModel):
    stored: bool = Field(description="false when a newer inventory of this agent is held")
    devices: int


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


class HistoryOut(BaseModel):
    ward: str
    start: float
    end: float
    seconds: dict[str, float] = Field(
        description="seconds of the window per verdict, and 'unrecorded' before any record"
    )
    ready_since: float | None = Field(description="when the ready stretch holding `end` began")
    first_ready: float | None = Field(description="the first moment in the window it was ready")
    changes: list[history.Change] = Field(
        description="verdict (criterion null) and criterion changes in the window, oldest first"
    )


def parse_time(text: str, name: str) -> float:
    """Unix seconds or ISO 8601 (a time without a zone is UTC)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{name}: {text!r} is neither Unix time nor ISO 8601") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


async def _read_body(request: Request, limit: int) -> bytes:
    return await read_body(request.scope, request.receive, limit)


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
    metrics_shards: int = 1,
) -> FastAPI:
    """The app. ``metrics_open`` serves /metrics without a token; ``ingest_rate`` (requests
    a second per agent token, with bursts of ``ingest_burst``) of None sets no limit;
    ``metrics_shards`` is how many shards ``/metrics?shard=K`` splits the wards into."""
    if metrics_shards < 1:
        raise ValueError(f"metrics_shards: must be at least 1, not {metrics_shards}")
    app = FastAPI(
        title="wardready collector",
        version="1",
        description="Readiness of ward Public Administration Service Centers.",
    )
    # /metrics for thousands of wards is tens of MB of repetitive text; Prometheus asks for
    # gzip, and level 1 shrinks it ~30 times for a small fraction of the time to build it.
    app.add_middleware(GZipMiddleware, minimum_size=64 * 1024, compresslevel=1)
    app.add_middleware(ServerTime)
    limiter = RateLimiter(ingest_rate, ingest_burst) if ingest_rate is not None else None
    ingest_handler = IngestHandler(service, limiter)
    # Outermost of our middlewares: every agent's push skips the others (collector.ingest_route).
    app.add_middleware(IngestRoute, handler=ingest_handler)
    app.state.tokens = service.tokens
    readiness = exposition.ReadinessCollector(service)

    def agent(authorization: str | None) -> tokenstore.Grant:
        return auth.agent_grant(service.authorize(authorization), limiter)

    @app.exception_handler(IngestError)
    async def on_ingest_error(_request: Request, exc: IngestError) -> JSONResponse:
        return _problem(exc)

    @app.exception_handler(sa.exc.OperationalError)
    async def on_db_error(_request: Request, exc: sa.exc.OperationalError) -> JSONResponse:
        log.error("database error: %s", exc.orig)
        return JSONResponse({"detail": "database unavailable; retry later"}, status_code=503)

    @app.get(
        "/healthz",
        response_model=Health,
        response_model_exclude_none=True,
        responses={503: {"model": Health, "description": "the judge is stale"}},
    )
    def healthz() -> Any:
        reason = service.health()
        if reason is not None:
            return JSONResponse({"status": "unhealthy", "reason": reason}, status_code=503)
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
    ) -> list[WardSummary]:
        return [
            w
            for w in summary.summaries(service)
            if (working_group is None or w.working_group == working_group)
            and (kind is None or w.kind == kind)
            and (verdict is None or w.verdict == verdict)
        ]

    @app.get(
        "/api/v1/wards/{ward_id}",
        response_model=WardDetail,
        responses={**_DENIED, 404: {"model": Problem, "description": "no such ward"}},
    )
    def ward_detail(ward_id: str, _who: Reader) -> WardDetail:
        found = summary.detail(service, ward_id)
        if found is None:
            raise HTTPException(404, f"ward: {ward_id!r} is not a known ward")
        return found

    @app.get(
        "/api/v1/wards/{ward_id}/history",
        response_model=HistoryOut,
        responses={
            **_DENIED,
            404: {"model": Problem, "description": "no such ward"},
            422: {"model": Problem, "description": "a bad time or window"},
        },
    )
    def ward_history(
        ward_id: str,
        _who: Reader,
        start: Annotated[
            str | None,
            Query(
                alias="from",
                description="window start: Unix time or ISO 8601 (default: 24 hours ago)",
            ),
        ] = None,
        end: Annotated[
            str | None,
            Query(alias="to", description="window end: Unix time or ISO 8601 (default: now)"),
        ] = None,
    ) -> HistoryOut:
        if ward_id not in service.wards() and ward_id not in service.wards(refresh=True):
            raise HTTPException(404, f"ward: {ward_id!r} is not a known ward")
        now = service.clock()
        try:
            t1 = parse_time(end, "to") if end else now
            t0 = parse_time(start, "from") if start else t1 - 86400
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        if t1 < t0:
            raise HTTPException(422, "to: must not be before from")
        return HistoryOut(
            ward=ward_id,
            start=t0,
            end=t1,
            seconds=history.time_in_states(service.engine, ward_id, t0, t1),
            ready_since=history.became_ready(service.engine, ward_id, t1),
            first_ready=history.first_ready(service.engine, ward_id, t0, t1),
            changes=history.changes(service.engine, ward_id, t0, t1),
        )

    app.include_router(fleet_routes(service))

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
    async def ingest(request: Request) -> Response:
        # IngestRoute answers before routing; this route documents the endpoint, and answers
        # the same way when the app runs without that middleware.
        status, body, headers = await ingest_handler.answer(request.scope, request.receive)
        return Response(body, status, headers or None, media_type="application/json")

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
            400: {"model": Problem, "description": "no such shard"},
            **({} if metrics_open else _DENIED),
        },
        dependencies=[] if metrics_open else [Depends(auth.reader)],
    )
    def metrics(
        shard: Annotated[
            str | None,
            Query(
                description="serve only the wards of this shard (0 to N-1, N from "
                "`serve --metrics-shards`); fleet-level and the collector's own metrics "
                "come on shard 0"
            ),
        ] = None,
    ) -> Response:
        k = 0
        if shard is not None:
            try:
                k = int(shard)
            except ValueError:
                k = -1
            if not 0 <= k < metrics_shards:
                raise HTTPException(
                    400,
                    f"shard: must be an integer from 0 to {metrics_shards - 1} "
                    f"(--metrics-shards {metrics_shards}), not {shard[:40]!r}",
                )
        shards = metrics_shards if shard is not None else 1
        body = exposition.render_families(readiness.families(k, shards))
        if k == 0:
            body += service.metrics.render()
        return Response(body, media_type=exposition.CONTENT_TYPE)

    board.install(app, service)
    app.include_router(audit_pages.router(service))
    app.include_router(audit_api.router(service))
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
        return [AuditEntryOut(**vars(e)) for e in auditlog.recent(service.engine, limit, since)]
