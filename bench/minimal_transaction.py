"""Baseline (c), the floor: the minimal transaction any implementation of the command contract must do
for a `careplan.create`, whatever its language, framework or schema, measured on this run's Postgres.

Accepting a command means, at the least, in one transaction: recording it once (the command log, which
also answers a re-sent command id), making its resource current (`care_plans`) and versioned
(`resource_history`, which vread and _history serve), and queueing its event and its audit record in the
outbox, so that nothing is published for a transaction that rolled back. Hence per command: the tenant
set for RLS (the RLS-bound runtime role, as baseline (a) and the service use), an `INSERT ... ON CONFLICT
DO NOTHING` into `command_log` (the idempotency check and the record in one statement: a concurrent
duplicate waits on the key), one `care_plans` row and one `resource_history` row, each of the three
carrying the rendered CarePlan (a plan the service wrote in this run, its id replaced; the command log's
inside the reply), and the two outbox rows the service wrote for it. Nothing is read, validated or
rendered per command; no search-index or Provenance row, no `state` column, no advisory lock: whatever an
implementation adds on top of this costs it throughput, so create / (c) says how much of the database's
capacity for the contract's bare minimum the service turns into commands. asyncpg, prepared statements,
one statement per row kind, `POOL_SIZE` connections shared by the 64 callers."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg
import orjson

from bench.load import Request
from bench.sql_baseline import WriteSet, sample_write_sets
from bench.workload import TENANTS

POOL_SIZE = 16
COMMAND = "careplan.create"


@dataclass(frozen=True)
class MinimalRows:
    """The rows of one sampled `careplan.create`, as templates: `plan_id` is replaced by a new id."""

    plan_id: str
    patient_id: str
    status: str
    plan: str  # the rendered CarePlan, as the current and the history row hold it
    outcome: str  # the command log's outcome: the service's reply, the rendered plan added (~2 KB too)
    outbox: tuple[tuple[str, bytes], ...]  # (subject, payload): the event and the audit record

    def for_plan(self, plan_id: str) -> tuple[str, str, list[tuple[str, bytes]]]:
        """The plan, the outcome and the outbox rows under a new plan id."""
        old, new = self.plan_id.encode(), plan_id.encode()
        return (
            self.plan.replace(self.plan_id, plan_id),
            self.outcome.replace(self.plan_id, plan_id),
            [(subject, payload.replace(old, new)) for subject, payload in self.outbox],
        )


def minimal_rows(sample: WriteSet) -> MinimalRows:
    """What of a sampled create's write set the minimal transaction writes again."""
    plans = [r for r in sample.resources if r.resource_type == "CarePlan"]
    if sample.command_type != COMMAND or len(plans) != 1:
        raise ValueError(f"not one careplan.create's rows: {sample.command_type}, {len(plans)} plans")
    plan = plans[0]
    plan_id = _resource_id(plan.resource)
    return MinimalRows(
        plan_id=plan_id,
        patient_id=str(plan.columns["patient_id"]),
        status=str(plan.columns["status"]),
        plan=plan.resource,
        outcome=orjson.dumps(
            {**orjson.loads(sample.outcome), "resource": orjson.loads(plan.resource)}
        ).decode(),
        outbox=tuple(sample.outbox[:2]),
    )


def _resource_id(resource: str) -> str:
    return str(orjson.loads(resource)["id"])


async def sample_minimal_rows(admin_dsn: str, nats_url: str) -> MinimalRows:
    """The rows of the newest successful `careplan.create` in the database (read as the owner), its
    outbox rows as published."""
    return minimal_rows((await sample_write_sets(admin_dsn, nats_url, (COMMAND,)))[COMMAND])


class MinimalTransactions:
    """`request` runs one minimal transaction per call, under the caller's tenant."""

    def __init__(self, runtime_dsn: str, rows: MinimalRows, *, run_id: str, pool_size: int = POOL_SIZE):
        self._dsn = runtime_dsn
        self._rows = rows
        self._run_id = run_id
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None

    async def start(self) -> None:
        self._pool = await asyncpg.create_pool(self._dsn, min_size=self._pool_size, max_size=self._pool_size)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    def tenant(self, index: int) -> str:
        return f"{self._run_id}c{index % TENANTS}"

    def request(self) -> Request:
        async def run(index: int, _n: int) -> bool:
            return await self._transaction(self.tenant(index))

        return run

    async def _transaction(self, tenant: str) -> bool:
        assert self._pool is not None
        rows = self._rows
        command_id, plan_id = uuid.uuid4(), str(uuid.uuid4())
        plan, outcome, outbox = rows.for_plan(plan_id)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT set_config('app.tenant_id', $1, true)", tenant)
            recorded = await conn.fetchval(
                "INSERT INTO command_log (tenant_id, command_id, command_type, request_hash, status, "
                "outcome) VALUES ($1, $2, $3, $4, 200, $5::jsonb) ON CONFLICT DO NOTHING RETURNING true",
                tenant,
                command_id,
                COMMAND,
                "0" * 64,
                outcome,
            )
            if not recorded:
                return False  # a duplicate: answered from the log, nothing written
            await conn.execute(
                "INSERT INTO care_plans (tenant_id, id, version, patient_id, status, last_updated, resource) "
                "VALUES ($1, $2, 1, $3, $4, now(), $5::jsonb)",
                tenant,
                plan_id,
                rows.patient_id,
                rows.status,
                plan,
            )
            await conn.execute(
                "INSERT INTO resource_history (tenant_id, resource_type, resource_id, version, last_updated, "
                "command_id, resource) VALUES ($1, 'CarePlan', $2, 1, now(), $3, $4::jsonb)",
                tenant,
                plan_id,
                command_id,
                plan,
            )
            await conn.executemany(
                "INSERT INTO outbox (tenant_id, event_id, subject, payload) VALUES ($1, $2, $3, $4)",
                [(tenant, uuid.uuid4(), subject, payload) for subject, payload in outbox],
            )
        return True
