"""The unit of work: one tenant-bound transaction, the only way use cases touch Postgres."""

from __future__ import annotations

import uuid
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import orjson
from sqlalchemy import insert, literal_column, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from domain.care_plan import CarePlanAggregate
from domain.entities import Versioned
from domain.errors import Unavailable
from handlers.ports import OutboxMessage, ResourceVersion, StoredOutcome
from storage import aggregates, tables
from storage.database import SET_TENANT
from storage.errors import describe, is_transient
from storage.wal_position import CURRENT_POSITION
from storage.write_batch import WriteBatch

_COMMIT_POSITION = f"SELECT {CURRENT_POSITION}"


class SqlUnitOfWork:
    """`async with uow:` opens a transaction with `app.tenant_id` set for RLS; leaving without
    `commit()` rolls back. Database failures that a retry can fix surface as `Unavailable`."""

    def __init__(self, engine: AsyncEngine, tenant_id: str) -> None:
        self._engine = engine
        self.tenant_id = tenant_id
        self._conn: AsyncConnection | None = None
        self._batch = WriteBatch()
        self.has_written = False  # a current row was written: a rejection now needs `restart()`
        self.commit_position: str | None = None

    async def __aenter__(self) -> Self:
        try:
            self._conn = await self._engine.connect()
            await self._begin()
        except Exception as exc:
            await self._close()
            if is_transient(exc):
                raise Unavailable("database", describe(exc)) from exc
            raise
        return self

    async def _begin(self) -> None:
        await self.conn.begin()
        await self.conn.execute(SET_TENANT, {"tenant": self.tenant_id})
        self._batch = WriteBatch()
        self.has_written = False

    async def restart(self) -> None:
        """Roll back everything so far and begin again (a rejection that came after writes)."""
        await self.conn.rollback()
        await self._begin()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close()
        if exc is not None and not isinstance(exc, Unavailable) and is_transient(exc):
            raise Unavailable("database", describe(exc)) from exc

    @property
    def conn(self) -> AsyncConnection:
        if self._conn is None:
            raise RuntimeError("unit of work used outside `async with`")
        return self._conn

    async def commit(self) -> None:
        """Write what was collected (one statement), commit, and learn the commit's WAL position.

        The position costs one round trip after COMMIT, on the same connection and on the asyncpg driver
        itself (SQLAlchemy would wrap it in BEGIN and ROLLBACK): no statement can return it any sooner, as
        the commit record is written by COMMIT. Should that round trip fail, the commit stands and the
        caller retries as after any outage: the command log answers, with a position of its own."""
        try:
            if self._batch:
                await self.conn.execute(*self._batch.statement(self.tenant_id))
            await self.conn.commit()
            self.commit_position = await self._position_after_commit()
        except Exception as exc:
            if is_transient(exc):
                raise Unavailable("database", describe(exc)) from exc
            raise

    async def _position_after_commit(self) -> str:
        raw = await self.conn.get_raw_connection()
        driver: Any = raw.driver_connection
        try:
            position: str = await driver.fetchval(_COMMIT_POSITION)
        except BaseException:
            # SQLAlchemy did not see this failure: do not hand a broken connection back to the pool.
            await self.conn.invalidate()
            raise
        return position

    async def _close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                if conn.in_transaction():
                    await conn.rollback()
            finally:
                await conn.close()

    # --- command log (inbox) ---

    async def lock_command(self, command_id: uuid.UUID) -> None:
        """Serialise concurrent deliveries of one command id, so only one of them executes it."""
        await self.conn.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
            {"key": f"{self.tenant_id}/{command_id}"},
        )

    async def find_outcome(self, command_id: uuid.UUID) -> StoredOutcome | None:
        row = (
            await self.conn.execute(
                select(
                    tables.command_log.c.command_type,
                    tables.command_log.c.request_hash,
                    tables.command_log.c.status,
                    tables.command_log.c.outcome,
                    literal_column(CURRENT_POSITION),
                ).where(
                    tables.command_log.c.tenant_id == self.tenant_id,
                    tables.command_log.c.command_id == command_id,
                )
            )
        ).one_or_none()
        return None if row is None else StoredOutcome(*row)

    async def record_outcome(
        self,
        command_id: uuid.UUID,
        *,
        command_type: str,
        request_hash: str,
        status: int,
        outcome: dict[str, Any],
        correlation_id: str | None,
    ) -> None:
        self._batch.outcomes.append(
            {
                "command_id": command_id,
                "command_type": command_type,
                "request_hash": request_hash,
                "status": status,
                "outcome": orjson.dumps(outcome).decode(),
                "correlation_id": correlation_id,
            }
        )

    # --- resources ---

    async def load_plan(self, plan_id: str) -> CarePlanAggregate | None:
        return await aggregates.load_plan(self.conn, self.tenant_id, plan_id)

    async def plan_patient(self, plan_id: str) -> str | None:
        """The plan's patient, unlocked: read before the transaction, for the upstream checks."""
        plans = tables.care_plans.c
        patient_id: str | None = await self.conn.scalar(
            select(plans.patient_id).where(plans.tenant_id == self.tenant_id, plans.id == plan_id)
        )
        return patient_id

    async def plan_id_of(self, resource_type: str, resource_id: str) -> str | None:
        return await aggregates.plan_id_of(self.conn, self.tenant_id, resource_type, resource_id)

    async def save_versions(
        self, changed: list[tuple[str, Versioned]], versions: list[ResourceVersion]
    ) -> None:
        """The current rows now (their version guard must hold before anything else is written); their
        search index with the rest, at commit."""
        self.has_written = True
        await aggregates.save_versions(self.conn, self.tenant_id, changed, versions)
        self._batch.index += [v.resource for v in versions]

    async def append_history(self, versions: list[ResourceVersion], *, command_id: uuid.UUID) -> None:
        self._batch.history += [(v, command_id) for v in versions]

    async def add_provenance(
        self, provenance: dict[str, Any], *, recorded: datetime, patient_id: str | None, targets: list[str]
    ) -> None:
        self._batch.provenance.append(
            {
                "id": provenance["id"],
                "recorded": recorded,
                "patient": patient_id,
                "targets": targets,
                "resource": orjson.dumps(provenance).decode(),
            }
        )

    # --- outbox ---

    async def add_to_outbox(self, messages: list[OutboxMessage]) -> None:
        self._batch.outbox += messages


async def insert_outbox(conn: AsyncConnection, tenant_id: str, messages: list[OutboxMessage]) -> None:
    """Outbox rows in the caller's transaction; the relay publishes them once it commits."""
    if messages:
        await conn.execute(
            insert(tables.outbox),
            [
                {"tenant_id": tenant_id, "event_id": m.event_id, "subject": m.subject, "payload": m.payload}
                for m in messages
            ],
        )
