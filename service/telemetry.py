"""Prometheus metrics and the per-command log line (CONTRACT §7). Counters and histograms move as work is
done; gauges of state kept elsewhere (outbox, consumer, dead letters) are read when Prometheus scrapes.
Labels are bounded: command names from the registry, route templates, status codes; never a tenant or an
id, which would make a series per patient."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder

from handlers.ports import CommandObservation
from service.build_info import build_info

log = logging.getLogger(__name__)
command_log = logging.getLogger("careplan.commands")

_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
Refresh = Callable[[], Awaitable[None]]
# A scrape must answer even when Postgres or NATS does not: each refresh gets this long, then the gauge
# keeps its last value (and `careplan_scrape_errors_total` says so).
REFRESH_TIMEOUT_S = 2.0


class ServiceMetrics:
    """One registry per service instance (tests run several in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # The platform's standard series, as every Python service exports them: process_* (CPU, memory, open
        # files, start time), python_gc_* and python_info.
        ProcessCollector(registry=r)
        GCCollector(registry=r)
        PlatformCollector(registry=r)
        build = build_info()
        self.build_info = Info("careplan_build", "The running build", registry=r)
        self.build_info.info({"version": build.version, "commit": build.commit or "", "python": build.python})
        self.commands = Counter(
            "careplan_commands",
            "Commands processed, by command, transport and outcome (ok, an error code, unavailable, error)",
            ["command", "transport", "outcome"],
            registry=r,
        )
        self.command_duration = Histogram(
            "careplan_command_duration_seconds",
            "Time from receipt to outcome of one delivery of a command",
            ["command", "transport"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.command_replays = Counter(
            "careplan_command_replays",
            "Commands answered from the command log: a duplicate or redelivery, changing nothing",
            ["transport"],
            registry=r,
        )
        self.redeliveries = Counter(
            "careplan_command_redeliveries",
            "Deliveries of a command after its first",
            ["command"],
            registry=r,
        )
        self.dead_letters = Counter(
            "careplan_command_dead_letters",
            "Commands this process sent to the dead-letter stream",
            ["command"],
            registry=r,
        )
        self.replies_refused = Counter(
            "careplan_replies_refused",
            "Replies not sent because their subject is not an allowed inbox (kind: command or query)",
            ["kind", "reason"],
            registry=r,
        )
        self.dlq_messages = Gauge("careplan_dlq_messages", "Messages in the CAREPLAN_DLQ stream", registry=r)
        self.consumer_pending = Gauge(
            "careplan_consumer_pending", "Commands in the stream not yet delivered to any worker", registry=r
        )
        self.consumer_ack_pending = Gauge(
            "careplan_consumer_ack_pending", "Commands delivered and not yet acknowledged", registry=r
        )
        self.consumer_redelivered = Gauge(
            "careplan_consumer_redelivered",
            "Commands delivered more than once and not yet acknowledged",
            registry=r,
        )
        self.outbox_backlog = Gauge(
            "careplan_outbox_backlog",
            "Outbox rows waiting to be published (parked rows excluded)",
            registry=r,
        )
        self.outbox_parked = Gauge(
            "careplan_outbox_parked",
            "Outbox rows the broker can never take, parked for an operator",
            registry=r,
        )
        self.relay_lag = Gauge(
            "careplan_outbox_relay_lag_seconds",
            "Age of the oldest outbox row waiting to be published (0 when none waits)",
            registry=r,
        )
        self.rollout_plans = Counter(
            "careplan_rollout_plans",
            "Plans of program rollouts this process settled, by state (migrated, skipped)",
            ["state"],
            registry=r,
        )
        self.rollout_conflicts = Counter(
            "careplan_rollout_conflicts",
            "Items a rollout left alone because clinicians had started them (reported as kept)",
            registry=r,
        )
        self.rollout_pending = Gauge(
            "careplan_rollout_pending_plans", "Plans still pending in running rollouts", registry=r
        )
        self.rollout_lag = Gauge(
            "careplan_rollout_lag_seconds",
            "Age of the oldest running rollout with plans pending (0 when none)",
            registry=r,
        )
        self.events_published = Counter(
            "careplan_outbox_published", "Outbox rows this process published to JetStream", registry=r
        )
        self.relay_leader = Gauge(
            "careplan_relay_leader", "1 while this process leads the outbox relay", registry=r
        )
        self.http_requests = Counter(
            "careplan_http_requests",
            "HTTP requests, by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "careplan_http_request_duration_seconds",
            "HTTP request latency, by route template and method",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_circuit = Gauge(
            "careplan_upstream_circuit_open",
            "1 while an upstream service's circuit is open or half-open (failing fast), else 0",
            ["service"],
            registry=r,
        )
        self.jwks_refreshes = Counter(
            "careplan_jwks_refreshes",
            "Fetches of identity-service's JWKS, by outcome (ok, failed)",
            ["outcome"],
            registry=r,
        )
        for outcome in ("ok", "failed"):
            self.jwks_refreshes.labels(outcome)  # a failure rate of 0 is a series, not a gap
        self.jwks_age = Gauge(
            "careplan_jwks_age_seconds",
            "Seconds since identity-service's JWKS last answered: the age of the keys verifying tokens "
            "(NaN before the first fetch)",
            registry=r,
        )
        self.jwks_age.set(math.nan)
        self.ready = Gauge("careplan_ready", "1 while /readyz would answer 200", registry=r)
        self.fhir_reads = Counter(
            "careplan_fhir_reads",
            "FHIR reads (read, vread, history, search with its includes, Provenance), by the database that "
            "answered: primary or replica",
            ["target"],
            registry=r,
        )
        self.replica_waits = Histogram(
            "careplan_replica_wait_seconds",
            "Time reads sent with Careplan-Position waited for the replica to replay it, by outcome "
            "(caught_up, or gave_up and read the primary)",
            ["outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.replica_fallbacks = Counter(
            "careplan_replica_fallbacks",
            "Reads meant for the replica that the primary answered: behind (the wait was spent) or "
            "unavailable (the replica failed a read, or did within the last seconds)",
            ["reason"],
            registry=r,
        )
        self.replica_lag_seconds = Gauge(
            "careplan_replica_lag_seconds",
            "Seconds since the read replica last replayed a commit, while it has WAL left to replay (0 when "
            "caught up; NaN without a replica)",
            registry=r,
        )
        self.replica_lag_bytes = Gauge(
            "careplan_replica_lag_bytes",
            "WAL bytes the primary has flushed and the read replica has not replayed (NaN without one)",
            registry=r,
        )
        for target in ("primary", "replica"):
            self.fhir_reads.labels(target)
        for outcome in ("caught_up", "gave_up"):
            self.replica_waits.labels(outcome)
        for reason in ("behind", "unavailable"):
            self.replica_fallbacks.labels(reason)
        self.replica_lag_seconds.set(math.nan)
        self.replica_lag_bytes.set(math.nan)
        self.scrape_errors = Counter(
            "careplan_scrape_errors",
            "Gauge refreshes that failed or timed out during a scrape",
            ["source"],
            registry=r,
        )
        self._refreshes: dict[str, Refresh] = {}

    def on_scrape(self, source: str, refresh: Refresh) -> None:
        """Run `refresh` (which sets gauges) before each scrape."""
        self._refreshes[source] = refresh

    async def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """What Prometheus scrapes, in the format its `Accept` asks for (text 0.0.4 by default, or
        OpenMetrics), gauges refreshed first (concurrently, each bounded)."""

        async def refresh(source: str, run: Refresh) -> None:
            try:
                await asyncio.wait_for(run(), REFRESH_TIMEOUT_S)
            except Exception as exc:
                self.scrape_errors.labels(source).inc()
                log.debug("metrics refresh %s failed: %s: %s", source, type(exc).__name__, exc)

        await asyncio.gather(*(refresh(source, run) for source, run in self._refreshes.items()))
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type


class CommandTelemetry:
    """The CommandObserver of a running service: counts every outcome and logs one line per answered
    command (a retried delivery is logged by the consumer, which knows when the next try is)."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self._metrics = metrics

    def command_processed(self, observation: CommandObservation) -> None:
        o = observation
        self._metrics.commands.labels(o.command, o.transport, o.outcome).inc()
        self._metrics.command_duration.labels(o.command, o.transport).observe(o.duration_s)
        if o.replayed:
            self._metrics.command_replays.labels(o.transport).inc()
        if o.outcome in ("unavailable", "error"):
            return  # not answered: the consumer's retry or dead-letter line (or the HTTP line) says it
        level = logging.ERROR if o.status >= 500 else logging.INFO
        command_log.log(
            level,
            "command %s %s",
            o.command,
            o.outcome,
            extra={
                "transport": o.transport,
                "command": o.command,
                "command_id": o.command_id,
                "tenant_id": o.tenant_id,
                "correlation_id": o.correlation_id,
                "outcome": o.outcome,
                "status": o.status,
                "replayed": o.replayed,
                "duration_ms": round(o.duration_s * 1000, 2),
            },
        )

    def command_redelivered(self, command: str, delivery: int) -> None:
        self._metrics.redeliveries.labels(command).inc()

    def command_dead_lettered(self, command: str) -> None:
        self._metrics.dead_letters.labels(command).inc()

    def reply_refused(self, kind: str, reason: str) -> None:
        self._metrics.replies_refused.labels(kind, reason).inc()


class JwksTelemetry:
    """The JwksObserver of a running service: counts the key set's fetches (JwksSource logs them)."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self._metrics = metrics

    def jwks_refreshed(self, outcome: str) -> None:
        self._metrics.jwks_refreshes.labels(outcome).inc()


class RolloutTelemetry:
    """The rollout worker's observer: plans settled and the conflicts they reported."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self._metrics = metrics

    def plan_settled(self, state: str, kept: int) -> None:
        self._metrics.rollout_plans.labels(state).inc()
        if kept:
            self._metrics.rollout_conflicts.inc(kept)


class ReadTelemetry:
    """The ReadObserver of a running service: where FHIR reads ran, how long they waited for the replica."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self._metrics = metrics

    def read_served(self, target: str) -> None:
        self._metrics.fhir_reads.labels(target).inc()

    def replica_waited(self, seconds: float, caught_up: bool) -> None:
        self._metrics.replica_waits.labels("caught_up" if caught_up else "gave_up").observe(seconds)

    def fell_back(self, reason: str) -> None:
        self._metrics.replica_fallbacks.labels(reason).inc()
