"""Compile a parsed FHIR search into SQL over the current-resource tables and the search index, and run
it in a tenant-bound transaction. Keyset paging on (sort keys…, id); no server-side result cache."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from domain.search import Criterion, DateValue, Include, SearchQuery, SortKey
from domain.search_parameters import BY_TYPE, DATE, REFERENCE, STRING, TOKEN, URI, DateRange
from storage.reads import READABLE_TABLES, fetch_in_tenant, tenant_transaction
from storage.search_index import ON_PATIENT_COLUMN
from storage.visibility import HIDDEN_FROM_PATIENTS, provenance_visible_to_patient, visible_to_patient

INDEX_OF_TYPE = {
    TOKEN: "search_token",
    REFERENCE: "search_reference",
    DATE: "search_date",
    STRING: "search_string",
}
INDEX_OF_TYPE[URI] = "search_string"


# Types whose table holds the FHIR `status` as a column of its own (storage.aggregates writes it).
STATUS_COLUMN = frozenset({"CarePlan", "Task", "CareTeam", "PlanDefinition"})


class Sql:
    """A WHERE-clause builder that names its bind parameters as it goes."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}

    def bind(self, value: Any) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return f":{name}"


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


def criterion_sql(sql: Sql, resource_type: str, criterion: Criterion, alias: str = "r") -> str:
    """One criterion (values ORed) as a boolean SQL expression on the resource row `alias`."""
    code, type_, modifier = criterion.code, criterion.type, criterion.modifier
    if code == "_id":
        return _id_sql(sql, criterion, alias)
    plain_status = all("|" not in value for value in criterion.values)
    if code == "status" and resource_type in STATUS_COLUMN and modifier in (None, "not") and plain_status:
        # The row's own status column: the planner knows how common each status is there (it cannot
        # from the token index, where `status` and `active` are only two common words), so it picks
        # e.g. the last_updated index for `status=active&_sort=-_lastUpdated` instead of a full sort.
        clause = f"{alias}.status = ANY({sql.bind(list(criterion.values))})"
        return f"NOT ({clause})" if modifier == "not" else clause
    if (resource_type, code) in ON_PATIENT_COLUMN:
        return _patient_reference_sql(sql, criterion, alias)
    if code == "_lastUpdated":
        if modifier == "missing":
            return "false" if criterion.values[0] == "true" else "true"
        column = f"{alias}.last_updated"
        return "(" + " OR ".join(_date_clause(sql, column, column, d) for d in criterion.dates) + ")"
    table = INDEX_OF_TYPE[type_]
    head = (
        f"SELECT 1 FROM {table} s WHERE s.tenant_id = {alias}.tenant_id AND s.resource_type = "
        f"{sql.bind(resource_type)} AND s.resource_id = {alias}.id AND s.param = {sql.bind(code)}"
    )
    if modifier == "missing":
        return f"{'NOT ' if criterion.values[0] == 'true' else ''}EXISTS ({head})"
    if type_ == TOKEN:
        ors = [_token_clause(sql, v, text_search=modifier == "text") for v in criterion.values]
    elif type_ == REFERENCE:
        ors = [_reference_clause(sql, v, target=modifier) for v in criterion.values]
    elif type_ == DATE:
        ors = [_date_clause(sql, "s.low", "s.high", d) for d in criterion.dates]
    else:
        ors = [_string_clause(sql, v, type_, modifier) for v in criterion.values]
    match_sql = f"EXISTS ({head} AND ({' OR '.join(ors)}))"
    return f"NOT {match_sql}" if modifier == "not" else match_sql


def _patient_reference_sql(sql: Sql, criterion: Criterion, alias: str) -> str:
    """`subject`/`patient` (Task: `for`) on the row's `patient_id`, which the reference is rendered from
    (always `Patient/<patient_id>`, never missing); values are read as `_reference_clause` reads them."""
    if criterion.modifier == "missing":
        return "false" if criterion.values[0] == "true" else "true"
    references = [_reference_parts(value, criterion.modifier) for value in criterion.values]
    ids = [ref_id for ref_type, ref_id in filter(None, references) if ref_type in (None, "Patient")]
    return f"{alias}.patient_id = ANY({sql.bind(ids)})" if ids else "false"


