"""What the use cases need from the outside world, as protocols and plain records.
storage and integrations implement them; nothing here does I/O."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Protocol, Self

from domain.access import Principal
from domain.care_plan import CarePlanAggregate
from domain.entities import CarePlan, Goal, Versioned


class AuthenticationFailed(Exception):
    """The token is missing, malformed, expired, or not signed by identity-service for us."""


class TokenVerifier(Protocol):
    async def verify(self, token: str) -> Principal: ...


@dataclass(frozen=True, slots=True)
class StoredOutcome:
    """A command's recorded outcome in the command log, and the WAL position when it was read (at or after
    the command's commit: the outcome is visible), for the answer's `result.position`."""

    command_type: str
    request_hash: str
    status: int
    outcome: dict[str, Any]
    position: str | None = None


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A message the relay will publish after commit; `event_id` becomes its Nats-Msg-Id."""

    event_id: uuid.UUID
    subject: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class ResourceVersion:
    """One new version of a FHIR resource, rendered and validated, ready to store."""

    resource_type: str
    resource_id: str
    version: int
    last_updated: datetime
    resource: dict[str, Any]


class UnitOfWork(Protocol):
    """One tenant-bound transaction; `storage.unit_of_work.SqlUnitOfWork` is the real one."""

    tenant_id: str
    has_written: bool  # current rows were written in this transaction
    commit_position: str | None  # after commit(): a WAL position at or after the commit (CONTRACT §11)

    async def __aenter__(self) -> Self: ...
    async def __aexit__(self, *exc: Any) -> None: ...
    async def commit(self) -> None: ...
    async def restart(self) -> None:
        """Roll back and begin a new transaction on the same tenant."""
        ...

    async def lock_command(self, command_id: uuid.UUID) -> None: ...
    async def find_outcome(self, command_id: uuid.UUID) -> StoredOutcome | None: ...
    async def record_outcome(
        self,
        command_id: uuid.UUID,
        *,
        command_type: str,
        request_hash: str,
        status: int,
        outcome: dict[str, Any],
        correlation_id: str | None,
    ) -> None: ...

    async def load_plan(self, plan_id: str) -> CarePlanAggregate | None: ...
    async def plan_id_of(self, resource_type: str, resource_id: str) -> str | None: ...
    async def plan_patient(self, plan_id: str) -> str | None: ...
    async def save_versions(
        self, changed: list[tuple[str, Versioned]], versions: list[ResourceVersion]
    ) -> None: ...
    async def append_history(self, versions: list[ResourceVersion], *, command_id: uuid.UUID) -> None: ...
    async def add_provenance(
        self, provenance: dict[str, Any], *, recorded: datetime, patient_id: str | None, targets: list[str]
    ) -> None: ...
    async def add_to_outbox(self, messages: list[OutboxMessage]) -> None: ...


UnitOfWorkFactory = Callable[[str], UnitOfWork]  # tenant_id -> a fresh unit of work
Clock = Callable[[], datetime]
IdFactory = Callable[[], uuid.UUID]


@dataclass(frozen=True, slots=True)
class ScheduleCandidate:
    """A goal or plan the scheduler may have to signal; decided again under the plan's lock."""

    tenant_id: str
    plan_id: str
    resource_id: str


@dataclass(frozen=True, slots=True)
class GoalCounts:
    """A tenant's goals, counted by (lifecycle, achievement) and by (system, code, display) of coded goals."""

    by_status: list[tuple[str, str | None, int]]
    by_code: list[tuple[str | None, str, str | None, int]]


class PlanClaim(Protocol):
    """A plan's row lock held for one signal, and the transaction the signal is written in."""

    async def goal(self, goal_id: str) -> tuple[Goal, dict[str, Any]] | None: ...

    async def plan(self) -> tuple[CarePlan, dict[str, Any]]: ...

    async def mark(self, kind: str, resource_id: str, marker: str) -> bool:
        """Record that a signal went out; False when it already had (then send nothing)."""
        ...

    async def add_to_outbox(self, messages: list[OutboxMessage]) -> None: ...


