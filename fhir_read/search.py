"""`GET /fhir/{type}?…` and `POST /fhir/{type}/_search`: parse, run, page and include (CONTRACT §6)."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from domain.access import Principal
from domain.search import SearchQuery
from domain.search_query import MAX_INCLUDED, MAX_SEARCH_BODY_BYTES, SearchError, parse_search
from fhir_read.app_context import CURSOR_SECRET, authenticate_caller, base_url, prefers_lenient
from fhir_read.auth import Unauthenticated
from fhir_read.bundle import entry, outcome_entry, searchset, subset
from fhir_read.consistency import read_reflecting
from fhir_read.cursor import CursorError, decode_value, encode_value, seal, unseal
from fhir_read.outcome import FHIR_JSON, operation_outcome
from fhir_read.scopes import scope_refusal
from storage.search_sql import Page, load_includes, load_revincludes, run_search


async def search_route(request: web.Request) -> web.StreamResponse:
    """`GET /fhir/{type}?…` or `POST /fhir/{type}/_search` for the searchable types; a `_cursor` alone
    pages on."""
    resource_type = request.path.split("/")[2]
    try:
        principal = await authenticate_caller(request)
    except Unauthenticated as exc:
        return operation_outcome(401, str(exc))
    if (refused := scope_refusal(principal, resource_type, "s")) is not None:
        return refused
    params = list(request.query.items())
    lenient = prefers_lenient(request)
    try:
        if request.method == "POST":
            if request.content_type != "application/x-www-form-urlencoded":
                return operation_outcome(415, "POST _search takes an application/x-www-form-urlencoded body")
            form = await _search_form(request)
            if form is None:
                return operation_outcome(413, f"a _search body takes at most {MAX_SEARCH_BODY_BYTES} bytes")
            params += form
        query, after = _query_and_position(request, resource_type, principal, params, lenient)

        async def search_with_includes(engine: AsyncEngine) -> bytes:
            page = await run_search(engine, principal.tenant_id, query, reader=principal.reader, after=after)
            return await _bundle(request, engine, principal, query, page)

        body = await read_reflecting(request, search_with_includes)
    except (SearchError, CursorError) as exc:
        return operation_outcome(400, str(exc))
    return web.Response(body=body, content_type=FHIR_JSON)


async def _search_form(request: web.Request) -> list[tuple[str, str]] | None:
    """The form's pairs, or None when the body is over MAX_SEARCH_BODY_BYTES (read no further than that)."""
    if (request.content_length or 0) > MAX_SEARCH_BODY_BYTES:
        return None
    body = bytearray()
    async for chunk in request.content.iter_chunked(8192):
        body += chunk
        if len(body) > MAX_SEARCH_BODY_BYTES:
            return None
    try:
        return parse_qsl(body.decode(), keep_blank_values=True)
    except UnicodeDecodeError as exc:
        raise SearchError("the _search body is not UTF-8") from exc


def _binding(principal: Principal, resource_type: str) -> dict[str, object]:
    return {
        "t": principal.tenant_id,
        "s": principal.subject,
        "pt": principal.patient_id,
        "sc": principal.reader.fingerprint,  # a page is never read under other scopes than the first
        "rt": resource_type,
    }


def _query_and_position(
    request: web.Request,
    resource_type: str,
    principal: Principal,
    params: list[tuple[str, str]],
    lenient: bool,
) -> tuple[SearchQuery, tuple[list[object], str] | None]:
    cursors = [v for k, v in params if k == "_cursor"]
    if not cursors:
        return parse_search(resource_type, params, lenient=lenient), None
    beside = sorted({k for k, _ in params if k != "_cursor" and k not in BESIDE_A_CURSOR})
    if len(cursors) > 1 or beside:
        raise SearchError(
            "_cursor carries the whole query: beside it only _count, _format and _pretty may be given"
            + (f", not {', '.join(beside)}" if beside else "")
        )
    payload = unseal(cursors[0], request.app[CURSOR_SECRET], bound_to=_binding(principal, resource_type))
    # A client's own `_count` on a `next` link (Medplum adds one) sizes this page; the position stays.
    counts = [v for k, v in params if k == "_count"]
    pairs = [(k, v) for k, v in payload["q"] if not (counts and k == "_count")] + [
        ("_count", c) for c in counts
    ]
    query = parse_search(resource_type, pairs, lenient=lenient)
    return query, ([decode_value(v) for v in payload["k"]], str(payload["i"]))


# What a client may send beside `_cursor`: none of them changes which resources the query finds.
BESIDE_A_CURSOR = frozenset({"_count", "_format", "_pretty"})


async def _bundle(
    request: web.Request, engine: AsyncEngine, principal: Principal, query: SearchQuery, page: Page
) -> bytes:
    base = base_url(request)
    resource_type = query.resource_type
    canonical = query.canonical()
    first = f"{base}/{resource_type}?{urlencode(canonical)}"
    links = [("self", str(request.url) if "_cursor" in request.query else first), ("first", first)]
    if page.has_more and page.matches:
        last = page.matches[-1]
        token = seal(
            _binding(principal, resource_type)
            | {"q": canonical, "k": [encode_value(v) for v in last.sort_values], "i": last.resource_id},
            request.app[CURSOR_SECRET],
        )
        links.append(("next", f"{base}/{resource_type}?{urlencode({'_cursor': token})}"))
    if query.summary == "count":
        return searchset(page.total, links, [])
    cut = query.summary == "true" or bool(query.elements)
    entries = [
        entry(
            base,
            resource_type,
            m.resource_id,
            subset(m.json_text, resource_type, summary=query.summary == "true", elements=query.elements)
            if cut
            else m.json_text,
            "match",
        )
        for m in page.matches
    ]
    entries += [
        entry(base, t, i, body, "include") for t, i, body in await _included(engine, principal, query, page)
    ]
    if query.ignored:
        entries.append(outcome_entry(query.ignored))
    return searchset(page.total, links, entries)


async def _included(
    engine: AsyncEngine, principal: Principal, query: SearchQuery, page: Page
) -> list[tuple[str, str, str]]:
    """`_include` (one `:iterate` level) and `_revinclude`, each branch under the same patient filter and
    scopes as a read, on the engine the matches came from."""
    tenant, reader = principal.tenant_id, principal.reader
    ids = [m.resource_id for m in page.matches]
    found: dict[tuple[str, str], str] = {}
    seen = {(query.resource_type, i) for i in ids}

    def add(rows: list[tuple[str, str, str]]) -> None:
        for t, i, body in rows:
            if (t, i) not in seen:
                found[(t, i)] = body
        if len(found) > MAX_INCLUDED:
            raise SearchError(f"more than {MAX_INCLUDED} included resources on one page: lower _count")

    for include in query.includes:
        if include.source_type == query.resource_type:
            add(
                await load_includes(
                    engine, tenant, include.source_type, ids, include, reader=reader, limit=MAX_INCLUDED
                )
            )
    for include in query.revincludes:
        add(
            await load_revincludes(
                engine, tenant, query.resource_type, ids, include, reader=reader, limit=MAX_INCLUDED
            )
        )
    for include in (i for i in query.includes if i.iterate):
        sources = [i for (t, i) in found if t == include.source_type]
        add(
            await load_includes(
                engine, tenant, include.source_type, sources, include, reader=reader, limit=MAX_INCLUDED
            )
        )
    return [(t, i, body) for (t, i), body in found.items()]
