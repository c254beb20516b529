"""Issue 20's target: command throughput with tracing on and an exporter configured against tracing off,
through the same `careplan serve` set-up, in the same run: `careplan.create` in a closed loop, each way
twice, alternating (target: tracing costs at most 10 %).

"On" is `OTEL_TRACES_EXPORTER=otlp` to an OTLP/HTTP receiver in this process that takes every batch and
answers 200 (a collector's cost is the collector's), with the SDK's default sampler: every span recorded
and exported — the target's configuration. "Off" sets nothing, as a deployment without tracing. Beside
them, for operators choosing a sampler, the same exporter with `parentbased_traceidratio` 0.1 (one root
trace in ten recorded, callers' decisions kept) and `always_off` (the instrumentation alone); and the
service's CPU per command in each, which says where a loss comes from; the spans the receiver got per
command; and what the SDK itself costs a span in this interpreter (recording, OTLP encoding), so the
loss can be checked against spans times cost."""

from __future__ import annotations

import contextlib
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

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


@dataclass
class Received:
    batches: int = 0
    bytes: int = 0
    spans: int = 0


@contextlib.asynccontextmanager
async def otlp_receiver() -> AsyncIterator[tuple[str, Received]]:
    """An OTLP/HTTP endpoint that accepts every export, and counts what it got."""
    received = Received()

    async def traces(request: web.Request) -> web.Response:
        body = await request.read()
        export = ExportTraceServiceRequest.FromString(body)
        received.batches += 1
        received.bytes += len(body)
        received.spans += sum(len(s.spans) for r in export.resource_spans for s in r.scope_spans)
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


def sdk_cost_per_span(count: int = 20_000) -> dict[str, float]:
    """Microseconds the SDK spends on one span here, outside the service: started as current and ended
    (with the consumer span's attributes), and encoded as OTLP protobuf by the exporter's encoder."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("bench")
    attributes = {
        "messaging.system": "nats",
        "messaging.operation.name": "process",
        "messaging.destination.name": "careplan.cmd.t.careplan.create",
    }
    started = time.perf_counter()
    for _ in range(count):
        with tracer.start_as_current_span("span", attributes=attributes):
            pass
    recorded = time.perf_counter() - started
    spans = memory.get_finished_spans()
    started = time.perf_counter()
    encode_spans(spans).SerializeToString()
    encoded = time.perf_counter() - started
    return {"record_us": round(recorded / count * 1e6, 1), "encode_us": round(encoded / count * 1e6, 1)}


async def run_tracing(servers: Servers, *, concurrency: int, total: int, workers: int) -> dict[str, Any]:
    database = await servers.fresh_database()
    run_id = uuid.uuid4().hex[:6]
    throughput: dict[str, list[float]] = {mode: [] for mode in MODES}
    cpu_ms: dict[str, list[float]] = {mode: [] for mode in MODES}
    spans_per_command: dict[str, list[float]] = {mode: [] for mode in MODES}
    runs: list[Run] = []
    async with otlp_receiver() as (endpoint, received), command_client(servers) as client:
        creates = CreateOnly(client, servers.keys, run_id=run_id)
        for _ in range(2):
            for mode, sampler in MODES.items():
                env = {"CAREPLAN_WORKERS": str(workers)}
                if mode != "off":
                    env |= {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint} | sampler
                spans_before, warm_up = received.spans, max(total // 5, 64)
                async with careplan_serve(
                    servers, database, name=f"tracing-{len(runs)}", extra_env=env
                ) as serve:
                    await closed_loop("warm-up", creates.request(), concurrency=concurrency, total=warm_up)
                    before = serve.rss.cpu_seconds()
                    run = await closed_loop(
                        f"careplan.create, tracing {mode}",
                        creates.request(),
                        concurrency=concurrency,
                        total=total,
                    )
                    cpu_ms[mode].append((serve.rss.cpu_seconds() - before) / total * 1000)
                # The service has stopped: its processor flushed every span it had.
                spans_per_command[mode].append((received.spans - spans_before) / (warm_up + total))
                runs.append(run)
                throughput[mode].append(run.throughput)
    off = statistics.median(throughput["off"])
    cost = {mode: round(1 - statistics.median(values) / off, 3) for mode, values in throughput.items()}
    return {
        "runs": [r.summary() for r in runs],
        "cost": cost,
        "service_cpu_ms_per_command": {m: round(statistics.median(v), 3) for m, v in cpu_ms.items()},
        "verdict": {"value": cost["on"], "target": TARGET, "met": cost["on"] <= TARGET},
        "exported_batches": received.batches,
        "exported_bytes": received.bytes,
        "spans_per_command": {m: round(statistics.median(v), 2) for m, v in spans_per_command.items()},
        "sdk_cost_per_span": sdk_cost_per_span(),
        "errors": len(creates.errors),
    }