class PeriodClaim(Protocol):
    """One tenant's summary for one period, claimed by exactly one sweep across replicas."""

    async def goal_counts(self) -> GoalCounts: ...

    async def add_to_outbox(self, messages: list[OutboxMessage]) -> None: ...


class ScheduleStore(Protocol):
    """Across tenants (the system role): what is due, and claims to signal it once."""

    async def overdue_goal_candidates(self, today: date, limit: int) -> list[ScheduleCandidate]: ...

    async def review_due_candidates(self, today: date, limit: int) -> list[ScheduleCandidate]: ...

    def claim_plan(self, tenant_id: str, plan_id: str) -> AbstractAsyncContextManager[PlanClaim | None]:
        """None when a command holds the plan: the next sweep comes back to it."""
        ...

    async def tenants(self) -> list[str]: ...

    def claim_period(
        self, tenant_id: str, kind: str, key: str
    ) -> AbstractAsyncContextManager[PeriodClaim | None]:
        """None when this tenant's summary for the period was already sent."""
        ...


# --- Services we do not own (CONTRACT §8). Each answers a fact or raises `domain.errors.Unavailable`
# when it is silent; `token` is the caller's JWT, forwarded so the service can authorize the lookup.


@dataclass(frozen=True, slots=True)
class PatientRecord:
    found: bool
    active: bool


@dataclass(frozen=True, slots=True)
class EncounterRecord:
    found: bool
    patient_id: str | None


@dataclass(frozen=True, slots=True)
class PractitionerRecord:
    found: bool
    active: bool


@dataclass(frozen=True, slots=True)
class CodeVerdict:
    valid: bool
    display: str | None = None
    message: str | None = None


class Registration(Protocol):
    async def patient(self, tenant_id: str, patient_id: str, *, token: str) -> PatientRecord: ...


class Scheduling(Protocol):
    async def encounter(self, tenant_id: str, encounter_id: str, *, token: str) -> EncounterRecord: ...


class ProviderDirectory(Protocol):
    async def practitioner(
        self, tenant_id: str, practitioner_id: str, *, token: str
    ) -> PractitionerRecord: ...


class Terminology(Protocol):
    async def validate_code(
        self, system: str, code: str, display: str | None, *, token: str
    ) -> CodeVerdict: ...


@dataclass(frozen=True, slots=True)
class UpstreamServices:
    """The four lookups a command may need, and which code systems terminology is asked about (codings of
    other systems, e.g. FHIR's own category code systems, are checked locally only)."""

    registration: Registration
    scheduling: Scheduling
    providers: ProviderDirectory
    terminology: Terminology
    terminology_systems: frozenset[str]


@dataclass(frozen=True, slots=True)
class CommandObservation:
    """What operators learn of one processed command: ids and outcome, never its clinical content."""

    transport: str  # "nats" or "http"
    command: str  # a registry name, or "unknown" when the subject names none (a bounded label)
    command_id: str | None
    tenant_id: str | None  # None until the token is verified
    correlation_id: str | None
    outcome: str  # "ok", an error code; "unavailable" (a dependency was down) or "error": no outcome yet
    status: int
    duration_s: float
    replayed: bool  # answered from the command log: a duplicate, changing nothing


class CommandObserver(Protocol):
    """Metrics and logs of the command path, so the handlers stay free of both."""

    def command_processed(self, observation: CommandObservation) -> None: ...

    def command_redelivered(self, command: str, delivery: int) -> None: ...

    def command_dead_lettered(self, command: str) -> None: ...

    def reply_refused(self, kind: str, reason: str) -> None:
        """A reply (`kind`: command or query) not sent, its subject refused for `reason`."""


class NoObserver:
    def command_processed(self, observation: CommandObservation) -> None:
        pass

    def command_redelivered(self, command: str, delivery: int) -> None:
        pass

    def command_dead_lettered(self, command: str) -> None:
        pass

    def reply_refused(self, kind: str, reason: str) -> None:
        pass
