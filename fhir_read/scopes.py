"""A token's SMART scopes at the door of each read path (CONTRACT §13): a type it has no scope to read is
403 before anything is looked up, and a search needs the `s` letter. What the scopes narrow is filtered in
storage (storage.criteria_sql.visible_sql), where a resource outside them is as absent as a missing one."""

from __future__ import annotations

from aiohttp import web

from domain.access import Principal
from fhir_read.outcome import operation_outcome


def scope_refusal(principal: Principal, resource_type: str, letter: str) -> web.Response | None:
    """403 when the token's scopes give no `letter` (r: read, vread, history; s: search) on the type;
    None when they do, or when the token has no `scope` claim (its roles decide, as before scopes)."""
    reader = principal.reader
    allowed = reader.may_read(resource_type) if letter == "r" else reader.may_search(resource_type)
    if allowed:
        return None
    what = "read" if letter == "r" else "search"
    return operation_outcome(403, f"the token's scopes do not allow to {what} {resource_type}")
