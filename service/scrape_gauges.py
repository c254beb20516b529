"""The gauges of state kept elsewhere (the outbox in Postgres, the consumer and the DLQ in JetStream, the
relay's leadership, the upstream circuits, the signing keys' age, the read replica's lag), read when
Prometheus scrapes rather than polled."""

from __future__ import annotations

import math

from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncEngine

from handlers.nats_consumer import COMMAND_CONSUMER, COMMAND_STREAM, DLQ_STREAM
from handlers.ports import UpstreamServices
from integrations.circuit_breaker import CircuitState
from integrations.identity import JwksSource
from integrations.upstream import circuit_states
from service.telemetry import ServiceMetrics
from storage.outbox_relay import OutboxRelay, outbox_backlog
from storage.read_routing import ReadRouter, replica_lag
from storage.rollout_store import SqlRolloutStore

NATS_TIMEOUT_S = 1.5


def watch_at_scrape(
    metrics: ServiceMetrics,
    *,
    js: JetStreamContext,
    system_engine: AsyncEngine,
    relay: OutboxRelay,
    upstream: UpstreamServices | None,
    signing_keys: JwksSource,
    reads: ReadRouter | None = None,
    rollouts: SqlRolloutStore | None = None,
) -> None:
    async def outbox() -> None:
        backlog = await outbox_backlog(system_engine)
        metrics.outbox_backlog.set(backlog.waiting)
        metrics.outbox_parked.set(backlog.parked)
        metrics.relay_lag.set(backlog.oldest_waiting_s)

    async def consumer() -> None:
        info = await js.consumer_info(COMMAND_STREAM, COMMAND_CONSUMER, timeout=NATS_TIMEOUT_S)
        metrics.consumer_pending.set(info.num_pending or 0)
        metrics.consumer_ack_pending.set(info.num_ack_pending or 0)
        metrics.consumer_redelivered.set(info.num_redelivered or 0)

    async def dlq() -> None:
        info = await js.stream_info(DLQ_STREAM)
        metrics.dlq_messages.set(info.state.messages)

    async def process() -> None:
        metrics.relay_leader.set(1 if relay.is_leader else 0)
        for service, state in (circuit_states(upstream) if upstream else {}).items():
            metrics.upstream_circuit.labels(service).set(0 if state is CircuitState.CLOSED else 1)
        keys_age_s = signing_keys.keys_age_s()
        metrics.jwks_age.set(math.nan if keys_age_s is None else keys_age_s)

    for source, refresh in (("outbox", outbox), ("consumer", consumer), ("dlq", dlq), ("process", process)):
        metrics.on_scrape(source, refresh)
    if rollouts is not None:
        store = rollouts

        async def rollout_progress() -> None:
            pending, age_s = await store.pending()
            metrics.rollout_pending.set(pending)
            metrics.rollout_lag.set(age_s)

        metrics.on_scrape("rollouts", rollout_progress)
    if reads is not None and reads.replica is not None:
        primary, replica = reads.primary, reads.replica

        async def replica_progress() -> None:
            lag = await replica_lag(primary, replica)
            metrics.replica_lag_seconds.set(lag.seconds)
            metrics.replica_lag_bytes.set(lag.bytes)

        metrics.on_scrape("replica", replica_progress)
