"""Conditional reads (RFC 9110 §13): a stored version answered with its ETag and Last-Modified, or a 304
when the caller already holds it. Shared by read, vread and the Provenance read."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime

from aiohttp import web

from fhir_read.outcome import FHIR_JSON
from storage.reads import StoredResource


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
