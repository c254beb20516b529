"""The service on a three-node nats-server cluster with `CAREPLAN_STREAM_REPLICAS=3` (issue 16, CONTRACT §11):
the commands stream's leader killed with kill -9, later the JetStream meta leader killed, and a node stopped
for 30 s and started again, each under load, with two `careplan serve` replicas (one relays, the other stands
by) and a careful caller that re-sends a command whose publish fails with the same command id. Every command
is answered, applied once, and every event is on the stream once, in order per resource.

Each scenario prints its own figures for README Guarantees. Leaders are placed before a fault so that the
fault costs what the scenario says (the node killed really led what it is said to lead), and each scenario
asserts that the service or the caller met the fault, so that none passes by testing nothing.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psutil
import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from handlers.nats_consumer import COMMAND_CONSUMER, COMMAND_STREAM, DLQ_STREAM
from service.dev_identity import DevKeys
from service.topology import AUDIT_STREAM, EVENT_STREAM
from tests.faults import careful_caller
from tests.faults.careful_caller import event_figures, outcomes_known, relay_done, send_changes_resending
from tests.faults.cluster import NatsCluster, move_leader, stream_leader, until_replicated
from tests.faults.lab import Lab, ServeProcess, until
from tests.faults.load import (
    CommandLoad,
    assert_each_command_applied_once,
    assert_events_once_in_order,
    longest_publishing_pause,
)
from tests.outbox_ledger import OUTBOX_LEDGER

TENANT = "t-cluster"
PLANS = 10
REPLICAS = 3
STREAMS = (COMMAND_STREAM, EVENT_STREAM, AUDIT_STREAM, DLQ_STREAM)
NODE_DOWN_S = 30.0


@dataclass
class ClusterService:
    """Two `careplan serve` replicas on the lab's cluster, a careful caller and its load."""

    lab: Lab
    cluster: NatsCluster
    processes: list[ServeProcess]
    nc: NatsClient
    load: CommandLoad
    resends: Counter[str] = field(default_factory=Counter)

    @property
    def js(self) -> JetStreamContext:
        return self.nc.jetstream(timeout=1.0)

    async def replicated(self) -> None:
        """Every stream and the command consumer at three replicas, each caught up."""
        for stream in STREAMS:
            await until_replicated(self.js, stream, REPLICAS)
        await until_replicated(self.js, COMMAND_STREAM, REPLICAS, consumer=COMMAND_CONSUMER)

    async def leaders(self) -> dict[str, str]:
        """Who leads what: each stream, the command consumer (`consumer`) and the meta group (`meta`)."""
        led = {stream: await stream_leader(self.js, stream) for stream in STREAMS}
        led["consumer"] = await stream_leader(self.js, COMMAND_STREAM, consumer=COMMAND_CONSUMER)
        led["meta"] = await self.cluster.meta_leader()
        return led

    async def place(self, leaders: dict[str, str]) -> dict[str, str]:
        """Move the leaders of streams (and of the command consumer, `consumer`) to the nodes named;
        returns who then leads what."""
        for asset, node in leaders.items():
            if asset == "consumer":
                await move_leader(self.nc, COMMAND_STREAM, node, consumer=COMMAND_CONSUMER)
            else:
                await move_leader(self.nc, asset, node)
        return await self.leaders()

    def connections_to(self, node: str) -> dict[str, int]:
        """Each service process's TCP connections to `node` (its relay's and its commands' connection)."""
        port = self.cluster.node(node).client_port
        found = {}
        for process in self.processes:
            sockets = psutil.Process(process.proc.pid).net_connections(kind="tcp")
            found[process.name] = sum(1 for s in sockets if s.raddr and s.raddr.port == port)
        return found

    async def relay_roles(self) -> list[str]:
        """What each process's /readyz says it does with the outbox: `leader` (relays) or `standby`."""
        return [(await process.readiness())[1]["relay"] for process in self.processes]

    async def settle(self) -> float:
        """Once the load is sent: every outcome known (lost replies asked for) and the outbox drained;
        returns when the outbox was drained (monotonic)."""
        await outcomes_known(self.load)
        await until(relay_done(self.lab), 120, "no outbox row waits for the relay")
        return time.monotonic()

    async def assert_all_applied_and_published_once(self) -> dict[str, int]:
        assert await self.lab.scalar("SELECT count(*) FROM outbox_parked") == 0
        await assert_each_command_applied_once(self.lab, self.load)
        await assert_events_once_in_order(self.lab, self.load, self.nc)
        for process in self.processes:
            assert not process.log_lines("parked"), process.name
            assert process.proc.poll() is None, f"serve {process.name} died"
        assert sorted(await self.relay_roles()) == ["leader", "standby"]
        figures = await event_figures(self.lab, self.nc)
        assert (figures["parked"], figures["lost"], figures["duplicates"]) == (0, 0, 0), figures
        return figures


