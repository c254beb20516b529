"""A database outage is retried with back-off; one that outlasts the deliveries is dead-lettered, and the
caller is told INTERNAL. Real Postgres, real JetStream: the runtime role is really locked out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest
from nats.aio.client import Client as NatsClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.client import envelope, send_command
from service.runner import RunningService
from tests.conftest import RUNTIME_ROLE, TokenFactory
from tests.integration.helpers import CARE_PLAN, count_rows, last_event


@contextlib.asynccontextmanager
async def runtime_role_locked_out(admin: AsyncEngine) -> AsyncIterator[None]:
    """NOLOGIN plus terminating its sessions: every query of the service fails until we let it back in."""
    role = RUNTIME_ROLE[0]
    async with admin.begin() as conn:
        await conn.execute(text(f'ALTER ROLE "{role}" NOLOGIN'))
        await conn.execute(
            text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :r"), {"r": role}
        )
    try:
        yield
    finally:
        async with admin.begin() as conn:
            await conn.execute(text(f'ALTER ROLE "{role}" LOGIN'))


async def wait_for_log(caplog: pytest.LogCaptureFixture, fragment: str, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not any(fragment in r.getMessage() for r in caplog.records):  # noqa: ASYNC110 (polling a log)
            await asyncio.sleep(0.05)


async def test_command_during_a_short_outage_is_retried_and_succeeds(
    service: RunningService,
    nc: NatsClient,
    tenant: str,
    token_for: TokenFactory,
    admin_engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="handlers.nats_consumer")
    body = envelope(CARE_PLAN)
    async with runtime_role_locked_out(admin_engine):
        pending = asyncio.create_task(
            send_command(nc, "careplan.create", body, token=token_for(tenant), timeout=20)
        )
        await wait_for_log(caplog, "will retry")
    reply = await pending
    assert reply["ok"] is True, reply
    assert await count_rows(admin_engine, "care_plans", tenant) == 1


async def test_readiness_fails_while_the_database_is_away(
    service: RunningService, admin_engine: AsyncEngine
) -> None:
    async with aiohttp.ClientSession() as http:
        async with runtime_role_locked_out(admin_engine), http.get(f"{service.http_url}/readyz") as response:
            assert response.status == 503
            assert (await response.json())["checks"]["database"] is False
        async with http.get(f"{service.http_url}/readyz") as response:
            assert response.status == 200


async def test_command_outlasting_its_deliveries_is_dead_lettered_and_answered(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory, admin_engine: AsyncEngine
) -> None:
    body = envelope(CARE_PLAN)
    async with runtime_role_locked_out(admin_engine):
        reply = await send_command(nc, "careplan.create", body, token=token_for(tenant), timeout=30)
    assert reply["ok"] is False
    assert reply["status"] == 500
    assert reply["error"]["code"] == "INTERNAL"
    assert reply["command_id"] == body["command_id"]
    dead = await last_event(nc, "CAREPLAN_DLQ", "careplan.dlq.careplan.create")
    assert dead["command_id"] == body["command_id"]
    assert dead["_headers"]["Careplan-Deliveries"] == str(service.settings.max_deliver)
    assert "database unavailable" in dead["_headers"]["Careplan-Error"]
    assert dead["_headers"]["Careplan-Original-Subject"] == "careplan.cmd.careplan.create"
    assert await count_rows(admin_engine, "care_plans", tenant) == 0
    # The worker keeps going: the next command is served normally.
    after = await send_command(nc, "careplan.create", envelope(CARE_PLAN), token=token_for(tenant))
    assert after["ok"] is True
