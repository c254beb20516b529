"""A careful caller on a cluster whose nodes come and go, and what it and a consumer of the events see.

A publish that fails (no responders while the commands stream elects a leader, a time-out because the node
holding the request died, the connection moving to another node) is re-sent with the same command id and
`Nats-Msg-Id`: the stream drops a copy that did get through, and the command log answers one that arrives
after the duplicate window. A reply lost with a node is asked for (CONTRACT §2).
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable

import nats
import nats.errors
import orjson
from nats.aio.client import Client as NatsClient

from service.topology import EVENT_STREAM
from service.wiring import NATS_MAX_OUTSTANDING_PINGS, NATS_PING_INTERVAL_S
from tests.faults.lab import Lab
from tests.faults.load import CommandLoad, Sent, read_stream
from tests.outbox_ledger import OUTBOX_LEDGER


async def connect(lab: Lab) -> NatsClient:
    """The caller's connection to every node; like the service's, it gives up on a node that stops
    answering its pings within seconds (a stopped node keeps its sockets open) and moves to another."""
    return await nats.connect(
        servers=lab.nats_url.split(","),
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        ping_interval=NATS_PING_INTERVAL_S,
        max_outstanding_pings=NATS_MAX_OUTSTANDING_PINGS,
        name="lab-caller",
    )


async def send_changes_resending(
    load: CommandLoad, count: int, rng: random.Random, resends: Counter[str], *, pause_per_10_s: float = 0.05
) -> None:
    """Goals and activities for random plans, as `CommandLoad.send_changes`, each re-sent with its own
    command id and Nats-Msg-Id until the stream acknowledges it; `pause_per_10_s` paces the load."""
    for n in range(count):
        plan = rng.choice(load.plans)
        if rng.random() < 0.5:
            command, data = "goal.add", {"care_plan_id": plan, "description": {"text": f"goal {n}"}}
        else:
            command, data = "activity.add", {"care_plan_id": plan, "description": f"task {n}"}
        command_id = str(uuid.uuid4())
        load.sent[command_id] = Sent(command, orjson.dumps({"command_id": command_id, "data": data}))
        async with asyncio.timeout(120):
            while True:
                try:
                    await load.publish(command_id, message_id=command_id)
                    break
                except nats.errors.Error:  # no stream response, a time-out, a connection moving …
                    resends[command_id] += 1
                    await asyncio.sleep(0.25)
        if n % 10 == 9:
            await asyncio.sleep(pause_per_10_s)


def relay_done(lab: Lab) -> Callable[[], Awaitable[bool]]:
    """Whether the relay has nothing left to try: every row published or parked, so none in the outbox."""

    async def done() -> bool:
        return not await lab.scalar("SELECT count(*) FROM outbox")

    return done


async def outcomes_known(load: CommandLoad, timeout: float = 120.0) -> None:
    """Every command's outcome, from its reply or asked for; a query that itself fails (the caller's
    connection still moving to a surviving node) is asked again."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                await load.ask_unanswered(timeout=timeout)
                return
            except nats.errors.Error:
                await asyncio.sleep(0.5)


async def event_figures(lab: Lab, nc: NatsClient) -> dict[str, int]:
    """What a consumer of CAREPLAN_EVENTS sees, against every event row committed to the outbox."""
    on_stream = Counter(event["id"] for event in await read_stream(nc, EVENT_STREAM))
    in_outbox = {
        str(e)
        for (e,) in await lab.rows(
            f"SELECT event_id FROM {OUTBOX_LEDGER} WHERE subject LIKE 'careplan.evt.%'"
        )
    }
    return {
        "events": len(in_outbox),
        "parked": int(await lab.scalar("SELECT count(*) FROM outbox_parked")),
        "lost": len(in_outbox - set(on_stream)),
        "duplicates": sum(n - 1 for n in on_stream.values()),
    }
