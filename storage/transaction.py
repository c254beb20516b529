"""The unit of work's port in Postgres: one tenant-bound transaction, the only way commands touch the
database. Reads lock what a command will change; everything it writes goes in one statement at commit.

Exactly once rests on the command log's primary key, inside that statement: two deliveries of one command
at the same time both run, the second's outcome insert waits for the first's commit and then skips, and the
second rolls back and answers from the log. No lock or lookup is spent per command on the rare twin.

The statements go straight to asyncpg on a connection of SQLAlchemy's pool: the command path is a handful
of fixed statements, and SQLAlchemy's execution layer cost more CPU per command than building them. The
transaction begins at the first read; a command that reads nothing (a create) commits in a group with
others (`storage.group_commit`). A command that reads is BEGIN with the tenant, its reads, the write,
COMMIT and the commit's WAL position."""

from __future__ import annotations

import uuid
from types import TracebackType
from typing import Any, Self

import asyncpg
import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from domain.care_plan import CarePlanAggregate
from domain.errors import Unavailable
from handlers.ports import AlreadyRecorded, CommitRecord, StoredOutcome
from storage import aggregates
from storage.borrowed_connection import BorrowedConnection, set_tenant
from storage.errors import describe, is_transient
from storage.group_commit import COMMIT_POSITION, GroupCommit
from storage.wal_position import CURRENT_POSITION
from storage.write_batch import commit_statement

_OUTCOME = (
    "SELECT command_type, request_hash, status, outcome::text, "
    f"{CURRENT_POSITION} FROM command_log WHERE tenant_id = $1 AND command_id = $2"
)
_PLAN_PATIENT = "SELECT patient_id FROM care_plans WHERE tenant_id = $1 AND id = $2"


class SqlTransaction:
    """`async with transaction:` is one transaction with `app.tenant_id` set for RLS, begun by the first
    read; leaving without `commit()` rolls back. Database failures that a retry can fix surface as
    `Unavailable`. Without `group`, a command that reads nothing commits on its own as well."""

    def __init__(self, engine: AsyncEngine, tenant_id: str, group: GroupCommit | None = None) -> None:
        self._begin = f"BEGIN; {set_tenant(tenant_id)}"  # one round trip; refuses a bad tenant id
        self._engine = engine
        self._group = group
        self.tenant_id = tenant_id
        self._connection: BorrowedConnection | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close(exc)
        if isinstance(exc, Exception) and not isinstance(exc, Unavailable) and is_transient(exc):
            raise Unavailable("database", describe(exc)) from exc

    async def _db(self) -> asyncpg.Connection:
        """The transaction's connection, the transaction begun on first use."""
        if self._connection is not None:
            return self._connection.db
        try:
            self._connection = await BorrowedConnection.borrow(self._engine)
            await self._connection.db.execute(self._begin)
        except BaseException as exc:
            await self._close(exc)
            if isinstance(exc, Exception) and is_transient(exc):
                raise Unavailable("database", describe(exc)) from exc
            raise
        return self._connection.db

    # --- reads ---

    async def find_outcome(self, command_id: uuid.UUID) -> StoredOutcome | None:
        row = await (await self._db()).fetchrow(_OUTCOME, self.tenant_id, command_id)
        if row is None:
            return None
        command_type, request_hash, status, outcome, position = row
        return StoredOutcome(command_type, request_hash, status, _json(outcome), position)

    async def load_plan(self, plan_id: str) -> CarePlanAggregate | None:
        return await aggregates.load_plan(await self._db(), self.tenant_id, plan_id)

    async def load_plan_of(self, resource_type: str, resource_id: str) -> CarePlanAggregate | None:
        return await aggregates.load_plan_of(await self._db(), self.tenant_id, resource_type, resource_id)

    async def plan_id_of(self, resource_type: str, resource_id: str) -> str | None:
        return await aggregates.plan_id_of(await self._db(), self.tenant_id, resource_type, resource_id)

    async def plan_patient(self, plan_id: str) -> str | None:
        patient_id: str | None = await (await self._db()).fetchval(_PLAN_PATIENT, self.tenant_id, plan_id)
        return patient_id

    # --- the end ---

    async def commit(self, record: CommitRecord) -> str | None:
        """Write the record (one statement), commit, and learn the commit's WAL position.

        The position costs one round trip after COMMIT: no statement can return it any sooner, as the
        commit record is written by COMMIT. Should that round trip fail, the commit stands and the caller
        retries as after any outage: the command log answers, with a position of its own."""
        if self._connection is None and self._group is not None:
            return await self._group.commit(self.tenant_id, record)
        db = await self._db()
        try:
            sql, args = commit_statement(self.tenant_id, record)
            written, recorded = await db.fetchrow(sql, *args)
            if not recorded:
                # A twin delivery's outcome committed first: its insert made this one wait, then skip.
                raise AlreadyRecorded(str(record.outcome.command_id))
            if written != len(record.versions):
                raise RuntimeError(
                    f"{len(record.versions) - int(written or 0)} resource(s) were not at the version before "
                    "theirs: a lost update was refused"
                )
            await db.execute("COMMIT")
            position: str = await db.fetchval(COMMIT_POSITION)
            return position
        except AlreadyRecorded:
            raise
        except Exception as exc:
            if is_transient(exc):
                raise Unavailable("database", describe(exc)) from exc
            raise

    async def _close(self, failure: BaseException | None = None) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.give_back(failure)


def _json(text: str) -> dict[str, Any]:
    value: dict[str, Any] = orjson.loads(text)
    return value
