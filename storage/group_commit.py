"""Group commit: the commits of commands that read nothing first (a create, a refusal recorded as an
outcome) are written together, one transaction for the group and a savepoint for each command in it, so
a command that fails rolls back its own rows only and the others commit. Commands that read and lock rows
commit in their own transaction (`storage.transaction`), as they must.

Why: on this path the cost is round trips (a socket write on each side, and a WAL flush per COMMIT).
Alone, a create is four: BEGIN with its tenant, its write, COMMIT, the commit's position. In a group it
is two of its own (its savepoint with its tenant, its write) and a share of the group's two (COMMIT and
the position). Nothing waits to fill a group: a commit that finds no group being written starts one at
once, so a command on its own costs what it did; those that arrive while a group is written go together
in the next. Every command hears its answer once the group's COMMIT is known, never before (a twin that
found its command id taken reads the outcome only once it is committed)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from domain.errors import Unavailable
from handlers.ports import AlreadyRecorded, CommitRecord
from storage.borrowed_connection import BorrowedConnection, set_tenant
from storage.errors import describe, is_transient
from storage.wal_position import CURRENT_POSITION
from storage.write_batch import commit_statement

COMMIT_POSITION = f"SELECT {CURRENT_POSITION}"


@dataclass(slots=True)
class _Waiting:
    tenant_id: str
    record: CommitRecord
    answer: asyncio.Future[str | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    def resolve(self, position: str | None, failure: BaseException | None) -> None:
        if self.answer.done():  # its command was cancelled meanwhile: no one is listening
            return
        if failure is None:
            self.answer.set_result(position)
        else:
            self.answer.set_exception(failure)


class GroupCommit:
    """`await group.commit(tenant_id, record)` writes the record in the next group and answers as
    `Transaction.commit` does: the commit's position, or `AlreadyRecorded`, a lost update's RuntimeError,
    `Unavailable`, or the statement's own error — of this record alone."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        writers: int = 4,
        max_group: int = 64,
        on_group: Callable[[int], None] = lambda size: None,
    ) -> None:
        self._engine = engine
        self._writers_allowed = writers
        self._max_group = max_group
        self._on_group = on_group  # told each group's size as it is written (a metric)
        self._waiting: deque[_Waiting] = deque()
        self._writers: set[asyncio.Task[None]] = set()

    async def commit(self, tenant_id: str, record: CommitRecord) -> str | None:
        set_tenant(tenant_id)  # refuse a bad tenant id here, not in the middle of someone else's group
        waiting = _Waiting(tenant_id, record)
        self._waiting.append(waiting)
        if len(self._writers) < self._writers_allowed:
            self._start_writer()
        # A command cancelled while its record waits is left out of the group; once the group is being
        # written its record goes in (in doubt, as a command cancelled during COMMIT is): its redelivery
        # is answered from the command log.
        return await waiting.answer

    def _start_writer(self) -> None:
        self._writers.add(asyncio.get_running_loop().create_task(self._write_groups()))

    async def _write_groups(self) -> None:
        """Group after group while records wait. It leaves the set of writers in the same step that
        found nothing waiting, so a commit arriving next always finds room to start one."""
        try:
            while group := self._next_group():
                await self._write(group)
        finally:
            writer = asyncio.current_task()
            if writer is not None:
                self._writers.discard(writer)

    def _next_group(self) -> list[_Waiting]:
        group: list[_Waiting] = []
        while self._waiting and len(group) < self._max_group:
            waiting = self._waiting.popleft()
            if not waiting.answer.done():
                group.append(waiting)
        return group

    async def _write(self, group: list[_Waiting]) -> None:
        self._on_group(len(group))
        failures: list[BaseException | None] = []
        connection: BorrowedConnection | None = None
        try:
            connection = await BorrowedConnection.borrow(self._engine)
            db = connection.db
            step = "BEGIN"
            for waiting in group:
                await db.execute(f"{step}; SAVEPOINT one; {set_tenant(waiting.tenant_id)}")
                failure = await _write_one(db, waiting)
                failures.append(failure)
                step = "RELEASE SAVEPOINT one" if failure is None else "ROLLBACK TO SAVEPOINT one"
            await db.execute(f"{step}; COMMIT")
        except BaseException as exc:
            # The connection failed under the group (or this task was cancelled): nothing of it committed,
            # or, if COMMIT itself was cut off, it is in doubt; every command retries and the log answers.
            if connection is not None:
                await connection.give_back(exc)
            shared = _as_retryable(exc)
            for waiting in group:
                waiting.resolve(None, shared)
            if not isinstance(exc, Exception):
                raise
            return
        position: str | None = None
        position_failure: BaseException | None = None
        try:
            position = await db.fetchval(COMMIT_POSITION)
        except Exception as exc:
            # Committed all the same; as after any outage the commands retry and the log answers them.
            position_failure = _as_retryable(exc)
        finally:
            await connection.give_back(position_failure)
        for waiting, failure in zip(group, failures, strict=True):
            waiting.resolve(position, failure or position_failure)


async def _write_one(db: asyncpg.Connection, waiting: _Waiting) -> BaseException | None:
    """One command's write inside its savepoint: None when it holds, else why not (its rows are then
    rolled back to the savepoint). Should the error have broken the connection, the group's next
    statement fails and ends the group."""
    record = waiting.record
    try:
        sql, args = commit_statement(waiting.tenant_id, record)
        written, recorded = await db.fetchrow(sql, *args)
    except asyncpg.PostgresError as exc:
        return _as_retryable(exc)
    if not recorded:
        return AlreadyRecorded(str(record.outcome.command_id))
    if written != len(record.versions):
        return RuntimeError(
            f"{len(record.versions) - int(written or 0)} resource(s) were not at the version before "
            "theirs: a lost update was refused"
        )
    return None


def _as_retryable(exc: BaseException) -> BaseException:
    if isinstance(exc, Exception) and is_transient(exc):
        unavailable = Unavailable("database", describe(exc))
        unavailable.__cause__ = exc
        return unavailable
    if not isinstance(exc, Exception):
        return Unavailable("database", "the group commit was stopped")
    return exc
