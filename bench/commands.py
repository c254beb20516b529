"""Scenarios 1 and 4: the command mix through JetStream to `careplan serve` against its two baselines,
`careplan.create` alone through one process against the minimal transaction (baseline (c)) and one at a
time, and the relay's lag (commit → event on the stream) at half the service's measured throughput."""

from __future__ import annotations

import asyncio
import contextlib
import math
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import nats
import orjson
import psutil
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from bench.echo import SUBJECT_PREFIX as ECHO_PREFIX
from bench.infra import ROOT, Servers, careplan_serve
from bench.load import CommandClient, Run, closed_loop
from bench.minimal_transaction import POOL_SIZE, MinimalTransactions, sample_minimal_rows
from bench.sql_baseline import SqlTransactions, sample_write_sets
from bench.workload import CommandMix, CreateOnly

TARGETS: dict[str, tuple[float, bool]] = {  # name → (target, whether the value must be at least it)
    "service / (a) throughput": (0.8, True),
    "create / (c) throughput": (0.3, True),
    "create p50 ms, 1 in flight": (2.5, False),
    "peak RSS MB, one process": (110.0, False),
}


def verdicts(values: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Each measured value of `TARGETS` against its target (values without a target are left out)."""
    judged = {}
    for name, value in values.items():
        if name not in TARGETS:
            continue
        target, at_least = TARGETS[name]
        met = not math.isnan(value) and (value >= target if at_least else value <= target)
        judged[name] = {"value": value, "target": target, "at_least": at_least, "met": met}
    return judged


async def run_commands(
    servers: Servers, *, concurrency: int, total: int, workers: int, replicas: int, sequential: int = 300
) -> dict[str, Any]:
    """The mix through `replicas` processes against (a) and (b); then `careplan.create` alone through one
    process against (c), at `concurrency` and at 1 in flight (`sequential` commands). (b) and (c) also run
    at 1 in flight, for what the 1-in-flight latency stands on (no target)."""
    mix = await _mix(
        servers,
        concurrency=concurrency,
        total=total,
        workers=workers,
        replicas=replicas,
        sequential=sequential,
    )
    creates = await _creates(
        servers, concurrency=concurrency, total=total, workers=workers, sequential=sequential
    )
    service, baseline_sql, baseline_nats, nats_one = mix.pop("runs")
    create, baseline_minimal, create_one, minimal_one = creates.pop("runs")
    ratios = {
        "service / (a) throughput": _ratio(service, baseline_sql),
        "service / (b) throughput": _ratio(service, baseline_nats),
        "create / (c) throughput": _ratio(create, baseline_minimal),
    }
    values = {
        **ratios,
        "create p50 ms, 1 in flight": round(create_one.percentile_ms(50), 2),
        "peak RSS MB, one process": creates["one_process_peak_rss_mb"],
    }
    service_run = service.summary() | {"name": f"service: the mix through careplan serve x{replicas}"}
    return {
        "runs": [
            service_run,
            baseline_sql.summary(),
            baseline_nats.summary(),
            create.summary(),
            baseline_minimal.summary(),
            create_one.summary(),
            minimal_one.summary(),
            nats_one.summary(),
        ],
        "ratios": ratios,
        "targets": {name: target for name, (target, _) in TARGETS.items()},
        "verdicts": verdicts(values),
        **mix,
        **creates,
    }


async def _mix(
    servers: Servers, *, concurrency: int, total: int, workers: int, replicas: int, sequential: int
) -> dict[str, Any]:
    database = await servers.fresh_database()
    run_id = uuid.uuid4().hex[:6]
    warm_up = max(total // 5, concurrency * 4)
    async with command_client(servers) as client:
        async with careplan_serve(
            servers,
            database,
            name="commands",
            replicas=replicas,
            extra_env={"CAREPLAN_WORKERS": str(workers)},
        ) as serve:
            mix = CommandMix(client, servers.keys, run_id=run_id)
            await mix.setup(concurrency)
            await closed_loop("warm-up", mix.request(), concurrency=concurrency, total=warm_up)
            serve.rss.mark_cpu()
            psutil.cpu_percent()
            service = await closed_loop("service", mix.request(), concurrency=concurrency, total=total)
            service_cpu = serve.rss.cpu_utilization()
            machine_busy = round(psutil.cpu_percent() / 100 * (psutil.cpu_count() or 1), 2)
            peak_rss = serve.rss.peak_bytes
            error_codes = sorted({e.get("error", {}).get("code", "?") for e in mix.errors})

        samples = await sample_write_sets(database.admin, servers.nats_url)
        sql = SqlTransactions(database.runtime, samples, run_id=run_id)
        await sql.start(concurrency)
        try:
            await closed_loop("warm-up", sql.request(), concurrency=concurrency, total=warm_up)
            baseline_sql = await closed_loop(
                "baseline (a): the same transactions, asyncpg",
                sql.request(),
                concurrency=concurrency,
                total=total,
            )
        finally:
            await sql.close()

        async with _echo(servers.nats_url, workers):

            async def echo(_caller: int, _n: int) -> bool:
                reply = await client.send("x", {}, "none", subject_prefix=ECHO_PREFIX)
                return bool(reply.get("ok"))

            await closed_loop("warm-up", echo, concurrency=concurrency, total=warm_up)
            baseline_nats = await closed_loop(
                "baseline (b): JetStream round trip, no database", echo, concurrency=concurrency, total=total
            )
            nats_one = await closed_loop(
                "baseline (b): JetStream round trip, 1 in flight",
                echo,
                concurrency=1,
                total=sequential,
            )
    return {
        "runs": (service, baseline_sql, baseline_nats, nats_one),
        "peak_rss_mb": round(peak_rss / 2**20, 1),
        "workers": workers,
        "replicas": replicas,
        "service_cpu_cores": service_cpu,
        "machine_cpu_cores_busy": machine_busy,
        "service_error_codes": error_codes,
        "service_first_error": mix.errors[0] if mix.errors else None,
    }


async def _creates(
    servers: Servers, *, concurrency: int, total: int, workers: int, sequential: int
) -> dict[str, Any]:
    """`careplan.create` only, through one `careplan serve` (`--replicas 1`), at `concurrency` in flight;
    baseline (c) on the same database, its rows sampled from the service's; then creates one at a time
    through a second, fresh process (each process is profiled on its own under CAREPLAN_BENCH_PROFILE:
    `create-0.txt` is the loaded one)."""
    database = await servers.fresh_database()
    run_id = uuid.uuid4().hex[:6]
    warm_up = max(total // 5, concurrency * 4)
    env = {"CAREPLAN_WORKERS": str(workers)}
    async with command_client(servers) as client:
        async with careplan_serve(servers, database, name="create", replicas=1, extra_env=env) as serve:
            creates = CreateOnly(client, servers.keys, run_id=run_id)
            await closed_loop("warm-up", creates.request(), concurrency=concurrency, total=warm_up)
            serve.rss.mark_cpu()
            psutil.cpu_percent()
            create = await closed_loop(
                f"service: careplan.create only, one process, {concurrency} in flight",
                creates.request(),
                concurrency=concurrency,
                total=total,
            )
            create_cpu = serve.rss.cpu_utilization()
            machine_busy = round(psutil.cpu_percent() / 100 * (psutil.cpu_count() or 1), 2)
            loaded_rss = serve.rss.peak_bytes

        rows = await sample_minimal_rows(database.admin, servers.nats_url)
        minimal = MinimalTransactions(database.runtime, rows, run_id=run_id)
        await minimal.start()
        try:
            await closed_loop("warm-up", minimal.request(), concurrency=concurrency, total=warm_up)
            baseline_minimal = await closed_loop(
                f"baseline (c): the minimal transaction, asyncpg, {POOL_SIZE} connections",
                minimal.request(),
                concurrency=concurrency,
                total=total,
            )
            minimal_one = await closed_loop(
                "baseline (c): the minimal transaction, 1 in flight",
                minimal.request(),
                concurrency=1,
                total=sequential,
            )
        finally:
            await minimal.close()

        async with careplan_serve(servers, database, name="create-one", replicas=1, extra_env=env) as serve:
            one_at_a_time = CreateOnly(client, servers.keys, run_id=run_id)
            await closed_loop(
                "warm-up", one_at_a_time.request(), concurrency=1, total=max(sequential // 5, 20)
            )
            create_one = await closed_loop(
                "service: careplan.create only, one process, 1 in flight",
                one_at_a_time.request(),
                concurrency=1,
                total=sequential,
            )
            sequential_rss = serve.rss.peak_bytes
    errors = creates.errors + one_at_a_time.errors
    return {
        "runs": (create, baseline_minimal, create_one, minimal_one),
        "create_service_cpu_cores": create_cpu,
        "create_machine_cpu_cores_busy": machine_busy,
        "minimal_json_bytes": {
            "plan (current and history rows)": len(rows.plan.encode()),
            "outcome (command log)": len(rows.outcome.encode()),
            "outbox payloads": [len(payload) for _, payload in rows.outbox],
        },
        "one_process_peak_rss_mb": round(max(loaded_rss, sequential_rss) / 2**20, 1),
        "create_error_codes": sorted({e.get("error", {}).get("code", "?") for e in errors}),
        "create_first_error": errors[0] if errors else None,
    }


async def run_relay_lag(
    servers: Servers, *, concurrency: int, seconds: float, workers: int, replicas: int
) -> dict[str, Any]:
    """The service's top throughput (a short closed loop), then an open loop at half of it while every
    event is read back from CAREPLAN_EVENTS: lag = the event's JetStream timestamp minus the moment its
    command's reply arrived (the reply is published right after commit, so this is commit → stream less
    the reply's own sub-millisecond transit)."""
    database = await servers.fresh_database()
    run_id = uuid.uuid4().hex[:6]
    async with (
        command_client(servers) as client,
        careplan_serve(
            servers, database, name="relay", replicas=replicas, extra_env={"CAREPLAN_WORKERS": str(workers)}
        ) as serve,
    ):
        mix = CommandMix(client, servers.keys, run_id=run_id)
        await mix.setup(concurrency)
        top = await closed_loop("top", mix.request(), concurrency=concurrency, total=concurrency * 20)
        rate = top.throughput / 2
        on_stream: dict[str, float] = {}

        async def on_event(msg: Msg) -> None:
            event = orjson.loads(msg.data)
            on_stream.setdefault(event["causationid"], msg.metadata.timestamp.timestamp())

        subscription = await client.nc.jetstream().subscribe(
            "careplan.evt.>", ordered_consumer=True, deliver_policy=DeliverPolicy.NEW, cb=on_event
        )
        open_loop_started = time.time()
        skipped = await _open_loop(mix, concurrency=concurrency, rate=rate, seconds=seconds)
        await asyncio.sleep(1.0)  # the last events
        await subscription.unsubscribe()
        peak_rss = serve.rss.peak_bytes
    replies = {c: t for c, t in client.wall_reply_times.items() if t >= open_loop_started}
    lags = sorted(on_stream[c] - t for c, t in replies.items() if c in on_stream)
    return {
        "rate_per_s": round(rate, 1),
        "top_throughput_per_s": round(top.throughput, 1),
        "commands": len(replies),
        "not_sent_all_callers_busy": skipped,
        "events_matched": len(lags),
        "commands_without_event": len(replies) - len(lags),
        "lag_p50_ms": round(_pct(lags, 50) * 1000, 2),
        "lag_p99_ms": round(_pct(lags, 99) * 1000, 2),
        "lag_max_ms": round(lags[-1] * 1000, 2) if lags else None,
        "targets": {"lag_p99_ms": 50},
        "replicas": replicas,
        "peak_rss_mb": round(peak_rss / 2**20, 1),
    }


async def _open_loop(mix: CommandMix, *, concurrency: int, rate: float, seconds: float) -> int:
    """A command every 1/rate seconds from whichever caller is idle (each owns its plans, so one caller
    never has two in flight); returns how many ticks found every caller busy."""
    send = mix.request()
    idle: asyncio.Queue[int] = asyncio.Queue()
    for caller in range(concurrency):
        idle.put_nowait(caller)
    sent = [0] * concurrency
    tasks: set[asyncio.Task[None]] = set()
    skipped = 0

    async def one(caller: int) -> None:
        try:
            await send(caller, sent[caller])
        finally:
            sent[caller] += 1
            idle.put_nowait(caller)

    loop = asyncio.get_running_loop()
    start = loop.time()
    tick = 0
    while loop.time() - start < seconds:
        if idle.empty():
            skipped += 1
        else:
            task = asyncio.create_task(one(idle.get_nowait()))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        tick += 1
        await asyncio.sleep(max(0.0, start + tick / rate - loop.time()))
    await asyncio.gather(*tasks)
    return skipped


def _pct(ordered: list[float], p: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, math.ceil(len(ordered) * p / 100) - 1))]


def _ratio(run: Run, baseline: Run) -> float:
    return round(run.throughput / baseline.throughput, 3) if baseline.throughput else float("nan")


@contextlib.asynccontextmanager
async def command_client(servers: Servers, nats_url: str | None = None) -> AsyncIterator[CommandClient]:
    """A caller's connection to the run's nats-server, or to `nats_url` (a cluster's, comma separated)."""
    nc: NatsClient = await nats.connect(servers=(nats_url or servers.nats_url).split(","))
    client = CommandClient(nc)
    await client.start()
    try:
        yield client
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def _echo(nats_url: str, workers: int) -> AsyncIterator[None]:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.echo", nats_url, str(workers)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.to_thread(process.stdout.readline)
        if b"echo ready" not in line:
            raise RuntimeError("the echo consumer did not start")
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
