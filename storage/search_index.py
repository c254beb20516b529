"""Keep the search index in step with the current resources: rewritten in the same transaction as the
resource itself, so a search never sees a resource without its index or the other way round."""

from __future__ import annotations

from typing import Any

from sqlalchemy import TextClause, text

from domain.search_parameters import extract

INDEX_TABLES = ("search_token", "search_reference", "search_date", "search_string")

# The references to the patient that every resource of ours has, rendered from its row's `patient_id`
# (`subject`, and Task's `for`): searched and sorted on that indexed column (storage.search_sql), so they
# get no index rows — two of a create's seven.
ON_PATIENT_COLUMN = frozenset(
    (resource_type, code)
    for resource_type in ("CarePlan", "Goal", "Task", "CareTeam")
    for code in ("patient", "subject")
)

_INSERT = {
    "search_token": text(
        "INSERT INTO search_token (tenant_id, resource_type, resource_id, param, system, code, display) "
        "VALUES (:tenant_id, :resource_type, :resource_id, :param, :system, :code, :display)"
    ),
    "search_reference": text(
        "INSERT INTO search_reference (tenant_id, resource_type, resource_id, param, ref_type, ref_id) "
        "VALUES (:tenant_id, :resource_type, :resource_id, :param, :ref_type, :ref_id)"
    ),
    "search_date": text(
        "INSERT INTO search_date (tenant_id, resource_type, resource_id, param, low, high) "
        "VALUES (:tenant_id, :resource_type, :resource_id, :param, "
        "coalesce(:low, '-infinity'::timestamptz), coalesce(:high, 'infinity'::timestamptz))"
    ),
    "search_string": text(
        "INSERT INTO search_string (tenant_id, resource_type, resource_id, param, value) "
        "VALUES (:tenant_id, :resource_type, :resource_id, :param, :value)"
    ),
}


def index_rows(tenant_id: str, resource: dict[str, Any]) -> list[tuple[TextClause, list[dict[str, Any]]]]:
    """The INSERT statements (with their parameter lists) that index one resource."""
    values = extract(resource)
    key = {"tenant_id": tenant_id, "resource_type": resource["resourceType"], "resource_id": resource["id"]}
    batches: list[tuple[TextClause, list[dict[str, Any]]]] = [
        (
            _INSERT["search_token"],
            [
                key | {"param": p, "system": t.system, "code": t.code, "display": t.text}
                for p, t in values.tokens
            ],
        ),
        (
            _INSERT["search_reference"],
            [key | {"param": p, "ref_type": r.ref_type, "ref_id": r.ref_id} for p, r in values.references],
        ),
        (_INSERT["search_date"], [key | {"param": p, "low": d.low, "high": d.high} for p, d in values.dates]),
        (_INSERT["search_string"], [key | {"param": p, "value": s} for p, s in values.strings]),
    ]
    return [(statement, params) for statement, params in batches if params]


# Old rows of the given resources out of all four tables, and their new rows in, as the parts (CTEs) of
# one statement: every part sees the statement's snapshot, so the deletes never touch the new rows.
_DELETE_CTES = [
    "index_keys AS (SELECT * FROM unnest(CAST(:index_types AS text[]), CAST(:index_ids AS text[])) "
    "AS k(rt, id))",
    *(
        f"d_{table} AS (DELETE FROM {table} s USING index_keys k WHERE s.tenant_id = :tenant "
        "AND s.resource_type = k.rt AND s.resource_id = k.id)"
        for table in INDEX_TABLES
    ),
]
_INSERT_CTES = [
    "i_token AS (INSERT INTO search_token "
    "(tenant_id, resource_type, resource_id, param, system, code, display) SELECT :tenant, * FROM unnest("
    "CAST(:token_rt AS text[]), CAST(:token_id AS text[]), CAST(:token_param AS text[]), "
    "CAST(:token_system AS text[]), CAST(:token_code AS text[]), CAST(:token_display AS text[])))",
    "i_reference AS (INSERT INTO search_reference "
    "(tenant_id, resource_type, resource_id, param, ref_type, ref_id) SELECT :tenant, * FROM unnest("
    "CAST(:reference_rt AS text[]), CAST(:reference_id AS text[]), CAST(:reference_param AS text[]), "
    "CAST(:reference_type AS text[]), CAST(:reference_ref AS text[])))",
    "i_date AS (INSERT INTO search_date (tenant_id, resource_type, resource_id, param, low, high) "
    "SELECT :tenant, rt, id, p, coalesce(lo, '-infinity'::timestamptz), "
    "coalesce(hi, 'infinity'::timestamptz) "
    "FROM unnest(CAST(:date_rt AS text[]), CAST(:date_id AS text[]), CAST(:date_param AS text[]), "
    "CAST(:date_low AS timestamptz[]), CAST(:date_high AS timestamptz[])) AS x(rt, id, p, lo, hi))",
    "i_string AS (INSERT INTO search_string (tenant_id, resource_type, resource_id, param, value) "
    "SELECT :tenant, * FROM unnest(CAST(:string_rt AS text[]), CAST(:string_id AS text[]), "
    "CAST(:string_param AS text[]), CAST(:string_value AS text[])))",
]


def reindex_parts(resources: list[dict[str, Any]]) -> tuple[list[str], dict[str, Any]]:
    """The CTEs that replace these resources' index rows, and their parameters (`:tenant` is the
    caller's to bind). A resource at its first version has no rows to delete: its deletes are not asked
    for (a create then only inserts, and never waits on a plan the statistics have not caught up with)."""
    columns: dict[str, Any] = {name: [] for name in _INSERT_COLUMNS}
    replaced = [r for r in resources if r["meta"]["versionId"] != "1"]
    if replaced:
        columns["index_types"] = [r["resourceType"] for r in replaced]
        columns["index_ids"] = [r["id"] for r in replaced]
    for resource in resources:
        values = extract(resource)
        key = (resource["resourceType"], resource["id"])
        for param, token in values.tokens:
            _append(columns, "token", key, param, token.system, token.code, token.text)
        for param, reference in values.references:
            if (key[0], param) not in ON_PATIENT_COLUMN:
                _append(columns, "reference", key, param, reference.ref_type, reference.ref_id)
        for param, date in values.dates:
            _append(columns, "date", key, param, date.low, date.high)
        for param, string in values.strings:
            _append(columns, "string", key, param, string)
    return [*(_DELETE_CTES if replaced else ()), *_INSERT_CTES], columns


_INSERT_COLUMNS = {
    f"{table}_{column}": None
    for table, names in {
        "token": ("system", "code", "display"),
        "reference": ("type", "ref"),
        "date": ("low", "high"),
        "string": ("value",),
    }.items()
    for column in ("rt", "id", "param", *names)
}


_COLUMNS_OF = {
    table: tuple(name for name in _INSERT_COLUMNS if name.startswith(f"{table}_"))
    for table in ("token", "reference", "date", "string")
}


def _append(columns: dict[str, Any], table: str, key: tuple[str, str], *values: Any) -> None:
    for name, value in zip(_COLUMNS_OF[table], (*key, *values), strict=True):
        columns[name].append(value)
