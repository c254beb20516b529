"""A poison command (issue scenario 6): one that always fails transiently is delivered exactly
`max_deliver` times, with the configured back-off between deliveries, then lands in CAREPLAN_DLQ with its
reason, and its caller is told INTERNAL; meanwhile the consumer keeps serving everyone else, and nothing
of the poison is written.

The fault is a trigger on the outbox that raises a serialization failure (SQLSTATE 40001, which the
service rightly treats as transient) for the poison's tenant only. It counts the deliveries that reached
it, and stamps the time of each, in sequences: they are not transactional, so they survive the rollback
each delivery ends in."""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

import orjson
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from handlers.nats_consumer import COMMAND_CONSUMER, COMMAND_STREAM, DLQ_STREAM, DeliveryPolicy
from service.client import envelope, send_command
from service.runner import RunningService
from storage.tables import TENANT_TABLES
from tests.conftest import TokenFactory
from tests.integration.helpers import CARE_PLAN, count_rows
from tests.integration.scrape import moved, scrape, value

SLOTS = 8  # deliveries whose time the trigger records: more than max_deliver, so an extra one would show
CLOCK_SLACK_S = 0.05  # Postgres and nats-server read the same host clock; this only absorbs rounding
OTHER_TENANTS = 3
COMMANDS_PER_WAVE = 6


async def _sequence_value(engine: AsyncEngine, name: str) -> int:
    """A sequence's last value, or 0 while it was never used."""
    async with engine.connect() as conn:
        value = await conn.scalar(text(f"SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {name}"))
    return int(value or 0)


async def _wait_for_attempts(engine: AsyncEngine, counter: str, at_least: int, timeout: float = 15.0) -> int:
    async with asyncio.timeout(timeout):
        while (attempts := await _sequence_value(engine, counter)) < at_least:  # noqa: ASYNC110 (polling SQL)
            await asyncio.sleep(0.02)
    return attempts


async def _dead_letters_of(nc: NatsClient, message_id: str, after_seq: int) -> list[RawStreamMsg]:
    js = nc.jetstream()
    found = []
    for seq in range(after_seq + 1, (await js.stream_info(DLQ_STREAM)).state.last_seq + 1):
        try:
            msg = await js.get_msg(DLQ_STREAM, seq)
        except NotFoundError:
            continue
        if (msg.headers or {}).get("Nats-Msg-Id") == f"{message_id}:dlq":
            found.append(msg)
    return found


