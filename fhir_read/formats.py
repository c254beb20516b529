"""The one representation the FHIR surface serves is JSON (CONTRACT §6). A request that accepts only
something else — `Accept: application/fhir+xml`, or `_format=xml` — gets 406, and the OperationOutcome
saying so is JSON all the same: it is the only form there is."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from fhir_read.outcome import operation_outcome

JSON_TYPES = ("application/fhir+json", "application/json", "application/json+fhir")
_JSON_FORMATS = frozenset({"json", *JSON_TYPES})


def accepts_json(accept: str | None, format_: str | None) -> bool:
    """`_format` wins over `Accept` (FHIR http); either may name JSON, `*/*` or `application/*`."""
    if format_ is not None:
        return format_.strip().lower().split(";")[0] in _JSON_FORMATS
    if not accept:
        return True
    for part in accept.split(","):
        media, *parameters = (p.strip() for p in part.lower().split(";"))
        if _quality(parameters) > 0 and (media in ("*/*", "application/*") or media in JSON_TYPES):
            return True
    return False


def _quality(parameters: list[str]) -> float:
    """An Accept entry's `q` (RFC 9110: 0 refuses the type); 1 when absent, 0 when unreadable."""
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip() == "q":
            try:
                return float(value)
            except ValueError:
                return 0.0
    return 1.0


@web.middleware
async def json_only(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if request.path.startswith("/fhir") and not accepts_json(
        request.headers.get("Accept"), request.query.get("_format")
    ):
        return operation_outcome(406, "this server speaks FHIR JSON only (application/fhir+json)")
    return await handler(request)