@dataclass
class Phase:
    """What a scenario added to the run, for its own figures."""

    service: ClusterService
    sent: int = 0
    resends: int = 0
    asked: int = 0
    last_row: int = 0

    @classmethod
    async def begin(cls, service: ClusterService) -> Phase:
        phase = cls(service)
        phase.sent, phase.resends, phase.asked = phase.counts()
        phase.last_row = int(await service.lab.scalar(f"SELECT coalesce(max(id), 0) FROM {OUTBOX_LEDGER}"))
        return phase

    def counts(self) -> tuple[int, int, int]:
        load = self.service.load
        return len(load.sent), sum(self.service.resends.values()), len(load.asked)

    async def publishing(self) -> tuple[int, float]:
        """The events and audit records this phase's commands caused, and the longest pause between two
        of them being published."""
        rows = await self.service.lab.rows(
            f"SELECT event_id::text FROM {OUTBOX_LEDGER} WHERE id > :last", last=self.last_row
        )
        event_ids = {event_id for (event_id,) in rows}
        return len(event_ids), await longest_publishing_pause(self.service.nc, event_ids)

    async def figures(self) -> str:
        sent, resends, asked = self.counts()
        load = self.service.load
        commands = list(load.sent)[self.sent :]
        twice = sum(1 for command_id in commands if len(load.replies.get(command_id, [])) > 1)
        events, pause_s = await self.publishing()
        return (
            f"{sent - self.sent} commands ({resends - self.resends} re-sends, {asked - self.asked} replies "
            f"lost and asked for, {twice} answered twice); {events} events and audit records, the longest "
            f"pause in publishing them {pause_s:.1f}s"
        )


@pytest.fixture
async def cluster_service(cluster_lab: Lab, keys: DevKeys) -> AsyncIterator[ClusterService]:
    lab = cluster_lab
    assert lab.cluster is not None
    # Both replicas start at once on the fresh cluster, as a deployment's would.
    processes = [lab.serve(name, stream_replicas=REPLICAS) for name in ("a", "b")]
    await asyncio.gather(*(process.ready() for process in processes))
    nc = await careful_caller.connect(lab)
    try:
        load = CommandLoad(nc, keys.mint(tenant_id=TENANT, roles=["clinician"]))
        service = ClusterService(lab, lab.cluster, processes, nc, load)
        await service.replicated()
        await load.start()
        await load.create_plans(PLANS)
        yield service
    finally:
        await nc.close()


