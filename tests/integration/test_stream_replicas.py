"""CAREPLAN_STREAM_REPLICAS on a three-node nats-server cluster (CONTRACT §11): a start raises the replicas
of every stream the service owns, and its durable consumer follows; a start asking for fewer lowers none.

(Fresh streams created at R3 and what they survive: tests/faults/test_cluster_node_failures.py. A single
server refusing R3: tests/e2e/test_stream_replicas.py.)"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NatsClient

from handlers.nats_consumer import COMMAND_CONSUMER, COMMAND_STREAM, DeliveryPolicy
from service.topology import STREAMS, ensure_topology
from tests.faults.cluster import NatsCluster, until_replicated

POLICY = DeliveryPolicy(max_deliver=5, ack_wait_s=30, backoff_max_s=30, workers=4)


@pytest.fixture
async def cluster_client(tmp_path: Path) -> AsyncIterator[NatsClient]:
    cluster = NatsCluster(tmp_path / "nats")
    cluster.start()
    try:
        await cluster.meta_leader()
        await cluster.all_peers_current()
        nc = await nats.connect(servers=cluster.urls.split(","), max_reconnect_attempts=-1)
        try:
            yield nc
        finally:
            await nc.close()
    finally:
        cluster.stop()


async def test_a_start_raises_every_stream_and_the_consumer_and_a_later_start_lowers_none(
    cluster_client: NatsClient, caplog: pytest.LogCaptureFixture
) -> None:
    js = cluster_client.jetstream()
    # Given the service's streams and consumer as an earlier version made them, one replica each, and
    # commands waiting in the commands stream
    await ensure_topology(js, POLICY, replicas=1)
    for n in range(5):
        await js.publish(f"careplan.cmd.careplan.create.{n}", b"{}")

    # When the service starts with CAREPLAN_STREAM_REPLICAS=3
    await ensure_topology(js, POLICY, replicas=3)

    # Then every stream is replicated three times, every replica caught up, the commands still there
    for config in STREAMS:
        assert (await js.stream_info(str(config.name))).config.num_replicas == 3
        await until_replicated(js, str(config.name), 3)
    assert (await js.stream_info(COMMAND_STREAM)).state.messages == 5
    # and the durable consumer follows its stream: three replicas, caught up, the commands still pending
    await until_replicated(js, COMMAND_STREAM, 3, consumer=COMMAND_CONSUMER)
    assert (await js.consumer_info(COMMAND_STREAM, COMMAND_CONSUMER)).num_pending == 5

    # When a replica starts with the default, one replica
    with caplog.at_level(logging.WARNING, logger="service.topology"):
        await ensure_topology(js, POLICY, replicas=1)

    # Then nothing is lowered, and the start says so for every stream
    for config in STREAMS:
        assert (await js.stream_info(str(config.name))).config.num_replicas == 3
    consumer = (await js.consumer_info(COMMAND_STREAM, COMMAND_CONSUMER)).cluster
    assert consumer is not None and len(consumer.replicas or []) == 2
    kept = [r.getMessage() for r in caplog.records if "keeps its 3 replicas" in r.getMessage()]
    assert len(kept) == len(STREAMS), kept
