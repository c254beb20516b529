"""The composition root's pure half: from settings and the connections `service.runner` opened, build the
objects `careplan serve` runs — processor, broker and subscribers, relay, HTTP app, readiness — without any
I/O, so what is wired to what reads in one place and start-up (`start_service`) stays about starting."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web
from faststream.nats import NatsBroker
from nats.aio.client import Client as NatsClient
from sqlalchemy.ext.asyncio import AsyncEngine

from fhir_read.smart import SmartEndpoints
from handlers.event_publisher import JetStreamEventPublisher
from handlers.nats_consumer import (
    COMMAND_CONSUMER,
    COMMAND_STREAM,
    DeliveryPolicy,
    Drain,
    register_command_consumer,
    register_outcome_query,
    register_rollout_query,
)
from handlers.pipeline import CommandProcessor
from handlers.ports import UpstreamServices
from handlers.registry import standard_commands
from handlers.reply_subjects import ReplySubjects
from integrations.identity import JwksSource, JwtVerifier
from integrations.upstream import UpstreamSettings, UpstreamSubjects, nats_upstream_services
from service.http import create_http_app
from service.rollouts import RolloutWorker
from service.scheduler import Scheduler, utc_now
from service.scrape_gauges import watch_at_scrape
from service.settings import Settings
from service.telemetry import CommandTelemetry, JwksTelemetry, ReadTelemetry, RolloutTelemetry, ServiceMetrics
from storage.outbox_relay import OutboxRelay, RelaySettings
from storage.read_routing import ReadRouter
from storage.reads import ping, read_command_outcome
from storage.rollout_store import SqlRolloutStore
from storage.schedule_store import SqlScheduleStore
from storage.transaction import SqlTransaction

log = logging.getLogger("service.runner")

# FastStream cancels handlers still running this long after our own drain deadline (which should have
# handed them back already).
FASTSTREAM_GRACE_MARGIN_S = 5.0
# A NATS node that stops dead without closing its sockets (a paused VM, a partition, SIGSTOP) is noticed only
# by unanswered pings: nats-py's defaults (every 120 s, two outstanding) take up to six minutes, during which
# the connection's commands and events stall. Every 5 s with two outstanding, the connection moves to a live
# node within 15 s.
NATS_PING_INTERVAL_S = 5
NATS_MAX_OUTSTANDING_PINGS = 2


@dataclass(frozen=True)
class Connections:
    """What start-up opened and checked: the database pools and the relay's (and upstream's) NATS link."""

    runtime_engine: AsyncEngine
    system_engine: AsyncEngine
    read_engine: AsyncEngine | None
    nc: NatsClient


@dataclass(frozen=True)
class Wiring:
    """The service, built and not yet started."""

    broker: NatsBroker
    command_subscriber: Any  # FastStream's subscriber, for `mend_pull_timeouts` once the broker runs
    relay: OutboxRelay
    app: web.Application
    metrics: ServiceMetrics
    drain: Drain
    scheduler: Scheduler
    rollouts: RolloutWorker


def delivery_policy(settings: Settings) -> DeliveryPolicy:
    return DeliveryPolicy(
        max_deliver=settings.max_deliver,
        ack_wait_s=settings.ack_wait_s,
        backoff_max_s=settings.nak_backoff_max_s,
        workers=settings.workers,
    )


def wire_service(
    settings: Settings,
    connections: Connections,
    replies: ReplySubjects,
    *,
    stopping: asyncio.Event,
    command_events: NatsCallbacks,
) -> Wiring:
    """Every part of `careplan serve`, connected to the others."""
    runtime_engine, nc = connections.runtime_engine, connections.nc
    assert settings.jwks_url
    metrics = ServiceMetrics()
    signing_keys = JwksSource(
        settings.jwks_url,
        ttl_s=settings.jwks_cache_ttl_s,
        max_stale_s=settings.jwks_max_stale_s,
        observer=JwksTelemetry(metrics),
    )
    verifier = JwtVerifier(signing_keys, issuer=settings.jwt_issuer, audience=settings.jwt_audience or None)
    telemetry = CommandTelemetry(metrics)
    upstream = upstream_services(settings, nc)
    processor = CommandProcessor(
        commands=standard_commands(),
        verifier=verifier,
        transactions=lambda tenant_id: SqlTransaction(runtime_engine, tenant_id),
        clock=utc_now,
        new_id=uuid.uuid4,
        role_permissions=settings.role_table(),
        upstream=upstream,
        observer=telemetry,
    )
    publish = JetStreamEventPublisher(nc, on_published=metrics.events_published.inc)
    relay = OutboxRelay(
        connections.system_engine, publish, RelaySettings(poll_interval_s=settings.relay_poll_interval_s)
    )
    # FastStream's per-message "Received"/"Processed" lines at DEBUG: two INFO lines per delivery drown the
    # lines that matter (retries, dead letters) and cost I/O under load.
    broker = NatsBroker(
        settings.nats_servers(),
        graceful_timeout=settings.shutdown_grace_s + FASTSTREAM_GRACE_MARGIN_S,
        logger=log,
        log_level=logging.DEBUG,
        **nats_options(command_events),
    )
    drain = Drain()
    command_subscriber = register_command_consumer(
        broker, processor, delivery_policy(settings), telemetry, drain=drain, replies=replies
    )
    register_outcome_query(
        broker,
        verifier,
        lambda tenant_id, command_id: read_command_outcome(runtime_engine, tenant_id, command_id),
        replies=replies,
        observer=telemetry,
    )
    rollout_store = SqlRolloutStore(connections.system_engine, runtime_engine)
    register_rollout_query(broker, verifier, rollout_store.read, replies=replies, observer=telemetry)
    readiness = _readiness(broker, connections, metrics, stopping)

    async def refresh_readiness() -> None:
        await readiness()  # sets careplan_ready

    metrics.on_scrape("readiness", refresh_readiness)
    reads = ReadRouter(
        runtime_engine,
        connections.read_engine,
        read_wait_s=settings.read_wait_ms / 1000,
        observer=ReadTelemetry(metrics),
    )
    watch_at_scrape(
        metrics,
        js=nc.jetstream(),
        system_engine=connections.system_engine,
        relay=relay,
        upstream=upstream,
        signing_keys=signing_keys,
        reads=reads,
        rollouts=rollout_store,
    )
    app = create_http_app(
        runtime_engine,
        verifier,
        readiness,
        cursor_secret=settings.cursor_secret.encode() if settings.cursor_secret else None,
        public_base_url=settings.public_base_url,
        relay_role=lambda: "leader" if relay.is_leader else "standby",
        processor=processor,
        metrics=metrics,
        reads=reads,
        read_rollout=rollout_store.read,
        smart=SmartEndpoints(
            issuer=settings.jwt_issuer,
            authorization_endpoint=settings.smart_authorization_endpoint,
            token_endpoint=settings.smart_token_endpoint,
        ),
    )
    return Wiring(
        broker,
        command_subscriber,
        relay,
        app,
        metrics,
        drain,
        scheduler_for(settings, connections.system_engine),
        RolloutWorker(
            rollout_store,
            concurrency=settings.rollout_concurrency,
            poll_interval_s=settings.rollout_poll_interval_s,
            observer=RolloutTelemetry(metrics),
        ),
    )


def _readiness(
    broker: NatsBroker, connections: Connections, metrics: ServiceMetrics, stopping: asyncio.Event
) -> Callable[[], Awaitable[dict[str, bool]]]:
    js = connections.nc.jetstream()

    async def readiness() -> dict[str, bool]:
        checks = {
            "accepting": not stopping.is_set(),
            "database": True,
            "nats": broker_connected(broker) and connections.nc.is_connected,
            "consumer": True,
        }
        if stopping.is_set():  # draining: say so at once, without waiting on the dependencies
            metrics.ready.set(0)
            return checks
        try:
            await ping(connections.runtime_engine)
        except Exception:
            checks["database"] = False
        try:
            await js.consumer_info(COMMAND_STREAM, COMMAND_CONSUMER, timeout=2.0)
        except Exception:
            checks["consumer"] = False
        metrics.ready.set(1 if all(checks.values()) else 0)
        return checks

    return readiness


def nats_options(events: NatsCallbacks) -> dict[str, Any]:
    """What both of the service's NATS connections (commands, and relay with upstream) are opened with:
    reconnect for ever, leave a silent node within 15 s, one log line per connection event."""
    return {
        "max_reconnect_attempts": -1,
        "ping_interval": NATS_PING_INTERVAL_S,
        "max_outstanding_pings": NATS_MAX_OUTSTANDING_PINGS,
        "error_cb": events.error,
        "disconnected_cb": events.disconnected,
        "reconnected_cb": events.reconnected,
        "closed_cb": events.closed,
    }


@dataclass(frozen=True)
class NatsCallbacks:
    """One log line per NATS connection event, instead of nats-py's traceback per reconnect attempt.
    A connection closed for good (not by our own stop) ends the process: nothing would be served."""

    connection: str
    stopping: asyncio.Event
    lost_for_good: asyncio.Event

    async def error(self, exc: Exception) -> None:
        log.warning("NATS %s connection: %s: %s", self.connection, type(exc).__name__, exc)

    async def disconnected(self) -> None:
        if not self.stopping.is_set():  # not our own close
            log.warning("NATS %s connection lost; reconnecting", self.connection)

    async def reconnected(self) -> None:
        log.info("NATS %s connection re-established", self.connection)

    async def closed(self) -> None:
        if not self.stopping.is_set():
            log.error(
                "NATS %s connection closed for good; stopping so the supervisor restarts us", self.connection
            )
            self.lost_for_good.set()


def upstream_services(settings: Settings, nc: NatsClient) -> UpstreamServices | None:
    """The NATS adapters of the services we do not own; None when `upstream_mode` is `off` (ids and
    codes are then taken as given, as in `careplan dev`)."""
    if settings.upstream_mode == "off":
        return None
    return nats_upstream_services(
        nc,
        UpstreamSubjects(
            registration=settings.upstream_registration_subject,
            scheduling=settings.upstream_scheduling_subject,
            providers=settings.upstream_providers_subject,
            terminology=settings.upstream_terminology_subject,
        ),
        UpstreamSettings(
            subject="",
            timeout_s=settings.upstream_timeout_ms / 1000,
            cache_ttl_s=settings.upstream_cache_ttl_s,
            breaker_failures=settings.upstream_breaker_failures,
            breaker_reset_s=settings.upstream_breaker_reset_s,
        ),
        settings.terminology_system_set(),
    )


def scheduler_for(settings: Settings, system_engine: AsyncEngine) -> Scheduler:
    return Scheduler(
        SqlScheduleStore(system_engine),
        interval_s=settings.scheduler_interval_s,
        metrics_interval_s=settings.metrics_interval_s,
        timezone=ZoneInfo(settings.scheduler_timezone),
    )


def broker_connected(broker: NatsBroker) -> bool:
    try:
        return bool(broker.connection.is_connected)
    except Exception:  # not connected yet: FastStream raises on a missing connection
        return False
