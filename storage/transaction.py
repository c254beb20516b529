"""The unit of work's port in Postgres: one tenant-bound transaction, the only way commands touch the
database. Reads lock what a command will change; everything it writes goes in one statement at commit.

Exactly once rests on the command log's primary key, inside that statement: two deliveries of one command
at the same time both run, the second's outcome insert waits for the first's commit and then skips, and the
second rolls back and answers from the log. No lock or lookup is spent per command on the rare twin.

The statements go straight to asyncpg on a connection of SQLAlchemy's pool: the command path is a handful
of fixed statements, and SQLAlchemy's execution layer cost more CPU per command than building them. A
create is four round trips: BEGIN with the tenant, the write, COMMIT, the commit's WAL position."""

from __future__ import annotations

import uuid
from types import TracebackType
from typing import Any, Self

import asyncpg
import orjson
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from domain.access import TENANT_ID
from domain.care_plan import CarePlanAggregate
from domain.errors import Unavailable
from domain.programs import ProgramAggregate
from handlers.ports import AlreadyRecorded, CommitRecord, PlansAlike, RolloutCandidate, StoredOutcome
from storage import aggregates, rollouts
from storage.errors import describe, is_transient
from storage.wal_position import CURRENT_POSITION
from storage.write_batch import commit_statement

_COMMIT_POSITION = f"SELECT {CURRENT_POSITION}"
_OUTCOME = (
    "SELECT command_type, request_hash, status, outcome::text, "
    f"{CURRENT_POSITION} FROM command_log WHERE tenant_id = $1 AND command_id = $2"
)
_PLAN_PATIENT = "SELECT patient_id FROM care_plans WHERE tenant_id = $1 AND id = $2"


