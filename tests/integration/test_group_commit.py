"""Group commit on the real Postgres: commands that read nothing commit together, one transaction for the
group, and each command's outcome stays its own — a duplicate, a lost update or a failing statement rolls
back that command's rows only; a waiter cancelled before its group is written is left out; a connection
lost under a group fails every command of it and commits none. The records are what the real use cases
commit (run over the in-memory port), written by the real `GroupCommit`."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from domain.errors import Unavailable
from handlers.ports import AlreadyRecorded, CommitRecord
from storage.database import create_engine
from storage.group_commit import GroupCommit
from tests.conftest import DatabaseUrls
from tests.integration.helpers import count_rows
from tests.outbox_ledger import OUTBOX_LEDGER
from tests.unit.use_cases.harness import Clinic


@pytest.fixture
async def runtime_engine(database: DatabaseUrls) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database.runtime, pool_size=4, application_name="group-commit-test")
    yield engine
    await engine.dispose()


async def created_plans(count: int) -> list[CommitRecord]:
    """What `careplan.create` commits, `count` times (ids drawn at random: unique across test runs)."""
    clinic = Clinic(_ids=itertools.count(random.randrange(2**100)))
    return [
        (await clinic.run("careplan.create", {"patient_id": "p1", "title": f"Plan {n}"})).record
        for n in range(count)
    ]


def with_command_id(record: CommitRecord, command_id: uuid.UUID) -> CommitRecord:
    return dataclasses.replace(record, outcome=dataclasses.replace(record.outcome, command_id=command_id))


def plan_id(record: CommitRecord) -> str:
    return record.versions[0].entity.id


async def plan_ids(admin: AsyncEngine, tenant: str) -> set[str]:
    async with admin.connect() as conn:
        rows = await conn.execute(text("SELECT id FROM care_plans WHERE tenant_id = :t"), {"t": tenant})
        return {row[0] for row in rows}


async def test_creates_of_several_tenants_commit_as_one_group_each_under_its_own_tenant(
    runtime_engine: AsyncEngine, admin_engine: AsyncEngine
) -> None:
    tenants = [f"t{uuid.uuid4().hex[:12]}" for _ in range(3)]
    records = await created_plans(9)
    sizes: list[int] = []
    group = GroupCommit(runtime_engine, writers=1, on_group=sizes.append)

    positions = await asyncio.gather(*(group.commit(tenants[i % 3], r) for i, r in enumerate(records)))

    assert sizes == [9]
    assert len(set(positions)) == 1 and positions[0]  # one COMMIT: one position for all
    for i, tenant in enumerate(tenants):
        assert await plan_ids(admin_engine, tenant) == {plan_id(r) for r in records[i::3]}
        assert await count_rows(admin_engine, "resource_history", tenant) == 3
        assert await count_rows(admin_engine, "provenance", tenant) == 3
        assert await count_rows(admin_engine, OUTBOX_LEDGER, tenant) == sum(
            len(r.outbox) for r in records[i::3]
        )


async def test_a_failing_command_rolls_back_its_own_rows_and_the_others_in_its_group_commit(
    runtime_engine: AsyncEngine, admin_engine: AsyncEngine, tenant: str
) -> None:
    first, good, other, redelivered = await created_plans(4)
    group = GroupCommit(runtime_engine, writers=1)
    await group.commit(tenant, first)  # committed before the group below

    # The first command delivered again: its use case ran afresh (new ids), and the log has its id.
    again = with_command_id(redelivered, first.outcome.command_id)
    # The same plan version again, as another command wrote it: refused by the version guard or by the
    # history's key, whichever Postgres meets first.
    lost_update = with_command_id(good, uuid.uuid4())
    reused_audit = dataclasses.replace(  # its Provenance's id is taken: a unique violation in Postgres
        other,
        versions=(),
        provenance=first.provenance,
        outcome=dataclasses.replace(other.outcome, command_id=uuid.uuid4()),
    )
    answers = await asyncio.gather(
        group.commit(tenant, again),
        group.commit(tenant, good),
        group.commit(tenant, lost_update),
        group.commit(tenant, reused_audit),
        group.commit(tenant, other),
        return_exceptions=True,
    )

    assert isinstance(answers[0], AlreadyRecorded)
    assert isinstance(answers[1], str)
    assert isinstance(answers[2], RuntimeError | asyncpg.UniqueViolationError)
    assert isinstance(answers[3], asyncpg.UniqueViolationError) and "provenance_pkey" in str(answers[3])
    assert isinstance(answers[4], str) and answers[4] == answers[1]
    assert await plan_ids(admin_engine, tenant) == {plan_id(first), plan_id(good), plan_id(other)}
    assert plan_id(redelivered) not in await plan_ids(admin_engine, tenant)
    async with admin_engine.connect() as conn:
        logged = await conn.execute(
            text("SELECT command_id FROM command_log WHERE tenant_id = :t"), {"t": tenant}
        )
        assert {row[0] for row in logged} == {r.outcome.command_id for r in (first, good, other)}
    assert await count_rows(admin_engine, "resource_history", tenant) == 3
    assert await count_rows(admin_engine, OUTBOX_LEDGER, tenant) == sum(
        len(r.outbox) for r in (first, good, other)
    )


@pytest.fixture
async def held_command_id(
    admin_engine: AsyncEngine, tenant: str
) -> AsyncIterator[tuple[uuid.UUID, asyncio.Event]]:
    """A command id whose command-log row another transaction has inserted and not yet committed: a
    group writing that id waits on it until the event is set (then the other transaction rolls back)."""
    command_id = uuid.uuid4()
    release = asyncio.Event()
    ready = asyncio.Event()

    async def hold() -> None:
        async with admin_engine.connect() as conn:
            await conn.execute(
                text(
                    "INSERT INTO command_log (tenant_id, command_id, command_type, request_hash, status, "
                    "outcome) VALUES (:t, :c, 'careplan.create', 'x', 200, '{}')"
                ),
                {"t": tenant, "c": command_id},
            )
            ready.set()
            await release.wait()
            await conn.rollback()

    holder = asyncio.create_task(hold())
    await ready.wait()
    yield command_id, release
    release.set()
    await holder


async def waiting_on_lock(admin: AsyncEngine) -> int:
    """The backend pid of the test's group writer once it waits on the held row."""
    for _ in range(200):
        async with admin.connect() as conn:
            pid = await conn.scalar(
                text(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = 'group-commit-test' "
                    "AND wait_event_type = 'Lock'"
                )
            )
        if pid is not None:
            return int(pid)
        await asyncio.sleep(0.02)
    raise AssertionError("the group never waited on the held row")


