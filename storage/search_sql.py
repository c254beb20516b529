"""Compile a parsed FHIR search into SQL over the current-resource tables and the search index, and run
it in a tenant-bound transaction. Keyset paging on (sort keys…, id); no server-side result cache."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from domain.scopes import Reader
from domain.search import Include, SearchQuery, SortKey
from domain.search_parameters import BY_TYPE, DATE, REFERENCE, STRING, TOKEN, URI
from storage.criteria_sql import (
    INDEX_OF_TYPE,
    Sql,
    criterion_sql,
    positional,
    provenance_visible_sql,
    visible_sql,
)
from storage.reads import fetch_in_tenant, tenant_transaction
from storage.search_index import ON_PATIENT_COLUMN
from storage.tables import READABLE_TABLES


@dataclass(frozen=True, slots=True)
class Found:
    resource_id: str
    json_text: str
    sort_values: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Page:
    matches: list[Found]
    has_more: bool
    total: int | None


def sort_key_sql(sql: Sql, resource_type: str, key: SortKey) -> str:
    if key.code == "_id":
        return "r.id"
    if key.code == "_lastUpdated":
        return "r.last_updated"
    if (resource_type, key.code) in ON_PATIENT_COLUMN:
        return "r.patient_id"
    column = {TOKEN: "s.code", REFERENCE: "s.ref_id", DATE: "s.low", STRING: "lower(s.value)", URI: "s.value"}
    table = INDEX_OF_TYPE[key.type]
    aggregate = "max" if key.descending else "min"
    if key.type == DATE:
        # An open start (-infinity) sorts like a missing value, and stays exact in a cursor.
        column[DATE] = "NULLIF(s.low, '-infinity'::timestamptz)"
    return (
        f"(SELECT {aggregate}({column[key.type]}) FROM {table} s WHERE s.tenant_id = r.tenant_id "
        f"AND s.resource_type = {sql.bind(resource_type)} AND s.resource_id = r.id "
        f"AND s.param = {sql.bind(key.code)})"
    )


def keyset_after(sql: Sql, sort: list[SortKey], after: list[Any], after_id: str) -> str:
    """Rows strictly after the cursor in ORDER BY k1, k2, …, id (NULLS LAST in both directions)."""
    disjuncts: list[str] = []
    for position, key in enumerate(sort):
        equal = [_equal(sql, f"k{i}", after[i]) for i in range(position)]
        beyond = _beyond(sql, f"k{position}", after[position], key.descending)
        if beyond != "false":
            disjuncts.append("(" + " AND ".join([*equal, beyond]) + ")")
    equal_all = [_equal(sql, f"k{i}", after[i]) for i in range(len(sort))]
    disjuncts.append("(" + " AND ".join([*equal_all, f"id > {sql.bind(after_id)}"]) + ")")
    return "(" + " OR ".join(disjuncts) + ")"


def _equal(sql: Sql, column: str, value: Any) -> str:
    return f"{column} IS NULL" if value is None else f"{column} = {sql.bind(value)}"


def _beyond(sql: Sql, column: str, value: Any, descending: bool) -> str:
    if value is None:
        return "false"  # nulls come last: only later nulls (by the next key) follow a null
    operator = "<" if descending else ">"
    return f"({column} {operator} {sql.bind(value)} OR {column} IS NULL)"


@dataclass(frozen=True, slots=True)
class SearchStatement:
    """The SQL of one search page and of its count, with their bind parameters."""

    page_sql: str
    count_sql: str
    params: dict[str, Any]


def search_statement(
    tenant_id: str, query: SearchQuery, *, reader: Reader, after: tuple[list[Any], str] | None
) -> SearchStatement:
    """Compile one page of a search: `count + 1` rows, so the caller knows whether a next page exists."""
    resource_type = query.resource_type
    table = READABLE_TABLES[resource_type]
    sql = Sql()
    where = [f"r.tenant_id = {sql.bind(tenant_id)}", visible_sql(sql, resource_type, reader, search=True)]
    where += [criterion_sql(sql, resource_type, c) for c in query.criteria]
    sort = list(query.sort)
    keys = [f"{sort_key_sql(sql, resource_type, key)} AS k{i}" for i, key in enumerate(sort)]
    columns = "".join(", " + k for k in keys)
    inner = f"SELECT r.id, r.resource::text AS body{columns} FROM {table} r WHERE {' AND '.join(where)}"
    if len(sort) == 1 and sort[0].code == "_lastUpdated":
        # A NOT NULL column sorted alone, its tie broken by id the same way: the order the index
        # (tenant_id, last_updated, id) holds, read forwards or backwards, so a page stops after `count`
        # rows instead of sorting every match of the tenant.
        direction, beyond = ("DESC", "<") if sort[0].descending else ("ASC", ">")
        order = f"k0 {direction}, id {direction}"
        outer_where = "true"
        if after is not None:
            outer_where = f"(k0, id) {beyond} ({sql.bind(after[0][0])}, {sql.bind(after[1])})"
    else:
        outer_where = keyset_after(sql, sort, after[0], after[1]) if after is not None else "true"
        order = ", ".join(
            f"k{i} {'DESC' if key.descending else 'ASC'} NULLS LAST" for i, key in enumerate(sort)
        )
        order = f"{order}, id ASC" if order else "id ASC"
    page_sql = f"SELECT * FROM ({inner}) q WHERE {outer_where} ORDER BY {order} LIMIT {int(query.count) + 1}"
    count_sql = f"SELECT count(*) FROM {table} r WHERE {' AND '.join(where)}"
    return SearchStatement(page_sql, count_sql, sql.params)


async def run_search(
    engine: AsyncEngine,
    tenant_id: str,
    query: SearchQuery,
    *,
    reader: Reader,
    after: tuple[list[Any], str] | None,
) -> Page:
    """One page of matches and the total if asked."""
    statement = search_statement(tenant_id, query, reader=reader, after=after)
    page_sql, count_sql, params = statement.page_sql, statement.count_sql, statement.params
    if query.count > 0 and query.total == "none" and query.summary != "count":
        # The common case, one statement: on the driver itself, like a read (storage.reads).
        fetched = await fetch_in_tenant(engine, tenant_id, *positional(page_sql, params))
        found = [Found(row[0], row[1], tuple(row[2:])) for row in fetched[: query.count]]
        return Page(found, has_more=len(fetched) > query.count, total=None)
    async with tenant_transaction(engine, tenant_id) as conn:
        rows = (await conn.execute(text(page_sql), params)).all() if query.count > 0 else []
        total: int | None = None
        if query.total == "accurate" or query.summary == "count":
            total = int(await conn.scalar(text(count_sql), params) or 0)
        elif query.total == "estimate":
            plan = await conn.scalar(text(f"EXPLAIN (FORMAT JSON) {count_sql}"), params)
            parsed = orjson.loads(plan) if isinstance(plan, (str, bytes)) else plan
            total = int(parsed[0]["Plan"].get("Plan Rows", 0)) if parsed else None
            if total is not None and len(rows) <= query.count and after is None:
                total = len(rows)  # the whole result is on this page: the estimate is exact
    matches = [Found(row[0], row[1], tuple(row[2:])) for row in rows[: query.count]]
    return Page(matches, has_more=len(rows) > query.count, total=total)


async def load_includes(
    engine: AsyncEngine,
    tenant_id: str,
    source_type: str,
    source_ids: list[str],
    include: Include,
    *,
    reader: Reader,
    limit: int,
) -> list[tuple[str, str, str]]:
    """Resources the page's resources point at (`_include`), as (type, id, json): those this caller may
    read, a type it may not read not at all."""
    targets = (
        [include.target_type] if include.target_type else list(BY_TYPE[source_type][include.code].targets)
    )
    found: list[tuple[str, str, str]] = []
    async with tenant_transaction(engine, tenant_id) as conn:
        for target in targets:
            if target not in READABLE_TABLES or not source_ids or not reader.may_read(target):
                continue  # a type we do not serve (Patient, Practitioner, Condition…), or not to this caller
            sql = Sql()
            statement = (
                f"SELECT t.id, t.resource::text FROM {READABLE_TABLES[target]} t "
                f"WHERE t.tenant_id = {sql.bind(tenant_id)} "
                f"AND {visible_sql(sql, target, reader, 't')} "
                f"AND t.id IN (SELECT s.ref_id FROM search_reference s "
                f"WHERE s.tenant_id = {sql.bind(tenant_id)} AND s.resource_type = {sql.bind(source_type)} "
                f"AND s.param = {sql.bind(include.code)} AND s.ref_type = {sql.bind(target)} "
                f"AND s.resource_id = ANY({sql.bind(source_ids)})) ORDER BY t.id LIMIT {limit + 1}"
            )
            found += [
                (target, row[0], row[1]) for row in (await conn.execute(text(statement), sql.params)).all()
            ]
    return found


async def load_revincludes(
    engine: AsyncEngine,
    tenant_id: str,
    target_type: str,
    target_ids: list[str],
    include: Include,
    *,
    reader: Reader,
    limit: int,
) -> list[tuple[str, str, str]]:
    """Resources that point at the page's resources (`_revinclude`), as (type, id, json): those this caller
    may read, a type it may not read not at all."""
    if not target_ids or not reader.may_read(include.source_type):
        return []
    sql = Sql()
    if include.source_type == "Provenance":
        refs = [f"{target_type}/{i}" for i in target_ids]
        statement = (
            f"SELECT p.id, p.resource::text FROM provenance p WHERE p.tenant_id = {sql.bind(tenant_id)} "
            f"AND p.targets && {sql.bind(refs)} AND {provenance_visible_sql(sql, reader, 'p')} "
            f"ORDER BY p.recorded, p.id LIMIT {limit + 1}"
        )
    else:
        statement = (
            f"SELECT x.id, x.resource::text FROM {READABLE_TABLES[include.source_type]} x "
            f"WHERE x.tenant_id = {sql.bind(tenant_id)} "
            f"AND {visible_sql(sql, include.source_type, reader, 'x')} "
            f"AND EXISTS (SELECT 1 FROM search_reference s WHERE s.tenant_id = x.tenant_id "
            f"AND s.resource_type = {sql.bind(include.source_type)} AND s.resource_id = x.id "
            f"AND s.param = {sql.bind(include.code)} AND s.ref_type = {sql.bind(target_type)} "
            f"AND s.ref_id = ANY({sql.bind(target_ids)})) ORDER BY x.id LIMIT {limit + 1}"
        )
    async with tenant_transaction(engine, tenant_id) as conn:
        rows = (await conn.execute(text(statement), sql.params)).all()
    return [(include.source_type, row[0], row[1]) for row in rows]