class SqlTransaction:
    """`async with transaction:` opens a transaction with `app.tenant_id` set for RLS; leaving without
    `commit()` rolls back. Database failures that a retry can fix surface as `Unavailable`."""

    def __init__(self, engine: AsyncEngine, tenant_id: str) -> None:
        # Inlined into BEGIN's query below (a simple query takes no parameters): held to its pattern here.
        if not TENANT_ID.fullmatch(tenant_id):
            raise ValueError(f"not a tenant id: {tenant_id!r}")
        self._engine = engine
        self.tenant_id = tenant_id
        self._pooled: AsyncConnection | None = None
        self._db: asyncpg.Connection | None = None

    async def __aenter__(self) -> Self:
        try:
            self._pooled, self._db = await _live_connection(self._engine)
            # One round trip: the transaction and its tenant, transaction-local (set_config's `true`).
            await self.db.execute(f"BEGIN; SELECT set_config('app.tenant_id', '{self.tenant_id}', true)")
        except BaseException as exc:
            await self._close(exc)
            if isinstance(exc, Exception) and is_transient(exc):
                raise Unavailable("database", describe(exc)) from exc
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close(exc)
        if isinstance(exc, Exception) and not isinstance(exc, Unavailable) and is_transient(exc):
            raise Unavailable("database", describe(exc)) from exc

    @property
    def db(self) -> asyncpg.Connection:
        if self._db is None:
            raise RuntimeError("transaction used outside `async with`")
        return self._db

    # --- reads ---

    async def find_outcome(self, command_id: uuid.UUID) -> StoredOutcome | None:
        row = await self.db.fetchrow(_OUTCOME, self.tenant_id, command_id)
        if row is None:
            return None
        command_type, request_hash, status, outcome, position = row
        return StoredOutcome(command_type, request_hash, status, _json(outcome), position)

    async def load_plan(self, plan_id: str) -> CarePlanAggregate | None:
        return await aggregates.load_plan(self.db, self.tenant_id, plan_id)

    async def load_plan_of(self, resource_type: str, resource_id: str) -> CarePlanAggregate | None:
        return await aggregates.load_plan_of(self.db, self.tenant_id, resource_type, resource_id)

    async def plan_id_of(self, resource_type: str, resource_id: str) -> str | None:
        return await aggregates.plan_id_of(self.db, self.tenant_id, resource_type, resource_id)

    async def plan_patient(self, plan_id: str) -> str | None:
        patient_id: str | None = await self.db.fetchval(_PLAN_PATIENT, self.tenant_id, plan_id)
        return patient_id

    async def load_program(self, program_id: str) -> ProgramAggregate | None:
        return await aggregates.load_program(self.db, self.tenant_id, program_id)

    async def find_program(self, name: str, program_version: str | None) -> ProgramAggregate | None:
        return await aggregates.find_program(self.db, self.tenant_id, name, program_version)

    async def latest_program_version(self, name: str) -> int:
        return await aggregates.latest_program_version(self.db, self.tenant_id, name)

    # --- rollouts (CONTRACT §10) ---

    async def plans_following(self, url: str, plan_ids: list[str] | None) -> list[RolloutCandidate]:
        return await rollouts.plans_following(self.db, self.tenant_id, url, plan_ids)

    async def keyed_items(self, plan_ids: list[str]) -> list[PlansAlike]:
        return await rollouts.keyed_items(self.db, self.tenant_id, plan_ids)

    async def claim_rollout_plan(self, rollout_id: uuid.UUID) -> str | None:
        return await rollouts.claim_plan(self.db, self.tenant_id, rollout_id)

    # --- the end ---

    async def commit(self, record: CommitRecord) -> str | None:
        """Write the record (one statement), commit, and learn the commit's WAL position.

        The position costs one round trip after COMMIT: no statement can return it any sooner, as the
        commit record is written by COMMIT. Should that round trip fail, the commit stands and the caller
        retries as after any outage: the command log answers, with a position of its own."""
        try:
            sql, args = commit_statement(self.tenant_id, record)
            written, recorded = await self.db.fetchrow(sql, *args)
            if not recorded:
                # A twin delivery's outcome committed first: its insert made this one wait, then skip.
                raise AlreadyRecorded(str(record.outcome.command_id))
            if written != len(record.versions):
                raise RuntimeError(
                    f"{len(record.versions) - int(written or 0)} resource(s) were not at the version before "
                    "theirs: a lost update was refused"
                )
            await self.db.execute("COMMIT")
            position: str = await self.db.fetchval(_COMMIT_POSITION)
            return position
        except AlreadyRecorded:
            raise
        except Exception as exc:
            if is_transient(exc):
                raise Unavailable("database", describe(exc)) from exc
            raise

    async def _close(self, failure: BaseException | None = None) -> None:
        """Back to the pool with no transaction open. A connection in doubt — closed, broken by the
        failure, or unable to roll back — is closed instead (SQLAlchemy does not see these statements,
        so it cannot notice a dead connection itself); the next command takes a fresh one."""
        pooled, db = self._pooled, self._db
        self._pooled = self._db = None
        if pooled is None:
            return
        try:
            if db is None or db.is_closed() or _breaks_connection(failure):
                await pooled.invalidate()
            elif db.is_in_transaction():
                await db.execute("ROLLBACK")
        except Exception:
            await pooled.invalidate()  # the failure that brought us here is the one to report
        except BaseException:
            await pooled.invalidate()
            raise
        finally:
            await pooled.close()


# A pool holds at most this many connections; after a database restart every one of them may be dead.
_MAX_DEAD_CHECKOUTS = 256


async def _live_connection(engine: AsyncEngine) -> tuple[AsyncConnection, asyncpg.Connection]:
    """A pooled connection that asyncpg does not already know to be closed. The server closes idle
    connections on a restart or when it locks a role out, and SQLAlchemy, which does not run these
    statements, would hand them out one by one: each would fail a command. They are dropped here."""
    for _ in range(_MAX_DEAD_CHECKOUTS):
        pooled = await engine.connect()
        raw = await pooled.get_raw_connection()
        db: asyncpg.Connection = raw.driver_connection
        if not db.is_closed():
            return pooled, db
        await pooled.invalidate()
        await pooled.close()
    raise Unavailable("database", "every pooled connection was closed")


def _breaks_connection(failure: BaseException | None) -> bool:
    if isinstance(failure, Unavailable) and failure.__cause__ is not None:
        failure = failure.__cause__
    return isinstance(
        failure, (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, ConnectionError, OSError)
    ) or (failure is not None and not isinstance(failure, Exception))  # cancelled mid-statement


def _json(text: str) -> dict[str, Any]:
    value: dict[str, Any] = orjson.loads(text)
    return value