async def test_the_commands_stream_leader_then_the_meta_leader_killed_under_load(
    cluster_service: ClusterService,
) -> None:
    service, cluster, load = cluster_service, cluster_service.cluster, cluster_service.load
    rng = random.Random(16)

    # Scenario 1. Given the commands stream and its consumer led by a node that leads nothing else
    meta = await cluster.meta_leader()
    victim, other = [node.name for node in cluster.nodes if node.name != meta]
    led = await service.place(
        {
            COMMAND_STREAM: victim,
            "consumer": victim,
            EVENT_STREAM: other,
            AUDIT_STREAM: other,
            DLQ_STREAM: meta,
        }
    )
    assert [asset for asset, node in led.items() if node == victim] == [COMMAND_STREAM, "consumer"], led
    phase = await Phase.begin(service)
    # and 300 commands: 250 sent steadily, so that the caller is still sending when the node dies, and a
    # burst of 50 just before, so that acknowledged commands wait in the stream when it does
    sending = asyncio.create_task(send_changes_resending(load, 250, rng, service.resends, pause_per_10_s=0.3))
    await load.at_least_answered(PLANS + 60, timeout=120)
    await load.send_changes(50, rng)

    # When that node is killed with SIGKILL
    cluster.kill(victim)
    killed_at = time.monotonic()
    unanswered_at_kill = len(load.sent) - load.answered_count()
    stream_led = await stream_leader(service.js, COMMAND_STREAM, other_than=victim)
    stream_led_s = time.monotonic() - killed_at
    consumer_led = await stream_leader(
        service.js, COMMAND_STREAM, consumer=COMMAND_CONSUMER, other_than=victim
    )
    consumer_led_s = time.monotonic() - killed_at
    await sending

    # Then every command is answered, applied once, and every event is published once, in order
    drained_s = await service.settle() - killed_at
    figures = await service.assert_all_applied_and_published_once()
    # and the fault was met: acknowledged commands were waiting in the stream, and the caller's publishes
    # failed while the commands stream had no leader
    assert unanswered_at_kill > 0, "every command was answered before the kill"
    assert sum(service.resends.values()) > phase.resends, "the caller never met the election"
    print(
        f"\n[commands stream leader killed] {victim} (leading {COMMAND_STREAM} and its consumer only) killed "
        f"with SIGKILL, {unanswered_at_kill} commands sent and not yet answered; {stream_led} led the stream "
        f"after {stream_led_s:.1f}s, "
        f"{consumer_led} the consumer after {consumer_led_s:.1f}s; {await phase.figures()}; "
        f"{figures['parked']} events parked, {figures['lost']} lost, {figures['duplicates']} duplicates; "
        f"outbox drained {drained_s:.1f}s after the kill"
    )

    # Scenario 2. Given the killed node back and caught up
    cluster.restart(victim)
    restarted_at = time.monotonic()
    await service.replicated()
    caught_up_s = time.monotonic() - restarted_at
    print(f"[commands stream leader killed] {victim} restarted; all replicas current in {caught_up_s:.1f}s")
    # and the meta leader also leading the events and audit streams, so the relay's publishes fail while
    # JetStream has no meta leader to say which stream takes a subject (a row must wait, never be parked),
    # while commands go on being processed elsewhere
    meta = await cluster.meta_leader()
    elsewhere = next(node.name for node in cluster.nodes if node.name != meta)
    led = await service.place(
        {EVENT_STREAM: meta, AUDIT_STREAM: meta, COMMAND_STREAM: elsewhere, "consumer": elsewhere}
    )
    phase = await Phase.begin(service)
    answered = load.answered_count()
    relay_retries = sum(len(p.log_lines("outbox publish of row")) for p in service.processes)
    sending = asyncio.create_task(send_changes_resending(load, 200, rng, service.resends, pause_per_10_s=0.3))
    await load.at_least_answered(answered + 40, timeout=120)

    # When the meta leader is killed with SIGKILL
    cluster.kill(meta)
    killed_at = time.monotonic()
    api_refused = await jetstream_api_refusals(service.js)
    api_back_s = time.monotonic() - killed_at
    new_meta = await cluster.meta_leader(other_than=meta)
    meta_led_s = time.monotonic() - killed_at
    await sending

    # Then, again, every command is answered, applied once, and every event is published once, in order
    drained_s = await service.settle() - killed_at
    figures = await service.assert_all_applied_and_published_once()
    # and the fault was met: JetStream's API refused while there was no meta leader, and the relay could
    # publish nothing for seconds while commands went on committing events
    assert api_refused, "JetStream's API answered throughout: the meta leader was not lost"
    relay_retries = sum(len(p.log_lines("outbox publish of row")) for p in service.processes) - relay_retries
    assert (await phase.publishing())[1] > 2.0, "the relay never met the fault"
    others = ", ".join(asset for asset, node in led.items() if node == meta and asset != "meta")
    print(
        f"[meta leader killed] {meta} (also leading {others}) killed with SIGKILL; {new_meta} led the meta "
        f"group after {meta_led_s:.1f}s, JetStream's API answered again after {api_back_s:.1f}s; "
        f"{await phase.figures()}; relay retries logged: {relay_retries}; {figures['parked']} events parked, "
        f"{figures['lost']} lost, {figures['duplicates']} duplicates; outbox drained {drained_s:.1f}s "
        "after the kill"
    )


