"""The shared shape of every use case: find the plan (locked), let the aggregate decide, store each new
version with its FHIR rendering, and record events and audit."""

from __future__ import annotations

from domain.care_plan import CarePlanAggregate
from domain.entities import Activity, CarePlan, CareTeam, Goal, Versioned
from domain.errors import NotFound, VersionConflict
from domain.fhir import JSON, render_care_plan, render_care_team, render_goal, render_task
from handlers.context import CommandContext, CommandResult
from handlers.ports import ResourceVersion, UnitOfWork
from handlers.recording import Change, record_changes


async def load_plan(uow: UnitOfWork, plan_id: str) -> CarePlanAggregate:
    aggregate = await uow.load_plan(plan_id)
    if aggregate is None:
        raise NotFound("CarePlan", plan_id)
    return aggregate


async def load_plan_of(uow: UnitOfWork, resource_type: str, resource_id: str) -> CarePlanAggregate:
    """The plan a goal or task belongs to; a missing (or another tenant's) id is NOT_FOUND."""
    plan_id = await uow.plan_id_of(resource_type, resource_id)
    if plan_id is None:
        raise NotFound(resource_type, resource_id)
    return await load_plan(uow, plan_id)


async def store_changes(
    uow: UnitOfWork, ctx: CommandContext, aggregate: CarePlanAggregate, *, operation: str
) -> None:
    """Render, validate and store each new version, then its events and one Provenance for the command."""
    changed = aggregate.changed()
    versions = [
        ResourceVersion(resource_type, entity.id, entity.version, entity.last_updated, render(entity))
        for resource_type, entity in changed
    ]
    await uow.save_versions(changed, versions)
    changes = [
        Change(
            version,
            tuple(
                e
                for e in aggregate.events
                if (e.resource_type, e.resource_id) == (version.resource_type, version.resource_id)
            ),
            aggregate.plan.patient_id,
        )
        for version in versions
    ]
    await record_changes(uow, ctx, changes, operation=operation)


async def reject_existing_id(uow: UnitOfWork, resource_type: str, resource_id: str) -> None:
    """A caller-chosen id that exists (in any plan of the tenant) conflicts, as on plan create."""
    plan_id = await uow.plan_id_of(resource_type, resource_id)
    if plan_id is None:
        return
    owner = await load_plan(uow, plan_id)
    existing = owner.goal(resource_id) if resource_type == "Goal" else owner.activity(resource_id)
    raise VersionConflict(expected=0, current=existing.version)


def result(resource_type: str, entity: Versioned, *, created: bool = False) -> CommandResult:
    return CommandResult(201 if created else 200, resource_type, entity.id, entity.version)


def render(entity: Versioned) -> JSON:
    match entity:
        case CarePlan():
            return render_care_plan(entity)
        case Goal():
            return render_goal(entity)
        case Activity():
            return render_task(entity)
        case CareTeam():
            return render_care_team(entity)
    raise TypeError(f"cannot render {type(entity).__name__}")
