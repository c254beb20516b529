"""Fault scenarios for the delivery promises (issue 5; more to come): each fails if its promise broke."""

from __future__ import annotations

import asyncio
import logging
import uuid

import orjson
import pytest
from nats.aio.client import Client as NatsClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.client import envelope, send_command
from service.runner import RunningService
from storage.database import create_engine
from storage.outbox_relay import OutboxRelay, RelaySettings
from tests.conftest import TokenFactory
from tests.integration.helpers import CARE_PLAN, but_for_position, count_messages, count_rows, last_event
from tests.outbox_ledger import OUTBOX_LEDGER


async def test_the_same_command_to_two_workers_at_once_has_one_effect_and_one_reply(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory, admin_engine: AsyncEngine
) -> None:
    token = token_for(tenant)
    body = envelope(CARE_PLAN)
    replies = await asyncio.gather(
        *(
            send_command(nc, "careplan.create", body, token=token, message_id=str(uuid.uuid4()))
            for _ in range(4)
        )
    )
    # One answer (the replays carry the WAL position at the time they were read, at or after the commit).
    assert all(but_for_position(r) == but_for_position(replies[0]) for r in replies)
    assert replies[0]["ok"] is True
    await last_event(nc, "CAREPLAN_EVENTS", f"careplan.evt.{tenant}.careplan.created")
    await asyncio.sleep(0.5)
    assert await count_rows(admin_engine, "care_plans", tenant) == 1
    assert await count_rows(admin_engine, "command_log", tenant) == 1
    # The command's events only: the scheduler's first pass may add the tenant's goal-achievement summary.
    assert await count_messages(nc, "CAREPLAN_EVENTS", f"careplan.evt.{tenant}.careplan.>") == 1


async def test_a_republish_after_a_lost_mark_is_dropped_by_the_stream(
    service: RunningService, nc: NatsClient, tenant: str, admin_engine: AsyncEngine
) -> None:
    """The relay crashed after JetStream's PubAck but before its delete of the row committed: the next relay
    publishes the row again, and the duplicate window (Nats-Msg-Id = event id) keeps one copy."""
    subject = f"careplan.evt.{tenant}.test.republished"
    event_id = uuid.uuid4()
    payload = orjson.dumps({"id": str(event_id)})
    await nc.jetstream().publish(subject, payload, headers={"Nats-Msg-Id": str(event_id)})
    async with admin_engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO outbox (tenant_id, event_id, subject, payload) VALUES (:t, :e, :s, :p)"),
            {"t": tenant, "e": event_id, "s": subject, "p": payload},
        )
    await _wait_published(admin_engine, event_id)
    assert await count_messages(nc, "CAREPLAN_EVENTS", subject) == 1


async def test_relay_recovers_when_its_listen_connection_is_killed(
    service: RunningService, nc: NatsClient, tenant: str, admin_engine: AsyncEngine
) -> None:
    async with admin_engine.begin() as conn:
        killed = await conn.scalar(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = 'careplan-relay'"
            )
        )
    assert killed >= 1
    subject = f"careplan.evt.{tenant}.test.after-kill"
    event_id = uuid.uuid4()
    async with admin_engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO outbox (tenant_id, event_id, subject, payload) VALUES (:t, :e, :s, :p)"),
            {"t": tenant, "e": event_id, "s": subject, "p": orjson.dumps({"id": str(event_id)})},
        )
    event = await last_event(nc, "CAREPLAN_EVENTS", subject, timeout=15)
    assert event["id"] == str(event_id)


async def _wait_published(engine: AsyncEngine, event_id: uuid.UUID, timeout: float = 10.0) -> None:
    """Until the row has left the outbox, and not for outbox_parked: the relay published it."""
    async with asyncio.timeout(timeout):
        while True:
            async with engine.connect() as conn:
                waiting = await conn.scalar(
                    text("SELECT count(*) FROM outbox WHERE event_id = :e"), {"e": event_id}
                )
            if not waiting:
                break
            await asyncio.sleep(0.05)
    async with engine.connect() as conn:
        parked = await conn.scalar(
            text("SELECT count(*) FROM outbox_parked WHERE event_id = :e"), {"e": event_id}
        )
    assert parked == 0


