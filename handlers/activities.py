"""Use cases on activities (FHIR Task): add, assign, change status."""

from __future__ import annotations

from domain.entities import Activity
from domain.errors import VersionConflict
from domain.statuses import TaskStatus
from handlers import translate
from handlers.context import CommandContext, result
from handlers.unit_of_work import UnitOfWork
from schemas.commands import ActivityAdd, ActivityAssign, ActivityChangeStatus


async def add_activity(data: ActivityAdd, ctx: CommandContext, uow: UnitOfWork) -> None:
    """`activity.add`: a Task based on the plan; `ready` when an owner is named (acceptance implied),
    otherwise `draft`, unless the caller says `requested` (DOMAIN.md §3.2)."""
    aggregate = await uow.plan(data.care_plan_id)
    default_status = TaskStatus.READY if data.owner_id else TaskStatus.DRAFT
    activity = Activity(
        id=data.id or str(ctx.new_id()),
        version=0,
        created=ctx.now,
        last_updated=ctx.now,
        plan_id=aggregate.plan.id,
        patient_id=aggregate.plan.patient_id,
        description=data.description,
        status=TaskStatus(data.status) if data.status else default_status,
        code=translate.optional_concept(data.code),
        kind=data.kind,
        goal_ids=tuple(data.goal_ids),
        owner_id=data.owner_id,
        requester_id=ctx.principal.subject if _is_fhir_id(ctx.principal.subject) else None,
        priority=data.priority,
        scheduled=translate.period(data.scheduled),
    )
    if data.id is not None:  # a caller-chosen id taken anywhere in the tenant conflicts, as on plan create
        existing = await uow.version_of("Task", data.id)
        if existing is not None:
            raise VersionConflict(expected=0, current=existing)
    aggregate.add_activity(activity, expected_version=ctx.expected_version, now=ctx.now)
    await uow.commit(result("Task", activity, created=True))


async def assign_activity(data: ActivityAssign, ctx: CommandContext, uow: UnitOfWork) -> None:
    aggregate = await uow.plan_of("Task", data.activity_id)
    aggregate.assign_activity(
        data.activity_id, data.owner_id, expected_version=ctx.expected_version, now=ctx.now
    )
    await uow.commit(result("Task", aggregate.activity(data.activity_id)))


async def change_activity_status(data: ActivityChangeStatus, ctx: CommandContext, uow: UnitOfWork) -> None:
    aggregate = await uow.plan_of("Task", data.activity_id)
    to = TaskStatus(data.status)
    aggregate.change_activity_status(
        data.activity_id,
        to,
        reason=data.reason,
        outcome=translate.optional_concept(data.outcome),
        expected_version=ctx.expected_version,
        now=ctx.now,
    )
    await uow.commit(result("Task", aggregate.activity(data.activity_id)))


def _is_fhir_id(value: str) -> bool:
    return 0 < len(value) <= 64 and all(c.isalnum() or c in "-." for c in value)
