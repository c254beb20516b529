"""FHIR R4 read interactions (CONTRACT §6). Bodies are the stored JSON bytes of the version asked for."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime

from aiohttp import web

from fhir_read.auth import Unauthenticated, authenticate
from fhir_read.consistency import READS, read_reflecting
from fhir_read.outcome import FHIR_JSON, operation_outcome
from handlers.ports import TokenVerifier
from storage.read_routing import ReadRouter
from storage.reads import READABLE_TABLES, StoredResource, read_resource

FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
VERIFIER = web.AppKey("fhir_verifier", TokenVerifier)


def add_fhir_routes(app: web.Application, reads: ReadRouter, verifier: TokenVerifier) -> None:
    """`reads` says where each read runs: the replica, or the primary (fhir_read.consistency)."""
    app[READS] = reads
    app[VERIFIER] = verifier
    from fhir_read.history import add_history_routes  # here: history.py imports this module's names

    add_history_routes(app)
    for resource_type in READABLE_TABLES:
        app.router.add_get(f"/fhir/{resource_type}/{{id}}", read_route)


async def read_route(request: web.Request) -> web.StreamResponse:
    """`GET /fhir/{type}/{id}` for CarePlan, Goal, Task and CareTeam."""
    try:
        principal = await authenticate(request, request.app[VERIFIER])
    except Unauthenticated as exc:
        return operation_outcome(401, str(exc))
    resource_type = request.path.split("/")[2]
    resource_id = request.match_info["id"]
    if not FHIR_ID.fullmatch(resource_id):
        return operation_outcome(404, f"{resource_type}/{resource_id[:64]!r} is not known")
    found = await read_reflecting(
        request,
        lambda engine: read_resource(
            engine, principal.tenant_id, resource_type, resource_id, patient_id=principal.patient_id
        ),
    )
    if found is None:
        # Another tenant's id, or a resource hidden from this patient, looks exactly like a missing one.
        return operation_outcome(404, f"{resource_type}/{resource_id} is not known")
    return conditional_resource_response(request, found)


def conditional_resource_response(request: web.Request, found: StoredResource) -> web.Response:
    etag = f'W/"{found.version}"'
    last_modified = found.last_updated.astimezone(UTC)
    headers = {"ETag": etag, "Last-Modified": format_datetime(last_modified, usegmt=True)}
    if _not_modified(request, found.version, last_modified):
        return web.Response(status=304, headers=headers)
    return web.Response(body=found.json_text.encode(), content_type=FHIR_JSON, headers=headers)


def _not_modified(request: web.Request, version: int, last_modified: datetime) -> bool:
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match is not None:
        # Weak comparison (RFC 9110 §13.1.2): W/"3" and "3" match version 3.
        tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
        return "*" in tags or f'"{version}"' in tags
    if_modified_since = request.headers.get("If-Modified-Since")
    if if_modified_since is not None:
        try:
            since = parsedate_to_datetime(if_modified_since)
        except (TypeError, ValueError):
            return False  # an unreadable date is ignored, as RFC 9110 says
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        return last_modified.replace(microsecond=0) <= since
    return False
