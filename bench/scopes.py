"""Issue 19's target: a FHIR search under a SMART granular scope against the same search under
`user/*.rs`, through one `careplan serve`, in the same run, with the same load tool and concurrency.

Half the tenant's plans are `assess-plan`, half another category; the granular token's scope is
`user/CarePlan.rs?category=…|assess-plan`. Each search is measured twice, alternating, and the ratio is of
the medians' time per request (target: at most 1.2)."""

from __future__ import annotations

import asyncio
import statistics
import uuid
from typing import Any

from bench.commands import command_client
from bench.http_load import http_load, load_tool
from bench.infra import Servers, careplan_serve
from bench.workload import new_plan

PATIENTS, PLANS_PER_PATIENT = 100, 4
TARGET = 1.2
ASSESS = "http://hl7.org/fhir/us/core/CodeSystem/careplan-category|assess-plan"
OTHER = {"coding": [{"system": "http://snomed.info/sct", "code": "734163000"}]}
SEARCHES = {
    "one patient's active plans": "/fhir/CarePlan?patient=patient-7&status=active",
    "active plans, newest first": "/fhir/CarePlan?status=active&_sort=-_lastUpdated&_count=20",
}


async def run_scopes(servers: Servers, *, concurrency: int, seconds: float) -> dict[str, Any]:
    database = await servers.fresh_database()
    tenant = f"s{uuid.uuid4().hex[:8]}"
    clinician = servers.keys.mint(tenant_id=tenant, roles=["clinician"])
    tokens = {
        "user/*.rs": servers.keys.mint(tenant_id=tenant, roles=["clinician"], extra={"scope": "user/*.rs"}),
        "granular": servers.keys.mint(
            tenant_id=tenant, roles=["clinician"], extra={"scope": f"user/CarePlan.rs?category={ASSESS}"}
        ),
    }
    runs: list[dict[str, Any]] = []
    ratios: dict[str, float] = {}
    async with command_client(servers) as client, careplan_serve(servers, database, name="scopes") as serve:
        await _load_plans(client, clinician)
        for search, path in SEARCHES.items():
            url = serve.http_url + path
            await http_load("warm-up", url, tokens["granular"], concurrency=concurrency, seconds=2)
            per_token: dict[str, list[float]] = {name: [] for name in tokens}
            for _ in range(2):
                for name, token in tokens.items():
                    run = await http_load(
                        f"{search}, {name}", url, token, concurrency=concurrency, seconds=seconds
                    )
                    if run["errors"]:
                        raise RuntimeError(f"{run['name']}: {run['errors']} errors")
                    runs.append(run)
                    per_token[name].append(run["throughput_per_s"])
            wide, granular = (statistics.median(per_token[n]) for n in ("user/*.rs", "granular"))
            ratios[search] = round(wide / granular, 3)  # time per request, granular ÷ wide
        peak_rss = serve.rss.peak_bytes
    return {
        "concurrency": concurrency,
        "tool": load_tool(),
        "runs": runs,
        "ratios": ratios,
        "verdicts": {name: {"value": v, "target": TARGET, "met": v <= TARGET} for name, v in ratios.items()},
        "peak_rss_mb": round(peak_rss / 2**20, 1),
    }


async def _load_plans(client: Any, token: str) -> None:
    semaphore = asyncio.Semaphore(32)

    async def create(n: int) -> None:
        plan = new_plan(f"patient-{n % PATIENTS}")
        if n % 2:
            plan["categories"] = [OTHER]
        async with semaphore:
            reply = await client.send("careplan.create", plan, token)
        if not reply.get("ok"):
            raise RuntimeError(f"set-up failed: {reply}")

    await asyncio.gather(*(create(n) for n in range(PATIENTS * PLANS_PER_PATIENT)))
