"""The unit of work's port in Postgres: one tenant-bound transaction, the only way commands touch the
database. Reads lock what a command will change; everything it writes goes in one statement at commit.

Exactly once rests on the command log's primary key, inside that statement: two deliveries of one command
at the same time both run, the second's outcome insert waits for the first's commit and then skips, and the
second rolls back and answers from the log. No lock or lookup is spent per command on the rare twin."""

from __future__ import annotations

import uuid
from types import TracebackType
from typing import Any, Self

from sqlalchemy import literal_column, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from domain.care_plan import CarePlanAggregate
from domain.errors import Unavailable
from handlers.ports import AlreadyRecorded, CommitRecord, StoredOutcome
from storage import aggregates, tables
from storage.errors import describe, is_transient
from storage.wal_position import CURRENT_POSITION
from storage.write_batch import commit_statement

_COMMIT_POSITION = f"SELECT {CURRENT_POSITION}"
_SET_TENANT = text("SELECT set_config('app.tenant_id', :tenant, true)")


class SqlTransaction:
    """`async with transaction:` opens a transaction with `app.tenant_id` set for RLS; leaving without
    `commit()` rolls back. Database failures that a retry can fix surface as `Unavailable`."""

    def __init__(self, engine: AsyncEngine, tenant_id: str) -> None:
        self._engine = engine
        self.tenant_id = tenant_id
        self._conn: AsyncConnection | None = None
        self._tenant_set = False

    async def __aenter__(self) -> Self:
        try:
            self._conn = await self._engine.connect()
            await self._conn.begin()
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

    async def _in_tenant(self) -> AsyncConnection:
        conn = self._connection()
        if not self._tenant_set:
            await conn.execute(_SET_TENANT, {"tenant": self.tenant_id})
            self._tenant_set = True
        return conn

    def _connection(self) -> AsyncConnection:
        if self._conn is None:
            raise RuntimeError("transaction used outside `async with`")
        return self._conn

    # --- command log (inbox) ---

    async def find_outcome(self, command_id: uuid.UUID) -> StoredOutcome | None:
        conn = await self._in_tenant()
        log = tables.command_log.c
        row = (
            await conn.execute(
                select(
                    log.command_type,
                    log.request_hash,
                    log.status,
                    log.outcome,
                    literal_column(CURRENT_POSITION),
                ).where(log.tenant_id == self.tenant_id, log.command_id == command_id)
            )
        ).one_or_none()
        return None if row is None else StoredOutcome(*row)

    # --- resources ---

    async def load_plan(self, plan_id: str) -> CarePlanAggregate | None:
        return await aggregates.load_plan(await self._in_tenant(), self.tenant_id, plan_id)

    async def plan_id_of(self, resource_type: str, resource_id: str) -> str | None:
        return await aggregates.plan_id_of(
            await self._in_tenant(), self.tenant_id, resource_type, resource_id
        )

    async def plan_patient(self, plan_id: str) -> str | None:
        plans = tables.care_plans.c
        patient_id: str | None = await (await self._in_tenant()).scalar(
            select(plans.patient_id).where(plans.tenant_id == self.tenant_id, plans.id == plan_id)
        )
        return patient_id

    # --- the end ---

    async def commit(self, record: CommitRecord) -> str | None:
        """Write the record (one statement), commit, and learn the commit's WAL position.

        The position costs one round trip after COMMIT, on the same connection and on the asyncpg driver
        itself (SQLAlchemy would wrap it in BEGIN and ROLLBACK): no statement can return it any sooner, as
        the commit record is written by COMMIT. Should that round trip fail, the commit stands and the
        caller retries as after any outage: the command log answers, with a position of its own."""
        conn = await self._in_tenant()
        try:
            statement, params = commit_statement(self.tenant_id, record)
            written, recorded = (await conn.execute(statement, params)).one()
            if not recorded:
                # A twin delivery's outcome committed first: its insert made this one wait, then skip.
                raise AlreadyRecorded(str(record.outcome.command_id))
            if written != len(record.versions):
                raise RuntimeError(
                    f"{len(record.versions) - int(written or 0)} resource(s) were not at the version before "
                    "theirs: a lost update was refused"
                )
            await conn.commit()
            return await self._position_after_commit(conn)
        except AlreadyRecorded:
            raise
        except Exception as exc:
            if is_transient(exc):
                raise Unavailable("database", describe(exc)) from exc
            raise

    async def _position_after_commit(self, conn: AsyncConnection) -> str:
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection
        try:
            position: str = await driver.fetchval(_COMMIT_POSITION)
        except BaseException:
            # SQLAlchemy did not see this failure: do not hand a broken connection back to the pool.
            await conn.invalidate()
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
