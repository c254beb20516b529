"""FHIR R4 vread, instance and type `_history`, and read/search of our audit Provenance (CONTRACT §6).
Bundles are spliced around the stored JSON text of each version; nothing is re-rendered per request."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

import orjson
from aiohttp import web

from domain.access import Principal
from domain.fhir import fhir_instant
from domain.search_parameters import half_open_range
from domain.search_query import MAX_COUNT, MAX_CRITERIA, MAX_OR_VALUES, MAX_PARAMETERS
from fhir_read.app_context import CURSOR_SECRET, authenticate_caller, base_url, prefers_lenient
from fhir_read.auth import Unauthenticated
from fhir_read.bundle import entry, outcome_entry, searchset
from fhir_read.conditional import conditional_resource_response
from fhir_read.consistency import read_reflecting
from fhir_read.cursor import CursorError, seal, unseal
from fhir_read.outcome import FHIR_JSON, operation_outcome
from fhir_read.scopes import scope_refusal
from storage.history_reads import (
    HistoryKey,
    ProvenanceKey,
    ProvenanceQuery,
    RecordedRange,
    read_history,
    read_provenance,
    read_version,
    search_provenance,
)

DEFAULT_COUNT = 20

_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_VERSION = re.compile(r"[1-9][0-9]{0,8}")  # fits Postgres `integer`
_COUNT = re.compile(r"-?[0-9]{1,6}")
_TARGET = re.compile(
    r"(?:https?://\S+/)?([A-Z][A-Za-z]{0,63})/([A-Za-z0-9\-.]{1,64})(?:/_history/[0-9]{1,9})?"
)
_PATIENT = re.compile(r"(?:Patient/)?([A-Za-z0-9\-.]{1,64})")
_PAGING = ("_count", "_cursor")
_FORMAT = ("_format", "_pretty")  # JSON is all we serve (fhir_read.formats refuses another); ignored


class InvalidRequest(Exception):
    """A request we refuse with 400 and an OperationOutcome saying why."""


Route = Callable[[web.Request, Principal], Awaitable[web.StreamResponse]]


def _fhir_route(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The aiohttp handler of a route: authenticate, then turn a refused request into a 400
    OperationOutcome (never a 500)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            principal = await authenticate_caller(request)
        except Unauthenticated as exc:
            return operation_outcome(401, str(exc))
        try:
            return await route(request, principal)
        except (InvalidRequest, CursorError) as exc:
            return operation_outcome(400, str(exc))

    return handler


# --- routes ---


@_fhir_route
async def vread_route(request: web.Request, principal: Principal) -> web.StreamResponse:
    """`GET /fhir/{type}/{id}/_history/{vid}`: a non-numeric version is as unknown as a missing one."""
    resource_type, resource_id, vid = _type_of(request), request.match_info["id"], request.match_info["vid"]
    if (refused := scope_refusal(principal, resource_type, "r")) is not None:
        return refused
    found = None
    if _ID.fullmatch(resource_id) and _VERSION.fullmatch(vid):
        found = await read_reflecting(
            request,
            lambda engine: read_version(
                engine,
                principal.tenant_id,
                resource_type,
                resource_id,
                int(vid),
                reader=principal.reader,
            ),
        )
    if found is None:
        return operation_outcome(404, f"{resource_type}/{resource_id}/_history/{vid} is not known")
    return conditional_resource_response(request, found)


@_fhir_route
async def instance_history_route(request: web.Request, principal: Principal) -> web.StreamResponse:
    resource_id = request.match_info["id"]
    if not _ID.fullmatch(resource_id):
        return operation_outcome(404, f"{_type_of(request)}/{resource_id} is not known")
    return await _history(request, principal, resource_id)


@_fhir_route
async def type_history_route(request: web.Request, principal: Principal) -> web.StreamResponse:
    return await _history(request, principal, None)


async def _history(request: web.Request, principal: Principal, resource_id: str | None) -> web.StreamResponse:
    resource_type = _type_of(request)
    if (refused := scope_refusal(principal, resource_type, "r")) is not None:
        return refused
    params = _Params.parse(request, {"_since"})
    since_text = params.single("_since")
    since = None if since_text is None else _date_range(since_text, "_since")[0]
    page = _Page(request, principal, params)
    after = None
    if page.position is not None:
        try:
            moment, after_id, after_version = page.position
            after = HistoryKey(datetime.fromisoformat(moment), str(after_id), int(after_version))
        except (TypeError, ValueError) as exc:
            raise InvalidRequest("_cursor is not valid") from exc
    versions = await read_reflecting(
        request,
        lambda engine: read_history(
            engine,
            principal.tenant_id,
            resource_type,
            resource_id,
            since=since,
            after=after,
            limit=page.count + 1,
            reader=principal.reader,
        ),
    )
    if versions is None:
        return operation_outcome(404, f"{resource_type}/{resource_id} is not known")
    entries = []
    for v in versions[: page.count]:
        created = v.version == 1
        request_url = resource_type if created else f"{resource_type}/{v.resource_id}"
        entries.append(
            _history_entry(
                f"{page.base}/{resource_type}/{v.resource_id}",
                v.json_text,
                request={"method": "POST" if created else "PUT", "url": request_url},
                response={
                    "status": "201 Created" if created else "200 OK",
                    "etag": f'W/"{v.version}"',
                    "lastModified": fhir_instant(v.last_updated),
                },
            )
        )
    last = versions[page.count - 1].key if len(versions) > page.count else None
    next_position = None if last is None else [last.last_updated.isoformat(), last.resource_id, last.version]
    return _history_bundle(page.links(next_position), entries)


@_fhir_route
async def provenance_read_route(request: web.Request, principal: Principal) -> web.StreamResponse:
    provenance_id = request.match_info["id"]
    if (refused := scope_refusal(principal, "Provenance", "r")) is not None:
        return refused
    found = None
    if _ID.fullmatch(provenance_id):
        found = await read_reflecting(
            request,
            lambda engine: read_provenance(
                engine, principal.tenant_id, provenance_id, reader=principal.reader
            ),
        )
    if found is None:
        return operation_outcome(404, f"Provenance/{provenance_id} is not known")
    return conditional_resource_response(request, found)


@_fhir_route
async def provenance_search_route(request: web.Request, principal: Principal) -> web.StreamResponse:
    """`GET /fhir/Provenance?target=&patient=&recorded=`: comma is OR, a repeated parameter is AND."""
    if (refused := scope_refusal(principal, "Provenance", "s")) is not None:
        return refused
    params = _Params.parse(request, {"target", "patient", "recorded"})
    search = ProvenanceQuery(
        targets=tuple(tuple(_target(v) for v in _any_of(raw, "target")) for raw in params.all("target")),
        patients=tuple(tuple(_patient(v) for v in _any_of(raw, "patient")) for raw in params.all("patient")),
        recorded=tuple(
            tuple(_recorded(v) for v in _any_of(raw, "recorded")) for raw in params.all("recorded")
        ),
    )
    page = _Page(request, principal, params)
    after = None
    if page.position is not None:
        try:
            moment, after_id = page.position
            after = ProvenanceKey(datetime.fromisoformat(moment), str(after_id))
        except (TypeError, ValueError) as exc:
            raise InvalidRequest("_cursor is not valid") from exc
    records = await read_reflecting(
        request,
        lambda engine: search_provenance(
            engine,
            principal.tenant_id,
            search,
            after=after,
            limit=page.count + 1,
            reader=principal.reader,
        ),
    )
    entries = [entry(page.base, "Provenance", r.id, r.json_text, "match") for r in records[: page.count]]
    if params.ignored:
        entries.append(outcome_entry(tuple(params.ignored)))
    last = records[page.count - 1].key if len(records) > page.count else None
    next_position = None if last is None else [last.recorded.isoformat(), last.id]
    return web.Response(body=searchset(None, page.links(next_position), entries), content_type=FHIR_JSON)


def _type_of(request: web.Request) -> str:
    return request.path.split("/")[2]


# --- parameters ---


@dataclass(frozen=True, slots=True)
class _Params:
    """The query's known parameters in request order; unknown ones refused unless the caller prefers
    lenient handling, then listed in `ignored`."""

    known: list[tuple[str, str]]
    ignored: list[str]

    @classmethod
    def parse(cls, request: web.Request, filters: set[str]) -> _Params:
        known, ignored = [], []
        if len(request.query) > MAX_PARAMETERS:
            raise InvalidRequest(f"{len(request.query)} parameters; a search takes at most {MAX_PARAMETERS}")
        criteria = sum(1 for name in request.query if name in filters)
        if criteria > MAX_CRITERIA:
            raise InvalidRequest(f"{criteria} search parameters; a search takes at most {MAX_CRITERIA}")
        for name, value in request.query.items():
            if name in _FORMAT:
                continue
            if name in filters or name in _PAGING:
                known.append((name, value))
            elif prefers_lenient(request):
                ignored.append(name)
            else:
                raise InvalidRequest(f"unknown parameter {name}")
        return cls(known, ignored)

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.known if n == name]

    def single(self, name: str) -> str | None:
        values = self.all(name)
        if len(values) > 1:
            raise InvalidRequest(f"{name} may be given once")
        return values[0] if values else None

    @property
    def filters(self) -> list[tuple[str, str]]:
        return [(n, v) for n, v in self.known if n not in _PAGING]


def _count(params: _Params) -> int:
    raw = params.single("_count")
    if raw is None:
        return DEFAULT_COUNT
    if not _COUNT.fullmatch(raw) or int(raw) <= 0:
        raise InvalidRequest(f"_count must be a positive integer (at most {MAX_COUNT} are returned)")
    return min(int(raw), MAX_COUNT)


def _any_of(raw: str, name: str) -> list[str]:
    values = raw.split(",")
    if len(values) > MAX_OR_VALUES:
        raise InvalidRequest(f"{name}: {len(values)} values; a parameter takes at most {MAX_OR_VALUES}")
    if not all(values):
        raise InvalidRequest(f"{name} has an empty value")
    return values


def _target(value: str) -> str:
    """`Type/id` or `Type/id/_history/N`: both mean the resource (targets are stored unversioned)."""
    match = _TARGET.fullmatch(value)
    if match is None:
        raise InvalidRequest(f"target must be Type/id or Type/id/_history/N, not {value!r}")
    return f"{match[1]}/{match[2]}"


def _patient(value: str) -> str:
    match = _PATIENT.fullmatch(value)
    if match is None:
        raise InvalidRequest(f"patient must be Patient/id or id, not {value!r}")
    return match[1]


def _recorded(value: str) -> RecordedRange:
    """A date search (FHIR R4 §3.1.1.4.2) on the value's implied range [low, high): no prefix means eq."""
    prefix, rest = (value[:2], value[2:]) if value[:2].isalpha() else ("eq", value)
    if prefix not in ("eq", "ge", "gt", "le", "lt"):
        raise InvalidRequest(f"recorded supports the prefixes eq, ge, gt, le and lt, not {prefix!r}")
    low, high = _date_range(rest, "recorded")
    if prefix == "eq":
        return RecordedRange(low, high)
    if prefix in ("ge", "gt"):
        return RecordedRange(start=low if prefix == "ge" else high)
    return RecordedRange(end=high if prefix == "le" else low)


