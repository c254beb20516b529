"""Scenario `topologies` (issue 16): the same work on one machine's engines and on the platform's, each
pair in the same run. The command mix through `careplan serve` on one nats-server with R1 streams against
a 3-node nats-server cluster with R3 streams (a PubAck then waits for a quorum); and FHIR reads and a
search served from the primary against the same from a streaming replica (`CAREPLAN_READ_DATABASE_URL`).

The cluster and the replica are the fault lab's own (tests/faults/cluster.py, tests/replica.py): the very
servers the scenario tests prove correct are the ones measured here."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import nats

from bench.commands import command_client
from bench.http_load import http_load, load_tool
from bench.infra import RUNTIME_ROLE, SYSTEM_ROLE, Database, Servers, careplan_serve
from bench.load import closed_loop
from bench.reads import load_plans
from bench.workload import CommandMix
from storage.database import ensure_database, with_database
from storage.migrate import migrate
from tests.faults.cluster import NatsCluster, until_jetstream_answers
from tests.replica import ReplicatedPostgres


async def run_topologies(
    servers: Servers, *, concurrency: int, total: int, workers: int, read_seconds: float
) -> dict[str, Any]:
    one_node = await _commands(servers, servers.nats_url, 1, concurrency, total, workers)
    async with _cluster(servers) as urls:
        cluster = await _commands(servers, urls, 3, concurrency, total, workers)
    reads = await _reads(servers, concurrency=32, seconds=read_seconds)
    return {
        "commands": {
            "runs": [one_node, cluster],
            "ratio": round(cluster["throughput_per_s"] / one_node["throughput_per_s"], 3),
            "p50_ratio": round(cluster["p50_ms"] / one_node["p50_ms"], 2),
        },
        "reads": reads,
    }


@contextlib.asynccontextmanager
async def _cluster(servers: Servers) -> AsyncIterator[str]:
    cluster = NatsCluster(servers.workdir / "cluster")
    cluster.start()
    try:
        nc = await nats.connect(servers=cluster.urls.split(","))
        try:
            await until_jetstream_answers(nc.jetstream())
        finally:
            await nc.close()
        yield cluster.urls
    finally:
        cluster.stop()


async def _commands(
    servers: Servers, nats_url: str, replicas: int, concurrency: int, total: int, workers: int
) -> dict[str, Any]:
    """The command mix, warm-up excluded, through one `careplan serve` on `nats_url` with R`replicas`."""
    database = await servers.fresh_database()
    run_id = uuid.uuid4().hex[:6]
    env = {
        "CAREPLAN_NATS_URL": nats_url,
        "CAREPLAN_STREAM_REPLICAS": str(replicas),
        "CAREPLAN_WORKERS": str(workers),
    }
    async with (
        command_client(servers, nats_url) as client,
        careplan_serve(servers, database, name=f"commands-r{replicas}", extra_env=env),
    ):
        mix = CommandMix(client, servers.keys, run_id=run_id)
        await mix.setup(concurrency)
        await closed_loop(
            "warm-up", mix.request(), concurrency=concurrency, total=max(total // 5, concurrency)
        )
        run = await closed_loop(f"R{replicas}", mix.request(), concurrency=concurrency, total=total)
    where = "one nats-server, R1 streams" if replicas == 1 else "3-node cluster, R3 streams"
    return run.summary() | {"name": f"commands: {where}"}


async def _reads(servers: Servers, *, concurrency: int, seconds: float) -> dict[str, Any]:
    """Read and search served from the primary, then from the replica, on one database of a primary and its
    streaming standby (the lab's own Postgres pair; commands go through the run's nats-server)."""
    with ReplicatedPostgres(servers.workdir / "pg-pair") as pair:
        await pair.replicating()
        name = f"careplan_bench_{uuid.uuid4().hex[:8]}"
        primary_admin = pair.primary.url()
        await ensure_database(primary_admin, name)
        admin = with_database(primary_admin, name)
        database = Database(
            admin=admin,
            runtime=pair.url(*RUNTIME_ROLE, name, hosts="primary"),
            system=pair.url(*SYSTEM_ROLE, name, hosts="primary"),
        )
        await migrate(database.admin, database.runtime, database.system)
        tenant = f"r{uuid.uuid4().hex[:8]}"
        token = servers.keys.mint(tenant_id=tenant, roles=["clinician"])
        replica_url = pair.url(*RUNTIME_ROLE, name, hosts="standby")
        runs: list[dict[str, Any]] = []
        async with command_client(servers) as client:
            async with careplan_serve(servers, database, name="reads-primary") as serve:
                plan_ids = await load_plans(client, token)
                runs += await _read_runs(serve.http_url, plan_ids[0], token, "primary", concurrency, seconds)
            env = {"CAREPLAN_READ_DATABASE_URL": replica_url}
            async with careplan_serve(servers, database, name="reads-replica", extra_env=env) as serve:
                runs += await _read_runs(serve.http_url, plan_ids[0], token, "replica", concurrency, seconds)
    for run in runs:
        if run["errors"]:
            raise RuntimeError(f"{run['name']}: {run['errors']} errors")
    by_name = {run["name"]: run for run in runs}
    return {
        "concurrency": concurrency,
        "tool": load_tool(),
        "runs": runs,
        "ratios": {
            route: round(
                by_name[f"{route} from the replica"]["throughput_per_s"]
                / by_name[f"{route} from the primary"]["throughput_per_s"],
                3,
            )
            for route in ("read", "search")
        },
    }


async def _read_runs(
    base: str, plan_id: str, token: str, target: str, concurrency: int, seconds: float
) -> list[dict[str, Any]]:
    read = f"{base}/fhir/CarePlan/{plan_id}"
    search = f"{base}/fhir/CarePlan?patient=patient-7&status=active"
    await http_load("warm-up", read, token, concurrency=concurrency, seconds=2)
    return [
        await http_load(f"read from the {target}", read, token, concurrency=concurrency, seconds=seconds),
        await http_load(f"search from the {target}", search, token, concurrency=concurrency, seconds=seconds),
    ]
