"""The unit of work: one tenant-bound transaction, the only way use cases touch Postgres."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from types import TracebackType
from typing import Any, Self

from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from domain.care_plan import CarePlanAggregate
from domain.entities import Versioned
from domain.errors import Unavailable
from handlers.ports import OutboxMessage, ResourceVersion, StoredOutcome
from storage import aggregates, tables
from storage.database import SET_TENANT
from storage.errors import describe, is_transient


class SqlUnitOfWork:
    """`async with uow:` opens a transaction with `app.tenant_id` set for RLS; leaving without
    `commit()` rolls back. Database failures that a retry can fix surface as `Unavailable`."""

    def __init__(self, engine: AsyncEngine, tenant_id: str) -> None:
        self._engine = engine
        self.tenant_id = tenant_id
        self._conn: AsyncConnection | None = None

    async def __aenter__(self) -> Self:
        try:
            self._conn = await self._engine.connect()
            await self._conn.begin()
            await self._conn.execute(SET_TENANT, {"tenant": self.tenant_id})
        except Exception as exc:
            await self._close()
            if is_transient(exc):
                raise Unavailable("database", describe(exc)) from exc
            raise
        return self

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
        try:
            await self.conn.commit()
        except Exception as exc:
            if is_transient(exc):
                raise Unavailable("database", describe(exc)) from exc
            raise

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[object]:
        """Work that a domain error may undo while the transaction goes on (to record the rejection)."""
        async with self.conn.begin_nested() as nested:
            yield nested

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
                ).where(
                    tables.command_log.c.tenant_id == self.tenant_id,
                    tables.command_log.c.command_id == command_id,
                )
            )
        ).one_or_none()
        return None if row is None else StoredOutcome(row[0], row[1], row[2], row[3])

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
        await self.conn.execute(
            insert(tables.command_log).values(
                tenant_id=self.tenant_id,
                command_id=command_id,
                command_type=command_type,
                request_hash=request_hash,
                status=status,
                outcome=outcome,
                correlation_id=correlation_id,
            )
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
        await aggregates.save_versions(self.conn, self.tenant_id, changed, versions)

    async def append_history(self, versions: list[ResourceVersion], *, command_id: uuid.UUID) -> None:
        """Every new version of the command, in one statement."""
        await self.conn.execute(
            insert(tables.resource_history),
            [
                {
                    "tenant_id": self.tenant_id,
                    "resource_type": v.resource_type,
                    "resource_id": v.resource_id,
                    "version": v.version,
                    "last_updated": v.last_updated,
                    "command_id": command_id,
                    "resource": v.resource,
                }
                for v in versions
            ],
        )

    async def add_provenance(
        self, provenance: dict[str, Any], *, recorded: datetime, patient_id: str | None, targets: list[str]
    ) -> None:
        await self.conn.execute(
            insert(tables.provenance).values(
                tenant_id=self.tenant_id,
                id=provenance["id"],
                recorded=recorded,
                patient_id=patient_id,
                targets=targets,
                resource=provenance,
            )
        )

    # --- outbox ---

    async def add_to_outbox(self, messages: list[OutboxMessage]) -> None:
        await insert_outbox(self.conn, self.tenant_id, messages)


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
