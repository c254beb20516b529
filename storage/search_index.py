"""Keep the search index in step with the current resources: rewritten in the same transaction as the
resource itself, so a search never sees a resource without its index or the other way round."""

from __future__ import annotations

from typing import Any

from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncConnection

from domain.search_parameters import extract

INDEX_TABLES = ("search_token", "search_reference", "search_date", "search_string")

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


async def reindex(conn: AsyncConnection, tenant_id: str, resources: list[dict[str, Any]]) -> None:
    """Replace the index rows of these resources (each a current FHIR resource of one tenant)."""
    if not resources:
        return
    for table in INDEX_TABLES:
        for resource in resources:
            await conn.execute(
                text(
                    f"DELETE FROM {table} WHERE tenant_id = :t AND resource_type = :rt AND resource_id = :id"
                ),
                {"t": tenant_id, "rt": resource["resourceType"], "id": resource["id"]},
            )
    for resource in resources:
        for statement, params in index_rows(tenant_id, resource):
            await conn.execute(statement, params)