async def test_a_command_cancelled_while_it_waits_for_a_group_is_not_written(
    runtime_engine: AsyncEngine,
    admin_engine: AsyncEngine,
    tenant: str,
    held_command_id: tuple[uuid.UUID, asyncio.Event],
) -> None:
    command_id, release = held_command_id
    blocked, cancelled = await created_plans(2)
    blocked = dataclasses.replace(
        blocked, outcome=dataclasses.replace(blocked.outcome, command_id=command_id)
    )
    group = GroupCommit(runtime_engine, writers=1)

    first = asyncio.create_task(group.commit(tenant, blocked))
    await waiting_on_lock(admin_engine)
    second = asyncio.create_task(group.commit(tenant, cancelled))
    await asyncio.sleep(0.05)
    second.cancel()
    release.set()

    assert isinstance(await first, str)
    with pytest.raises(asyncio.CancelledError):
        await second
    await asyncio.sleep(0.1)  # a group that took it would have committed by now
    assert await plan_ids(admin_engine, tenant) == {plan_id(blocked)}


async def test_a_connection_lost_under_a_group_fails_every_command_of_it_and_commits_none(
    runtime_engine: AsyncEngine,
    admin_engine: AsyncEngine,
    tenant: str,
    held_command_id: tuple[uuid.UUID, asyncio.Event],
) -> None:
    command_id, _ = held_command_id
    before, blocked, after = await created_plans(3)
    blocked = dataclasses.replace(
        blocked, outcome=dataclasses.replace(blocked.outcome, command_id=command_id)
    )
    group = GroupCommit(runtime_engine, writers=1)

    commits = asyncio.gather(
        group.commit(tenant, before),
        group.commit(tenant, blocked),
        group.commit(tenant, after),
        return_exceptions=True,
    )
    pid = await waiting_on_lock(admin_engine)
    async with admin_engine.connect() as conn:
        assert await conn.scalar(text("SELECT pg_terminate_backend(:p)"), {"p": pid})

    answers = await commits
    assert [type(a) for a in answers] == [Unavailable] * 3
    assert await count_rows(admin_engine, "care_plans", tenant) == 0
    assert await count_rows(admin_engine, OUTBOX_LEDGER, tenant) == 0
    # The next commit takes a fresh connection and goes through.
    (fresh,) = await created_plans(1)
    assert isinstance(await group.commit(tenant, fresh), str)
    assert await plan_ids(admin_engine, tenant) == {plan_id(fresh)}


async def test_twins_in_one_group_have_one_effect_and_the_second_hears_only_once_the_group_committed(
    runtime_engine: AsyncEngine,
    admin_engine: AsyncEngine,
    tenant: str,
    held_command_id: tuple[uuid.UUID, asyncio.Event],
) -> None:
    command_id, release = held_command_id
    blocked, record, other_run = await created_plans(3)
    group = GroupCommit(runtime_engine, writers=1)
    heard: list[int] = []

    async def twin() -> None:  # the same command, its use case run by another worker at the same time
        with pytest.raises(AlreadyRecorded):
            await group.commit(tenant, with_command_id(other_run, record.outcome.command_id))
        # When it hears, the first's outcome is committed: the pipeline reads it from the log next.
        heard.append(await count_rows(admin_engine, "command_log", tenant))

    # The group: the first, its twin, then one that waits on a held row, keeping the group open.
    commits = asyncio.gather(
        group.commit(tenant, record), twin(), group.commit(tenant, with_command_id(blocked, command_id))
    )
    await waiting_on_lock(admin_engine)
    await asyncio.sleep(0.1)
    assert heard == []  # its own answer is known, but the group has not committed
    release.set()
    await commits
    assert heard == [2]
    assert await plan_ids(admin_engine, tenant) == {plan_id(record), plan_id(blocked)}
