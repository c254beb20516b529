"""Read queries for vread, `_history` and the audit Provenance (CONTRACT §6): stored FHIR JSON as text,
keyset-paged, always inside a tenant-bound transaction so RLS applies."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import orjson
from sqlalchemy import ColumnElement, Text, and_, cast, exists, literal, or_, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from domain.scopes import EVERYONE, Reader, matches
from storage.criteria_sql import Sql, provenance_visible_sql
from storage.reads import StoredResource, tenant_transaction
from storage.tables import READABLE_TABLES, provenance, resource_history
from storage.visibility import HIDDEN_FROM_PATIENTS, visible_to_patient


@dataclass(frozen=True, slots=True)
class HistoryKey:
    """A version's place in history order (newest first): what a `_history` cursor carries."""

    last_updated: datetime
    resource_id: str
    version: int


@dataclass(frozen=True, slots=True)
class HistoryVersion:
    resource_id: str
    version: int
    last_updated: datetime
    json_text: str

    @property
    def key(self) -> HistoryKey:
        return HistoryKey(self.last_updated, self.resource_id, self.version)


@dataclass(frozen=True, slots=True)
class RecordedRange:
    """`start <= recorded < end`, either side open: one value of a `recorded` search parameter."""

    start: datetime | None = None
    end: datetime | None = None


@dataclass(frozen=True, slots=True)
class ProvenanceQuery:
    """Each tuple is one search parameter's comma list (OR); the tuples of a field are ANDed."""

    targets: tuple[tuple[str, ...], ...] = ()  # "Type/id"
    patients: tuple[tuple[str, ...], ...] = ()
    recorded: tuple[tuple[RecordedRange, ...], ...] = ()


@dataclass(frozen=True, slots=True)
class ProvenanceKey:
    """A Provenance's place in search order (recorded, then id): what a search cursor carries."""

    recorded: datetime
    id: str


@dataclass(frozen=True, slots=True)
class ProvenanceRecord:
    id: str
    recorded: datetime
    json_text: str

    @property
    def key(self) -> ProvenanceKey:
        return ProvenanceKey(self.recorded, self.id)


def _visible_versions(
    tenant_id: str, resource_type: str, patient_id: str | None
) -> list[ColumnElement[bool]]:
    """A patient sees the versions of what they may see now (storage.visibility: their own resources, of
    plans that are not draft or void), and no draft or void CarePlan version even of a plan shown now."""
    h = resource_history.c
    conditions: list[ColumnElement[bool]] = [h.tenant_id == tenant_id, h.resource_type == resource_type]
    if patient_id is not None:
        # The patient and plan live on the current row (the patient never changes, nor a part's plan).
        current = text(
            f"EXISTS (SELECT 1 FROM {READABLE_TABLES[resource_type]} r "
            "WHERE r.tenant_id = resource_history.tenant_id AND r.id = resource_history.resource_id AND "
            f"{visible_to_patient(resource_type, 'r', ':visible_patient', ':hidden_statuses')})"
        ).bindparams(visible_patient=patient_id, hidden_statuses=list(HIDDEN_FROM_PATIENTS))
        conditions.append(current)  # type: ignore[arg-type]
        if resource_type == "CarePlan":
            status = h.resource.op("->>", return_type=Text)(literal("status", Text))
            conditions.append(status.not_in(HIDDEN_FROM_PATIENTS))
    return conditions


async def read_version(
    engine: AsyncEngine,
    tenant_id: str,
    resource_type: str,
    resource_id: str,
    version: int,
    *,
    reader: Reader = EVERYONE,
) -> StoredResource | None:
    """One stored version (vread), or None when unknown or hidden from this caller: a patient's walls, and
    the token's scopes judged on that very version (CONTRACT §13; the index holds current versions only)."""
    h = resource_history.c
    query = select(h.version, h.last_updated, cast(h.resource, Text)).where(
        *_visible_versions(tenant_id, resource_type, reader.patient_id),
        h.resource_id == resource_id,
        h.version == version,
    )
    async with tenant_transaction(engine, tenant_id) as conn:
        row = (await conn.execute(query)).one_or_none()
    if row is None or not _in_scope(reader, resource_type, row[2]):
        return None
    return StoredResource(row[0], row[1], row[2])


def _in_scope(reader: Reader, resource_type: str, json_text: str) -> bool:
    filters = reader.reading(resource_type)
    return filters is None or matches(orjson.loads(json_text), filters)


# A history under granular scopes is read in batches of at least this many versions, each judged on its
# own, until the page is full or history ends.
_SCOPED_BATCH = 200


