"""`careplan serve` processes killed with SIGKILL under load (issue 5, scenarios 3 and 11): after restart or
takeover every command is applied exactly once and every event is on the stream once, in order."""

from __future__ import annotations

import asyncio
import random
import time

from service.dev_identity import DevKeys
from tests.faults.lab import Lab, ServeProcess
from tests.faults.load import CommandLoad, assert_each_command_applied_once, assert_events_once_in_order

TENANT = "t-crash"


async def test_kill_9_under_load_then_restart_applies_every_command_once(lab: Lab, keys: DevKeys) -> None:
    rng = random.Random(5)
    first = lab.serve("first")
    await first.ready()
    nc = await lab.connect()
    try:
        load = CommandLoad(nc, keys.mint(tenant_id=TENANT, roles=["clinician"]))
        await load.start()
        await load.create_plans(20)

        # Given a few hundred commands in flight, when the process is killed part-way through them
        in_flight = await load.send_changes(300, rng)
        await load.at_least_answered(20 + 40)
        first.kill()
        answered_at_kill = load.answered_count() - 20
        assert answered_at_kill < len(in_flight), "the load finished before the kill: nothing was in flight"

        # and callers keep sending while it is down, and some retry commands they got no answer to:
        # within the duplicate window with the same Nats-Msg-Id (the stream drops it), and later with a
        # new one (the stream takes it, the command log must answer it).
        sent_while_down = await load.send_changes(100, rng)
        retried = rng.sample(in_flight, 60)
        acks = [await load.publish(c, message_id=c) for c in retried[:30]]
        assert all(ack.duplicate for ack in acks)
        for command_id in retried[30:]:
            await load.publish(command_id, message_id=f"{command_id}:retry")

        # Then after a restart every command is answered, applied once, and its events published once
        second = lab.serve("second")
        await second.ready()
        await load.answered(timeout=120)
        assert_all_answered_after_restart(load, sent_while_down)
        await assert_each_command_applied_once(lab, load)
        await assert_events_once_in_order(lab, load, nc)
        # A retry with a new message id was answered from the command log, not applied again.
        assert any(len(load.replies[c]) >= 2 for c in retried[30:])
        answered_twice = sum(1 for c in load.sent if len(load.replies[c]) > 1)
        print(f"kill -9: {answered_at_kill}/{len(in_flight)} answered before, {answered_twice} twice")
    finally:
        await nc.close()


def assert_all_answered_after_restart(load: CommandLoad, sent_while_down: list[str]) -> None:
    for command_id in sent_while_down:
        assert load.replies[command_id][0]["ok"] is True, load.replies[command_id]


async def _relay_roles(processes: list[ServeProcess]) -> dict[str, str]:
    roles = {}
    for process in processes:
        if process.proc.poll() is None:
            _, body = await process.readiness()
            roles[process.name] = body["relay"]
    return roles


async def _leader(processes: list[ServeProcess], timeout: float = 30.0) -> ServeProcess:
    async with asyncio.timeout(timeout):
        while True:
            roles = await _relay_roles(processes)
            leaders = [p for p in processes if roles.get(p.name) == "leader"]
            assert len(leaders) <= 1, roles
            if leaders:
                return leaders[0]
            await asyncio.sleep(0.1)


async def test_two_processes_one_relay_and_the_standby_takes_over_when_it_is_killed(
    lab: Lab, keys: DevKeys
) -> None:
    rng = random.Random(11)
    processes = [lab.serve("a"), lab.serve("b")]
    await asyncio.gather(*(p.ready() for p in processes))
    nc = await lab.connect()
    try:
        load = CommandLoad(nc, keys.mint(tenant_id=TENANT, roles=["clinician"]))
        await load.start()
        await load.create_plans(10)
        leader = await _leader(processes)
        standby = next(p for p in processes if p is not leader)

        # Given both processes serving commands under load, when the relay's leader is killed
        sending = asyncio.create_task(_send_steadily(load, rng, batches=30))
        await load.at_least_answered(10 + 50)
        leader.kill()
        killed_at = time.monotonic()

        # Then the standby leads within seconds, and is the only leader
        assert await _leader([standby], timeout=15) is standby
        takeover_s = time.monotonic() - killed_at
        assert (await _relay_roles(processes)) == {standby.name: "leader"}
        await sending
        await load.answered(timeout=120)
        await assert_each_command_applied_once(lab, load)
        await assert_events_once_in_order(lab, load, nc)
        print(f"relay takeover after SIGKILL of the leader: {takeover_s:.2f}s")
    finally:
        await nc.close()


async def _send_steadily(load: CommandLoad, rng: random.Random, batches: int) -> None:
    for _ in range(batches):
        await load.send_changes(10, rng)
        await asyncio.sleep(0.05)
