"""Record a command's changes: one history row per new resource version, one audit Provenance,
and the outbox rows (domain events + audit), all in the command's transaction."""

from __future__ import annotations

from dataclasses import dataclass

from domain.events import DomainEvent
from domain.fhir import render_provenance
from handlers.context import CommandContext
from handlers.ports import OutboxMessage, ResourceVersion, UnitOfWork
from schemas.events import CloudEvent, audit_subject, event_subject
from schemas.fhir_validation import validate_resource


@dataclass(frozen=True, slots=True)
class Change:
    """A new version of one resource and the domain events that produced it."""

    version: ResourceVersion
    events: tuple[DomainEvent, ...]
    patient_id: str | None


async def record_changes(
    uow: UnitOfWork, ctx: CommandContext, changes: list[Change], *, operation: str
) -> None:
    """`operation` is the v3-DataOperation code for the audit record (CREATE, UPDATE, NULLIFY).
    A command that changed nothing records nothing."""
    if not changes:
        return
    messages: list[OutboxMessage] = []
    for change in changes:
        validate_resource(change.version.resource)
        for event in change.events:
            messages.append(_domain_event_message(ctx, event, change.version))
    await uow.append_history([c.version for c in changes], command_id=ctx.command_id)

    provenance_id = ctx.new_id()
    targets = [(c.version.resource_type, c.version.resource_id, c.version.version) for c in changes]
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
    validate_resource(provenance)
    patient_id = next((c.patient_id for c in changes if c.patient_id), None)
    await uow.add_provenance(
        provenance, recorded=ctx.now, patient_id=patient_id, targets=[f"{t}/{i}" for t, i, _ in targets]
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
        data=provenance,
    )
    messages.append(OutboxMessage(provenance_id, audit_subject(ctx.tenant_id), audit.to_bytes()))
    await uow.add_to_outbox(messages)


def _domain_event_message(ctx: CommandContext, event: DomainEvent, version: ResourceVersion) -> OutboxMessage:
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
        data={"resource": version.resource, **event.data},
    )
    return OutboxMessage(event_id, event_subject(ctx.tenant_id, event.name), cloud_event.to_bytes())
