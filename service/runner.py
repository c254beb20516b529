"""`careplan serve`: the command worker, the outbox relay and the HTTP app in one process.

Built by `start_service` so tests can run the real thing against throwaway servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

import nats
from aiohttp import web
from faststream.nats import NatsBroker
from nats.aio.client import Client as NatsClient
from sqlalchemy.ext.asyncio import AsyncEngine

from handlers.nats_consumer import (
    Drain,
    mend_pull_timeouts,
)
from handlers.reply_subjects import UnsafeReplyPrefix
from service.scheduler import Scheduler
from service.settings import Settings
from service.telemetry import ServiceMetrics
from service.topology import TopologyRefused, ensure_topology
from service.tracing import TracingRefused, configure_tracing
from service.wiring import (
    Connections,
    NatsCallbacks,
    delivery_policy,
    nats_options,
    scheduler_for,
    wire_service,
)
from storage.database import create_engine
from storage.outbox_relay import OutboxRelay
from storage.reads import runtime_role_problem

log = logging.getLogger(__name__)


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
    rollout_task: asyncio.Task[None] | None = None
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
        for task in (self.relay_task, self.scheduler_task, self.rollout_task):
            if task is not None:
                await task
        with contextlib.suppress(Exception):
            await self.nc.drain()
        await _dispose(self.runtime_engine, self.system_engine, self.read_engine)


async def start_service(settings: Settings) -> RunningService:
    """Check the configuration and the database roles, connect, make sure the streams are as configured,
    wire the service (`service.wiring`) and start it: HTTP first, then intake, relay and scheduler."""
    missing = settings.missing_for_serve()
    if missing:
        raise StartupRefused(f"missing configuration: {', '.join(missing)}")
    try:
        replies = settings.reply_subjects()
    except UnsafeReplyPrefix as exc:
        raise StartupRefused(f"CAREPLAN_REPLY_SUBJECT_PREFIXES: {exc}") from exc
    stopping, connection_lost = asyncio.Event(), asyncio.Event()
    connections = await _connect(settings, stopping, connection_lost)
    wiring = wire_service(
        settings,
        connections,
        replies,
        stopping=stopping,
        command_events=NatsCallbacks("commands", stopping, connection_lost),
    )
    http_runner = web.AppRunner(wiring.app, access_log=None, shutdown_timeout=settings.shutdown_grace_s)
    await http_runner.setup()
    site = web.TCPSite(http_runner, settings.http_host, settings.http_port)
    await site.start()
    port = _bound_port(site, settings.http_port)

    await wiring.broker.start()
    mend_pull_timeouts(wiring.command_subscriber)
    service = RunningService(
        settings,
        wiring.broker,
        connections.nc,
        connections.runtime_engine,
        connections.system_engine,
        wiring.relay,
        http_runner,
        port,
        wiring.metrics,
        wiring.drain,
        stopping=stopping,
        connection_lost=connection_lost,
        read_engine=connections.read_engine,
    )
    service.relay_task = asyncio.create_task(wiring.relay.run(service.stop_event), name="outbox-relay")
    service.scheduler = wiring.scheduler
    service.scheduler_task = asyncio.create_task(wiring.scheduler.run(service.stop_event), name="scheduler")
    service.rollout_task = asyncio.create_task(wiring.rollouts.run(service.stop_event), name="rollouts")
    log.info("care-plan-service started", extra={"http": service.http_url})
    return service


async def _connect(
    settings: Settings, stopping: asyncio.Event, connection_lost: asyncio.Event
) -> Connections:
    """The database pools (refused when a role would slip past RLS) and the NATS connection, with the
    streams as configured; what was opened is closed again on a refusal."""
    assert settings.database_url and settings.system_database_url
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
    relay_events = NatsCallbacks("relay", stopping, connection_lost)
    nc = await nats.connect(
        servers=settings.nats_servers(), name="careplan-relay", **nats_options(relay_events)
    )
    try:
        await ensure_topology(nc.jetstream(), delivery_policy(settings), replicas=settings.stream_replicas)
    except TopologyRefused as exc:
        stopping.set()  # a close of our own: not "closed for good"
        await nc.close()
        await _dispose(runtime_engine, system_engine, read_engine)
        raise StartupRefused(f"refusing to start: {exc}") from exc
    return Connections(runtime_engine, system_engine, read_engine, nc)


async def _dispose(*engines: AsyncEngine | None) -> None:
    """Close the pools of the engines that exist (the read engine does only with a replica configured)."""
    for engine in engines:
        if engine is not None:
            await engine.dispose()


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


def _bound_port(site: web.TCPSite, configured: int) -> int:
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    for sock in sockets:
        return int(sock.getsockname()[1])
    return configured


async def serve_until_signalled(settings: Settings, on_ready: Callable[[], None] | None = None) -> int:
    """Run until SIGTERM or SIGINT (exit code 0) or a NATS connection is lost for good (1), then drain.
    Tracing as the OTEL_* variables say (service.tracing); the spans still buffered go out at the end."""
    try:
        tracer_provider = configure_tracing()
    except TracingRefused as exc:
        raise StartupRefused(str(exc)) from exc
    service = await start_service(settings)
    nats_shown = settings.nats_servers_shown()
    print(f"care-plan-service ready: HTTP {service.http_url}, NATS {nats_shown}", flush=True)
    if on_ready is not None:
        on_ready()
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
        if tracer_provider is not None:
            await asyncio.to_thread(tracer_provider.shutdown)
    return 1 if service.connection_lost.is_set() else 0
