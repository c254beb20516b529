"""A stream's leader killed on a three-node cluster (issue 15): a leader election is an outage, not a fault
of the rows being published. Once the relay parked 160 of 240 events after 10 attempts with "no response
from stream" while the streams elected new leaders; now it waits and publishes every event, once."""

from __future__ import annotations

import asyncio
import random
import re
import time
import uuid
from collections import Counter
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.js.api import StreamConfig

from handlers.event_publisher import BrokerUnavailable, JetStreamEventPublisher
from handlers.nats_consumer import COMMAND_STREAM
from service.dev_identity import DevKeys
from service.topology import AUDIT_STREAM, EVENT_STREAM
from storage.outbox_relay import PermanentPublishError
from tests.faults.careful_caller import event_figures, outcomes_known, relay_done, send_changes_resending
from tests.faults.cluster import NatsCluster, stream_leader, until_jetstream_answers, until_replicated
from tests.faults.lab import Lab, until
from tests.faults.load import (
    CommandLoad,
    assert_each_command_applied_once,
    assert_events_once_in_order,
    longest_publishing_pause,
)
from tests.outbox_ledger import OUTBOX_LEDGER

TENANT = "t-failover"
PLANS = 10
CHANGES = 290


async def test_no_answer_from_a_stream_that_exists_is_an_outage_even_when_jetstream_cannot_say(
    lab_dir: Path,
) -> None:
    cluster = NatsCluster(lab_dir / "nats")
    cluster.start()
    nc = await nats.connect(servers=cluster.urls.split(","), max_reconnect_attempts=-1, error_cb=_quiet)
    try:
        js = nc.jetstream()
        await until_jetstream_answers(js)
        await js.add_stream(StreamConfig(name="SOLO", subjects=["solo.>"], num_replicas=1))
        home = await stream_leader(js, "SOLO")
        publish = JetStreamEventPublisher(nc, ack_timeout_s=2.0, lookup_timeout_s=2.0)

        # When the only server holding the stream is killed (JetStream, on the other two, still answers)
        cluster.kill(home)
        await until(lambda: nc.is_connected, 30, "the client is connected to a surviving node")
        await until_jetstream_answers(js)
        # Then a publish nobody answers is the broker's fault: JetStream says a stream takes the subject
        with pytest.raises(
            BrokerUnavailable, match=re.escape("stream SOLO takes 'solo.during' but did not answer")
        ):
            await publish("solo.during", b"{}", {"Nats-Msg-Id": str(uuid.uuid4())})
        # while a subject no stream takes is still the row's
        with pytest.raises(
            PermanentPublishError, match=re.escape("no stream takes subject 'nowhere.during'")
        ):
            await publish("nowhere.during", b"{}", {"Nats-Msg-Id": str(uuid.uuid4())})

        # When a second server dies, JetStream has no quorum and cannot say what takes a subject
        cluster.kill(next(node.name for node in cluster.nodes if node.name != home and node.server.pid))
        await until(lambda: nc.is_connected, 30, "the client is connected to the last node")
        # Then no subject is blamed on the row, not even one no stream takes (the first tries may time
        # out while the client notices its node is gone: an outage too)
        for subject in ("solo.after", "nowhere.after"):
            verdicts = await failures_until(publish, subject, "JetStream could not say whether one takes it")
            assert all(isinstance(verdict, BrokerUnavailable) for verdict in verdicts), verdicts
    finally:
        await nc.close()
        cluster.stop()


async def test_the_events_stream_leader_killed_under_load_parks_and_loses_no_event(
    cluster_lab: Lab, keys: DevKeys
) -> None:
    lab = cluster_lab
    assert lab.cluster is not None
    service = lab.serve("a", stream_replicas=3)
    await service.ready()
    nc = await lab.connect()
    try:
        js = nc.jetstream()
        # The service creates its streams with three replicas, as production runs them
        for stream in (COMMAND_STREAM, EVENT_STREAM, AUDIT_STREAM):
            await until_replicated(js, stream, 3)
        load = CommandLoad(nc, keys.mint(tenant_id=TENANT, roles=["clinician"]))
        await load.start()
        await load.create_plans(PLANS)

        # Given a few hundred commands in flight, their events flowing through the relay
        resends = Counter[str]()
        sending = asyncio.create_task(send_changes_resending(load, CHANGES, random.Random(15), resends))
        await load.at_least_answered(PLANS + 60, timeout=120)
        leader = await stream_leader(js, EVENT_STREAM)
        waiting = await lab.scalar("SELECT count(*) FROM outbox")

        # When the node leading CAREPLAN_EVENTS is killed with SIGKILL
        lab.cluster.kill(leader)
        killed_at = time.monotonic()
        new_leader = await stream_leader(nc.jetstream(timeout=1.0), EVENT_STREAM, other_than=leader)
        elected_s = time.monotonic() - killed_at
        await sending

        # Then every command is answered (a reply lost with the node is asked for, as callers do)
        await outcomes_known(load)
        await until(relay_done(lab), 120, "no outbox row waits for the relay")
        drained_s = time.monotonic() - killed_at
        # and no row was parked, none waits, and every event is on the stream once, in order
        assert await lab.scalar("SELECT count(*) FROM outbox_parked") == 0
        assert await lab.scalar("SELECT count(*) FROM outbox") == 0
        await assert_each_command_applied_once(lab, load)
        await assert_events_once_in_order(lab, load, nc)
        assert not service.log_lines("parked")
        relay_retries = service.log_lines("outbox publish of row")
        assert relay_retries, "the relay never met the election: the scenario tested nothing"

        figures = await event_figures(lab, nc)
        pause_s = await longest_publishing_pause(
            nc, {event_id for (event_id,) in await lab.rows(f"SELECT event_id::text FROM {OUTBOX_LEDGER}")}
        )
        print(
            f"\nevents stream leader {leader} killed with {waiting} outbox rows waiting; {new_leader} led "
            f"after {elected_s:.1f}s; {len(load.sent)} commands ({sum(resends.values())} re-sends, "
            f"{len(load.asked)} replies lost and asked for); {figures['events']} events, "
            f"{figures['parked']} parked, {figures['lost']} lost, {figures['duplicates']} duplicates; "
            f"longest pause in publishing {pause_s:.1f}s; outbox drained {drained_s:.1f}s "
            f"after the kill; relay retries logged: {len(relay_retries)}"
        )
    finally:
        await nc.close()


async def failures_until(
    publish: JetStreamEventPublisher, subject: str, said: str, timeout: float = 60.0
) -> list[Exception]:
    """How publishing to `subject` fails, try after try, until a failure says `said` (a meta leader that
    lost its quorum still answers for a few seconds before it steps down)."""
    verdicts: list[Exception] = []
    async with asyncio.timeout(timeout):
        while not any(said in str(verdict) for verdict in verdicts):
            try:
                await publish(subject, b"{}", {"Nats-Msg-Id": str(uuid.uuid4())})
            except Exception as exc:
                verdicts.append(exc)
            else:
                raise AssertionError(f"{subject} was published without a quorum")
            await asyncio.sleep(0.2)
    return verdicts


async def _quiet(exc: Exception) -> None:
    """A killed node's refused reconnects are expected here; nats-py would log a traceback for each."""
