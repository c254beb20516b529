"""`careplan serve`: the command worker, the outbox relay and the HTTP app in one process.

Built by `start_service` so tests can run the real thing against throwaway servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import uuid
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

import nats
from aiohttp import web
from faststream.nats import NatsBroker
from nats.aio.client import Client as NatsClient
from sqlalchemy.ext.asyncio import AsyncEngine

from handlers.event_publisher import JetStreamEventPublisher
from handlers.nats_consumer import (
    COMMAND_CONSUMER,
    COMMAND_STREAM,
    DeliveryPolicy,
    Drain,
    mend_pull_timeouts,
    register_command_consumer,
    register_outcome_query,
)
from handlers.pipeline import CommandProcessor
from handlers.ports import UpstreamServices
from handlers.registry import standard_commands
from handlers.reply_subjects import UnsafeReplyPrefix
from integrations.identity import JwksSource, JwtVerifier
from integrations.upstream import UpstreamSettings, UpstreamSubjects, nats_upstream_services
from service.http import create_http_app
from service.scheduler import Scheduler, utc_now
from service.scrape_gauges import watch_at_scrape
from service.settings import Settings
from service.telemetry import CommandTelemetry, JwksTelemetry, ReadTelemetry, ServiceMetrics
from service.topology import TopologyRefused, ensure_topology
from storage.database import create_engine
from storage.outbox_relay import OutboxRelay, RelaySettings
from storage.read_routing import ReadRouter
from storage.reads import ping, read_command_outcome, runtime_role_problem
from storage.schedule_store import SqlScheduleStore
from storage.transaction import SqlTransaction

log = logging.getLogger(__name__)


# FastStream cancels handlers still running this long after our own drain deadline (which should have
# handed them back already).
FASTSTREAM_GRACE_MARGIN_S = 5.0
# A NATS node that stops dead without closing its sockets (a paused VM, a partition, SIGSTOP) is noticed only
# by unanswered pings: nats-py's defaults (every 120 s, two outstanding) take up to six minutes, during which
# the connection's commands and events stall. Every 5 s with two outstanding, the connection moves to a live
# node within 15 s.
NATS_PING_INTERVAL_S = 5
NATS_MAX_OUTSTANDING_PINGS = 2


class StartupRefused(RuntimeError):
    """The service must not start as configured; the message says why, in one line."""


@dataclass
class RunningService:
    settings: Settings
    broker: NatsBroker
    nc: NatsClient
    runtime_engine: AsyncEngine
    system_engine: AsyncEngine
    relay: OutboxRelay
    http_runner: web.AppRunner
    http_port: int
    metrics: ServiceMetrics
    drain: Drain
    stopping: asyncio.Event = field(default_factory=asyncio.Event)  # set first: readiness goes false
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)  # the relay and scheduler stop
    connection_lost: asyncio.Event = field(default_factory=asyncio.Event)  # a NATS connection closed for good
    relay_task: asyncio.Task[None] | None = None
    scheduler: Scheduler | None = None
    scheduler_task: asyncio.Task[None] | None = None
    read_engine: AsyncEngine | None = None  # CAREPLAN_READ_DATABASE_URL's replica, when set

    @property
    def http_url(self) -> str:
        return f"http://{self.settings.http_host}:{self.http_port}"

    async def stop(self) -> None:
        """Drain, as a supervisor expects on SIGTERM: readiness goes false first (and stays false for
        `drain_delay_s`, so load balancers stop sending); then intake stops while commands and requests in
        flight finish within `shutdown_grace_s` (a command still running then is handed back to the stream
        for another replica); the relay publishes what they committed; connections close."""
        self.stopping.set()
        if self.settings.drain_delay_s:
            await asyncio.sleep(self.settings.drain_delay_s)
        # Commands get the grace period from now (then they are handed back), HTTP requests the same (the
        # runner's shutdown_timeout); FastStream's own graceful_timeout is a little longer, never reached.
        self.drain.begin(self.settings.shutdown_grace_s)
        await asyncio.gather(self.broker.stop(), self.http_runner.cleanup())
        self.stop_event.set()
        for task in (self.relay_task, self.scheduler_task):
            if task is not None:
                await task
        with contextlib.suppress(Exception):
            await self.nc.drain()
        await _dispose(self.runtime_engine, self.system_engine, self.read_engine)


async def start_service(settings: Settings) -> RunningService:
    missing = settings.missing_for_serve()
    if missing:
        raise StartupRefused(f"missing configuration: {', '.join(missing)}")
    try:
        replies = settings.reply_subjects()
    except UnsafeReplyPrefix as exc:
        raise StartupRefused(f"CAREPLAN_REPLY_SUBJECT_PREFIXES: {exc}") from exc
    assert settings.database_url and settings.system_database_url and settings.jwks_url
    runtime_engine = create_engine(settings.database_url, pool_size=settings.workers + 4)
    system_engine = create_engine(
        settings.system_database_url, pool_size=4, application_name="careplan-relay"
    )
    read_engine = (
        create_engine(
            settings.read_database_url, pool_size=settings.workers + 4, application_name="careplan-reads"
        )
        if settings.read_database_url
        else None
    )
    try:
        problem = await runtime_role_problem(runtime_engine)
        if problem:
            raise StartupRefused(f"refusing to start: {problem}")
        # The replica has the primary's roles: the same role must be as bound by RLS there.
        problem = await runtime_role_problem(read_engine) if read_engine is not None else None
        if problem:
            raise StartupRefused(f"refusing to start: CAREPLAN_READ_DATABASE_URL: {problem}")
    except BaseException:
        await _dispose(runtime_engine, system_engine, read_engine)
        raise

    policy = DeliveryPolicy(
        max_deliver=settings.max_deliver,
        ack_wait_s=settings.ack_wait_s,
        backoff_max_s=settings.nak_backoff_max_s,
        workers=settings.workers,
    )
    metrics = ServiceMetrics()
    signing_keys = JwksSource(
        settings.jwks_url,
        ttl_s=settings.jwks_cache_ttl_s,
        max_stale_s=settings.jwks_max_stale_s,
        observer=JwksTelemetry(metrics),
    )
    verifier = JwtVerifier(signing_keys, issuer=settings.jwt_issuer, audience=settings.jwt_audience or None)
    stopping, connection_lost = asyncio.Event(), asyncio.Event()
    relay_events = _NatsEvents("relay", stopping, connection_lost)
    command_events = _NatsEvents("commands", stopping, connection_lost)
    telemetry = CommandTelemetry(metrics)
    nc = await nats.connect(
        servers=settings.nats_servers(),
        name="careplan-relay",
        max_reconnect_attempts=-1,
        ping_interval=NATS_PING_INTERVAL_S,
        max_outstanding_pings=NATS_MAX_OUTSTANDING_PINGS,
        error_cb=relay_events.error,
        disconnected_cb=relay_events.disconnected,
        reconnected_cb=relay_events.reconnected,
        closed_cb=relay_events.closed,
    )
    js = nc.jetstream()
    try:
        await ensure_topology(js, policy, replicas=settings.stream_replicas)
    except TopologyRefused as exc:
        stopping.set()  # a close of our own: not "closed for good"
        await nc.close()
        await _dispose(runtime_engine, system_engine, read_engine)
        raise StartupRefused(f"refusing to start: {exc}") from exc
    upstream = upstream_services(settings, nc)
    processor = CommandProcessor(
        verifier=verifier,
        commands=standard_commands(),
        transactions=lambda tenant_id: SqlTransaction(runtime_engine, tenant_id),
        clock=utc_now,
        new_id=uuid.uuid4,
        role_permissions=settings.role_table(),
        upstream=upstream,
        observer=telemetry,
    )

    publish = JetStreamEventPublisher(nc, on_published=metrics.events_published.inc)
    relay = OutboxRelay(system_engine, publish, RelaySettings(poll_interval_s=settings.relay_poll_interval_s))

    # FastStream's per-message "Received"/"Processed" lines at DEBUG: two INFO lines per delivery drown the
    # lines that matter (retries, dead letters) and cost I/O under load.
    broker = NatsBroker(
        settings.nats_servers(),
        graceful_timeout=settings.shutdown_grace_s + FASTSTREAM_GRACE_MARGIN_S,
        max_reconnect_attempts=-1,
        ping_interval=NATS_PING_INTERVAL_S,
        max_outstanding_pings=NATS_MAX_OUTSTANDING_PINGS,
        logger=log,
        log_level=logging.DEBUG,
        error_cb=command_events.error,
        disconnected_cb=command_events.disconnected,
        reconnected_cb=command_events.reconnected,
        closed_cb=command_events.closed,
    )
    drain = Drain()
    command_subscriber = register_command_consumer(
        broker, processor, policy, telemetry, drain=drain, replies=replies
    )
    register_outcome_query(
        broker,
        verifier,
        lambda tenant_id, command_id: read_command_outcome(runtime_engine, tenant_id, command_id),
        replies=replies,
        observer=telemetry,
    )

    async def readiness() -> dict[str, bool]:
        checks = {
            "accepting": not stopping.is_set(),
            "database": True,
            "nats": broker_connected(broker) and nc.is_connected,
            "consumer": True,
        }
        if stopping.is_set():  # draining: say so at once, without waiting on the dependencies
            metrics.ready.set(0)
            return checks
        try:
            await ping(runtime_engine)
        except Exception:
            checks["database"] = False
        try:
            await js.consumer_info(COMMAND_STREAM, COMMAND_CONSUMER, timeout=2.0)
        except Exception:
            checks["consumer"] = False
        metrics.ready.set(1 if all(checks.values()) else 0)
        return checks

    async def refresh_readiness() -> None:
        await readiness()  # sets careplan_ready

    metrics.on_scrape("readiness", refresh_readiness)
    reads = ReadRouter(
        runtime_engine, read_engine, read_wait_s=settings.read_wait_ms / 1000, observer=ReadTelemetry(metrics)
    )
    watch_at_scrape(
        metrics,
        js=js,
        system_engine=system_engine,
        relay=relay,
        upstream=upstream,
        signing_keys=signing_keys,
        reads=reads,
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
    )
    http_runner = web.AppRunner(app, access_log=None, shutdown_timeout=settings.shutdown_grace_s)
    await http_runner.setup()
    site = web.TCPSite(http_runner, settings.http_host, settings.http_port)
    await site.start()
    port = _bound_port(site, settings.http_port)

    await broker.start()
    mend_pull_timeouts(command_subscriber)
    service = RunningService(
        settings,
        broker,
        nc,
        runtime_engine,
        system_engine,
        relay,
        http_runner,
        port,
        metrics,
        drain,
        stopping=stopping,
        connection_lost=connection_lost,
        read_engine=read_engine,
    )
    service.relay_task = asyncio.create_task(relay.run(service.stop_event), name="outbox-relay")
    service.scheduler = scheduler_for(settings, system_engine)
    service.scheduler_task = asyncio.create_task(service.scheduler.run(service.stop_event), name="scheduler")
    log.info("care-plan-service started", extra={"http": service.http_url})
    return service


@dataclass(frozen=True)
class _NatsEvents:
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


async def _dispose(*engines: AsyncEngine | None) -> None:
    """Close the pools of the engines that exist (the read engine does only with a replica configured)."""
    for engine in engines:
        if engine is not None:
            await engine.dispose()


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


async def schedule_until_signalled(settings: Settings) -> None:
    """`careplan scheduler`: the sweeps alone, for deployments that run them apart from the workers."""
    if not settings.system_database_url:
        raise StartupRefused("missing configuration: CAREPLAN_SYSTEM_DATABASE_URL")
    engine = create_engine(settings.system_database_url, pool_size=2, application_name="careplan-scheduler")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"care-plan-service scheduler ready: every {settings.scheduler_interval_s:g}s", flush=True)
    try:
        await scheduler_for(settings, engine).run(stop)
    finally:
        await engine.dispose()


def broker_connected(broker: NatsBroker) -> bool:
    try:
        return bool(broker.connection.is_connected)
    except Exception:  # not connected yet: FastStream raises on a missing connection
        return False


def _bound_port(site: web.TCPSite, configured: int) -> int:
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    for sock in sockets:
        return int(sock.getsockname()[1])
    return configured


async def serve_until_signalled(settings: Settings) -> int:
    """Run until SIGTERM or SIGINT (exit code 0) or a NATS connection is lost for good (1), then drain."""
    service = await start_service(settings)
    nats_shown = settings.nats_servers_shown()
    print(f"care-plan-service ready: HTTP {service.http_url}, NATS {nats_shown}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    # remove_signal_handler restores the *default* action; keep whatever the caller had (careplan dev
    # needs its SIGTERM handler back so a second SIGTERM still unwinds through its cleanup).
    previous = {sig: signal.getsignal(sig) for sig in signals}
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    waits = [asyncio.create_task(stop.wait()), asyncio.create_task(service.connection_lost.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waits:
            waiter.cancel()
        for sig in signals:
            loop.remove_signal_handler(sig)
            signal.signal(sig, previous[sig])
        print("care-plan-service stopping: draining in-flight commands", flush=True)
        await service.stop()
    return 1 if service.connection_lost.is_set() else 0