def _date_range(value: str, name: str) -> tuple[datetime, datetime]:
    try:
        return half_open_range(value)
    except ValueError as exc:
        raise InvalidRequest(f"{name} must be a FHIR date or instant, not {value!r}") from exc


# --- paging ---


class _Page:
    """`_count`, the signed keyset cursor and the links. A cursor is bound to the tenant, the caller and the
    query (path and filters), so it cannot be replayed elsewhere or edited into another page; it carries only
    the position, as the query stays in the link."""

    def __init__(self, request: web.Request, principal: Principal, params: _Params) -> None:
        self.base = base_url(request)
        self.path = request.path.removeprefix("/fhir")
        self.filters = params.filters
        self.count = _count(params)
        self._secret = request.app[CURSOR_SECRET]
        # Lists, not tuples: the binding is compared with what comes back out of the cursor's JSON.
        self._binding: dict[str, Any] = {
            "t": principal.tenant_id,
            "s": principal.subject,
            "pt": principal.patient_id,
            "sc": principal.reader.fingerprint,
            "path": request.path,
            "q": sorted([name, value] for name, value in self.filters),
        }
        self.cursor = params.single("_cursor")
        self.position: list[Any] | None = None
        if self.cursor is not None:
            payload = unseal(self.cursor, self._secret, bound_to=self._binding)
            self.position = payload.get("k")

    def links(self, next_position: list[Any] | None) -> list[tuple[str, str]]:
        links = [("self", self._url(self.cursor)), ("first", self._url(None))]
        if next_position is not None:
            links.append(("next", self._url(seal(self._binding | {"k": next_position}, self._secret))))
        return links

    def _url(self, cursor: str | None) -> str:
        query = [*self.filters, ("_count", str(self.count))]
        if cursor is not None:
            query.append(("_cursor", cursor))
        return f"{self.base}{self.path}?{urlencode(query, quote_via=quote)}"


# --- bundles ---


def _history_entry(full_url: str, resource_json: str, **members: object) -> bytes:
    """A history entry around stored JSON text: the resource is spliced in as it is, never re-serialised."""
    rest = orjson.dumps(members)
    return (
        b'{"fullUrl":' + orjson.dumps(full_url) + b',"resource":' + resource_json.encode() + b"," + rest[1:]
    )


def _history_bundle(links: list[tuple[str, str]], entries: list[bytes]) -> web.Response:
    link = [{"relation": relation, "url": url} for relation, url in links]
    head = orjson.dumps({"resourceType": "Bundle", "type": "history", "link": link})
    # FHIR JSON has no empty arrays: an empty page has no `entry` at all.
    body = head[:-1] + b',"entry":[' + b",".join(entries) + b"]}" if entries else head
    return web.Response(body=body, content_type=FHIR_JSON)
