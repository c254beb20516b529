"""The reads baseline: a bare aiohttp app that runs the same single SQL statement as the service — the
read of one current CarePlan, or the service's own compiled search SQL — in the same kind of tenant-bound
transaction as the same RLS-bound role, and returns the stored JSON. No JWT, no parsing, no Bundle links:
what HTTP and the database allow. `python -m bench.bare_reads RUNTIME_DSN PORT TENANT`."""

from __future__ import annotations

import sys
from typing import Any

import asyncpg
from aiohttp import web

from domain.scopes import EVERYONE
from domain.search_query import parse_search
from storage.criteria_sql import positional
from storage.search_sql import search_statement

FHIR_JSON = "application/fhir+json"
PATIENT_SENTINEL = "bench-patient-sentinel"
READ_SQL = "SELECT version, last_updated, resource::text FROM care_plans WHERE id = $1"


def compiled_search(tenant: str) -> tuple[str, list[Any], int]:
    """The service's SQL for `CarePlan?patient=…&status=active`, in asyncpg's numbered parameters, and
    the position of the patient's parameter."""
    query = parse_search("CarePlan", [("patient", PATIENT_SENTINEL), ("status", "active")], lenient=False)
    statement = search_statement(tenant, query, reader=EVERYONE, after=None)
    sql, values = numbered(statement.page_sql, statement.params)
    patient_index = next(i for i, v in enumerate(values) if isinstance(v, str) and PATIENT_SENTINEL in v)
    return sql, values, patient_index


def numbered(sql: str, params: dict[str, Any]) -> tuple[str, list[Any]]:
    """SQLAlchemy's `:name` parameters as asyncpg's `$n`, with the values of those the SQL uses."""
    converted, *values = positional(sql, params)
    return converted, values


def build_app(pool: asyncpg.Pool, tenant: str) -> web.Application:
    search_sql, search_values, patient_index = compiled_search(tenant)
    template = search_values[patient_index]

    async def read(request: web.Request) -> web.Response:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT set_config('app.tenant_id', $1, true)", tenant)
            row = await conn.fetchrow(READ_SQL, request.match_info["id"])
        if row is None:
            return web.Response(status=404)
        return web.Response(body=row[2].encode(), content_type=FHIR_JSON, headers={"ETag": f'W/"{row[0]}"'})

    async def search(request: web.Request) -> web.Response:
        values = list(search_values)
        values[patient_index] = template.replace(PATIENT_SENTINEL, request.query["patient"])
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT set_config('app.tenant_id', $1, true)", tenant)
            rows = await conn.fetch(search_sql, *values)
        entries = b",".join(b'{"resource":' + row[1].encode() + b"}" for row in rows[:20])
        body = b'{"resourceType":"Bundle","type":"searchset","entry":[' + entries + b"]}"
        return web.Response(body=body, content_type=FHIR_JSON)

    app = web.Application()
    app.router.add_get("/fhir/CarePlan/{id}", read)
    app.router.add_get("/fhir/CarePlan", search)
    return app


async def main(dsn: str, port: int, tenant: str) -> web.Application:
    pool = await asyncpg.create_pool(dsn, min_size=4, max_size=12)
    return build_app(pool, tenant)


if __name__ == "__main__":
    dsn, port, tenant = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    web.run_app(main(dsn, port, tenant), host="127.0.0.1", port=port, access_log=None, print=None)
