"""The relay publishes every committed outbox row, including late commits, and parks rows it never can; a
row leaves the outbox in the transaction that published or parked it."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson
import pytest
from nats.aio.client import Client as NatsClient
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.runner import RunningService
from storage.database import create_engine, drop_database, ensure_database
from storage.migrate import migrate
from storage.outbox_relay import BatchResult, OutboxRelay, PermanentPublishError
from tests.conftest import DatabaseUrls, database_urls
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
    service: RunningService,
    nc: NatsClient,
    tenant: str,
    admin_engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="storage.outbox_relay")
    async with admin_engine.begin() as conn:
        bad_id = await insert_outbox_row(conn, tenant, f"careplan.nowhere.{tenant}")
    async with admin_engine.begin() as conn:
        await insert_outbox_row(conn, tenant, f"careplan.evt.{tenant}.test.after")
    # The rest goes out (rows of other resources are not held up by it)
    await last_event(nc, "CAREPLAN_EVENTS", f"careplan.evt.{tenant}.test.after", timeout=20)
    parked = await parked_row(admin_engine, bad_id)
    assert parked.last_error == f"no stream takes subject 'careplan.nowhere.{tenant}'"
    assert_parked_on_its_first_failure(parked, caplog)


async def test_a_row_with_an_invalid_subject_is_parked_at_once_and_other_tenants_events_go_out(
    service: RunningService, nc: NatsClient, admin_engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """Once taken for a broker outage: the relay backed off to 30 s, never parked the row, and every
    tenant's events stalled behind it."""
    caplog.set_level(logging.WARNING, logger="storage.outbox_relay")
    bad_tenant, *tenants = [f"t{uuid.uuid4().hex[:12]}" for _ in range(4)]
    # Given a row whose subject no NATS server takes, committed together with other tenants' rows
    async with admin_engine.begin() as conn:
        bad_id = await insert_outbox_row(conn, bad_tenant, f"careplan.evt.{bad_tenant}.test.line\nbreak")
        for other in tenants:
            await insert_outbox_row(conn, other, f"careplan.evt.{other}.test.same-batch")
    # Then it is parked on its first attempt, with what is wrong with its subject
    parked = await parked_row(admin_engine, bad_id)
    assert parked.last_error.startswith(f"invalid subject 'careplan.evt.{bad_tenant}.test.line\\nbreak'")
    assert "token 5 contains '\\n'" in parked.last_error
    assert_parked_on_its_first_failure(parked, caplog)
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
    id: int
    last_error: str


async def parked_row(engine: AsyncEngine, event_id: uuid.UUID, timeout: float = 20.0) -> ParkedRow:
    """The row of `event_id` once the relay has parked it: in outbox_parked, and gone from the outbox."""
    async with asyncio.timeout(timeout):
        while True:
            async with engine.connect() as conn:
                row = (
                    await conn.execute(
                        text(
                            "SELECT id, last_error, "
                            "(SELECT count(*) FROM outbox o WHERE o.event_id = p.event_id) "
                            "FROM outbox_parked p WHERE event_id = :e"
                        ),
                        {"e": event_id},
                    )
                ).one_or_none()
            if row is not None:
                assert row[2] == 0, "parked and still in the outbox"
                return ParkedRow(id=row[0], last_error=row[1])
            await asyncio.sleep(0.05)


def assert_parked_on_its_first_failure(parked: ParkedRow, caplog: pytest.LogCaptureFixture) -> None:
    """Parked once, and never retried before (a retry logs "outbox publish of row N failed, will retry")."""
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if m.startswith(f"outbox row {parked.id} parked: ")]) == 1, messages
    assert [m for m in messages if m.startswith(f"outbox publish of row {parked.id} ")] == []


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


@pytest.fixture
async def relay_database(postgres_server_url: str) -> AsyncIterator[DatabaseUrls]:
    """A migrated database of the test's own that no service relays from: the test's relay is the only one."""
    name = f"careplan_relay_{uuid.uuid4().hex[:10]}"
    await ensure_database(postgres_server_url, name)
    urls = database_urls(postgres_server_url, name)
    try:
        await migrate(urls.admin, urls.runtime, urls.system)
        yield urls
    finally:
        await drop_database(postgres_server_url, name)


