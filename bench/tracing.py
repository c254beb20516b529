"""Issue 20's target: command throughput with tracing on and an exporter configured against tracing off,
through the same `careplan serve` set-up, in the same run: `careplan.create` in a closed loop, each way
twice, alternating (target: tracing costs at most 10 %).

"On" is `OTEL_TRACES_EXPORTER=otlp` to an OTLP/HTTP receiver in this process that takes every batch and
answers 200 (a collector's cost is the collector's); "off" sets nothing, as a deployment without tracing."""

from __future__ import annotations

import contextlib
import statistics
import uuid
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from bench.commands import command_client
from bench.infra import Servers, careplan_serve, free_port
from bench.load import Run, closed_loop
from bench.workload import CreateOnly

TARGET = 0.10  # throughput lost with tracing on, at most


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


async def run_tracing(servers: Servers, *, concurrency: int, total: int, workers: int) -> dict[str, Any]:
    database = await servers.fresh_database()
    run_id = uuid.uuid4().hex[:6]
    throughput: dict[str, list[float]] = {"off": [], "on": []}
    runs: list[Run] = []
    async with otlp_receiver() as (endpoint, received), command_client(servers) as client:
        creates = CreateOnly(client, servers.keys, run_id=run_id)
        for _ in range(2):
            for mode in ("off", "on"):
                env = {"CAREPLAN_WORKERS": str(workers)}
                if mode == "on":
                    env |= {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}
                async with careplan_serve(servers, database, name=f"tracing-{mode}", extra_env=env):
                    await closed_loop(
                        "warm-up", creates.request(), concurrency=concurrency, total=max(total // 5, 64)
                    )
                    run = await closed_loop(
                        f"careplan.create, tracing {mode}",
                        creates.request(),
                        concurrency=concurrency,
                        total=total,
                    )
                runs.append(run)
                throughput[mode].append(run.throughput)
    off, on = statistics.median(throughput["off"]), statistics.median(throughput["on"])
    cost = round(1 - on / off, 3)
    return {
        "runs": [r.summary() for r in runs],
        "cost": cost,
        "verdict": {"value": cost, "target": TARGET, "met": cost <= TARGET},
        "exported_batches": len(received),
        "exported_bytes": sum(received),
        "errors": len(creates.errors),
    }
