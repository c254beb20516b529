"""The outbox relay: publishes committed outbox rows to JetStream, in id order per resource, at least once.

One active relay per database (a session advisory lock; other replicas wait as standbys), woken by
LISTEN/NOTIFY with polling as the fallback. A row leaves the outbox in the transaction that published it
(deleted) or found it unpublishable (moved to `outbox_parked`), so every row in the outbox is waiting, and
the relay reads them all, never a high-water mark: ids are taken at insert, not at commit, so a late commit
can land below a mark (DESIGN.md, the gap trap).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from opentelemetry.trace import SpanKind
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from handlers.log_context import log_scope
from handlers.tracing import TRACER, carry_on, links_to
from storage.errors import describe, is_transient

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "careplan_outbox"
RELAY_LOCK_KEY = 0x6F75_7462_6F78  # "outbox"

Publish = Callable[[str, bytes, dict[str, str]], Awaitable[None]]


class PermanentPublishError(Exception):
    """This row can never be published as it is (an invalid subject, too large, no stream takes its
    subject): parked at once, with this as its `last_error`. Any other exception from `Publish` means the
    broker is away: the row waits and is published when the broker answers, never parked for it."""


@dataclass(frozen=True, slots=True)
class RelaySettings:
    batch_size: int = 100
    poll_interval_s: float = 1.0
    # While the broker is away: 0.4, 0.8, 1.6, then every 2 s, so the events follow within ~2 s of a
    # leader election or a restart ending, at the cost of one retry (and one log line) per wait.
    broker_retry_max_s: float = 2.0
    database_retry_max_s: float = 30.0


@dataclass(frozen=True, slots=True)
class Row:
    id: int
    event_id: uuid.UUID
    subject: str
    payload: bytes
    traceparent: str | None = None  # the trace of the command that wrote it


def _ordering_key(tenant_id: str, row: Row) -> str:
    """Whose commit order a row must keep: its resource's (the CloudEvent `subject`, e.g. CarePlan/<id>).
    A row that does not say is ordered on its own."""
    try:
        subject = orjson.loads(row.payload).get("subject")
    except (orjson.JSONDecodeError, AttributeError):
        subject = None
    return f"{tenant_id}/{subject}" if isinstance(subject, str) else f"#{row.id}"


@dataclass(frozen=True, slots=True)
class BatchResult:
    published: int
    parked: int  # rows the broker can never take
    broker_away: bool  # back off before the next batch


class OutboxRelay:
    def __init__(self, engine: AsyncEngine, publish: Publish, settings: RelaySettings | None = None) -> None:
        self._engine = engine
        self._publish = publish
        self._settings = settings or RelaySettings()
        self._wake = asyncio.Event()
        self._said_schema_is_old = False
        self.is_leader = False

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop` is set: lead when the lock is free, otherwise stand by. Never raises."""
        failures = 0
        while not stop.is_set():
            try:
                async with self._leadership() as leader_conn:
                    if leader_conn is None:
                        await _wait(stop, self._settings.poll_interval_s * 5)
                        continue
                    failures = 0
                    await self._lead(leader_conn, stop)
            except Exception as exc:
                failures += 1
                delay = min(self._settings.database_retry_max_s, 0.5 * 2**failures)
                if is_transient(exc):  # the database is away: one line per try, the back-off bounds them
                    log.warning("outbox relay: database away, retry in %.1fs: %s", delay, describe(exc))
                else:
                    log.exception("outbox relay failed; retrying in %.1fs", delay)
                await _wait(stop, delay)
        self.is_leader = False

    async def _lead(self, leader_conn: AsyncConnection, stop: asyncio.Event) -> None:
        retries = 0
        while not stop.is_set():
            # Cheap check that the lock's connection is alive; if it died, so did our leadership. Then end
            # the transaction that statement began: Postgres holds notifications back from a session that
            # is inside a transaction, so an open one would leave the relay polling instead of woken.
            await leader_conn.execute(text("SELECT 1"))
            await leader_conn.commit()
            self._wake.clear()
            result = await self.publish_batch()
            if result.broker_away:
                retries += 1
                await _wait(stop, min(self._settings.broker_retry_max_s, 0.2 * 2**retries))
                continue
            retries = 0
            if result.published == self._settings.batch_size or result.parked:
                continue  # more rows waiting, or rows held back behind a parked one; do not sleep
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wait_wake_or_stop(stop), self._settings.poll_interval_s)

    async def publish_batch(self) -> BatchResult:
        """Publish the oldest waiting rows and delete them in the transaction that locked them, so no row is
        ever left both published and in the outbox (a row whose delete did not commit, say the connection
        died after the PubAck, is published again and the stream drops the copy by its Nats-Msg-Id).

        Rows of one resource go out one after another, each awaiting its PubAck (so the stream keeps
        their commit order); the rows of different resources go out side by side, so one batch costs
        about one PubAck's wait per event of its busiest resource rather than one per row."""
        async with self._engine.begin() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT id, tenant_id, event_id, subject, payload, traceparent FROM outbox "
                        "ORDER BY id LIMIT :n FOR UPDATE"
                    ),
                    {"n": self._settings.batch_size},
                )
            ).all()
            per_resource: dict[str, list[Row]] = {}
            tenant_of: dict[int, str] = {}
            for row_id, tenant_id, event_id, subject, payload, traceparent in rows:
                tenant_of[row_id] = tenant_id
                row = Row(row_id, event_id, subject, bytes(payload), traceparent)
                per_resource.setdefault(_ordering_key(tenant_id, row), []).append(row)
            # One span for the batch, linked to the trace of every command whose rows it carries (not one a
            # row: a batch holds up to hundreds); each message carries the batch span's context.
            traced = {r.traceparent for group in per_resource.values() for r in group if r.traceparent}
            with TRACER.start_as_current_span(
                "publish",
                kind=SpanKind.PRODUCER,
                links=[link for t in sorted(traced) for link in links_to(t)],
                attributes={
                    "messaging.system": "nats",
                    "messaging.operation.name": "publish",
                    "messaging.batch.message_count": len(rows),
                },
            ):
                batch_trace = dict(carry_on({}))  # every message of the batch carries the batch span
                outcomes = await asyncio.gather(
                    *(self._publish_in_order(g, batch_trace) for g in per_resource.values())
                )
            published = [row_id for done, _ in outcomes for row_id in done]
            failures = [failure for _, failure in outcomes if failure is not None]
            if published:
                await conn.execute(text("DELETE FROM outbox WHERE id = ANY(:ids)"), {"ids": published})
            unpublishable = [f for f in failures if isinstance(f[1], PermanentPublishError)]
            for bad_row, error in unpublishable:
                with log_scope(tenant_id=tenant_of.get(bad_row)):
                    await self._park(conn, bad_row, error)
        broker_away = [f for f in failures if not isinstance(f[1], PermanentPublishError)]
        if broker_away:
            # Nothing is wrong with these rows: they are not charged, they go out once the broker answers.
            first_row, first_error = min(broker_away, key=lambda f: f[0])
            log.warning(
                "outbox publish of row %d failed, will retry: %s: %s",
                first_row,
                type(first_error).__name__,
                first_error,
                extra={
                    "outbox_id": first_row,
                    "failed_rows": len(broker_away),
                    "tenant_id": tenant_of.get(first_row),
                },
            )
        return BatchResult(len(published), parked=len(unpublishable), broker_away=bool(broker_away))

    async def _publish_in_order(
        self, rows: list[Row], batch_trace: dict[str, str]
    ) -> tuple[list[int], tuple[int, Exception] | None]:
        """One resource's rows in id order; the first failure stops the rest (they follow it later)."""
        done: list[int] = []
        for row in rows:
            try:
                await self._publish(row.subject, row.payload, _headers(row) | batch_trace)
            except Exception as exc:
                return done, (row.id, exc)
            done.append(row.id)
        return done, None

    async def _park(self, conn: AsyncConnection, row_id: int, exc: Exception) -> None:
        """Move a row the broker can never take to `outbox_parked`, on its first failure: retrying it would
        only hold up the rows behind it. It keeps its id there, for an operator to mend and move back."""
        await conn.execute(
            text(
                "WITH parked AS (DELETE FROM outbox WHERE id = :id "
                "RETURNING id, tenant_id, event_id, subject, payload, created_at, traceparent) "
                "INSERT INTO outbox_parked (id, tenant_id, event_id, subject, payload, created_at, "
                "last_error, traceparent) SELECT id, tenant_id, event_id, subject, payload, created_at, "
                ":error, traceparent FROM parked"
            ),
            {"id": row_id, "error": str(exc)[:2000]},
        )
        log.error("outbox row %d parked: %s", row_id, exc, extra={"outbox_id": row_id})

    async def _wait_wake_or_stop(self, stop: asyncio.Event) -> None:
        waiters = [asyncio.create_task(self._wake.wait()), asyncio.create_task(stop.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    @contextlib.asynccontextmanager
    async def _leadership(self) -> AsyncIterator[AsyncConnection | None]:
        """A dedicated connection holding the relay lock and listening for commits, or None."""
        conn = await self._engine.connect()
        try:
            got = await conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": RELAY_LOCK_KEY})
            if got and not await self._schema_is_this_releases(conn):
                got = False  # closing the connection below gives the lock back, to a relay of the old schema
            await conn.commit()
            if not got:
                yield None
                return
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection
            await driver.add_listener(NOTIFY_CHANNEL, self._on_notify)
            self.is_leader = True
            try:
                yield conn
            finally:
                self.is_leader = False
                with contextlib.suppress(Exception):
                    await driver.remove_listener(NOTIFY_CHANNEL, self._on_notify)
        finally:
            # Closing for good (not back to the pool) releases the session lock even if unlock fails.
            with contextlib.suppress(Exception):
                await conn.invalidate()
            with contextlib.suppress(Exception):
                await conn.close()

    async def _schema_is_this_releases(self, conn: AsyncConnection) -> bool:
        """Whether the database has the outbox this relay reads: migration 0008 (before it the outbox also
        holds published and parked rows, which this relay would take for waiting ones and publish again)
        and 0013 (the rows' `traceparent`). Otherwise it stands by (during a rolling deploy, until
        `careplan migrate` has run), saying so once."""
        if await conn.scalar(text(_SCHEMA_OF_THIS_RELEASE)):
            return True
        if not self._said_schema_is_old:
            self._said_schema_is_old = True
            log.warning(
                "outbox relay: the database schema is older than this release; standing by until "
                "`careplan migrate` has run"
            )
        return False

    def _on_notify(self, *_: object) -> None:
        self._wake.set()


_SCHEMA_OF_THIS_RELEASE = (
    "SELECT to_regclass('outbox_parked') IS NOT NULL AND EXISTS (SELECT 1 FROM information_schema.columns "
    "WHERE table_name = 'outbox' AND column_name = 'traceparent' AND table_schema = current_schema())"
)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


@dataclass(frozen=True, slots=True)
class OutboxBacklog:
    waiting: int  # rows in the outbox
    parked: int  # rows in outbox_parked
    oldest_waiting_s: float  # 0 when nothing waits


async def outbox_backlog(engine: AsyncEngine) -> OutboxBacklog:
    """What the relay has yet to do, across tenants (the system role). The outbox holds only waiting rows
    and outbox_parked only parked ones, so a scrape reads no published row."""
    async with engine.connect() as conn:
        waiting = (
            await conn.execute(
                text("SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0) FROM outbox")
            )
        ).one()
        parked = await conn.scalar(text("SELECT count(*) FROM outbox_parked"))
    return OutboxBacklog(
        waiting=int(waiting[0]), parked=int(parked or 0), oldest_waiting_s=max(float(waiting[1]), 0.0)
    )


# Every outbox row is a CloudEvent in structured mode: the NATS binding says so with `content-type`, or a
# consumer reads the message as binary mode (the payload as the event's data).
CLOUDEVENTS_JSON = "application/cloudevents+json"


def _headers(row: Row) -> dict[str, str]:
    """The stream drops a second copy by `Nats-Msg-Id` (a publish retried after a lost PubAck)."""
    return {"Nats-Msg-Id": str(row.event_id), "content-type": CLOUDEVENTS_JSON}
