"""The REST write API (CONTRACT §9): each route is one command of §4 (its `CommandSpec.route`), run by the
same CommandProcessor as the NATS subscriber, so both transports share every rule, error and the command
log. This adapter only translates: path, headers and body into one CommandRequest; the reply into status,
headers and body."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web

from domain.errors import Unavailable
from fhir_read.auth import TENANT_KEY
from handlers.errors import ErrorCode, Rejection
from handlers.pipeline import CommandProcessor, CommandRequest, parse_json_object
from handlers.registry import API_PREFIX, CommandSpec, VersionCheck
from schemas.commands import MAX_BODY_BYTES
from schemas.replies import POSITION_HEADER, Reply

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
CORRELATION_HEADER = "X-Correlation-Id"
# Seconds a caller should wait before retrying a 503 with the same Idempotency-Key.
RETRY_AFTER_S = 1


_VERSION_TAG = re.compile(r'(?:W/)?"([1-9][0-9]{0,17})"')
MAX_CORRELATION_ID = 200
_CORRELATION_ID = re.compile(rf"[!-~]{{1,{MAX_CORRELATION_ID}}}")


def add_command_routes(app: web.Application, processor: CommandProcessor, *, fhir_base: str | None) -> None:
    """Mount the route of every command the processor runs. `fhir_base` (CAREPLAN_PUBLIC_BASE_URL) roots
    `Location`; without it the request's own origin + `/fhir` does."""
    paths = {spec.route.path for spec in processor.commands.values()}
    for spec in processor.commands.values():
        app.router.add_route(
            spec.route.method, aiohttp_path(spec.route.path, paths), _handler(spec, processor, fhir_base)
        )


def aiohttp_path(path: str, paths: set[str]) -> str:
    """`path` for aiohttp, a `{field}` segment made not to match a literal segment that another route has in
    its place (`/care-plans/{care_plan_id}` is not `/care-plans/enrolments`): otherwise aiohttp would route
    `PATCH /care-plans/enrolments` to `careplan.update` and advertise PATCH there."""
    segments = path.split("/")
    for index, segment in enumerate(segments):
        if not (segment.startswith("{") and segment.endswith("}")):
            continue
        literals = sorted(
            {
                other[index]
                for other in (p.split("/") for p in paths)
                if len(other) > index
                and other[:index] == segments[:index]
                and not other[index].startswith("{")
            }
        )
        if literals:
            taken = "|".join(re.escape(literal) for literal in literals)
            segments[index] = f"{{{segment[1:-1]}:(?!(?:{taken})(?:/|$))[^/]+}}"
    return "/".join(segments)