async def read_history(
    engine: AsyncEngine,
    tenant_id: str,
    resource_type: str,
    resource_id: str | None,
    *,
    since: datetime | None,
    after: HistoryKey | None,
    limit: int,
    reader: Reader = EVERYONE,
) -> list[HistoryVersion] | None:
    """Up to `limit` versions newest first (of one resource, or of the whole type when `resource_id` is
    None), strictly after `after`, each one this caller may see. None when the one resource has no version
    this caller may see, so an instance history of an unknown id is a 404 rather than an empty Bundle."""
    if reader.reading(resource_type) is None:
        return await _history_page(engine, tenant_id, resource_type, resource_id, since, after, limit, reader)
    # Under granular scopes each version is judged on its own JSON: read on until the page is full.
    shown: list[HistoryVersion] = []
    batch, first_page = max(limit, _SCOPED_BATCH), after is None
    while True:
        page = await _history_page(engine, tenant_id, resource_type, resource_id, since, after, batch, reader)
        if page is None:
            return None
        shown += [v for v in page if _in_scope(reader, resource_type, v.json_text)]
        if len(shown) >= limit or len(page) < batch:
            break
        after = page[-1].key
    if not shown and resource_id is not None and first_page:
        return None  # not one version of it is within the scopes: as if it did not exist
    return shown[:limit]


async def _history_page(
    engine: AsyncEngine,
    tenant_id: str,
    resource_type: str,
    resource_id: str | None,
    since: datetime | None,
    after: HistoryKey | None,
    limit: int,
    reader: Reader,
) -> list[HistoryVersion] | None:
    h = resource_history.c
    conditions = _visible_versions(tenant_id, resource_type, reader.patient_id)
    if resource_id is not None:
        conditions.append(h.resource_id == resource_id)
    page = conditions.copy()
    if since is not None:
        page.append(h.last_updated >= since)
    if after is not None:
        # The order mixes directions (time and version down, id up), so no row comparison: spelled out,
        # with the plain bound first so an index on last_updated can range-scan.
        page.append(h.last_updated <= after.last_updated)
        page.append(
            or_(
                h.last_updated < after.last_updated,
                h.resource_id > after.resource_id,
                and_(h.resource_id == after.resource_id, h.version < after.version),
            )
        )
    query = (
        select(h.resource_id, h.version, h.last_updated, cast(h.resource, Text))
        .where(*page)
        .order_by(h.last_updated.desc(), h.resource_id, h.version.desc())
        .limit(limit)
    )
    async with tenant_transaction(engine, tenant_id) as conn:
        rows = (await conn.execute(query)).all()
        if (
            not rows
            and resource_id is not None
            and not await conn.scalar(select(exists().where(*conditions)))
        ):
            return None
    return [HistoryVersion(r[0], r[1], r[2], r[3]) for r in rows]


def _visible_provenance(tenant_id: str, reader: Reader) -> list[ColumnElement[bool]]:
    """A patient's own audit, and under scopes only the audit of what the token may read now."""
    p = provenance.c
    conditions: list[ColumnElement[bool]] = [p.tenant_id == tenant_id]
    if reader.patient_id is not None or reader.scopes is not None:
        sql = Sql()
        visible = text(provenance_visible_sql(sql, reader, "provenance")).bindparams(**sql.params)
        conditions.append(visible)  # type: ignore[arg-type]
    return conditions


async def read_provenance(
    engine: AsyncEngine, tenant_id: str, provenance_id: str, *, reader: Reader = EVERYONE
) -> StoredResource | None:
    """One audit Provenance; it is never revised, so it is always version 1 as of `recorded`."""
    p = provenance.c
    query = select(p.recorded, cast(p.resource, Text)).where(
        *_visible_provenance(tenant_id, reader), p.id == provenance_id
    )
    async with tenant_transaction(engine, tenant_id) as conn:
        row = (await conn.execute(query)).one_or_none()
    return None if row is None else StoredResource(1, row[0], row[1])


def _recorded_in(ranges: tuple[RecordedRange, ...]) -> ColumnElement[bool]:
    p = provenance.c
    alternatives: list[ColumnElement[bool]] = []
    for r in ranges:
        bounds = [p.recorded >= r.start] if r.start is not None else []
        if r.end is not None:
            bounds.append(p.recorded < r.end)
        alternatives.append(and_(*bounds) if bounds else p.recorded.is_not(None))
    return or_(*alternatives)


async def search_provenance(
    engine: AsyncEngine,
    tenant_id: str,
    search: ProvenanceQuery,
    *,
    after: ProvenanceKey | None,
    limit: int,
    reader: Reader = EVERYONE,
) -> list[ProvenanceRecord]:
    """Up to `limit` matches in (recorded, id) order, strictly after `after`."""
    p = provenance.c
    conditions = _visible_provenance(tenant_id, reader)
    # `&&`: any of the comma-listed targets. A filter after the tenant's index: under RLS no GIN operator
    # can be an index condition (migration 0009).
    conditions += [p.targets.overlap(list(any_of)) for any_of in search.targets]
    conditions += [p.patient_id.in_(any_of) for any_of in search.patients]
    conditions += [_recorded_in(any_of) for any_of in search.recorded]
    if after is not None:
        conditions.append(
            or_(p.recorded > after.recorded, and_(p.recorded == after.recorded, p.id > after.id))
        )
    query = (
        select(p.id, p.recorded, cast(p.resource, Text))
        .where(*conditions)
        .order_by(p.recorded, p.id)
        .limit(limit)
    )
    async with tenant_transaction(engine, tenant_id) as conn:
        rows = (await conn.execute(query)).all()
    return [ProvenanceRecord(r[0], r[1], r[2]) for r in rows]