async def test_a_failure_after_the_writes_leaves_nothing_and_the_redelivery_applies_once(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory, admin_engine: AsyncEngine
) -> None:
    """A trigger fails the command's first transaction at its last write (the outbox insert, after the plan,
    history and provenance rows): the rollback must leave nothing, and the redelivery must apply it once."""
    fault = f"fail_once_{tenant}"
    async with admin_engine.begin() as conn:
        # A sequence, because it is not transactional: the marker survives the rollback it causes.
        await conn.execute(text(f"CREATE SEQUENCE {fault}"))
        await conn.execute(
            text(
                f"""
                CREATE FUNCTION {fault}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
                BEGIN
                    IF NEW.tenant_id = '{tenant}' AND nextval('{fault}') = 1 THEN
                        RAISE EXCEPTION 'injected fault' USING ERRCODE = '40001';
                    END IF;
                    RETURN NEW;
                END $$
                """
            )
        )
        await conn.execute(
            text(f"CREATE TRIGGER {fault} BEFORE INSERT ON outbox FOR EACH ROW EXECUTE FUNCTION {fault}()")
        )
    try:
        reply = await send_command(
            nc, "careplan.create", envelope(CARE_PLAN), token=token_for(tenant), timeout=20
        )
        async with admin_engine.connect() as conn:
            attempts = await conn.scalar(text(f"SELECT last_value FROM {fault}"))
    finally:
        async with admin_engine.begin() as conn:
            await conn.execute(text(f"DROP TRIGGER {fault} ON outbox"))
            await conn.execute(text(f"DROP FUNCTION {fault}()"))
            await conn.execute(text(f"DROP SEQUENCE {fault}"))
    assert attempts >= 2  # the first attempt reached the outbox and failed there; a later one went through
    assert reply["ok"] is True
    await last_event(nc, "CAREPLAN_EVENTS", f"careplan.evt.{tenant}.careplan.created")
    assert await count_rows(admin_engine, "care_plans", tenant) == 1
    assert await count_rows(admin_engine, "resource_history", tenant) == 1
    assert await count_rows(admin_engine, "provenance", tenant) == 1
    assert await count_rows(admin_engine, OUTBOX_LEDGER, tenant) == 2  # every row ever in the outbox


async def test_a_malformed_command_is_answered_at_once_and_never_retried(
    service: RunningService,
    nc: NatsClient,
    tenant: str,
    token_for: TokenFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="handlers.nats_consumer")
    message_id = str(uuid.uuid4())
    reply = await send_command(
        nc, "careplan.create", b"\xff\xfe junk", token=token_for(tenant), message_id=message_id
    )
    await asyncio.sleep(1.5)  # longer than the first back-off: a retry would have happened by now
    assert reply["error"]["code"] == "VALIDATION_ERROR"
    assert not [r for r in caplog.records if "will retry" in r.getMessage()]
    consumer = await nc.jetstream().consumer_info("CAREPLAN_COMMANDS", "careplan-commands")
    assert consumer.num_ack_pending == 0
    assert consumer.num_redelivered == 0


async def test_a_standby_relay_takes_over_when_the_leader_goes_and_hands_back(
    service: RunningService, nc: NatsClient, tenant: str, admin_engine: AsyncEngine
) -> None:
    standby_engine = create_engine(
        service.settings.system_database_url or "", pool_size=2, application_name="standby"
    )
    js = nc.jetstream()

    async def publish(subject: str, payload: bytes, headers: dict[str, str]) -> None:
        await js.publish(subject, payload, headers=headers)

    standby = OutboxRelay(standby_engine, publish, RelaySettings(poll_interval_s=0.2))
    stop = asyncio.Event()
    task = asyncio.create_task(standby.run(stop))
    try:
        # When the leader's connections die (as when its process is killed), the standby takes the lock.
        async with asyncio.timeout(30):
            while not standby.is_leader:
                async with admin_engine.begin() as conn:
                    await conn.execute(
                        text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND application_name = 'careplan-relay'"
                        )
                    )
                await asyncio.sleep(0.3)
        # The old leader learns it lost the lock at its next check of the lock's connection.
        async with asyncio.timeout(5):
            while service.relay.is_leader:  # noqa: ASYNC110 (polling another task's flag)
                await asyncio.sleep(0.05)
        first = await _outbox_row(admin_engine, tenant, "during-takeover")
        event = await last_event(nc, "CAREPLAN_EVENTS", f"careplan.evt.{tenant}.test.during-takeover")
        assert event["id"] == str(first)
    finally:
        stop.set()
        await task
        await standby_engine.dispose()
    # And when the standby stops, the service's relay leads again: nothing is left behind.
    second = await _outbox_row(admin_engine, tenant, "after-handback")
    event = await last_event(nc, "CAREPLAN_EVENTS", f"careplan.evt.{tenant}.test.after-handback", timeout=30)
    assert event["id"] == str(second)
    assert await count_messages(nc, "CAREPLAN_EVENTS", f"careplan.evt.{tenant}.test.>") == 2


async def _outbox_row(engine: AsyncEngine, tenant: str, name: str) -> uuid.UUID:
    event_id = uuid.uuid4()
    async with engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO outbox (tenant_id, event_id, subject, payload) VALUES (:t, :e, :s, :p)"),
            {
                "t": tenant,
                "e": event_id,
                "s": f"careplan.evt.{tenant}.test.{name}",
                "p": orjson.dumps({"id": str(event_id)}),
            },
        )
    return event_id
