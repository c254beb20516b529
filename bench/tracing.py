"""Issue 20's target: command throughput with tracing on and an exporter configured against tracing off,
through the same `careplan serve` set-up, in the same run: `careplan.create` in a closed loop, each way
twice, alternating (target: tracing costs at most 10 %).

"On" is `OTEL_TRACES_EXPORTER=otlp` to an OTLP/HTTP receiver in this process that takes every batch and
answers 200 (a collector's cost is the collector's), with the SDK's default sampler: every span recorded
and exported — the target's configuration. "Off" sets nothing, as a deployment without tracing. Beside
them, for operators choosing a sampler, the same exporter with `parentbased_traceidratio` 0.1 (one root
trace in ten recorded, callers' decisions kept) and `always_off` (the instrumentation alone); and the
service's CPU per command in each, which says where a loss comes from."""

from __future__ import annotations

import contextlib
import statistics
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psutil
from aiohttp import web

from bench.commands import command_client
from bench.infra import Servers, careplan_serve, free_port
from bench.load import Run, closed_loop
from bench.workload import CreateOnly

TARGET = 0.10  # throughput lost with tracing on, at most

# name -> the OTEL_* variables beside the exporter's ("off" sets none at all)
MODES: dict[str, dict[str, str]] = {
    "off": {},
    "on": {},
    "on, 10 % of root traces": {
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.1",
    },
    "on, always_off": {"OTEL_TRACES_SAMPLER": "always_off"},
}


@contextlib.asynccontextmanager
async def otlp_receiver() -> AsyncIterator[tuple[str, list[int]]]:
    """An OTLP/HTTP endpoint that accepts every export; the sizes of the batches it got."""
    received: list[int] = []

    async def traces(request: web.Request) -> web.Response:
        received.append(len(await request.read()))
        return web.Response(status=200, content_type="application/x-protobuf")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", received
    finally:
        await runner.cleanup()


def _cpu_seconds(processes: list[psutil.Process]) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in processes)


async def run_tracing(servers: Servers, *, concurrency: int, total: int, workers: int) -> dict[str, Any]:
    database = await servers.fresh_database()
    run_id = uuid.uuid4().hex[:6]
    throughput: dict[str, list[float]] = {mode: [] for mode in MODES}
    cpu_ms: dict[str, list[float]] = {mode: [] for mode in MODES}
    runs: list[Run] = []
    async with otlp_receiver() as (endpoint, received), command_client(servers) as client:
        creates = CreateOnly(client, servers.keys, run_id=run_id)
        for _ in range(2):
            for mode, sampler in MODES.items():
                env = {"CAREPLAN_WORKERS": str(workers)}
                if mode != "off":
                    env |= {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint} | sampler
                async with careplan_serve(
                    servers, database, name=f"tracing-{len(runs)}", extra_env=env
                ) as serve:
                    await closed_loop(
                        "warm-up", creates.request(), concurrency=concurrency, total=max(total // 5, 64)
                    )
                    processes = [psutil.Process(p.pid) for p in serve.processes]
                    before = _cpu_seconds(processes)
                    run = await closed_loop(
                        f"careplan.create, tracing {mode}",
                        creates.request(),
                        concurrency=concurrency,
                        total=total,
                    )
                    cpu_ms[mode].append((_cpu_seconds(processes) - before) / total * 1000)
                runs.append(run)
                throughput[mode].append(run.throughput)
    off = statistics.median(throughput["off"])
    cost = {mode: round(1 - statistics.median(values) / off, 3) for mode, values in throughput.items()}
    return {
        "runs": [r.summary() for r in runs],
        "cost": cost,
        "service_cpu_ms_per_command": {m: round(statistics.median(v), 3) for m, v in cpu_ms.items()},
        "verdict": {"value": cost["on"], "target": TARGET, "met": cost["on"] <= TARGET},
        "exported_batches": len(received),
        "exported_bytes": sum(received),
        "errors": len(creates.errors),
    }
