"""Baseline (a), the database's limit for this work: each command's transaction — the same rows the
service wrote for a command of that type (current rows, search index, history, Provenance, outbox,
command log) and the same reads it needs (command log, the plan locked, its parts) — issued directly with
asyncpg, prepared statements and one statement per kind of row, as the runtime role under RLS, at the
same concurrency. The rows are copied from commands the service really executed in the same run; their
outbox rows from the streams (the relay deleted them once it had published them)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import nats
import orjson

from bench.load import Request
from bench.workload import MIX, PLANS_PER_CALLER, TENANTS
from service.topology import AUDIT_STREAM, EVENT_STREAM

CURRENT_TABLES = {"CarePlan": "care_plans", "Goal": "goals", "Task": "tasks", "CareTeam": "care_teams"}
INDEX_TABLES = {
    "search_token": ("param", "system", "code", "display"),
    "search_reference": ("param", "ref_type", "ref_id"),
    "search_date": ("param", "low", "high"),
    "search_string": ("param", "value"),
}
EXTRA_COLUMNS = {
    "care_plans": ("patient_id", "status"),
    "goals": ("plan_id", "patient_id", "lifecycle_status", "achievement_status"),
    "tasks": ("plan_id", "patient_id", "status", "owner_id", "is_review"),
    "care_teams": ("plan_id", "patient_id", "status"),
}


@dataclass
class ResourceRow:
    resource_type: str
    columns: dict[str, Any]  # the current row's searchable columns
    state: str
    resource: str
    index: dict[str, list[tuple[Any, ...]]]  # index table → rows (without the key columns)


@dataclass
class WriteSet:
    """What one command of a type wrote, to be written again under new ids."""

    command_type: str
    resources: list[ResourceRow]
    provenance: str
    outbox: list[tuple[str, bytes]]
    outcome: str


# How far back the streams are read for the sampled commands' events: they are the newest of their type.
PUBLISHED_WINDOW = 5000


async def sample_write_sets(
    admin_dsn: str, nats_url: str, command_types: tuple[str, ...] = MIX
) -> dict[str, WriteSet]:
    """One executed command of each type (those of the mix unless told), and every row it wrote, read as
    the owner (its outbox rows as published)."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        sampled = {}
        for command_type in command_types:
            row = await conn.fetchrow(
                "SELECT tenant_id, command_id, outcome::text FROM command_log WHERE command_type = $1 "
                "AND status < 300 ORDER BY recorded_at DESC LIMIT 1",
                command_type,
            )
            if row is None:
                raise RuntimeError(f"no {command_type} ran in the service phase")
            sampled[command_type] = (row[0], row[1], row[2])
        published = await _published(nats_url, {str(command_id) for _, command_id, _ in sampled.values()})
        return {
            command_type: await _write_set(conn, command_type, *row, published.get(str(row[1]), []))
            for command_type, row in sampled.items()
        }
    finally:
        await conn.close()


