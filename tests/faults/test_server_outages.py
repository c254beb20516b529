"""Postgres stopped for 30 s and nats-server stopped for a minute under load (issue 5, scenarios 5 and 10):
the service rides both out by itself, says so on /readyz, backs off instead of spinning, and afterwards every
command is applied once and every event published once, in order."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import defaultdict
from datetime import UTC, datetime

from nats.aio.client import Client as NatsClient

from handlers.nats_consumer import DeliveryPolicy
from service.dev_identity import DevKeys
from service.embedded.postgres_server import EmbeddedPostgres
from tests.faults.lab import Lab, ServeProcess, until
from tests.faults.load import CommandLoad, assert_each_command_applied_once, assert_events_once_in_order

POSTGRES_OUTAGE_S = 30.0
NATS_OUTAGE_S = 60.0
TENANT = "t-outage"


async def commands_in_flight(nc: NatsClient, keys: DevKeys, rng: random.Random) -> CommandLoad:
    """10 plans, then 150 changes sent at once; returns once 30 are answered and the rest in flight."""
    load = CommandLoad(nc, keys.mint(tenant_id=TENANT, roles=["clinician"]))
    await load.start()
    await load.create_plans(10)
    await load.send_changes(150, rng)
    await load.at_least_answered(10 + 30)
    return load


async def _not_ready_because(process: ServeProcess, check: str) -> bool:
    status, body = await process.readiness()
    return status == 503 and body["checks"][check] is False


async def test_postgres_stopped_for_30_s_under_load(
    lab_with_own_postgres: tuple[Lab, EmbeddedPostgres], keys: DevKeys
) -> None:
    lab, postgres = lab_with_own_postgres
    # Enough deliveries, spaced by the back-off, to outlast the outage: 1+2+4+8+8+8+8+8+8 s before the last.
    policy = DeliveryPolicy(max_deliver=10, backoff_max_s=8)
    service = lab.serve("a", max_deliver=policy.max_deliver, nak_backoff_max_s=policy.backoff_max_s)
    await service.ready()
    nc = await lab.connect()
    rng = random.Random(5)
    try:
        load = await commands_in_flight(nc, keys, rng)

        # When Postgres stops while commands are in flight and more keep arriving
        postgres.stop()
        stopped_at = datetime.now(UTC)
        sent_during = await load.send_changes(50, rng)
        # Then /readyz reports it
        await until(lambda: _not_ready_because(service, "database"), 15, "/readyz reports the database")
        await asyncio.sleep(POSTGRES_OUTAGE_S)
        postgres.start()
        restarted_at = datetime.now(UTC)

        # Then every command is applied once after it returns, and the events follow
        await load.answered(timeout=120)
        assert all(load.replies[c][0]["ok"] for c in sent_during)
        await assert_each_command_applied_once(lab, load)
        await assert_events_once_in_order(lab, load, nc)
        assert (await service.readiness())[0] == 200
    finally:
        await nc.close()

    # Redeliveries were spaced by the growing back-off: no hot loop, and a bounded number of log lines.
    retries = service.log_lines("will retry in")
    assert retries, "no command was retried during the outage"
    deliveries = _deliveries_by_command(retries)
    for command_id, tries in deliveries.items():
        for (previous_at, previous), (at, number) in itertools.pairwise(tries):
            assert number == previous + 1, (command_id, tries)
            gap = (at - previous_at).total_seconds()
            assert gap >= policy.nak_delay(previous, draw=lambda: 0.0) * 0.9, (command_id, previous, gap)
    assert max(len(t) for t in deliveries.values()) < policy.max_deliver
    outage_lines = [
        r for r in service.log_records() if stopped_at <= datetime.fromisoformat(r["time"]) <= restarted_at
    ]
    assert len(outage_lines) <= 32 * policy.max_deliver + 50, f"{len(outage_lines)} log lines in the outage"
    print(
        f"postgres outage: {len(deliveries)} commands retried, {len(retries)} retries, "
        f"{len(outage_lines)} log lines in {POSTGRES_OUTAGE_S:.0f}s"
    )


def _deliveries_by_command(retries: list[tuple[datetime, str]]) -> dict[str, list[tuple[datetime, int]]]:
    """From 'command <name> <id> failed on delivery <n> of <max>, will retry in …' messages."""
    found: defaultdict[str, list[tuple[datetime, int]]] = defaultdict(list)
    for at, line in retries:
        words = line.split("command ", 1)[1].split()
        found[words[1]].append((at, int(words[5])))
    return dict(found)


async def test_nats_server_stopped_for_a_minute_under_load(lab: Lab, keys: DevKeys) -> None:
    service = lab.serve("a")
    await service.ready()
    nc = await lab.connect()
    rng = random.Random(10)
    try:
        load = await commands_in_flight(nc, keys, rng)

        # When nats-server stops with commands in the stream, some in flight and their events in the outbox
        lab.nats.stop()
        await until(lambda: _not_ready_because(service, "nats"), 15, "/readyz reports NATS")
        waiting = await lab.scalar("SELECT count(*) FROM outbox")
        await asyncio.sleep(NATS_OUTAGE_S)
        assert service.proc.poll() is None, "the service died during the outage"
        lab.nats.start()
        returned = time.monotonic()

        # Then the pull consumer resumes by itself: earlier commands and new ones are all answered
        await until(lambda: nc.is_connected, 30, "the caller reconnects")
        after = await load.send_changes(50, rng)
        await load.answered(after, timeout=120)
        resumed_s = time.monotonic() - returned
        # Replies published while this caller was still reconnecting are lost (core NATS, at most once);
        # the caller asks for those outcomes, as the contract says.
        await load.ask_unanswered()
        await assert_each_command_applied_once(lab, load)
        await assert_events_once_in_order(lab, load, nc)
        assert (await service.readiness())[0] == 200
        print(
            f"nats outage: {waiting} outbox rows waited; new commands answered {resumed_s:.1f}s after it; "
            f"{len(load.asked)} replies lost and asked for"
        )
    finally:
        await nc.close()
