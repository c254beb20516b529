"""The relay publishes every committed outbox row, including late commits, and parks rows it never can."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime

import orjson
from nats.aio.client import Client as NatsClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.runner import RunningService
from storage.outbox_relay import OutboxRelay
from tests.integration.helpers import last_event


async def insert_outbox_row(conn: AsyncConnection, tenant: str, subject: str) -> uuid.UUID:
    event_id = uuid.uuid4()
    await conn.execute(
        text("INSERT INTO outbox (tenant_id, event_id, subject, payload) VALUES (:t, :e, :s, :p)"),
        {"t": tenant, "e": event_id, "s": subject, "p": orjson.dumps({"id": str(event_id)})},
    )
    return event_id


async def test_a_row_committed_after_a_later_row_is_still_published(
    service: RunningService, nc: NatsClient, tenant: str, admin_engine: AsyncEngine
) -> None:
    """The gap trap: ids are taken at insert, commits land in another order."""
    early_subject = f"careplan.evt.{tenant}.test.early"
    late_subject = f"careplan.evt.{tenant}.test.late"
    async with admin_engine.connect() as slow, admin_engine.connect() as fast:
        # Given a transaction that takes a lower id but commits last
        await slow.begin()
        early_id = await insert_outbox_row(slow, tenant, early_subject)
        async with fast.begin():
            await insert_outbox_row(fast, tenant, late_subject)
        # When the later row has been published
        await last_event(nc, "CAREPLAN_EVENTS", late_subject)
        await slow.commit()
    # Then the lower id still goes out once it commits
    early = await last_event(nc, "CAREPLAN_EVENTS", early_subject)
    assert early["id"] == str(early_id)
    assert early["_headers"]["Nats-Msg-Id"] == str(early_id)


async def test_a_row_no_stream_takes_is_parked_at_once_saying_so_and_does_not_block_the_rest(
    service: RunningService, nc: NatsClient, tenant: str, admin_engine: AsyncEngine
) -> None:
    async with admin_engine.begin() as conn:
        bad_id = await insert_outbox_row(conn, tenant, f"careplan.nowhere.{tenant}")
    async with admin_engine.begin() as conn:
        await insert_outbox_row(conn, tenant, f"careplan.evt.{tenant}.test.after")
    # The rest goes out (rows of other resources are not held up by it)
    await last_event(nc, "CAREPLAN_EVENTS", f"careplan.evt.{tenant}.test.after", timeout=20)
    parked = await parked_row(admin_engine, bad_id)
    assert parked.attempts == 1
    assert parked.published_at is None
    assert parked.last_error == f"no stream takes subject 'careplan.nowhere.{tenant}'"


async def test_a_row_with_an_invalid_subject_is_parked_at_once_and_other_tenants_events_go_out(
    service: RunningService, nc: NatsClient, admin_engine: AsyncEngine
) -> None:
    """Once taken for a broker outage: the relay backed off to 30 s, never parked the row, and every
    tenant's events stalled behind it."""
    bad_tenant, *tenants = [f"t{uuid.uuid4().hex[:12]}" for _ in range(4)]
    # Given a row whose subject no NATS server takes, committed together with other tenants' rows
    async with admin_engine.begin() as conn:
        bad_id = await insert_outbox_row(conn, bad_tenant, f"careplan.evt.{bad_tenant}.test.line\nbreak")
        for other in tenants:
            await insert_outbox_row(conn, other, f"careplan.evt.{other}.test.same-batch")
    # Then it is parked on its first attempt, with what is wrong with its subject
    parked = await parked_row(admin_engine, bad_id)
    assert parked.attempts == 1
    assert parked.last_error.startswith(f"invalid subject 'careplan.evt.{bad_tenant}.test.line\\nbreak'")
    assert "token 5 contains '\\n'" in parked.last_error
    # And the other tenants' rows of that batch are published
    for other in tenants:
        await last_event(nc, "CAREPLAN_EVENTS", f"careplan.evt.{other}.test.same-batch", timeout=20)
    # And rows committed after it go out one by one, each well within what a back-off would take
    for n, other in enumerate(tenants * 2):
        async with admin_engine.begin() as conn:
            await insert_outbox_row(conn, other, f"careplan.evt.{other}.test.after-{n}")
        await last_event(nc, "CAREPLAN_EVENTS", f"careplan.evt.{other}.test.after-{n}", timeout=10)