def _handler(
    spec: CommandSpec, processor: CommandProcessor, fhir_base: str | None
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        command_id: str | None = None
        try:
            authorization = request.headers.get("Authorization")
            _, principal = await processor.admit(spec.name, authorization)
            request[TENANT_KEY] = principal.tenant_id
            command_id = idempotency_key(request.headers)
            correlation = correlation_id(request.headers)
            envelope = await _envelope(spec, request, command_id)
            reply = await processor.process(
                CommandRequest(
                    command=spec.name,
                    envelope=envelope,
                    authorization=authorization,
                    message_id=command_id,
                    correlation_id=correlation,
                    transport="http",
                    principal=principal,
                )
            )
        except Rejection as rejection:
            return problem_response(rejection, command_id)
        except Unavailable as exc:
            code = ErrorCode.UNAVAILABLE if exc.what == "database" else ErrorCode.UPSTREAM_UNAVAILABLE
            log.warning("REST %s %s: %s unavailable", spec.name, command_id, exc.what)
            response = problem_response(
                Rejection(code, f"{exc.what} is unavailable; retry with the same Idempotency-Key"), command_id
            )
            response.headers["Retry-After"] = str(RETRY_AFTER_S)
            return response
        return reply_response(reply, request, fhir_base)

    return handle


def idempotency_key(headers: Mapping[str, str]) -> str:
    """The command id: the caller's `Idempotency-Key` (a UUID, as every command id), else a new one."""
    given = headers.get("Idempotency-Key")
    if given is None:
        return str(uuid.uuid4())
    try:
        return str(uuid.UUID(given.strip()))
    except ValueError:
        raise _header_error("Idempotency-Key", "must be a UUID") from None


def expected_version(headers: Mapping[str, str]) -> int | None:
    """`If-Match: W/"<n>"` (or `"<n>"`, the ETag our reads and writes hand out) as `expected_version`."""
    given = headers.get("If-Match")
    if given is None:
        return None
    match = _VERSION_TAG.fullmatch(given.strip())
    if match is None:
        raise _header_error("If-Match", 'must be one entity tag W/"<version>", as in the resource\'s ETag')
    return int(match.group(1))


async def _envelope(spec: CommandSpec, request: web.Request, command_id: str) -> dict[str, Any]:
    route = spec.route
    version = expected_version(request.headers)
    if version is None and spec.version is VersionCheck.REQUIRED:
        raise Rejection(
            ErrorCode.PRECONDITION_REQUIRED,
            f'{spec.name} changes a versioned resource: send If-Match: W/"<version>" from its ETag',
        )
    data = await _body(request) if route.has_body else {}
    if route.body_field is not None:
        data = {route.body_field: data}
    for field in route.path_fields:
        value = request.match_info[field]
        if field in data and data[field] != value:
            raise Rejection(
                ErrorCode.VALIDATION_ERROR,
                f"{field} is given by the URL path",
                {"errors": [{"path": f"data.{field}", "message": "differs from the URL path's value"}]},
            )
        data[field] = value
    envelope: dict[str, Any] = {"command_id": command_id, "data": data}
    if version is not None:
        envelope["expected_version"] = version
    return envelope


async def _body(request: web.Request) -> dict[str, Any]:
    too_large = Rejection(
        ErrorCode.PAYLOAD_TOO_LARGE,
        f"the body is over the limit of {MAX_BODY_BYTES} bytes",
        {"limit_bytes": MAX_BODY_BYTES},
    )
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise too_large
    try:
        raw = await request.read()  # bounded by the app's client_max_size for chunked bodies
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None
    if len(raw) > MAX_BODY_BYTES:
        raise too_large
    return parse_json_object(raw)


def correlation_id(headers: Mapping[str, str]) -> str | None:
    """The caller's `X-Correlation-Id`: printable ASCII, as it travels on into NATS headers and events."""
    given = headers.get(CORRELATION_HEADER)
    if given is None:
        return None
    if not _CORRELATION_ID.fullmatch(given):
        raise _header_error(CORRELATION_HEADER, f"must be 1-{MAX_CORRELATION_ID} printable ASCII characters")
    return given


def reply_response(reply: Reply, request: web.Request, fhir_base: str | None) -> web.Response:
    """A success is the reply's `result` with the resource's ETag (and Location, when created, or where a
    started rollout reports its progress)."""
    if reply.error is not None or reply.result is None:
        error = reply.error
        rejection = (
            Rejection(ErrorCode(error.code), error.message, error.details)
            if error is not None
            else Rejection(ErrorCode.INTERNAL, "internal error")
        )
        return problem_response(rejection, reply.command_id)
    result = reply.result
    response = web.Response(
        status=reply.status,
        body=orjson.dumps(result.model_dump(mode="json", exclude_none=True)),
        content_type="application/json",
    )
    response.headers["ETag"] = f'W/"{result.version}"'
    if result.position is not None:
        response.headers[POSITION_HEADER] = result.position
    if reply.status == 201:
        base = (fhir_base or f"{request.url.origin()}/fhir").rstrip("/")
        response.headers["Location"] = f"{base}/{result.resource_type}/{result.id}"
    elif reply.status == 202 and result.rollout_id is not None:
        response.headers["Location"] = f"{request.url.origin()}{API_PREFIX}/rollouts/{result.rollout_id}"
    if reply.command_id:
        response.headers["Idempotency-Key"] = reply.command_id
    return response


def problem_response(rejection: Rejection, command_id: str | None) -> web.Response:
    """RFC 9457 problem details carrying the reply's code, details and command id (CONTRACT §9)."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(rejection.status).phrase,
        "status": rejection.status,
        "detail": rejection.message,
        "code": rejection.code.value,
        "command_id": command_id,
    }
    if rejection.details is not None:
        body["details"] = rejection.details
    response = web.Response(status=rejection.status, body=orjson.dumps(body), content_type=PROBLEM_JSON)
    if command_id:
        response.headers["Idempotency-Key"] = command_id
    return response


def _header_error(header: str, message: str) -> Rejection:
    return Rejection(
        ErrorCode.VALIDATION_ERROR,
        f"{header} {message}",
        {"errors": [{"path": f"headers.{header}", "message": message}]},
    )