def _id_sql(sql: Sql, criterion: Criterion, alias: str) -> str:
    if criterion.modifier == "missing":
        return "false" if criterion.values[0] == "true" else "true"
    clause = f"{alias}.id = ANY({sql.bind(list(criterion.values))})"
    return f"NOT ({clause})" if criterion.modifier == "not" else clause


def _token_clause(sql: Sql, value: str, *, text_search: bool) -> str:
    if text_search:
        starts, word = sql.bind(_like(value) + "%"), sql.bind("% " + _like(value) + "%")
        return f"(s.display ILIKE {starts} OR s.display ILIKE {word})"
    if "|" not in value:
        return f"s.code = {sql.bind(value)}"
    system, _, code = value.partition("|")
    if not system:
        return f"(s.system IS NULL AND s.code = {sql.bind(code)})"
    if not code:
        return f"s.system = {sql.bind(system)}"
    return f"(s.system = {sql.bind(system)} AND s.code = {sql.bind(code)})"


def _reference_clause(sql: Sql, value: str, *, target: str | None) -> str:
    reference = _reference_parts(value, target)
    if reference is None:
        return "false"
    ref_type, ref_id = reference
    clause = f"s.ref_id = {sql.bind(ref_id)}"
    return f"({clause} AND s.ref_type = {sql.bind(ref_type)})" if ref_type else clause


def _reference_parts(value: str, target: str | None) -> tuple[str | None, str] | None:
    """(type, id) of a reference search value — `Type/id`, a bare `id` (any type, or the `:Type`
    modifier's `target`), an absolute URL ending in Type/id, a version's URL — or None when the modifier
    rules it out."""
    parts = value.rstrip("/").split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    ref_type = parts[-2] if len(parts) >= 2 else target
    if target is not None and ref_type != target:
        return None
    return ref_type, parts[-1]


def _date_clause(sql: Sql, low: str, high: str, value: DateValue) -> str:
    """FHIR R4 date comparison between the stored range [low, high] and the searched one [vl, vh]."""
    span: DateRange = value.span
    vl, vh = sql.bind(span.low), sql.bind(span.high)
    match value.prefix:
        case "eq":
            return f"({low} >= {vl} AND {high} <= {vh})"
        case "ne":
            return f"NOT ({low} >= {vl} AND {high} <= {vh})"
        case "gt":
            return f"{high} > {vh}"
        case "lt":
            return f"{low} < {vl}"
        case "ge":
            return f"{high} >= {vl}"
        case "le":
            return f"{low} <= {vh}"
        case "sa":
            return f"{low} > {vh}"
        case "eb":
            return f"{high} < {vl}"
    # ap: within 10% of the distance from now (at least a day), as HAPI and the spec suggest.
    assert span.low is not None and span.high is not None
    gap = max(abs(datetime.now(span.low.tzinfo) - span.low) / 10, timedelta(days=1))
    upper, lower = _shifted(span.high, gap), _shifted(span.low, -gap)
    return f"({low} <= {sql.bind(upper)} AND {high} >= {sql.bind(lower)})"


def _shifted(moment: datetime, by: timedelta) -> datetime:
    """`moment + by`, held at the ends of the calendar (`ap0001-01-01` reaches before year 1)."""
    try:
        return moment + by
    except OverflowError:
        return (datetime.max if by > timedelta(0) else datetime.min).replace(tzinfo=moment.tzinfo)


def _string_clause(sql: Sql, value: str, type_: str, modifier: str | None) -> str:
    if type_ == URI:
        if modifier == "below":
            return f"s.value LIKE {sql.bind(_like(value) + '%')}"
        if modifier == "above":
            return f"{sql.bind(value)} LIKE (s.value || '%')"
        return f"s.value = {sql.bind(value)}"
    if modifier == "exact":
        return f"s.value = {sql.bind(value)}"
    if modifier == "contains":
        return f"lower(s.value) LIKE {sql.bind('%' + _like(value.lower()) + '%')}"
    return f"lower(s.value) LIKE {sql.bind(_like(value.lower()) + '%')}"


