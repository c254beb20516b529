"""The REST write API (CONTRACT §9): each route is one command of §4, run by the same CommandProcessor as
the NATS subscriber, so both transports share every rule, error and the command log. This module only
translates: path, headers and body into a command envelope; the reply into status, headers and body."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web

from domain.errors import Unavailable
from fhir_read.auth import TENANT_KEY
from handlers.errors import ErrorCode, Rejection
from handlers.pipeline import CommandProcessor, IncomingCommand, parse_json_object, reject_unstorable
from handlers.registry import COMMANDS, VersionCheck
from schemas.commands import COMMAND_SUBJECT_PREFIX, MAX_BODY_BYTES
from schemas.replies import POSITION_HEADER, Reply

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
PROBLEM_JSON = "application/problem+json"
CORRELATION_HEADER = "X-Correlation-Id"
# Seconds a caller should wait before retrying a 503 with the same Idempotency-Key.
RETRY_AFTER_S = 1


@dataclass(frozen=True, slots=True)
class RestRoute:
    """One row of CONTRACT §9. Path parameters are named after the data fields they fill."""

    method: str
    path: str
    command: str
    summary: str
    body_field: str | None = None  # the body is this one field of the data (PATCH: `changes`)
    has_body: bool = True

    @property
    def path_fields(self) -> tuple[str, ...]:
        return tuple(re.findall(r"{(\w+)}", self.path))


_PLAN = f"{API_PREFIX}/care-plans/{{care_plan_id}}"
_MEMBER = f"{_PLAN}/care-team/members/{{member_id}}"
ROUTES: tuple[RestRoute, ...] = (
    RestRoute("POST", f"{API_PREFIX}/care-plans", "careplan.create", "Create a care plan"),
    RestRoute("PATCH", _PLAN, "careplan.update", "Change a care plan (merge patch)", body_field="changes"),
    RestRoute("POST", f"{_PLAN}/status", "careplan.change_status", "Change a care plan's status"),
    RestRoute("POST", f"{_PLAN}/reviews", "careplan.request_review", "Request a review of a care plan"),
    RestRoute("POST", f"{_PLAN}/reviews/complete", "careplan.complete_review", "Complete a care plan review"),
    RestRoute("POST", f"{_PLAN}/goals", "goal.add", "Add a goal to a care plan"),
    RestRoute(
        "PATCH", f"{API_PREFIX}/goals/{{goal_id}}", "goal.update", "Change a goal", body_field="changes"
    ),
    RestRoute(
        "POST", f"{API_PREFIX}/goals/{{goal_id}}/status", "goal.change_status", "Change a goal's status"
    ),
    RestRoute("POST", f"{_PLAN}/activities", "activity.add", "Add an activity to a care plan"),
    RestRoute(
        "POST",
        f"{API_PREFIX}/activities/{{activity_id}}/assignment",
        "activity.assign",
        "Assign an activity to a practitioner",
    ),
    RestRoute(
        "POST",
        f"{API_PREFIX}/activities/{{activity_id}}/status",
        "activity.change_status",
        "Change an activity's status",
    ),
    RestRoute("POST", f"{_PLAN}/care-team/members", "careteam.add_member", "Add a care-team member"),
    RestRoute("PATCH", _MEMBER, "careteam.update_member", "Change a care-team member", body_field="changes"),
    RestRoute("DELETE", _MEMBER, "careteam.remove_member", "Remove a care-team member", has_body=False),
)

_VERSION_TAG = re.compile(r'(?:W/)?"([1-9][0-9]{0,17})"')
MAX_CORRELATION_ID = 200
_CORRELATION_ID = re.compile(rf"[!-~]{{1,{MAX_CORRELATION_ID}}}")


def add_command_routes(app: web.Application, processor: CommandProcessor, *, fhir_base: str | None) -> None:
    """Mount every route of ROUTES. `fhir_base` (CAREPLAN_PUBLIC_BASE_URL) roots `Location`; without it the
    request's own origin + `/fhir` does."""
    for route in ROUTES:
        app.router.add_route(route.method, route.path, _handler(route, processor, fhir_base))


def _handler(
    route: RestRoute, processor: CommandProcessor, fhir_base: str | None
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        command_id: str | None = None
        try:
            _, principal = await processor.admit(route.command, request.headers)
            request[TENANT_KEY] = principal.tenant_id
            command_id = idempotency_key(request.headers)
            headers = _command_headers(request.headers, command_id)
            envelope = await _envelope(route, request, command_id)
            reply = await processor.process(
                IncomingCommand(
                    subject=COMMAND_SUBJECT_PREFIX + route.command,
                    body=orjson.dumps(envelope),
                    headers=headers,
                    transport="http",
                )
            )
        except Rejection as rejection:
            return problem_response(rejection, command_id)
        except Unavailable as exc:
            code = ErrorCode.UNAVAILABLE if exc.what == "database" else ErrorCode.UPSTREAM_UNAVAILABLE
            log.warning("REST %s %s: %s unavailable", route.command, command_id, exc.what)
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


async def _envelope(route: RestRoute, request: web.Request, command_id: str) -> dict[str, Any]:
    version = expected_version(request.headers)
    spec = COMMANDS[route.command]
    if version is None and spec.version is VersionCheck.REQUIRED:
        raise Rejection(
            ErrorCode.PRECONDITION_REQUIRED,
            f'{route.command} changes a versioned resource: send If-Match: W/"<version>" from its ETag',
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
    # Before it is encoded again for the pipeline: past the encoder's depth limit that would fail as a 500.
    reject_unstorable(envelope)
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


def _command_headers(headers: Mapping[str, str], command_id: str) -> dict[str, str]:
    forwarded = {"Authorization": headers.get("Authorization", ""), "Nats-Msg-Id": command_id}
    correlation = correlation_id(headers)
    if correlation is not None:
        forwarded["correlation_id"] = correlation
    return forwarded


def reply_response(reply: Reply, request: web.Request, fhir_base: str | None) -> web.Response:
    """A success is the reply's `result` with the resource's ETag (and Location, when created)."""
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
