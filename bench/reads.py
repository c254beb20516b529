"""Scenario 2: FHIR reads and a common search through `careplan serve`, each against a bare aiohttp
handler running the same SQL (bench.bare_reads), with the same load tool and concurrency."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from bench.commands import command_client
from bench.http_load import http_load, load_tool
from bench.infra import ROOT, Servers, careplan_serve, free_port
from bench.workload import new_plan

PATIENTS = 100
PLANS_PER_PATIENT = 3


async def run_reads(servers: Servers, *, concurrency: int, seconds: float) -> dict[str, Any]:
    database = await servers.fresh_database()
    tenant = f"r{uuid.uuid4().hex[:8]}"
    token = servers.keys.mint(tenant_id=tenant, roles=["clinician"])
    async with command_client(servers) as client, careplan_serve(servers, database, name="reads") as serve:
        plan_ids = await load_plans(client, token)
        read_path = f"/fhir/CarePlan/{plan_ids[0]}"
        search_path = "/fhir/CarePlan?patient=patient-7&status=active"
        await http_load("warm-up", serve.http_url + read_path, token, concurrency=concurrency, seconds=2)
        service_read = await http_load(
            "service: GET CarePlan/{id}",
            serve.http_url + read_path,
            token,
            concurrency=concurrency,
            seconds=seconds,
        )
        service_search = await http_load(
            "service: GET CarePlan?patient&status",
            serve.http_url + search_path,
            token,
            concurrency=concurrency,
            seconds=seconds,
        )
        peak_rss = serve.rss.peak_bytes
    async with _bare(database.runtime, tenant) as bare_url:
        await http_load("warm-up", bare_url + read_path, None, concurrency=concurrency, seconds=2)
        bare_read = await http_load(
            "bare: same SQL, stored JSON",
            bare_url + read_path,
            None,
            concurrency=concurrency,
            seconds=seconds,
        )
        bare_search = await http_load(
            "bare: same search SQL", bare_url + search_path, None, concurrency=concurrency, seconds=seconds
        )
    for run in (service_read, service_search, bare_read, bare_search):
        if run["errors"]:
            raise RuntimeError(f"{run['name']}: {run['errors']} errors")
    return {
        "concurrency": concurrency,
        "tool": load_tool(),
        "runs": [service_read, bare_read, service_search, bare_search],
        "ratios": {
            "read": round(service_read["throughput_per_s"] / bare_read["throughput_per_s"], 3),
            "search": round(service_search["throughput_per_s"] / bare_search["throughput_per_s"], 3),
        },
        "target": 0.70,
        "peak_rss_mb": round(peak_rss / 2**20, 1),
    }


async def load_plans(client: Any, token: str) -> list[str]:
    """PATIENTS x PLANS_PER_PATIENT active plans through the command path."""
    semaphore = asyncio.Semaphore(32)

    async def create(n: int) -> str:
        async with semaphore:
            reply = await client.send("careplan.create", new_plan(f"patient-{n % PATIENTS}"), token)
        if not reply.get("ok"):
            raise RuntimeError(f"set-up failed: {reply}")
        return str(reply["result"]["id"])

    return await asyncio.gather(*(create(n) for n in range(PATIENTS * PLANS_PER_PATIENT)))


@contextlib.asynccontextmanager
async def _bare(runtime_dsn: str, tenant: str) -> AsyncIterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.bare_reads", runtime_dsn, str(port), tenant],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                if process.poll() is not None:
                    raise RuntimeError("the bare reads app exited")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{url}/fhir/CarePlan/none") as response:
                        if response.status == 404:
                            break
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError("the bare reads app did not start")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