async def _published(nats_url: str, command_ids: set[str]) -> dict[str, list[tuple[str, bytes]]]:
    """The events, then the audit record, each of these commands caused, from the newest messages."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        found: dict[str, list[tuple[str, bytes]]] = {}
        for stream in (EVENT_STREAM, AUDIT_STREAM):
            state = (await js.stream_info(stream)).state
            oldest = max(state.first_seq, state.last_seq - PUBLISHED_WINDOW)
            for seq in range(oldest, state.last_seq + 1):
                msg = await js.get_msg(stream, seq)
                assert msg.data is not None and msg.subject is not None
                command_id = orjson.loads(msg.data).get("causationid")
                if command_id in command_ids:
                    found.setdefault(command_id, []).append((msg.subject, msg.data))
        return found
    finally:
        await nc.close()


async def _write_set(
    conn: asyncpg.Connection,
    command_type: str,
    tenant: str,
    command_id: uuid.UUID,
    outcome: str,
    outbox: list[tuple[str, bytes]],
) -> WriteSet:
    resources = []
    for history in await conn.fetch(
        "SELECT resource_type, resource_id FROM resource_history WHERE tenant_id = $1 AND command_id = $2",
        tenant,
        command_id,
    ):
        resource_type, resource_id = history
        table = CURRENT_TABLES[resource_type]
        extra = EXTRA_COLUMNS[table]
        current = await conn.fetchrow(
            f"SELECT state::text, resource::text, {', '.join(extra)} FROM {table} "
            "WHERE tenant_id = $1 AND id = $2",
            tenant,
            resource_id,
        )
        index = {}
        for index_table, columns in INDEX_TABLES.items():
            index[index_table] = [
                tuple(r)
                for r in await conn.fetch(
                    f"SELECT {', '.join(columns)} FROM {index_table} "
                    "WHERE tenant_id = $1 AND resource_type = $2 AND resource_id = $3",
                    tenant,
                    resource_type,
                    resource_id,
                )
            ]
        resources.append(
            ResourceRow(resource_type, {c: current[c] for c in extra}, current[0], current[1], index)
        )
    audit_id = next((orjson.loads(p)["id"] for s, p in outbox if s.startswith("careplan.audit.")), None)
    if audit_id is None:
        raise RuntimeError(
            f"the audit record of {command_type} {command_id} is not among the newest messages"
        )
    provenance = await conn.fetchval(
        "SELECT resource::text FROM provenance WHERE tenant_id = $1 AND id = $2", tenant, audit_id
    )
    return WriteSet(command_type, resources, provenance, outbox, outcome)


@dataclass
class _Owned:
    plan_id: str
    plan_version: int
    task_id: str
    task_version: int


class SqlTransactions:
    """Replays the sampled write sets; each caller owns plans of its own, as in the service phase."""

    def __init__(self, runtime_dsn: str, samples: dict[str, WriteSet], *, run_id: str) -> None:
        self._dsn = runtime_dsn
        self._samples = samples
        self._run_id = run_id
        self._pool: asyncpg.Pool | None = None
        self._owned: list[list[_Owned]] = []

    async def start(self, callers: int) -> None:
        self._pool = await asyncpg.create_pool(self._dsn, min_size=callers, max_size=callers)
        self._owned = [[] for _ in range(callers)]
        for index in range(callers):
            for _ in range(PLANS_PER_CALLER):
                plan_id, task_id = str(uuid.uuid4()), str(uuid.uuid4())
                await self._transaction(index, "careplan.create", {"CarePlan": (plan_id, 1)}, plan_id)
                await self._transaction(index, "setup.task", {"Task": (task_id, 1)}, plan_id)
                self._owned[index].append(_Owned(plan_id, 1, task_id, 1))

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    def tenant(self, index: int) -> str:
        return f"{self._run_id}b{index % TENANTS}"

    def request(self) -> Request:
        async def run(index: int, n: int) -> bool:
            owned = self._owned[index][(n // len(MIX)) % PLANS_PER_CALLER]
            command = MIX[n % len(MIX)]
            if command == "careplan.create":
                plan_id = str(uuid.uuid4())
                await self._transaction(index, command, {"CarePlan": (plan_id, 1)}, plan_id)
            elif command == "goal.add":
                owned.plan_version += 1
                ids = {"Goal": (str(uuid.uuid4()), 1), "CarePlan": (owned.plan_id, owned.plan_version)}
                await self._transaction(index, command, ids, owned.plan_id)
            elif command == "careplan.update":
                owned.plan_version += 1
                ids = {"CarePlan": (owned.plan_id, owned.plan_version)}
                await self._transaction(index, command, ids, owned.plan_id)
            else:
                owned.task_version += 1
                ids = {"Task": (owned.task_id, owned.task_version)}
                await self._transaction(index, command, ids, owned.plan_id)
            return True

        return run

    async def _transaction(
        self, index: int, command_type: str, ids: dict[str, tuple[str, int]], plan_id: str
    ) -> None:
        """One command: the reads it needs, then each kind of row in one statement (executemany)."""
        assert self._pool is not None
        setup = command_type == "setup.task"
        sample = self._samples["activity.change_status" if setup else command_type]
        tenant, command_id = self.tenant(index), uuid.uuid4()
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT set_config('app.tenant_id', $1, true)", tenant)
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"{tenant}/{command_id}"
            )
            await conn.fetchrow(
                "SELECT outcome FROM command_log WHERE tenant_id = $1 AND command_id = $2", tenant, command_id
            )
            if command_type == "activity.change_status":
                task_id = ids["Task"][0]
                await conn.fetchval(
                    "SELECT plan_id FROM tasks WHERE tenant_id = $1 AND id = $2", tenant, task_id
                )
            await conn.fetchrow(
                "SELECT state FROM care_plans WHERE tenant_id = $1 AND id = $2 FOR UPDATE", tenant, plan_id
            )
            if command_type != "careplan.create":
                for child in ("goals", "tasks", "care_teams"):
                    await conn.fetch(
                        f"SELECT state FROM {child} WHERE tenant_id = $1 AND plan_id = $2", tenant, plan_id
                    )
            rows = [r for r in sample.resources if r.resource_type in ids]
            for row in rows:
                await _upsert(conn, tenant, row, *ids[row.resource_type], plan_id)
            keys = [(row.resource_type, ids[row.resource_type][0]) for row in rows]
            for index_table, columns in INDEX_TABLES.items():
                await conn.execute(
                    f"DELETE FROM {index_table} WHERE tenant_id = $1 AND (resource_type, resource_id) IN "
                    "(SELECT * FROM unnest($2::text[], $3::text[]))",
                    tenant,
                    [k[0] for k in keys],
                    [k[1] for k in keys],
                )
                values = [
                    (tenant, row.resource_type, ids[row.resource_type][0], *r)
                    for row in rows
                    for r in row.index[index_table]
                ]
                if values:
                    placeholders = ", ".join(f"${i + 4}" for i in range(len(columns)))
                    await conn.executemany(
                        f"INSERT INTO {index_table} (tenant_id, resource_type, resource_id, "
                        f"{', '.join(columns)}) VALUES ($1, $2, $3, {placeholders})",
                        values,
                    )
            await conn.executemany(
                "INSERT INTO resource_history (tenant_id, resource_type, resource_id, version, last_updated, "
                "command_id, resource) VALUES ($1, $2, $3, $4, now(), $5, $6::jsonb)",
                [(tenant, r.resource_type, *ids[r.resource_type], command_id, r.resource) for r in rows],
            )
            if setup:
                return
            await conn.execute(
                "INSERT INTO provenance (tenant_id, id, recorded, patient_id, targets, resource) "
                "VALUES ($1, $2, now(), $3, $4, $5::jsonb)",
                tenant,
                str(uuid.uuid4()),
                "patient-x",
                [f"{t}/{i}" for t, (i, _) in ids.items()],
                sample.provenance,
            )
            await conn.executemany(
                "INSERT INTO outbox (tenant_id, event_id, subject, payload) VALUES ($1, $2, $3, $4)",
                [(tenant, uuid.uuid4(), subject, payload) for subject, payload in sample.outbox],
            )
            await conn.execute(
                "INSERT INTO command_log (tenant_id, command_id, command_type, request_hash, status, "
                "outcome) VALUES ($1, $2, $3, $4, $5, $6::jsonb)",
                tenant,
                command_id,
                command_type,
                "0" * 64,
                200,
                sample.outcome,
            )


async def _upsert(
    conn: asyncpg.Connection, tenant: str, row: ResourceRow, resource_id: str, version: int, plan_id: str
) -> None:
    """The current row at its new version, guarded as the service guards it (only from version - 1)."""
    table = CURRENT_TABLES[row.resource_type]
    columns = {**row.columns, **({"plan_id": plan_id} if "plan_id" in row.columns else {})}
    names = ["tenant_id", "id", "version", "state", "resource", *columns, "last_updated"]
    exprs = ["$1", "$2", "$3", "$4::jsonb", "$5::jsonb", *(f"${i + 6}" for i in range(len(columns))), "now()"]
    updates = ", ".join(f"{c} = excluded.{c}" for c in names[2:])
    await conn.execute(
        f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join(exprs)}) ON CONFLICT (tenant_id, id) "
        f"DO UPDATE SET {updates} WHERE {table}.version = excluded.version - 1",
        tenant,
        resource_id,
        version,
        row.state,
        row.resource,
        *columns.values(),
    )
