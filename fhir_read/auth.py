"""Bearer JWT on HTTP requests: the same verifier as the command path."""

from __future__ import annotations

from aiohttp import web

from domain.access import Principal
from handlers.log_context import note
from handlers.ports import AuthenticationFailed, TokenVerifier

# Where an authenticated request keeps its tenant, for the request's log line.
TENANT_KEY = web.RequestKey("careplan.tenant_id", str)


class Unauthenticated(Exception):
    pass


async def authenticate(request: web.Request, verifier: TokenVerifier) -> Principal:
    """The caller's principal; `Unauthenticated` when the header is missing or the token is bad."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("an `Authorization: Bearer <JWT>` header is required")
    try:
        principal = await verifier.verify(token.strip())
    except AuthenticationFailed as exc:
        raise Unauthenticated(str(exc)) from exc
    request[TENANT_KEY] = principal.tenant_id
    note(tenant_id=principal.tenant_id)
    return principal
