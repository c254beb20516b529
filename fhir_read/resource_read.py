"""`GET /fhir/{type}/{id}`: the read interaction (CONTRACT §6). The body is the stored JSON bytes of the
current version."""

from __future__ import annotations

import re

from aiohttp import web

from fhir_read.app_context import authenticate_caller
from fhir_read.auth import Unauthenticated
from fhir_read.conditional import conditional_resource_response
from fhir_read.consistency import read_reflecting
from fhir_read.outcome import operation_outcome
from fhir_read.scopes import scope_refusal
from storage.reads import read_resource

FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


async def read_route(request: web.Request) -> web.StreamResponse:
    """`GET /fhir/{type}/{id}` for CarePlan, Goal, Task and CareTeam."""
    try:
        principal = await authenticate_caller(request)
    except Unauthenticated as exc:
        return operation_outcome(401, str(exc))
    resource_type = request.path.split("/")[2]
    resource_id = request.match_info["id"]
    if (refused := scope_refusal(principal, resource_type, "r")) is not None:
        return refused
    if not FHIR_ID.fullmatch(resource_id):
        return operation_outcome(404, f"{resource_type}/{resource_id[:64]!r} is not known")
    found = await read_reflecting(
        request,
        lambda engine: read_resource(
            engine, principal.tenant_id, resource_type, resource_id, reader=principal.reader
        ),
    )
    if found is None:
        # Another tenant's id, or a resource hidden from this patient, looks exactly like a missing one.
        return operation_outcome(404, f"{resource_type}/{resource_id} is not known")
    return conditional_resource_response(request, found)
