"""A use case that rejects after changing its aggregates (a future slip) must still leave nothing of its
changes, and its rejection must be the recorded outcome. Driven through the real pipeline and transaction
with a use case of the test's own."""

from __future__ import annotations

import uuid
from dataclasses import replace

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from domain.care_plan import CarePlanAggregate
from domain.errors import InvalidValue
from handlers.context import CommandContext
from handlers.pipeline import CommandProcessor, CommandRequest
from handlers.registry import standard_commands
from handlers.unit_of_work import UnitOfWork
from integrations.identity import JwksSource, JwtVerifier
from schemas.commands import CarePlanCreate
from service.dev_identity import DevKeys
from service.scheduler import utc_now
from storage.database import create_engine
from storage.transaction import SqlTransaction
from tests.conftest import DatabaseUrls
from tests.integration.helpers import CARE_PLAN, count_rows
from tests.outbox_ledger import OUTBOX_LEDGER


async def create_then_reject(data: CarePlanCreate, ctx: CommandContext, uow: UnitOfWork) -> None:
    """Makes a plan (for the unit of work to write), then rejects."""
    uow.add(
        CarePlanAggregate.create(
            plan_id=str(ctx.new_id()), patient_id=data.patient_id, title=data.title, now=ctx.now
        )
    )
    raise InvalidValue("data.title", "rejected after the changes")


async def test_a_rejection_after_changes_writes_none_of_them_and_is_recorded(
    database: DatabaseUrls, keys: DevKeys, admin_engine: AsyncEngine, tenant: str
) -> None:
    name = "test.create_then_reject"
    standard = standard_commands()
    commands = standard.with_command(
        replace(standard["careplan.create"], name=name, execute=create_then_reject)
    )
    engine = create_engine(database.runtime, pool_size=2)
    processor = CommandProcessor(
        commands=commands,
        verifier=JwtVerifier(JwksSource(keys.jwks_url), issuer=None, audience="care-plan-service"),
        transactions=lambda t: SqlTransaction(engine, t),
        clock=utc_now,
        new_id=uuid.uuid4,
    )
    command_id = str(uuid.uuid4())
    token = keys.mint(tenant_id=tenant, roles=["clinician"])
    try:
        reply = await processor.process(
            CommandRequest(
                name,
                orjson.dumps({"command_id": command_id, "data": CARE_PLAN}),
                f"Bearer {token}",
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
