"""Scenario `worst-search`: what the costliest search the caps allow (bench.workload.worst_search) costs,
against a common search in the same run (`patient&status`): the service's CPU per request, its latency,
and the Python work on the event loop alone (parse, compile, bind numbering), which no other caller can
use while it runs. Plus /healthz latency while four clients send nothing but worst searches."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from typing import Any
from urllib.parse import urlencode

import aiohttp

from bench.commands import command_client
from bench.infra import Servers, careplan_serve
from bench.reads import load_plans
from bench.workload import worst_search
from domain.scopes import EVERYONE
from domain.search_query import parse_search
from storage.criteria_sql import positional
from storage.search_sql import search_statement

COMMON = [("patient", "patient-7"), ("status", "active")]
REQUESTS = 60
LOOP_REPEATS = 200


async def run_worst_search(servers: Servers) -> dict[str, Any]:
    database = await servers.fresh_database()
    tenant = f"w{uuid.uuid4().hex[:8]}"
    token = servers.keys.mint(tenant_id=tenant, roles=["clinician"])
    async with command_client(servers) as client, careplan_serve(servers, database, name="worst") as serve:
        await load_plans(client, token)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
            url = f"{serve.http_url}/fhir/CarePlan/_search"
            common = await _per_request(http, url, COMMON, serve.rss)
            worst = await _per_request(http, url, worst_search(), serve.rss)
            probes = await _probes_beside(http, serve.http_url, url)
    loop_common, loop_worst = _on_the_loop(COMMON), _on_the_loop(worst_search())
    return {
        "requests": REQUESTS,
        "common": common | {"loop_ms": loop_common},
        "worst": worst | {"loop_ms": loop_worst},
        "ratios": {
            "cpu": round(worst["cpu_ms"] / common["cpu_ms"], 1),
            "p50": round(worst["p50_ms"] / common["p50_ms"], 1),
            "loop": round(loop_worst / loop_common, 1),
        },
        "healthz_beside_worst": probes,
    }


async def _per_request(
    http: aiohttp.ClientSession, url: str, pairs: list[tuple[str, str]], rss: Any
) -> dict[str, float]:
    """Service CPU per request (its process's CPU time over REQUESTS sequential requests) and latency."""
    body = urlencode(pairs, safe=",|")
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    for _ in range(5):  # warm-up: statement caches, connections
        async with http.post(url, data=body, headers=headers) as response:
            assert response.status == 200, await response.text()
    latencies = []
    cpu_before = rss.cpu_seconds()
    for _ in range(REQUESTS):
        started = time.perf_counter()
        async with http.post(url, data=body, headers=headers) as response:
            await response.read()
            assert response.status == 200
        latencies.append((time.perf_counter() - started) * 1000)
    cpu_ms = (rss.cpu_seconds() - cpu_before) * 1000 / REQUESTS
    return {
        "cpu_ms": round(cpu_ms, 2),
        "p50_ms": round(statistics.median(latencies), 2),
        "max_ms": round(max(latencies), 2),
    }


async def _probes_beside(http: aiohttp.ClientSession, base: str, url: str) -> dict[str, float]:
    """/healthz latency while four clients loop on the worst search for a few seconds."""
    stop = asyncio.Event()
    body = urlencode(worst_search(), safe=",|")
    headers = {"Content-Type": "application/x-www-form-urlencoded"}

    async def attack() -> None:
        while not stop.is_set():
            async with http.post(url, data=body, headers=headers) as response:
                await response.read()

    attackers = [asyncio.create_task(attack()) for _ in range(4)]
    latencies = []
    deadline = time.perf_counter() + 5.0
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        async with http.get(f"{base}/healthz") as response:
            await response.read()
        latencies.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.gather(*attackers)
    latencies.sort()
    return {
        "probes": len(latencies),
        "p50_ms": round(statistics.median(latencies), 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1], 2),
        "max_ms": round(latencies[-1], 2),
    }


def _on_the_loop(pairs: list[tuple[str, str]]) -> float:
    """CPU milliseconds of what a search does in Python before it awaits the database."""
    started = time.process_time()
    for _ in range(LOOP_REPEATS):
        query = parse_search("CarePlan", pairs, lenient=False)
        statement = search_statement("t1", query, reader=EVERYONE, after=None)
        positional(statement.page_sql, statement.params)
    return round((time.process_time() - started) * 1000 / LOOP_REPEATS, 3)
