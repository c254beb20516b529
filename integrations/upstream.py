"""registration, scheduling, provider directory and terminology over NATS request-reply (CONTRACT §8).

Each request carries the caller's JWT, waits at most the configured timeout, and goes through the
service's circuit breaker. A reply that is not the contract's shape counts as silence, like a time-out or
no responders: `Unavailable`, so the command is retried later. Positive answers are cached briefly (an
existing, active patient stays so for a minute); a "no" never is, so a patient registered a moment
after a refusal is found on the next command."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace
from typing import TypeVar

import nats.errors
import orjson
from cachetools import TTLCache
from nats.aio.client import Client as NatsClient
from opentelemetry.trace import SpanKind
from pydantic import BaseModel, ConfigDict, StrictBool, StrictStr, ValidationError

from domain.errors import Unavailable
from handlers.ports import (
    CodeVerdict,
    EncounterRecord,
    PatientRecord,
    PractitionerRecord,
    UpstreamServices,
)
from handlers.tracing import TRACER, carry_on, nats_attributes
from integrations.circuit_breaker import CircuitBreaker, CircuitState, state_of

log = logging.getLogger(__name__)
R = TypeVar("R", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    subject: str
    timeout_s: float = 2.0
    cache_ttl_s: float = 60.0
    cache_size: int = 10_000
    breaker_failures: int = 5
    breaker_reset_s: float = 10.0


class _Reply(BaseModel):
    # Fields may be added to the contract's replies; the ones we read must have exactly their types.
    model_config = ConfigDict(extra="ignore")


class _PatientReply(_Reply):
    found: StrictBool
    active: StrictBool


class _EncounterReply(_Reply):
    found: StrictBool
    patient_id: StrictStr | None = None


class _PractitionerReply(_Reply):
    found: StrictBool
    active: StrictBool


class _CodeReply(_Reply):
    result: StrictBool
    display: StrictStr | None = None
    message: StrictStr | None = None


class UpstreamClient:
    """One upstream service: request-reply with a timeout, a circuit breaker and a cache of positives."""

    def __init__(
        self,
        nc: NatsClient,
        service: str,
        settings: UpstreamSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self._nc = nc
        self._settings = settings
        self.breaker = CircuitBreaker(
            failure_threshold=settings.breaker_failures, reset_after_s=settings.breaker_reset_s, clock=clock
        )
        self._cache: TTLCache[Hashable, BaseModel] = TTLCache(
            maxsize=settings.cache_size, ttl=settings.cache_ttl_s, timer=clock
        )

    async def ask(
        self,
        request: dict[str, str | None],
        reply_type: type[R],
        *,
        token: str,
        cache_key: Hashable,
        positive: Callable[[R], bool],
    ) -> R:
        cached = self._cache.get(cache_key)
        if isinstance(cached, reply_type):
            return cached
        if not self.breaker.allow():
            raise Unavailable(
                self.service,
                f"circuit open after repeated failures; next try in {self.breaker.retry_in_s():.1f}s",
            )
        try:
            # A span of its own, and the trace carried on to the service asked (its `traceparent`).
            with TRACER.start_as_current_span(
                f"send {self._settings.subject}",
                kind=SpanKind.CLIENT,
                attributes={**nats_attributes("send", self._settings.subject), "peer.service": self.service},
            ):
                message = await self._nc.request(
                    self._settings.subject,
                    orjson.dumps(request),
                    timeout=self._settings.timeout_s,
                    headers=dict(carry_on({"Authorization": f"Bearer {token}"})),
                )
            reply = reply_type.model_validate_json(message.data)
        except asyncio.CancelledError:
            self.breaker.abandon()
            raise
        except nats.errors.NoRespondersError:
            raise self.unanswered(f"no responders on {self._settings.subject}") from None
        except (nats.errors.TimeoutError, TimeoutError):
            raise self.unanswered(f"no reply within {self._settings.timeout_s * 1000:.0f} ms") from None
        except ValidationError as exc:
            raise self.unanswered(f"reply is not the contract's shape ({exc.error_count()} errors)") from None
        except nats.errors.Error as exc:
            raise self.unanswered(f"request failed: {type(exc).__name__}") from None
        if self.breaker.state is not CircuitState.CLOSED:
            log.info("%s answers again; circuit closed", self.service)
        self.breaker.record_success()
        if positive(reply):
            self._cache[cache_key] = reply
        return reply

    def unanswered(self, why: str) -> Unavailable:
        """Count a silence against the breaker; the error to raise for it."""
        was = self.breaker.state
        self.breaker.record_failure()
        if self.breaker.state is CircuitState.OPEN and was is not CircuitState.OPEN:
            log.warning("%s: %s; circuit open for %.1fs", self.service, why, self._settings.breaker_reset_s)
        return Unavailable(self.service, why)


class _NatsAdapter:
    def __init__(self, client: UpstreamClient) -> None:
        self._client = client

    @property
    def client(self) -> UpstreamClient:
        return self._client


class NatsRegistration(_NatsAdapter):
    async def patient(self, tenant_id: str, patient_id: str, *, token: str) -> PatientRecord:
        reply = await self._client.ask(
            {"tenant_id": tenant_id, "patient_id": patient_id},
            _PatientReply,
            token=token,
            cache_key=(tenant_id, patient_id),
            positive=lambda r: r.found and r.active,
        )
        return PatientRecord(found=reply.found, active=reply.active)


class NatsScheduling(_NatsAdapter):
    async def encounter(self, tenant_id: str, encounter_id: str, *, token: str) -> EncounterRecord:
        reply = await self._client.ask(
            {"tenant_id": tenant_id, "encounter_id": encounter_id},
            _EncounterReply,
            token=token,
            cache_key=(tenant_id, encounter_id),
            positive=lambda r: r.found,
        )
        if reply.found and not reply.patient_id:
            # Found, but whose? We cannot tell whether it is the plan's patient's: not an answer.
            raise self._client.unanswered("encounter found without its patient_id")
        return EncounterRecord(found=reply.found, patient_id=reply.patient_id)


class NatsProviderDirectory(_NatsAdapter):
    async def practitioner(self, tenant_id: str, practitioner_id: str, *, token: str) -> PractitionerRecord:
        reply = await self._client.ask(
            {"tenant_id": tenant_id, "practitioner_id": practitioner_id},
            _PractitionerReply,
            token=token,
            cache_key=(tenant_id, practitioner_id),
            positive=lambda r: r.found and r.active,
        )
        return PractitionerRecord(found=reply.found, active=reply.active)


class NatsTerminology(_NatsAdapter):
    async def validate_code(self, system: str, code: str, display: str | None, *, token: str) -> CodeVerdict:
        reply = await self._client.ask(
            {"system": system, "code": code, "display": display},
            _CodeReply,
            token=token,
            cache_key=(system, code, display),
            positive=lambda r: r.result,
        )
        return CodeVerdict(valid=reply.result, display=reply.display, message=reply.message)


@dataclass(frozen=True, slots=True)
class UpstreamSubjects:
    registration: str = "registration.patient.get"
    scheduling: str = "scheduling.encounter.get"
    providers: str = "providers.practitioner.get"
    terminology: str = "terminology.code.validate"


def nats_upstream_services(
    nc: NatsClient,
    subjects: UpstreamSubjects,
    template: UpstreamSettings,
    terminology_systems: frozenset[str],
) -> UpstreamServices:
    """The four adapters on one NATS connection, each with its own breaker and cache."""

    def client(service: str, subject: str) -> UpstreamClient:
        return UpstreamClient(nc, service, replace(template, subject=subject))

    return UpstreamServices(
        registration=NatsRegistration(client("registration", subjects.registration)),
        scheduling=NatsScheduling(client("scheduling", subjects.scheduling)),
        providers=NatsProviderDirectory(client("providers", subjects.providers)),
        terminology=NatsTerminology(client("terminology", subjects.terminology)),
        terminology_systems=terminology_systems,
    )


def circuit_states(services: UpstreamServices) -> dict[str, CircuitState]:
    """Each NATS-backed upstream service's breaker state, by service name (for `/metrics`)."""
    adapters = (services.registration, services.scheduling, services.providers, services.terminology)
    return {a.client.service: state_of(a.client.breaker) for a in adapters if isinstance(a, _NatsAdapter)}