async def test_a_poison_command_is_delivered_max_deliver_times_with_back_off_then_dead_lettered(
    service: RunningService,
    nc: NatsClient,
    tenant: str,
    token_for: TokenFactory,
    admin_engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="handlers.nats_consumer")
    settings = service.settings
    policy = DeliveryPolicy(
        max_deliver=settings.max_deliver,
        ack_wait_s=settings.ack_wait_s,
        backoff_max_s=settings.nak_backoff_max_s,
        workers=settings.workers,
    )
    # The back-off after each delivery but the last, at its shortest (the jitter adds up to as much again):
    # 0.5 s, 1 s, 2 s … capped (0.5 s, 0.5 s in the test service).
    delays = [policy.nak_delay(delivered, draw=lambda: 0.0) for delivered in range(1, policy.max_deliver)]
    fault = f"poison_{tenant}"
    counter = f"{fault}_attempts"
    stamps = [f"{fault}_at_{n}" for n in range(1, SLOTS + 1)]
    async with admin_engine.begin() as conn:
        for sequence in (counter, *stamps):
            await conn.execute(text(f"CREATE SEQUENCE {sequence}"))
        await conn.execute(
            text(
                f"""
                CREATE FUNCTION {fault}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
                DECLARE attempt bigint;
                BEGIN
                    IF NEW.tenant_id = '{tenant}' THEN
                        attempt := nextval('{counter}');
                        IF attempt <= {SLOTS} THEN
                            PERFORM setval(format('{fault}_at_%s', attempt),
                                           (extract(epoch FROM clock_timestamp()) * 1000000)::bigint);
                        END IF;
                        RAISE EXCEPTION 'injected poison, delivery %', attempt USING ERRCODE = '40001';
                    END IF;
                    RETURN NEW;
                END $$
                """
            )
        )
        await conn.execute(
            text(f"CREATE TRIGGER {fault} BEFORE INSERT ON outbox FOR EACH ROW EXECUTE FUNCTION {fault}()")
        )
    dlq_start = (await nc.jetstream().stream_info(DLQ_STREAM)).state.last_seq
    metrics_before = await scrape(service)
    others = [f"{tenant}o{i}" for i in range(OTHER_TENANTS)]
    body = envelope(CARE_PLAN)
    other_replies: list[dict[str, Any]] = []
    try:
        poison = asyncio.create_task(
            send_command(nc, "careplan.create", body, token=token_for(tenant), timeout=60)
        )
        # While the poison waits out each back-off, other tenants' commands are served as usual.
        for wave in range(1, policy.max_deliver):
            await _wait_for_attempts(admin_engine, counter, wave)
            other_replies += await asyncio.gather(
                *(
                    send_command(nc, "careplan.create", envelope(CARE_PLAN), token=token_for(other))
                    for other in others
                    for _ in range(COMMANDS_PER_WAVE // OTHER_TENANTS)
                )
            )
            assert not poison.done()
            assert await _sequence_value(admin_engine, counter) < policy.max_deliver  # not yet dead-lettered
        reply = await poison
        # The last delivery was dead-lettered and acked. A further one could only come after another
        # back-off: wait past that, then check the message is gone from the work queue for good.
        await asyncio.sleep(max(delays) + 1.0)
        consumer = await nc.jetstream().consumer_info(COMMAND_STREAM, COMMAND_CONSUMER)
        attempts = await _sequence_value(admin_engine, counter)
        times = [await _sequence_value(admin_engine, stamp) / 1e6 for stamp in stamps[:attempts]]
    finally:
        async with admin_engine.begin() as conn:
            await conn.execute(text(f"DROP TRIGGER IF EXISTS {fault} ON outbox"))
            await conn.execute(text(f"DROP FUNCTION IF EXISTS {fault}()"))
            for sequence in (counter, *stamps):
                await conn.execute(text(f"DROP SEQUENCE IF EXISTS {sequence}"))

    # Exactly max_deliver deliveries reached the database, each at least its back-off after the last.
    assert attempts == policy.max_deliver
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert len(gaps) == len(delays)
    for gap, delay in zip(gaps, delays, strict=True):
        assert gap >= delay - CLOCK_SLACK_S, (gaps, delays)
    assert consumer.num_pending == 0
    assert consumer.num_ack_pending == 0
    # The consumer said so too: one retry per delivery but the last, which was dead-lettered.
    retried = [getattr(r, "delivered", None) for r in caplog.records if "will retry" in r.getMessage()]
    dead = [getattr(r, "delivered", None) for r in caplog.records if "dead-lettered" in r.getMessage()]
    assert retried == list(range(1, policy.max_deliver))
    assert dead == [policy.max_deliver]

    # The caller heard INTERNAL, once the deliveries were spent.
    assert reply["ok"] is False, reply
    assert reply["status"] == 500
    assert reply["error"]["code"] == "INTERNAL"
    assert reply["command_id"] == body["command_id"]

    # The dead letter: the body as sent, how often it was tried, and why it failed.
    dead_letters = await _dead_letters_of(nc, body["command_id"], dlq_start)
    assert len(dead_letters) == 1
    letter = dead_letters[0]
    assert letter.data is not None
    assert orjson.loads(letter.data) == body
    headers = letter.headers or {}
    assert letter.subject == "careplan.dlq.careplan.create"
    assert headers["Careplan-Original-Subject"] == "careplan.cmd.careplan.create"
    assert headers["Careplan-Deliveries"] == str(policy.max_deliver)
    assert "database unavailable" in headers["Careplan-Error"]
    assert f"injected poison, delivery {policy.max_deliver}" in headers["Careplan-Error"]

    # Everyone else was served while the poison was being retried.
    assert len(other_replies) == (policy.max_deliver - 1) * COMMANDS_PER_WAVE
    assert all(r["ok"] is True for r in other_replies), other_replies
    for other in others:
        assert await count_rows(admin_engine, "care_plans", other) == len(other_replies) // OTHER_TENANTS

    # And the metrics counted it: each delivery, the redeliveries, the dead letter and the DLQ's depth.
    metrics = await scrape(service)
    create = {"command": "careplan.create"}
    assert moved(metrics_before, metrics, "careplan_command_redeliveries_total", **create) == attempts - 1
    assert moved(metrics_before, metrics, "careplan_command_dead_letters_total", **create) == 1
    assert (
        moved(
            metrics_before,
            metrics,
            "careplan_commands_total",
            **create,
            transport="nats",
            outcome="unavailable",
        )
        == attempts
    )
    assert moved(
        metrics_before, metrics, "careplan_commands_total", **create, transport="nats", outcome="ok"
    ) == len(other_replies)
    dlq_depth = (await nc.jetstream().stream_info(DLQ_STREAM)).state.messages
    assert value(metrics, "careplan_dlq_messages") == dlq_depth

    # Nothing of the poison was written, not even its outcome.
    for table in TENANT_TABLES:
        assert await count_rows(admin_engine, table, tenant) == 0, table