@dataclass(frozen=True)
class ParkedRow:
    attempts: int
    last_error: str
    published_at: datetime | None


async def parked_row(engine: AsyncEngine, event_id: uuid.UUID, timeout: float = 20.0) -> ParkedRow:
    """The outbox row of `event_id` once the relay has parked it."""
    async with asyncio.timeout(timeout):
        while True:
            async with engine.connect() as conn:
                row = (
                    await conn.execute(
                        text(
                            "SELECT attempts, last_error, published_at FROM outbox "
                            "WHERE event_id = :e AND parked_at IS NOT NULL"
                        ),
                        {"e": event_id},
                    )
                ).one_or_none()
            if row is not None:
                return ParkedRow(attempts=row[0], last_error=row[1], published_at=row[2])
            await asyncio.sleep(0.05)


async def test_only_one_relay_leads(service: RunningService, admin_engine: AsyncEngine) -> None:
    assert service.relay.is_leader is True
    standby = OutboxRelay(service.system_engine, publish=_never_called)
    stop = asyncio.Event()
    task = asyncio.create_task(standby.run(stop))
    try:
        await asyncio.sleep(0.5)
        assert standby.is_leader is False
    finally:
        stop.set()
        await task


async def _never_called(subject: str, payload: bytes, headers: dict[str, str]) -> None:
    raise AssertionError("a standby relay published")


async def test_published_rows_past_retention_are_deleted_and_others_kept(
    service: RunningService, tenant: str, admin_engine: AsyncEngine
) -> None:
    async with admin_engine.begin() as conn:
        old = await insert_outbox_row(conn, tenant, f"careplan.evt.{tenant}.test.old")
        recent = await insert_outbox_row(conn, tenant, f"careplan.evt.{tenant}.test.recent")
        waiting = await insert_outbox_row(conn, tenant, f"careplan.evt.{tenant}.test.waiting")
        await conn.execute(
            text("UPDATE outbox SET published_at = now() - interval '8 days' WHERE event_id = :e"), {"e": old}
        )
        await conn.execute(
            text("UPDATE outbox SET published_at = now() - interval '6 days' WHERE event_id = :e"),
            {"e": recent},
        )
        # parked, never published: kept for the operator whatever its age
        await conn.execute(
            text("UPDATE outbox SET parked_at = now() - interval '30 days' WHERE event_id = :e"),
            {"e": waiting},
        )
    deleted = await OutboxRelay(service.system_engine, publish=_never_called).delete_expired()
    async with admin_engine.connect() as conn:
        left = set(
            (
                await conn.execute(text("SELECT event_id FROM outbox WHERE tenant_id = :t"), {"t": tenant})
            ).scalars()
        )
    assert deleted >= 1
    assert left == {recent, waiting}


async def test_the_leading_relay_waits_outside_a_transaction_so_commits_can_wake_it(
    service: RunningService, admin_engine: AsyncEngine
) -> None:
    """Postgres holds NOTIFY back from a session inside a transaction: a leader idling in one would only
    ever be woken by its polling timer (it once was, and events went out ~half a poll interval late)."""
    states: list[str] = []
    for _ in range(20):
        async with admin_engine.connect() as conn:
            states += (
                (
                    await conn.execute(
                        text(
                            "SELECT a.state FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                            "WHERE l.locktype = 'advisory' AND a.application_name = 'careplan-relay' "
                            "AND a.datname = current_database()"
                        )
                    )
                )
                .scalars()
                .all()
            )
        await asyncio.sleep(0.1)
    assert states, "no relay holds the leader lock"
    assert "idle" in states, states
