"""The unit of work a use case runs in: it hands out plans (locked) and remembers each one, and at commit
it turns what changed into everything the command writes (cosmicpython's unit of work and its `seen`)."""

from __future__ import annotations

import dataclasses
import uuid

from domain.care_plan import CarePlanAggregate
from domain.errors import NotFound
from domain.events import DomainEvent
from domain.fhir import data_operation, render_provenance, render_resource
from domain.programs import ProgramAggregate
from handlers.answers import success_reply
from handlers.context import CommandContext, CommandResult
from handlers.ports import (
    AuditRecord,
    CommandOutcome,
    CommitRecord,
    NewVersion,
    OutboxMessage,
    PlansAlike,
    PlanSettled,
    RolloutCandidate,
    RolloutStart,
    Transaction,
)
from handlers.tracing import trace_context
from schemas.events import CloudEvent, audit_subject, event_subject
from schemas.replies import Reply


class UnitOfWork:
    """Nothing is written before `commit`: a use case that rejects, at any point, leaves nothing to undo.
    `commit` renders each new version, its domain events and one Provenance for the command, and writes
    them with the command's outcome in one go; `answer` is then the reply, at the commit's position.

    The renderers make valid FHIR by construction: fhir.resources is not run over each write (it cost
    about a millisecond of CPU per command); tests/unit/use_cases/test_rendered_resources_validate.py
    checks generated plans of every shape instead."""

    def __init__(self, transaction: Transaction, ctx: CommandContext) -> None:
        self._transaction = transaction
        self._ctx = ctx
        self._seen: dict[str, CarePlanAggregate] = {}
        self._programs: dict[str, ProgramAggregate] = {}
        self._rollout: RolloutStart | None = None
        self._settled: PlanSettled | None = None
        self.answer: Reply | None = None
        self._trace: dict[str, str] = {}  # the command's trace context at commit, for its events

    # --- what a use case reads ---

    async def find_plan(self, plan_id: str) -> CarePlanAggregate | None:
        """The plan with everything it owns, locked until commit; the same object if asked again."""
        if plan_id in self._seen:
            return self._seen[plan_id]
        aggregate = await self._transaction.load_plan(plan_id)
        if aggregate is not None:
            self._seen[plan_id] = aggregate
        return aggregate

    async def plan(self, plan_id: str) -> CarePlanAggregate:
        aggregate = await self.find_plan(plan_id)
        if aggregate is None:
            raise NotFound("CarePlan", plan_id)
        return aggregate

    async def plan_of(self, resource_type: str, resource_id: str) -> CarePlanAggregate:
        """The plan a goal or task belongs to; a missing (or another tenant's) id is NOT_FOUND."""
        aggregate = await self._transaction.load_plan_of(resource_type, resource_id)
        if aggregate is None:
            raise NotFound(resource_type, resource_id)
        # The same plan asked for twice: the one handed out first, which may hold changes already.
        return self._seen.setdefault(aggregate.plan.id, aggregate)

    async def version_of(self, resource_type: str, resource_id: str) -> int | None:
        """The current version of a goal or task anywhere in the tenant, None when there is none."""
        plan_id = await self._transaction.plan_id_of(resource_type, resource_id)
        if plan_id is None:
            return None
        owner = await self.plan(plan_id)
        part = owner.goal(resource_id) if resource_type == "Goal" else owner.activity(resource_id)
        return part.version

    def add(self, aggregate: CarePlanAggregate) -> None:
        """A plan the command made: written at commit like the ones it loaded."""
        self._seen[aggregate.plan.id] = aggregate

    async def program(self, program_id: str) -> ProgramAggregate:
        """A program version, locked until commit; a missing (or another tenant's) id is NOT_FOUND."""
        if program_id not in self._programs:
            aggregate = await self._transaction.load_program(program_id)
            if aggregate is None:
                raise NotFound("PlanDefinition", program_id)
            self._programs[program_id] = aggregate
        return self._programs[program_id]

    async def program_to_enrol(self, program: str) -> ProgramAggregate:
        """`<name>` (its newest active version) or `<name>|<version>`: NOT_FOUND when there is none."""
        name, _, version = program.partition("|")
        aggregate = await self._transaction.find_program(name, version or None)
        if aggregate is None:
            raise NotFound("PlanDefinition", program)
        return aggregate

    async def find_program_version(self, name: str, program_version: str) -> ProgramAggregate | None:
        """Version `program_version` of the program `name`, held as `program_to_enrol` holds it."""
        return await self._transaction.find_program(name, program_version)

    async def next_program_version(self, name: str) -> str:
        """The business version a new version of `name` takes ("1" for a new name)."""
        return str(await self._transaction.latest_program_version(name) + 1)

    def add_program(self, aggregate: ProgramAggregate) -> None:
        self._programs[aggregate.program.id] = aggregate

    # --- rollouts (CONTRACT §10) ---

    async def plans_following(self, url: str, plan_ids: list[str] | None) -> list[RolloutCandidate]:
        return await self._transaction.plans_following(url, plan_ids)

    async def keyed_items(self, plan_ids: list[str]) -> list[PlansAlike]:
        return await self._transaction.keyed_items(plan_ids)

    async def claim_rollout_plan(self, rollout_id: uuid.UUID) -> str | None:
        return await self._transaction.claim_rollout_plan(rollout_id)

    def start_rollout(self, rollout: RolloutStart) -> None:
        """A run to write at commit, with its plans pending."""
        self._rollout = rollout

    def settle(self, settled: PlanSettled) -> None:
        """A rollout's plan done with, in the transaction that migrates it (or passes it over)."""
        self._settled = settled

    # --- the end of a command ---

    def answer_without_writing(self, result: CommandResult) -> None:
        """A command that only looks (a rollout's dry run): answered, nothing written, not even its
        outcome; the transaction rolls back. A redelivery looks again."""
        if self.answer is not None:
            raise RuntimeError("a unit of work answers once")
        self.answer = success_reply(str(self._ctx.command_id), result)

    async def commit(self, result: CommandResult) -> None:
        """Write every change of the aggregates seen, the events and audit they make, and the outcome
        `result` (what the caller is told), then commit."""
        if self.answer is not None:
            raise RuntimeError("a unit of work commits once")
        reply = success_reply(str(self._ctx.command_id), result)
        self._trace = trace_context()
        versions, outbox, patient_id = self._render_changes()
        provenance: AuditRecord | None = None
        if versions:
            answered = next(
                (v.entity for v in versions if (v.resource_type, v.entity.id) == result.resource_key), None
            )
            if answered is None:
                raise RuntimeError(f"{result.resource_type}/{result.resource_id} is not among the changes")
            operation = data_operation(answered, [v.entity for v in versions])
            provenance, audit_event = self._audit(versions, operation, patient_id)
            outbox.append(audit_event)
        position = await self._transaction.commit(
            CommitRecord(
                self._outcome(reply),
                tuple(versions),
                provenance,
                tuple(outbox),
                rollout=(
                    dataclasses.replace(self._rollout, traceparent=self._trace.get("traceparent"))
                    if self._rollout is not None
                    else None
                ),
                settled=self._settled,
            )
        )
        for aggregate in self._aggregates():
            aggregate.mark_stored()
        self.answer = reply.at_position(position)

    def _render_changes(self) -> tuple[list[NewVersion], list[OutboxMessage], str | None]:
        """Each new version as FHIR, its domain events as CloudEvents, and the patient they are about."""
        versions: list[NewVersion] = []
        outbox: list[OutboxMessage] = []
        patient_id: str | None = None
        for aggregate in self._aggregates():
            rendered: dict[tuple[str, str], NewVersion] = {}
            for _, entity in aggregate.changed():
                resource_type, resource = render_resource(entity)
                rendered[(resource_type, entity.id)] = NewVersion(resource_type, entity, resource)
            versions += rendered.values()
            # Each version's events after the one before's, as the relay keeps one resource's in order.
            outbox += [
                self._event_message(event, version)
                for key, version in rendered.items()
                for event in aggregate.events
                if (event.resource_type, event.resource_id) == key
            ]
            if rendered and isinstance(aggregate, CarePlanAggregate):
                patient_id = patient_id or aggregate.plan.patient_id
        return versions, outbox, patient_id

    def _aggregates(self) -> list[CarePlanAggregate | ProgramAggregate]:
        return [*self._seen.values(), *self._programs.values()]

    async def reject(self, reply: Reply) -> None:
        """Forget every change and keep the rejection as the command's outcome."""
        if self.answer is not None:
            raise RuntimeError("a unit of work commits once")
        self._seen.clear()
        self._programs.clear()
        self._rollout = None
        await self._transaction.commit(CommitRecord(self._outcome(reply)))
        self.answer = reply

    def _outcome(self, reply: Reply) -> CommandOutcome:
        ctx = self._ctx
        return CommandOutcome(
            command_id=ctx.command_id,
            command_type=ctx.command_type,
            request_hash=ctx.request_hash,
            status=reply.status,
            reply=reply.model_dump(mode="json", exclude_none=True),
            correlation_id=ctx.correlation_id,
        )

    def _event_message(self, event: DomainEvent, version: NewVersion) -> OutboxMessage:
        ctx = self._ctx
        event_id = ctx.new_id()
        cloud_event = CloudEvent(
            id=str(event_id),
            type=f"careplan.{event.name}",
            subject=f"{event.resource_type}/{event.resource_id}",
            time=ctx.now,
            tenantid=ctx.tenant_id,
            correlationid=ctx.correlation_id,
            causationid=str(ctx.command_id),
            resourceversion=event.version,
            traceparent=self._trace.get("traceparent"),
            tracestate=self._trace.get("tracestate"),
            data={"resource": version.resource, **event.data},
        )
        return OutboxMessage(
            event_id,
            event_subject(ctx.tenant_id, event.name),
            cloud_event.to_bytes(),
            self._trace.get("traceparent"),
        )

    def _audit(
        self, versions: list[NewVersion], operation: str, patient_id: str | None
    ) -> tuple[AuditRecord, OutboxMessage]:
        """One Provenance for the whole command, and its event for the audit pipeline."""
        ctx = self._ctx
        provenance_id = ctx.new_id()
        targets = [(v.resource_type, v.entity.id, v.entity.version) for v in versions]
        provenance = render_provenance(
            provenance_id=str(provenance_id),
            recorded=ctx.now,
            targets=targets,
            operation=operation,
            command_type=ctx.command_type,
            agent_subject=ctx.principal.subject,
            agent_issuer=ctx.principal.issuer,
            token_id=ctx.principal.token_id,
        )
        audit = CloudEvent(
            id=str(provenance_id),
            type="careplan.audit.provenance",
            subject=f"Provenance/{provenance_id}",
            time=ctx.now,
            datacontenttype="application/fhir+json",
            tenantid=ctx.tenant_id,
            correlationid=ctx.correlation_id,
            causationid=str(ctx.command_id),
            traceparent=self._trace.get("traceparent"),
            tracestate=self._trace.get("tracestate"),
            data=provenance,
        )
        record = AuditRecord(provenance, ctx.now, patient_id, tuple(f"{t}/{i}" for t, i, _ in targets))
        message = OutboxMessage(
            provenance_id, audit_subject(ctx.tenant_id), audit.to_bytes(), self._trace.get("traceparent")
        )
        return record, message
