"""A rollout run's row (CONTRACT §10): found across tenants by the worker (system role), worked and
finished as its tenant (runtime role, RLS), read for its progress."""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from handlers.ports import OutboxMessage, RolloutRecord
from storage.transaction import SqlTransaction


@dataclass(frozen=True, slots=True)
class RunningRollout:
    tenant_id: str
    rollout_id: uuid.UUID


_RUNNING = text("SELECT tenant_id, id FROM rollouts WHERE status = 'running' ORDER BY created")
_PENDING_AGE = text(
    "SELECT count(*), extract(epoch FROM now() - min(r.created)) FROM rollouts r "
    "JOIN rollout_plans p ON p.tenant_id = r.tenant_id AND p.rollout_id = r.id AND p.state = 'pending' "
    "WHERE r.status = 'running'"
)
_ROLLOUT = (
    "SELECT id, program_id, target, status, started_by::text, command_id, correlation_id, created, "
    "completed, traceparent FROM rollouts WHERE tenant_id = $1 AND id = $2"
)
_COUNTS = (
    "SELECT state, count(*), "
    "coalesce(sum(jsonb_array_length(changes -> 'added')), 0), "
    "coalesce(sum(jsonb_array_length(changes -> 'cancelled')), 0), "
    "coalesce(sum(jsonb_array_length(changes -> 'updated')), 0), "
    "coalesce(sum(jsonb_array_length(changes -> 'kept')), 0) "
    "FROM rollout_plans WHERE tenant_id = $1 AND rollout_id = $2 GROUP BY state"
)
_CONFLICTS = (
    "SELECT plan_id, (changes -> 'kept')::text FROM rollout_plans WHERE tenant_id = $1 AND rollout_id = $2 "
    "AND state = 'migrated' AND jsonb_array_length(changes -> 'kept') > 0 ORDER BY plan_id LIMIT $3"
)
_COMPLETE = (
    "UPDATE rollouts SET status = 'completed', completed = $3, totals = $4::jsonb "
    "WHERE tenant_id = $1 AND id = $2 AND status = 'running' AND NOT EXISTS ("
    "SELECT 1 FROM rollout_plans WHERE tenant_id = $1 AND rollout_id = $2 AND state = 'pending') RETURNING id"
)
_OUTBOX = (
    "INSERT INTO outbox (tenant_id, event_id, subject, payload, traceparent) VALUES ($1, $2, $3, $4, $5)"
)
_LOCK = "SELECT pg_try_advisory_lock(hashtextextended('rollouts/' || $1 || '/' || $2, 0))"
_UNLOCK = "SELECT pg_advisory_unlock(hashtextextended('rollouts/' || $1 || '/' || $2, 0))"
# A progress report names at most this many plans with conflicts; the totals count all of them.
MAX_REPORTED_CONFLICTS = 100


async def read_rollout(
    conn: asyncpg.Connection, tenant_id: str, rollout_id: uuid.UUID
) -> RolloutRecord | None:
    row = await conn.fetchrow(_ROLLOUT, tenant_id, rollout_id)
    if row is None:
        return None
    counts = {"pending": 0, "migrated": 0, "skipped": 0}
    totals = {"added": 0, "cancelled": 0, "updated": 0, "kept": 0}
    for state, plans, added, cancelled, updated, kept in await conn.fetch(_COUNTS, tenant_id, rollout_id):
        counts[state] = plans
        if state == "migrated":
            totals = {"added": added, "cancelled": cancelled, "updated": updated, "kept": kept}
    conflicts = [
        {"care_plan_id": plan_id, "kept": orjson.loads(kept)}
        for plan_id, kept in await conn.fetch(_CONFLICTS, tenant_id, rollout_id, MAX_REPORTED_CONFLICTS)
    ]
    return RolloutRecord(
        rollout_id=row[0],
        program_id=row[1],
        target=row[2],
        status=row[3],
        started_by=orjson.loads(row[4]),
        command_id=row[5],
        correlation_id=row[6],
        created=row[7],
        completed=row[8],
        counts=counts,
        totals=totals,
        conflicts=conflicts,
        traceparent=row[9],
    )


class SqlRolloutStore:
    """The worker's storage: running rollouts of every tenant (system role), a session lock per rollout so
    one process works it at a time (released by Postgres when the holder dies), and each rollout's reads,
    claims and finish as its tenant through `SqlTransaction` (runtime role, RLS)."""

    def __init__(self, system_engine: AsyncEngine, runtime_engine: AsyncEngine) -> None:
        self._system = system_engine
        self._runtime = runtime_engine

    async def running(self) -> list[RunningRollout]:
        async with self._system.connect() as conn:
            rows = (await conn.execute(_RUNNING)).all()
        return [RunningRollout(tenant_id, rollout_id) for tenant_id, rollout_id in rows]

    async def pending(self) -> tuple[int, float]:
        """Plans still pending in running rollouts, and the age in seconds of the oldest such rollout."""
        async with self._system.connect() as conn:
            count, age = (await conn.execute(_PENDING_AGE)).one()
        return int(count), float(age or 0.0)

    @contextlib.asynccontextmanager
    async def hold(self, rollout: RunningRollout) -> AsyncIterator[bool]:
        """True while this process alone works `rollout`: a session advisory lock on a connection of its
        own, held for the block; False when another process holds it."""
        async with self._system.connect() as conn:
            raw = await conn.get_raw_connection()
            db: asyncpg.Connection = raw.driver_connection
            held = bool(await db.fetchval(_LOCK, rollout.tenant_id, str(rollout.rollout_id)))
            try:
                yield held
            finally:
                if held and not db.is_closed():
                    with contextlib.suppress(Exception):
                        await db.fetchval(_UNLOCK, rollout.tenant_id, str(rollout.rollout_id))

    def transaction(self, tenant_id: str) -> SqlTransaction:
        return SqlTransaction(self._runtime, tenant_id)

    async def read(self, tenant_id: str, rollout_id: uuid.UUID) -> RolloutRecord | None:
        async with SqlTransaction(self._runtime, tenant_id) as tx:
            return await read_rollout(tx.db, tenant_id, rollout_id)

    async def finish(
        self,
        tenant_id: str,
        rollout_id: uuid.UUID,
        now: datetime,
        event: Callable[[RolloutRecord], OutboxMessage],
    ) -> RolloutRecord | None:
        """Mark the run completed with its totals and queue its `program.rollout_completed` event, in one
        transaction; None while plans are pending or when it was finished already."""
        async with SqlTransaction(self._runtime, tenant_id) as tx:
            record = await read_rollout(tx.db, tenant_id, rollout_id)
            if record is None or record.status != "running" or record.counts["pending"]:
                return None
            totals = {**record.counts, **record.totals}
            done = await tx.db.fetchval(_COMPLETE, tenant_id, rollout_id, now, orjson.dumps(totals).decode())
            if done is None:
                return None
            finished = dataclasses.replace(record, status="completed", completed=now)
            message = event(finished)
            await tx.db.execute(
                _OUTBOX, tenant_id, message.event_id, message.subject, message.payload, message.traceparent
            )
            await tx.db.execute("COMMIT")
            return finished
