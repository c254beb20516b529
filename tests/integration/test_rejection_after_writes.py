"""Use cases decide before they write; one that rejects after writing (a future slip) must still leave
nothing of its writes, and its rejection must be the recorded outcome. Driven through the real pipeline
and unit of work with a use case of the test's own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace

import orjson
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from domain.errors import InvalidValue
from handlers.care_plans import create_care_plan
from handlers.context import CommandContext, CommandResult
from handlers.pipeline import CommandProcessor, IncomingCommand
from handlers.ports import UnitOfWork
from handlers.registry import COMMANDS
from integrations.identity import JwksSource, JwtVerifier
from schemas.commands import CarePlanCreate
from service.dev_identity import DevKeys
from service.scheduler import utc_now
from storage.database import create_engine
from storage.unit_of_work import SqlUnitOfWork
from tests.conftest import DatabaseUrls
from tests.integration.helpers import CARE_PLAN, count_rows
from tests.outbox_ledger import OUTBOX_LEDGER


async def create_then_reject(data: CarePlanCreate, ctx: CommandContext, uow: UnitOfWork) -> CommandResult:
    await create_care_plan(data, ctx, uow)  # writes the plan, its history, Provenance and events
    raise InvalidValue("data.title", "rejected after the writes")


@pytest.fixture
def slipping_command() -> Iterator[str]:
    name = "test.create_then_reject"
    COMMANDS[name] = replace(COMMANDS["careplan.create"], name=name, execute=create_then_reject)
    yield name
    del COMMANDS[name]


async def test_a_rejection_after_writes_rolls_them_back_and_is_recorded(
    database: DatabaseUrls, keys: DevKeys, admin_engine: AsyncEngine, tenant: str, slipping_command: str
) -> None:
    engine = create_engine(database.runtime, pool_size=2)
    processor = CommandProcessor(
        verifier=JwtVerifier(JwksSource(keys.jwks_url), issuer=None, audience="care-plan-service"),
        unit_of_work=lambda t: SqlUnitOfWork(engine, t),
        clock=utc_now,
        new_id=uuid.uuid4,
    )
    command_id = str(uuid.uuid4())
    try:
        reply = await processor.process(
            IncomingCommand(
                "careplan.cmd." + slipping_command,
                orjson.dumps({"command_id": command_id, "data": CARE_PLAN}),
                {"Authorization": f"Bearer {keys.mint(tenant_id=tenant, roles=['clinician'])}"},
            )
        )
    finally:
        await engine.dispose()
    assert reply.ok is False
    assert reply.error is not None
    assert reply.error.code == "VALIDATION_ERROR"
    for table in ("care_plans", "resource_history", "provenance", OUTBOX_LEDGER, "search_token"):
        assert await count_rows(admin_engine, table, tenant) == 0, table
    assert await count_rows(admin_engine, "command_log", tenant) == 1
