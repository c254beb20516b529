"""Scenario 3: the common CarePlan searches at 10k, 100k and 1M plans across 100 tenants, through
`careplan serve`, with the plan Postgres chooses for each (which indexes it uses).

Plans are bulk-loaded with COPY from one plan the service really wrote (its FHIR JSON and its search
index rows), varied in id, patient, status and period: the command path would take hours for a million."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import aiohttp
import asyncpg
import orjson

from bench.bare_reads import numbered
from bench.commands import command_client
from bench.infra import Servers, careplan_serve
from bench.workload import new_plan
from domain.scopes import EVERYONE
from domain.search_query import parse_search
from storage.search_sql import search_statement

TENANTS = 100
PLANS_PER_PATIENT = 3
REPEATS = 200
BATCH = 20_000
TEMPLATE_PATIENT = "bench-template-patient"
CATEGORY = "http://hl7.org/fhir/us/core/CodeSystem/careplan-category|assess-plan"
STATUSES = ("active",) * 8 + ("completed", "on-hold")  # 80% active
INDEX_TABLES = {
    "search_token": ("param", "system", "code", "display"),
    "search_reference": ("param", "ref_type", "ref_id"),
    "search_date": ("param", "low", "high"),
    "search_string": ("param", "value"),
}


def searches(patient: str) -> dict[str, list[tuple[str, str]]]:
    return {
        "patient+status": [("patient", patient), ("status", "active")],
        "patient+category": [("patient", patient), ("category", CATEGORY)],
        "patient+date": [("patient", patient), ("date", "ge2026-03-01")],
        "status, newest 20": [("status", "active"), ("_sort", "-_lastUpdated"), ("_count", "20")],
    }


async def run_scale(servers: Servers, *, sizes: list[int]) -> dict[str, Any]:
    database = await servers.fresh_database()
    template_tenant = f"s{uuid.uuid4().hex[:6]}"
    results: list[dict[str, Any]] = []
    load_seconds = 0.0
    async with careplan_serve(servers, database, name="scale") as serve:
        template = await _template(servers, template_tenant)
        admin = await asyncpg.connect(database.admin)
        runtime = await asyncpg.connect(database.runtime)
        tokens = {t: servers.keys.mint(tenant_id=_tenant(t), roles=["clinician"]) for t in range(TENANTS)}
        loaded = 0
        try:
            for size in sorted(sizes):
                started = time.perf_counter()
                await _bulk_load(admin, template, first=loaded, count=size - loaded)
                await admin.execute("ANALYZE")
                load_seconds += time.perf_counter() - started
                loaded = size
                results += await _measure(serve.http_url, runtime, tokens, size)
        finally:
            await admin.close()
            await runtime.close()
        peak_rss = serve.rss.peak_bytes
    smallest, largest = min(sizes), max(sizes)
    p99 = {(r["plans"], r["search"]): r["p99_ms"] for r in results}
    return {
        "tenants": TENANTS,
        "repeats": REPEATS,
        "load_seconds": round(load_seconds, 1),
        "searches": results,
        "p99_ratio_largest_to_smallest": {
            name: round(p99[(largest, name)] / p99[(smallest, name)], 2) for name in searches("x")
        },
        "targets": {"p99 at 1M / 10k": 1.5},  # issue 17: the search index may shrink, not slow down
        "peak_rss_mb": round(peak_rss / 2**20, 1),
    }


def _tenant(index: int) -> str:
    return f"scale{index:03d}"


def _patient(plan_number: int) -> str:
    return f"sp-{plan_number // PLANS_PER_PATIENT}"


async def _template(servers: Servers, tenant: str) -> dict[str, Any]:
    """One plan written by the service, with its search index rows, as the pattern for the bulk load."""
    token = servers.keys.mint(tenant_id=tenant, roles=["clinician"])
    async with command_client(servers) as client:
        reply = await client.send("careplan.create", new_plan(TEMPLATE_PATIENT), token)
    plan_id = reply["result"]["id"]
    return {"tenant": tenant, "plan_id": plan_id}


async def _bulk_load(admin: asyncpg.Connection, template: dict[str, Any], *, first: int, count: int) -> None:
    tenant, plan_id = template["tenant"], template["plan_id"]
    resource = await admin.fetchval(
        "SELECT resource::text FROM care_plans WHERE tenant_id = $1 AND id = $2", tenant, plan_id
    )
    index = {
        table: [
            tuple(r)
            for r in await admin.fetch(
                f"SELECT {', '.join(columns)} FROM {table} WHERE tenant_id = $1 AND resource_id = $2",
                tenant,
                plan_id,
            )
        ]
        for table, columns in INDEX_TABLES.items()
    }
    for start in range(first, first + count, BATCH):
        batch = range(start, min(start + BATCH, first + count))
        plans = list(_plans(resource, plan_id, batch))
        await admin.copy_records_to_table(
            "care_plans",
            records=[
                (p["tenant"], p["id"], 1, p["patient"], p["status"], p["updated"], p["json"]) for p in plans
            ],
            columns=["tenant_id", "id", "version", "patient_id", "status", "last_updated", "resource"],
        )
        for table, columns in INDEX_TABLES.items():
            await admin.copy_records_to_table(
                table,
                records=[row for p in plans for row in _index_rows(table, index[table], p)],
                columns=["tenant_id", "resource_type", "resource_id", *columns],
            )


def _plans(resource: str, template_id: str, numbers: range) -> Iterator[dict[str, Any]]:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    rng = random.Random(numbers.start)
    for n in numbers:
        tenant_index, within = n % TENANTS, n // TENANTS
        status = STATUSES[rng.randrange(len(STATUSES))]
        start = base + timedelta(days=rng.randrange(365))
        updated = start + timedelta(hours=rng.randrange(24 * 30))
        plan_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        patient = _patient(within)
        text = (
            resource.replace(template_id, plan_id)
            .replace(TEMPLATE_PATIENT, patient)
            .replace('"status":"active"', f'"status":"{status}"')
            .replace('"start":"2026-01-05"', f'"start":"{start.date().isoformat()}"')
        )
        yield {
            "tenant": _tenant(tenant_index),
            "id": plan_id,
            "patient": patient,
            "status": status,
            "updated": updated,
            "start": start,
            "json": text,
        }


def _index_rows(table: str, rows: list[tuple[Any, ...]], plan: dict[str, Any]) -> Iterator[tuple[Any, ...]]:
    key = (plan["tenant"], "CarePlan", plan["id"])
    for row in rows:
        param = row[0]
        if table == "search_token" and param == "status":
            row = (param, row[1], plan["status"], row[3])
        elif table == "search_reference" and row[2] == TEMPLATE_PATIENT:
            row = (param, row[1], plan["patient"])
        elif table == "search_date" and param == "date":
            row = (param, plan["start"], row[2])
        yield (*key, *row)


async def _measure(
    http_url: str, runtime: asyncpg.Connection, tokens: dict[int, str], size: int
) -> list[dict[str, Any]]:
    rng = random.Random(size)
    patients_per_tenant = max(1, size // TENANTS // PLANS_PER_PATIENT)
    measured = []
    async with aiohttp.ClientSession() as http:
        for name in searches("x"):
            latencies = []
            for _ in range(REPEATS):
                tenant_index = rng.randrange(TENANTS)
                params = searches(f"sp-{rng.randrange(patients_per_tenant)}")[name]
                url = f"{http_url}/fhir/CarePlan?{urlencode(params)}"
                started = time.perf_counter()
                async with http.get(
                    url, headers={"Authorization": f"Bearer {tokens[tenant_index]}"}
                ) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"{url}: {response.status} {await response.text()}")
                latencies.append(time.perf_counter() - started)
            latencies.sort()
            measured.append(
                {
                    "plans": size,
                    "search": name,
                    "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
                    "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
                    "plan_uses": await _plan_uses(runtime, _tenant(0), searches("sp-1")[name]),
                }
            )
    return measured


async def _plan_uses(runtime: asyncpg.Connection, tenant: str, params: list[tuple[str, str]]) -> str:
    """The indexes (or sequential scans) in Postgres's plan for this search, as the runtime role sees it."""
    statement = search_statement(
        tenant, parse_search("CarePlan", params, lenient=False), reader=EVERYONE, after=None
    )
    sql, values = numbered(statement.page_sql, statement.params)
    async with runtime.transaction():
        await runtime.execute("SELECT set_config('app.tenant_id', $1, true)", tenant)
        plan = await runtime.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *values)
    nodes = []

    def walk(node: dict[str, Any]) -> None:
        if "Index Name" in node:
            nodes.append(node["Index Name"])
        elif node.get("Node Type") == "Seq Scan":
            nodes.append(f"seq scan {node['Relation Name']}")
        for child in node.get("Plans", []):
            walk(child)

    walk(orjson.loads(plan)[0]["Plan"])
    return ", ".join(dict.fromkeys(nodes))