class WatchingPublisher:
    """The relay's `Publish` (a port of ours, so a fake): records each publish, and what another session sees
    of the row meanwhile (the transaction holding its row lock, None if it is gone); refuses subjects under
    `careplan.never.` as JetStream refuses a row it can never take."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self.published: list[str] = []
        self.locked_by: dict[str, str | None] = {}

    async def __call__(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        event_id = headers["Nats-Msg-Id"]
        async with self._engine.connect() as conn:
            self.locked_by[event_id] = await conn.scalar(
                text("SELECT xmax::text FROM outbox WHERE event_id = :e"), {"e": event_id}
            )
        if subject.startswith("careplan.never."):
            raise PermanentPublishError(f"no stream takes subject {subject!r}")
        self.published.append(event_id)


async def test_the_transaction_that_locks_rows_deletes_those_it_published_and_moves_one_it_parked(
    relay_database: DatabaseUrls,
) -> None:
    admin = create_engine(relay_database.admin, pool_size=2)
    system = create_engine(relay_database.system, pool_size=2)
    try:
        async with admin.begin() as conn:
            # Given a record of the transaction that deletes each outbox row
            await conn.execute(text("CREATE TABLE deleted_by (id bigint, xid text)"))
            await conn.execute(
                text(
                    "CREATE FUNCTION record_delete() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$ "
                    "BEGIN INSERT INTO deleted_by VALUES (OLD.id, pg_current_xact_id()::xid::text); "
                    "RETURN OLD; END $$"
                )
            )
            await conn.execute(
                text(
                    "CREATE TRIGGER record_delete AFTER DELETE ON outbox "
                    "FOR EACH ROW EXECUTE FUNCTION record_delete()"
                )
            )
            # and a row parked a month ago, then three waiting rows, the middle one unpublishable
            await conn.execute(
                text(
                    "INSERT INTO outbox_parked (id, tenant_id, event_id, subject, payload, created_at, "
                    "parked_at, last_error) VALUES (nextval('outbox_id_seq'), 't0', :e, 'careplan.never.t0', "
                    "'\\x7b7d', now() - interval '31 days', now() - interval '30 days', 'an old reason')"
                ),
                {"e": uuid.uuid4()},
            )
            good = [await insert_outbox_row(conn, "t1", "careplan.evt.t1.test.first")]
            bad = await insert_outbox_row(conn, "t2", "careplan.never.t2")
            good.append(await insert_outbox_row(conn, "t3", "careplan.evt.t3.test.last"))
        async with admin.connect() as conn:
            waiting = {str(r.event_id): r for r in (await conn.execute(text("SELECT * FROM outbox"))).all()}
            old_parked = (await conn.execute(text("SELECT *, xmin::text FROM outbox_parked"))).one()
        publisher = WatchingPublisher(admin)

        # When the relay publishes a batch
        result = await OutboxRelay(system, publisher).publish_batch()

        # Then the two good rows went out and the bad one was parked
        assert result == BatchResult(published=2, parked=1, broker_away=False)
        assert sorted(publisher.published) == sorted(str(e) for e in good)
        # While being published every row was still in the outbox, locked by one transaction
        (locker,) = set(publisher.locked_by.values())
        assert set(publisher.locked_by) == set(waiting)
        assert locker is not None and locker != "0"
        async with admin.connect() as conn:
            # which deleted all three from the outbox: none is left, published or not
            assert await conn.scalar(text("SELECT count(*) FROM outbox")) == 0
            deleted: dict[int, str] = dict((await conn.execute(text("SELECT id, xid FROM deleted_by"))).all())
            assert deleted == {row.id: locker for row in waiting.values()}
            # and put the bad one, whole and with its error, into outbox_parked; the old one is left alone
            parked = (await conn.execute(text("SELECT *, xmin::text FROM outbox_parked ORDER BY id"))).all()
        bad_row = waiting[str(bad)]
        error = "no stream takes subject 'careplan.never.t2'"
        assert [r._asdict() for r in parked] == [
            old_parked._asdict(),
            bad_row._asdict() | {"parked_at": parked[1].parked_at, "last_error": error, "xmin": locker},
        ]
        assert parked[1].parked_at >= bad_row.created_at
    finally:
        await admin.dispose()
        await system.dispose()


async def test_rows_whose_delete_fails_after_publishing_stay_waiting_and_go_out_again(
    relay_database: DatabaseUrls,
) -> None:
    """As when the relay's connection dies between the PubAck and the commit: nothing is half done, and the
    copies published again are dropped by JetStream's duplicate window (Nats-Msg-Id = event id)."""
    admin = create_engine(relay_database.admin, pool_size=2)
    system = create_engine(relay_database.system, pool_size=2)
    try:
        async with admin.begin() as conn:
            # Given a fault on the first delete from the outbox (a sequence survives the rollback it causes)
            await conn.execute(text("CREATE SEQUENCE delete_fault"))
            await conn.execute(
                text(
                    "CREATE FUNCTION delete_fault() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$ "
                    "BEGIN IF nextval('delete_fault') = 1 THEN RAISE EXCEPTION 'injected fault'; END IF; "
                    "RETURN NULL; END $$"
                )
            )
            await conn.execute(
                text(
                    "CREATE TRIGGER delete_fault BEFORE DELETE ON outbox "
                    "FOR EACH STATEMENT EXECUTE FUNCTION delete_fault()"
                )
            )
            rows = [await insert_outbox_row(conn, f"t{n}", f"careplan.evt.t{n}.test.row") for n in range(2)]
        publisher = WatchingPublisher(admin)
        relay = OutboxRelay(system, publisher)

        # When a batch is published and its delete fails
        with pytest.raises(DBAPIError, match="injected fault"):
            await relay.publish_batch()
        # Then both rows still wait, none parked
        async with admin.connect() as conn:
            assert await conn.scalar(text("SELECT count(*) FROM outbox")) == 2
            assert await conn.scalar(text("SELECT count(*) FROM outbox_parked")) == 0
        # And the next batch publishes them again, and deletes them
        assert await relay.publish_batch() == BatchResult(published=2, parked=0, broker_away=False)
        assert sorted(publisher.published) == sorted(str(e) for e in rows * 2)
        async with admin.connect() as conn:
            assert await conn.scalar(text("SELECT count(*) FROM outbox")) == 0
    finally:
        await admin.dispose()
        await system.dispose()
