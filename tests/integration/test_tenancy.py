"""Zero cross-tenant reads: row-level security holds even when the application forgets the tenant."""

from __future__ import annotations

import aiohttp
import pytest
from nats.aio.client import Client as NatsClient
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from service.client import envelope, send_command
from service.runner import RunningService
from storage.database import create_engine
from storage.migrate import RUNTIME_GRANTS
from storage.tables import TENANT_TABLES
from tests.conftest import DatabaseUrls, TokenFactory
from tests.integration.commands import Caller
from tests.integration.helpers import CARE_PLAN

# Tenant tables the runtime role has no SELECT on at all.
SYSTEM_ONLY_READS = tuple(t for t in TENANT_TABLES if "SELECT" not in RUNTIME_GRANTS.get(t, ""))


async def create_plan(nc: NatsClient, token: str, **data: object) -> str:
    reply = await send_command(nc, "careplan.create", envelope(CARE_PLAN | data), token=token)
    assert reply["ok"] is True, reply
    return str(reply["result"]["id"])


async def get_plan(service: RunningService, plan_id: str, token: str) -> tuple[int, dict[str, object]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{service.http_url}/fhir/CarePlan/{plan_id}", headers={"Authorization": f"Bearer {token}"}
        ) as r,
    ):
        return r.status, await r.json(content_type=None)


async def test_another_tenants_plan_is_not_found(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory
) -> None:
    plan_id = await create_plan(nc, token_for(tenant))
    status, body = await get_plan(service, plan_id, token_for(f"{tenant}b"))
    unknown_status, unknown_body = await get_plan(service, "no-such-plan", token_for(f"{tenant}b"))
    assert status == 404
    assert body["resourceType"] == "OperationOutcome"
    # Indistinguishable from an id that exists nowhere (apart from the id echoed back).
    assert unknown_status == 404
    assert body["issue"][0]["code"] == unknown_body["issue"][0]["code"] == "not-found"  # type: ignore[index]


async def test_patient_token_sees_own_active_plans_only(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory
) -> None:
    clinician = token_for(tenant)
    own_active = await create_plan(nc, clinician, patient_id="pat-1", status="active")
    own_draft = await create_plan(nc, clinician, patient_id="pat-1", status="draft")
    someone_elses = await create_plan(nc, clinician, patient_id="pat-2", status="active")
    patient = token_for(tenant, roles=["patient"], patient_id="pat-1")
    assert (await get_plan(service, own_active, patient))[0] == 200
    assert (await get_plan(service, own_draft, patient))[0] == 404
    assert (await get_plan(service, someone_elses, patient))[0] == 404


async def test_read_without_token_is_401_operation_outcome(service: RunningService, tenant: str) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{service.http_url}/fhir/CarePlan/x") as response:
        assert response.status == 401
        body = await response.json(content_type=None)
        assert body["resourceType"] == "OperationOutcome"
        assert body["issue"][0]["code"] == "login"


async def test_runtime_role_without_tenant_sees_no_rows_in_any_tenant_table(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory, database: DatabaseUrls
) -> None:
    # Given data in every tenant table it may read (plan, goal, task, team, program, rollout, history,
    # provenance, command log, search index)
    caller = Caller(nc, service.http_url, token_for(tenant))
    plan_id = await create_plan(nc, token_for(tenant))
    await caller.ok("goal.add", {"care_plan_id": plan_id, "description": {"text": "g"}})
    await caller.ok("activity.add", {"care_plan_id": plan_id, "description": "t"})
    await caller.ok("careteam.add_member", {"care_plan_id": plan_id, "member_id": "m", "role": {"text": "r"}})
    author = Caller(nc, service.http_url, token_for(tenant, roles=["program-author"]))
    program = {"name": "t2d", "title": "Type 2 diabetes"}  # its name: search_string
    for version in (1, 2):
        defined = await author.ok("program.define", program)
        await author.ok("program.change_status", {"program_id": defined["id"], "status": "active"})
        if version == 1:
            await caller.ok("careplan.enroll", {"patient_id": "p1", "program": "t2d"})
    await author.ok("program.rollout", {"program_id": defined["id"], "dry_run": False})  # rollouts, its plans
    runtime = create_engine(database.runtime, pool_size=1)
    admin = create_engine(database.admin, pool_size=1)
    try:
        for table in (t for t in TENANT_TABLES if t not in SYSTEM_ONLY_READS):
            async with admin.connect() as conn:
                present = await conn.scalar(
                    text(f"SELECT count(*) FROM {table} WHERE tenant_id = :t"), {"t": tenant}
                )
            assert present, table
            # When the runtime role reads without app.tenant_id set, and with another tenant set
            async with runtime.connect() as conn:
                unset = await conn.scalar(text(f"SELECT count(*) FROM {table}"))
            async with runtime.connect() as conn, conn.begin():
                await conn.execute(text("SELECT set_config('app.tenant_id', 'someone-else', true)"))
                other = await conn.scalar(text(f"SELECT count(*) FROM {table}"))
            # Then it sees nothing
            assert unset == 0, table
            assert other == 0, table
    finally:
        await runtime.dispose()
        await admin.dispose()


@pytest.mark.parametrize("table", SYSTEM_ONLY_READS)
async def test_runtime_role_cannot_read_the_system_roles_tables_at_all(
    service: RunningService, database: DatabaseUrls, table: str
) -> None:
    """The runtime role only appends to the outbox and never sees the scheduler's markers: reading them
    across tenants is the relay's and the scheduler's job."""
    runtime = create_engine(database.runtime, pool_size=1)
    try:
        async with runtime.connect() as conn:
            with pytest.raises(DBAPIError, match="permission denied"):
                await conn.execute(text(f"SELECT count(*) FROM {table}"))
    finally:
        await runtime.dispose()


async def test_runtime_role_cannot_write_rows_of_another_tenant(
    service: RunningService, database: DatabaseUrls
) -> None:
    runtime = create_engine(database.runtime, pool_size=1)
    try:
        async with runtime.connect() as conn, conn.begin():
            await conn.execute(text("SELECT set_config('app.tenant_id', 'tenant-a', true)"))
            with pytest.raises(DBAPIError, match="row-level security"):
                await conn.execute(
                    text(
                        "INSERT INTO care_plans "
                        "(tenant_id, id, version, patient_id, status, last_updated, resource)"
                        " VALUES ('tenant-b', 'x', 1, 'p', 'draft', now(), '{}')"
                    )
                )
    finally:
        await runtime.dispose()