def _like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def patient_filter(sql: Sql, resource_type: str, patient_id: str | None, alias: str = "r") -> str:
    """What a patient token may see, applied to the main query and to every include branch alike."""
    if patient_id is None:
        return "true"
    hidden = sql.bind(list(HIDDEN_FROM_PATIENTS))
    return visible_to_patient(resource_type, alias, sql.bind(patient_id), hidden)


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
    tenant_id: str, query: SearchQuery, *, patient_id: str | None, after: tuple[list[Any], str] | None
) -> SearchStatement:
    """Compile one page of a search: `count + 1` rows, so the caller knows whether a next page exists."""
    resource_type = query.resource_type
    table = READABLE_TABLES[resource_type]
    sql = Sql()
    where = [f"r.tenant_id = {sql.bind(tenant_id)}", patient_filter(sql, resource_type, patient_id)]
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


def positional(sql: str, params: dict[str, Any]) -> tuple[str, ...]:
    """The statement with asyncpg's `$n` for our `:pN` names (numbered in order of first use), followed
    by the values of those it uses. Linear in the number of parameters: a search the caps allow binds
    thousands, and this runs on the event loop."""
    numbers: dict[str, int] = {}

    def number(match: re.Match[str]) -> str:
        return f"${numbers.setdefault(match.group(1), len(numbers) + 1)}"

    return (re.sub(r"(?<!:):(p\d+)\b", number, sql), *(params[name] for name in numbers))


async def run_search(
    engine: AsyncEngine,
    tenant_id: str,
    query: SearchQuery,
    *,
    patient_id: str | None,
    after: tuple[list[Any], str] | None,
) -> Page:
    """One page of matches and the total if asked."""
    statement = search_statement(tenant_id, query, patient_id=patient_id, after=after)
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
    patient_id: str | None,
    limit: int,
) -> list[tuple[str, str, str]]:
    """Resources the page's resources point at (`_include`), as (type, id, json)."""
    targets = (
        [include.target_type] if include.target_type else list(BY_TYPE[source_type][include.code].targets)
    )
    found: list[tuple[str, str, str]] = []
    async with tenant_transaction(engine, tenant_id) as conn:
        for target in targets:
            if target not in READABLE_TABLES or not source_ids:
                continue  # a type we do not serve (Patient, Practitioner, Condition…)
            sql = Sql()
            statement = (
                f"SELECT t.id, t.resource::text FROM {READABLE_TABLES[target]} t "
                f"WHERE t.tenant_id = {sql.bind(tenant_id)} "
                f"AND {patient_filter(sql, target, patient_id, 't')} "
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
    patient_id: str | None,
    limit: int,
) -> list[tuple[str, str, str]]:
    """Resources that point at the page's resources (`_revinclude`), as (type, id, json)."""
    if not target_ids:
        return []
    sql = Sql()
    if include.source_type == "Provenance":
        refs = [f"{target_type}/{i}" for i in target_ids]
        patient = (
            " AND "
            + provenance_visible_to_patient("p", sql.bind(patient_id), sql.bind(list(HIDDEN_FROM_PATIENTS)))
            if patient_id is not None
            else ""
        )
        statement = (
            f"SELECT p.id, p.resource::text FROM provenance p WHERE p.tenant_id = {sql.bind(tenant_id)} "
            f"AND p.targets && {sql.bind(refs)}{patient} ORDER BY p.recorded, p.id LIMIT {limit + 1}"
        )
    else:
        statement = (
            f"SELECT x.id, x.resource::text FROM {READABLE_TABLES[include.source_type]} x "
            f"WHERE x.tenant_id = {sql.bind(tenant_id)} "
            f"AND {patient_filter(sql, include.source_type, patient_id, 'x')} "
            f"AND EXISTS (SELECT 1 FROM search_reference s WHERE s.tenant_id = x.tenant_id "
            f"AND s.resource_type = {sql.bind(include.source_type)} AND s.resource_id = x.id "
            f"AND s.param = {sql.bind(include.code)} AND s.ref_type = {sql.bind(target_type)} "
            f"AND s.ref_id = ANY({sql.bind(target_ids)})) ORDER BY x.id LIMIT {limit + 1}"
        )
    async with tenant_transaction(engine, tenant_id) as conn:
        rows = (await conn.execute(text(statement), sql.params)).all()
    return [(include.source_type, row[0], row[1]) for row in rows]
