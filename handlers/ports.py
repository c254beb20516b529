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
from domain.programs import ProgramAggregate


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
    traceparent: str | None = None  # the command's trace (CONTRACT §12), for the relay's publish span


@dataclass(frozen=True, slots=True)
class NewVersion:
    """One new version of a resource: the domain record (its state and search columns) and its FHIR JSON."""

    resource_type: str
    entity: Versioned
    resource: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """A command's Provenance, with what its searches and the patient wall need besides the JSON."""

    resource: dict[str, Any]
    recorded: datetime
    patient_id: str | None
    targets: tuple[str, ...]  # "Type/id" of each resource the command changed


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    """The command log's row: the reply a redelivery of the same command gets again."""

    command_id: uuid.UUID
    command_type: str
    request_hash: str
    status: int
    reply: dict[str, Any]
    correlation_id: str | None


@dataclass(frozen=True, slots=True)
class CommitRecord:
    """Everything one command writes, in one go: its outcome always; on success the new versions (current
    rows, history, search index), one Provenance, and the outbox (domain events and the audit event)."""

    outcome: CommandOutcome
    versions: tuple[NewVersion, ...] = ()
    provenance: AuditRecord | None = None
    outbox: tuple[OutboxMessage, ...] = ()
    rollout: RolloutStart | None = None  # `program.rollout` starting a run
    settled: PlanSettled | None = None  # a rollout's plan, migrated or passed over by this transaction


@dataclass(frozen=True, slots=True)
class RolloutStart:
    """A rollout run (CONTRACT §10), written with the command that starts it: one `pending` row per plan,
    and who started it (whose name each plan's Provenance carries)."""

    rollout_id: uuid.UUID
    program_id: str
    target: str  # the canonical `<url>|<version>` the plans move to
    plan_ids: tuple[str, ...]
    started_by: dict[str, Any]
    created: datetime
    traceparent: str | None = None  # the starting command's trace, set at commit (CONTRACT §12)


@dataclass(frozen=True, slots=True)
class PlanSettled:
    """One plan of a rollout done with: `migrated` (its changes) or `skipped` (why)."""

    rollout_id: uuid.UUID
    plan_id: str
    state: str
    changes: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RolloutRecord:
    """A run as stored, with its plans counted by state and its migrations' totals so far."""

    rollout_id: uuid.UUID
    program_id: str
    target: str
    status: str
    started_by: dict[str, Any]
    command_id: uuid.UUID
    correlation_id: str | None
    created: datetime
    completed: datetime | None
    counts: dict[str, int]  # plans by state: pending, migrated, skipped
    totals: dict[str, int]  # items added, cancelled, updated, kept over the migrated plans
    conflicts: list[dict[str, Any]]  # the first plans with kept items: plan id and keys
    traceparent: str | None = None  # the starting command's trace, when it was traced


@dataclass(frozen=True, slots=True)
class RolloutCandidate:
    """A plan a rollout may cover, as its row says: the canonicals it follows and its status."""

    plan_id: str
    status: str
    instantiates: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class KeyedItem:
    """A goal or task made from a program key, with what its progress is judged on (a dry run's view)."""

    key: str
    resource_type: str  # Goal or Task
    status: str
    achievement: str | None = None


@dataclass(frozen=True, slots=True)
class PlansAlike:
    """Plans whose keyed items stand exactly alike: a dry run judges them once (most plans of a program
    look alike until clinicians act on them)."""

    plan_ids: tuple[str, ...]
    items: tuple[KeyedItem, ...]


class AlreadyRecorded(Exception):
    """The command log holds this command id already (a redelivery, or a twin delivered at the same time
    that committed first): nothing of this transaction was committed; answer from the log."""


class Transaction(Protocol):
    """The unit of work's port: one tenant-bound transaction (`storage.transaction.SqlTransaction` is the
    real one). Reads lock what they return; nothing is written until `commit`."""

    tenant_id: str

    async def __aenter__(self) -> Self: ...
    async def __aexit__(self, *exc: Any) -> None: ...

    async def find_outcome(self, command_id: uuid.UUID) -> StoredOutcome | None: ...

    async def load_plan(self, plan_id: str) -> CarePlanAggregate | None:
        """The whole aggregate, its plan row locked until commit."""
        ...

    async def load_plan_of(self, resource_type: str, resource_id: str) -> CarePlanAggregate | None:
        """The aggregate of the plan a goal or task belongs to, locked as `load_plan` locks it."""
        ...

    async def plan_id_of(self, resource_type: str, resource_id: str) -> str | None: ...

    async def plan_patient(self, plan_id: str) -> str | None:
        """The plan's patient, unlocked: read before the transaction, for the upstream checks."""
        ...

    async def load_program(self, program_id: str) -> ProgramAggregate | None:
        """A program version (CONTRACT §10), its row locked until commit."""
        ...

    async def find_program(self, name: str, program_version: str | None) -> ProgramAggregate | None:
        """Version `program_version` of the program `name`, or its newest active version when None;
        held (FOR SHARE) so that it is not retired under an enrolment."""
        ...

    async def latest_program_version(self, name: str) -> int:
        """The highest business version of the program `name` (0 if none), the name locked until commit:
        defines of one name number their versions in turn."""
        ...

    async def plans_following(self, url: str, plan_ids: list[str] | None) -> list[RolloutCandidate]:
        """The plans named (whatever they follow), or when None every open plan following a version of
        the program `url`; unlocked."""
        ...

    async def keyed_items(self, plan_ids: list[str]) -> list[PlansAlike]:
        """The goals and tasks of these plans that a program key made, the plans grouped by what they hold
        (a plan with none is in no group); unlocked."""
        ...

    async def claim_rollout_plan(self, rollout_id: uuid.UUID) -> str | None:
        """A plan of the rollout still `pending` that no other transaction holds, its row locked until
        commit; None when there is none left to take."""
        ...

    async def commit(self, record: CommitRecord) -> str | None:
        """Write the record and commit; the commit's WAL position (CONTRACT §11), when known. Raises
        `AlreadyRecorded` when the outcome's command id is in the log already, and RuntimeError when a
        version guard fails (a lost update); either way nothing is committed."""
        ...


TransactionFactory = Callable[[str], Transaction]  # tenant_id -> a fresh transaction
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
