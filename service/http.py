"""The HTTP app: FHIR reads, command outcomes and health probes, on one aiohttp listener."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from http import HTTPStatus

import orjson
from aiohttp import web
from opentelemetry.trace import SpanKind, StatusCode
from sqlalchemy.ext.asyncio import AsyncEngine

from domain.errors import Unavailable
from fhir_read.auth import TENANT_KEY, Unauthenticated, authenticate
from fhir_read.capability import Software
from fhir_read.consistency import position_header
from fhir_read.formats import json_only
from fhir_read.outcome import operation_outcome
from fhir_read.routes import add_fhir_routes
from fhir_read.smart import SmartEndpoints
from handlers.errors import Rejection
from handlers.log_context import log_scope
from handlers.pipeline import CommandProcessor
from handlers.ports import TokenVerifier
from handlers.queries import RolloutReader, rollout_progress, stored_outcome
from handlers.tracing import TRACER, context_from
from service.build_info import build_info
from service.openapi import OPENAPI_PATH, openapi_document
from service.rest_api import CORRELATION_HEADER, add_command_routes
from service.telemetry import ServiceMetrics
from storage.read_routing import ReadRouter
from storage.reads import read_command_outcome

log = logging.getLogger(__name__)
request_log = logging.getLogger("careplan.http")

ReadinessCheck = Callable[[], Awaitable[dict[str, bool]]]
_ENGINE = web.AppKey("ops_engine", AsyncEngine)
_VERIFIER = web.AppKey("ops_verifier", TokenVerifier)
_READINESS: web.AppKey[ReadinessCheck] = web.AppKey("readiness")
RelayRole = Callable[[], str]
_RELAY_ROLE: web.AppKey[RelayRole] = web.AppKey("relay_role")
_METRICS = web.AppKey("metrics", ServiceMetrics)
_ROLLOUTS: web.AppKey[RolloutReader] = web.AppKey("rollouts")
# Probes and scrapes come every few seconds from machines: logged at DEBUG, so INFO is people's traffic.
_QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})


def create_http_app(
    engine: AsyncEngine,
    verifier: TokenVerifier,
    readiness: ReadinessCheck,
    *,
    cursor_secret: bytes | None = None,
    public_base_url: str | None = None,
    relay_role: RelayRole = lambda: "off",
    processor: CommandProcessor | None = None,
    metrics: ServiceMetrics | None = None,
    reads: ReadRouter | None = None,
    read_rollout: RolloutReader | None = None,
    smart: SmartEndpoints | None = None,
) -> web.Application:
    """`engine` is the primary's (command outcomes, and FHIR reads unless `reads` routes them elsewhere)."""
    metrics = metrics or ServiceMetrics()
    build = build_info()
    app = web.Application(
        middlewares=[_observed, _errors_as_documents, json_only, position_header], client_max_size=1024 * 1024
    )
    app[_METRICS] = metrics
    app[_ENGINE] = engine
    app[_VERIFIER] = verifier
    app[_READINESS] = readiness
    app[_RELAY_ROLE] = relay_role
    add_fhir_routes(
        app,
        reads or ReadRouter(engine),
        verifier,
        cursor_secret=cursor_secret,
        public_base_url=public_base_url,
        smart=smart,
        software=Software(version=build.version, released=build.released),
    )
    app.router.add_get("/api/v1/commands/{command_id}", command_outcome_route)
    if read_rollout is not None:
        app[_ROLLOUTS] = read_rollout
        app.router.add_get("/api/v1/rollouts/{rollout_id}", rollout_route)
    if processor is not None:
        add_command_routes(app, processor, fhir_base=public_base_url)
        document = orjson.dumps(openapi_document(processor.commands))

        async def openapi(_: web.Request) -> web.Response:
            return web.Response(body=document, content_type="application/json")

        app.router.add_get(OPENAPI_PATH, openapi)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_route)
    return app


def problem(status: int, title: str, *, code: str, detail: str | None = None) -> web.Response:
    """RFC 9457 problem details with our `code` extension member (CONTRACT §9)."""
    body = {"type": "about:blank", "title": title, "status": status, "code": code}
    if detail:
        body["detail"] = detail
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/problem+json")


