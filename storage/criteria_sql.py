"""The SQL of what a query asks and what a caller may see, over the current-resource tables and the search
index: one criterion of a search (or of a granular scope, which is a search's criteria), a patient's walls
(storage.visibility) and a token's scopes, compiled alike for every read path — search, include, revinclude,
read by id and the audit Provenance. Pure string building with named binds (`Sql`); `positional` turns them
into asyncpg's."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from domain.scopes import Filter, Reader
from domain.search import Criterion, DateValue
from domain.search_parameters import DATE, REFERENCE, STRING, TOKEN, URI, DateRange
from storage.search_index import ON_PATIENT_COLUMN
from storage.tables import READABLE_TABLES
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


def visible_sql(
    sql: Sql, resource_type: str, reader: Reader, alias: str = "r", *, search: bool = False
) -> str:
    """What this caller may see of the type's current rows, on every path alike (main query, include and
    revinclude branches, read by id): a patient's own (storage.visibility), within the token's scopes for
    the type (CONTRACT §13: `search` for a search's matches, else what it may read)."""
    clauses = []
    if reader.patient_id is not None:
        hidden = sql.bind(list(HIDDEN_FROM_PATIENTS))
        clauses.append(visible_to_patient(resource_type, alias, sql.bind(reader.patient_id), hidden))
    clauses.append(
        scope_sql(
            sql,
            resource_type,
            reader.searching(resource_type) if search else reader.reading(resource_type),
            alias,
        )
    )
    return " AND ".join(clauses)


def scope_sql(sql: Sql, resource_type: str, filters: tuple[Filter, ...] | None, alias: str = "r") -> str:
    """A granular scope's query is a search's criteria: compiled by the same rules (OR of the scopes,
    AND within one). None: no restriction; no filter at all: nothing."""
    if filters is None:
        return "true"
    if not filters:
        return "false"
    alternatives = [
        " AND ".join(criterion_sql(sql, resource_type, c, alias) for c in criteria) if criteria else "true"
        for criteria in filters
    ]
    return "(" + " OR ".join(f"({a})" for a in alternatives) + ")"


def provenance_visible_sql(sql: Sql, reader: Reader, alias: str) -> str:
    """The audit Provenance row `alias` this caller may see: a patient's (storage.visibility), and under
    scopes one whose every target it may read now (the audit of a resource outside them would show it)."""
    clauses = []
    if reader.patient_id is not None:
        clauses.append(
            provenance_visible_to_patient(
                alias, sql.bind(reader.patient_id), sql.bind(list(HIDDEN_FROM_PATIENTS))
            )
        )
    if reader.scopes is not None:
        readable = []
        for resource_type, table in READABLE_TABLES.items():
            if not reader.may_read(resource_type):
                continue
            filters = reader.reading(resource_type)
            same_type = f"split_part(tg.ref, '/', 1) = {sql.bind(resource_type)}"
            if filters is None:
                readable.append(same_type)
            else:
                readable.append(
                    f"({same_type} AND EXISTS (SELECT 1 FROM {table} r WHERE r.tenant_id = {alias}.tenant_id "
                    f"AND r.id = split_part(tg.ref, '/', 2) AND {scope_sql(sql, resource_type, filters)}))"
                )
        any_readable = " OR ".join(readable) or "false"
        clauses.append(
            f"NOT EXISTS (SELECT 1 FROM unnest({alias}.targets) AS tg(ref) WHERE NOT ({any_readable}))"
        )
    return " AND ".join(clauses) or "true"


def positional(sql: str, params: dict[str, Any]) -> tuple[str, ...]:
    """The statement with asyncpg's `$n` for our `:pN` names (numbered in order of first use), followed
    by the values of those it uses. Linear in the number of parameters: a search the caps allow binds
    thousands, and this runs on the event loop."""
    numbers: dict[str, int] = {}

    def number(match: re.Match[str]) -> str:
        return f"${numbers.setdefault(match.group(1), len(numbers) + 1)}"

    return (re.sub(r"(?<!:):(p\d+)\b", number, sql), *(params[name] for name in numbers))