async def test_a_node_stopped_dead_for_30_s_then_continued_under_load(
    cluster_service: ClusterService,
) -> None:
    service, cluster, load = cluster_service, cluster_service.cluster, cluster_service.load
    rng = random.Random(30)

    # Given the node holding most of the service's connections, leading the commands stream and its consumer
    held = {node.name: sum(service.connections_to(node.name).values()) for node in cluster.nodes}
    victim = max(held, key=lambda name: held[name])
    placed = await service.place({COMMAND_STREAM: victim, "consumer": victim})
    led = [asset for asset, node in placed.items() if node == victim]
    connected = [name for name, count in service.connections_to(victim).items() if count]
    lost_before = {p.name: len(p.log_lines("connection lost")) for p in service.processes}
    phase = await Phase.begin(service)
    # and a steady load of 300 commands, sent over about a minute: before, during and after the stop
    sending = asyncio.create_task(send_changes_resending(load, 300, rng, service.resends, pause_per_10_s=1.2))
    await load.at_least_answered(PLANS + 40, timeout=120)

    # When the node is stopped dead (SIGSTOP: its sockets stay open, nobody is told) for 30 s, then continued
    cluster.freeze(victim)
    frozen_at, frozen_wall = time.monotonic(), datetime.now(UTC)
    answered_at_freeze = load.answered_count()
    await until(lambda: led_elsewhere(cluster, led, victim), 60, f"what {victim} led has new leaders")
    elected_s = time.monotonic() - frozen_at
    await asyncio.sleep(max(0.0, NODE_DOWN_S - (time.monotonic() - frozen_at)))
    answered_while_stopped = load.answered_count() - answered_at_freeze
    cluster.thaw(victim)
    continued_at = time.monotonic()
    await service.replicated()
    caught_up_s = time.monotonic() - continued_at
    await sending
    sent_at = time.monotonic()

    # Then every command is answered, applied once, and every event is published once, in order
    drained_s = await service.settle() - sent_at
    figures = await service.assert_all_applied_and_published_once()
    # and the fault was met: the service's connections to the node went stale, were dropped and moved to a
    # live node, and the service went on answering while the node was stopped
    assert connected, f"no service connection to {victim}: the stop cost the service nothing"
    for process in service.processes:
        if process.name in connected:
            assert len(process.log_lines("connection lost")) > lost_before[process.name], process.name
    assert answered_while_stopped > 0, f"nothing was answered while {victim} was stopped"
    noticed = [
        f"{(at - frozen_wall).total_seconds():.1f}s"
        for process in service.processes
        for at, _ in process.log_lines("connection lost")
        if at > frozen_wall
    ]
    print(
        f"\n[a node stopped for 30 s] {victim} (leading {', '.join(led)}; connections of "
        f"{', '.join(connected)}) stopped with SIGSTOP for {NODE_DOWN_S:.0f}s; new leaders after "
        f"{elected_s:.1f}s; the service dropped its stale connections after {', '.join(sorted(noticed))} "
        f"(re-established in {reconnect_times(service.processes)}); {answered_while_stopped} commands "
        f"answered while it was stopped; every replica current {caught_up_s:.1f}s after SIGCONT; "
        f"{await phase.figures()}; {figures['parked']} events parked, {figures['lost']} lost, "
        f"{figures['duplicates']} duplicates; outbox drained {drained_s:.1f}s after the last command was sent"
    )


async def led_elsewhere(cluster: NatsCluster, assets: list[str], node: str) -> bool:
    """Whether every one of `assets` (as `ClusterService.leaders` names them) has a leader other than
    `node`, as the running nodes see it."""
    led = await cluster.leaders()
    led["consumer"] = led.get(f"{COMMAND_STREAM}/{COMMAND_CONSUMER}", "")
    return all(led.get(asset) not in (None, "", node) for asset in assets)


async def jetstream_api_refusals(js: JetStreamContext, timeout: float = 60.0) -> int:
    """How often JetStream's API (account info: the meta leader answers it) failed before it answered."""
    refusals = 0
    async with asyncio.timeout(timeout):
        while True:
            try:
                await js.account_info()
                return refusals
            except Exception:
                refusals += 1
                await asyncio.sleep(0.1)


def reconnect_times(processes: list[ServeProcess]) -> str:
    """From each process's log: how long each lost connection took to come back."""
    times = []
    for process in processes:
        lost = [at for at, line in process.log_lines("connection lost") if "NATS" in line]
        back = [at for at, line in process.log_lines("connection re-established") if "NATS" in line]
        for at in lost:
            returned = [b for b in back if b >= at]
            times.append(f"{(min(returned) - at).total_seconds():.1f}s" if returned else "never")
    return ", ".join(times) or "no connection lost"