async def command_outcome_route(request: web.Request) -> web.Response:
    given = request.match_info["command_id"]
    try:
        principal = await authenticate(request, request.app[_VERIFIER])
    except Unauthenticated as exc:
        return problem(401, "Unauthenticated", code="UNAUTHENTICATED", detail=str(exc))
    try:
        command_id = uuid.UUID(given)
    except ValueError:
        return problem(404, "Not found", code="NOT_FOUND", detail="no such command")
    engine = request.app[_ENGINE]
    try:
        outcome = await stored_outcome(
            principal, command_id, lambda tenant_id, wanted: read_command_outcome(engine, tenant_id, wanted)
        )
    except Rejection as rejection:
        status = rejection.status
        return problem(status, HTTPStatus(status).phrase, code=rejection.code.value, detail=rejection.message)
    return web.Response(body=orjson.dumps(outcome.to_wire()), content_type="application/json")


async def rollout_route(request: web.Request) -> web.Response:
    """A program rollout's progress (CONTRACT §10), as `careplan.query.rollout` answers it."""
    try:
        principal = await authenticate(request, request.app[_VERIFIER])
    except Unauthenticated as exc:
        return problem(401, "Unauthenticated", code="UNAUTHENTICATED", detail=str(exc))
    try:
        progress = await rollout_progress(principal, request.match_info["rollout_id"], request.app[_ROLLOUTS])
    except Rejection as rejection:
        status = rejection.status
        return problem(status, HTTPStatus(status).phrase, code=rejection.code.value, detail=rejection.message)
    return web.Response(body=orjson.dumps(progress), content_type="application/json")


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    checks = await request.app[_READINESS]()
    ready = all(checks.values())
    # The relay role is information, not readiness: a standby replica serves commands and reads as well.
    return web.json_response(
        {"status": "ready" if ready else "not ready", "checks": checks, "relay": request.app[_RELAY_ROLE]()},
        status=200 if ready else 503,
    )


async def metrics_route(request: web.Request) -> web.Response:
    body, content_type = await request.app[_METRICS].exposition(request.headers.get("Accept"))
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


@web.middleware
async def _observed(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """One metric sample and one log line per request, by route template: never the path or query, which
    carry patient ids and search terms."""
    # Every line while the request is handled names it (handlers.log_context); its tenant once known. A
    # server span continues the caller's trace (`traceparent`), or starts one; probes and scrapes have none.
    with log_scope(correlation_id=_printable(request.headers.get(CORRELATION_HEADER))):
        if request.path in _QUIET_ROUTES:
            return await _measured(request, handler)
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        with TRACER.start_as_current_span(
            f"{request.method} {route}",
            context=context_from(request.headers),
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": request.method,
                "http.route": route,
                "url.scheme": request.scheme,
            },
        ) as span:
            response = await _measured(request, handler)
            span.set_attribute("http.response.status_code", response.status)
            if response.status >= 500:
                span.set_status(StatusCode.ERROR)
            return response


async def _measured(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        elapsed = time.perf_counter() - started
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        metrics = request.app[_METRICS]
        metrics.http_requests.labels(route, request.method, str(status)).inc()
        metrics.http_duration.labels(route, request.method).observe(elapsed)
        request_log.log(
            logging.DEBUG if route in _QUIET_ROUTES else logging.INFO,
            "http %s %s %d",
            request.method,
            route,
            status,
            extra={
                "method": request.method,
                "route": route,
                "status": status,
                "tenant_id": request.get(TENANT_KEY),
                "correlation_id": _printable(request.headers.get(CORRELATION_HEADER)),
                "duration_ms": round(elapsed * 1000, 2),
            },
        )


def _printable(value: str | None) -> str | None:
    """A caller's header as it may go into a log line: printable ASCII, bounded."""
    if value is None or not value.isascii() or not value.isprintable():
        return None
    return value[:200]


@web.middleware
async def _errors_as_documents(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every error is a document: OperationOutcome under /fhir, problem+json elsewhere; never a trace."""
    fhir = request.path.startswith("/fhir")
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        reason = exc.reason or "error"
        response = (
            operation_outcome(exc.status, reason)
            if fhir
            else problem(exc.status, reason, code=reason.upper().replace(" ", "_"))
        )
        if "Allow" in exc.headers:  # a 405 says what is allowed (RFC 9110)
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Unavailable:
        log.warning("dependency unavailable during %s", request.path)
        if fhir:
            return operation_outcome(503, "temporarily unavailable; retry later")
        return problem(503, "Service Unavailable", code="UNAVAILABLE")
    except Exception:
        log.exception("unhandled error on %s", request.path)
        if fhir:
            return operation_outcome(500, "internal error")
        return problem(500, "Internal Server Error", code="INTERNAL")
