"""Use cases on goals: add, update, change lifecycle/achievement status."""

from __future__ import annotations

from domain.entities import Goal
from domain.errors import VersionConflict
from domain.statuses import GoalAchievement, GoalLifecycleStatus
from handlers import translate
from handlers.context import CommandContext, result
from handlers.unit_of_work import UnitOfWork
from schemas.commands import GoalAdd, GoalChangeStatus, GoalUpdate


async def add_goal(data: GoalAdd, ctx: CommandContext, uow: UnitOfWork) -> None:
    """`goal.add`: a new Goal for the plan's patient, and the plan's goal list grows (both new versions)."""
    aggregate = await uow.plan(data.care_plan_id)
    goal = Goal(
        id=data.id or str(ctx.new_id()),
        version=0,
        created=ctx.now,
        last_updated=ctx.now,
        plan_id=aggregate.plan.id,
        patient_id=aggregate.plan.patient_id,
        description=translate.concept(data.description),
        lifecycle_status=GoalLifecycleStatus(data.lifecycle_status),
        achievement_status=GoalAchievement(data.achievement_status) if data.achievement_status else None,
        status_date=ctx.now.date(),
        priority=translate.optional_concept(data.priority),
        categories=translate.concepts(data.category),
        start_date=data.start_date,
        targets=tuple(translate.target(t) for t in data.targets),
        addresses=translate.concepts(data.addresses),
        notes=translate.notes(data.notes),
    )
    if data.id is not None:  # a caller-chosen id taken anywhere in the tenant conflicts, as on plan create
        existing = await uow.version_of("Goal", data.id)
        if existing is not None:
            raise VersionConflict(expected=0, current=existing)
    aggregate.add_goal(goal, expected_version=ctx.expected_version, now=ctx.now)
    await uow.commit(result("Goal", goal, created=True))


async def update_goal(data: GoalUpdate, ctx: CommandContext, uow: UnitOfWork) -> None:
    aggregate = await uow.plan_of("Goal", data.goal_id)
    changes = translate.merge_patch(
        data.changes,
        {
            "description": translate.concept,
            "priority": translate.concept,
            "category": translate.concepts,
            "targets": lambda targets: tuple(translate.target(t) for t in targets),
            "addresses": translate.concepts,
            "notes": translate.notes,
        },
    )
    if "category" in changes:
        changes["categories"] = changes.pop("category")
    aggregate.update_goal(data.goal_id, changes, expected_version=ctx.expected_version, now=ctx.now)
    await uow.commit(result("Goal", aggregate.goal(data.goal_id)))


async def change_goal_status(data: GoalChangeStatus, ctx: CommandContext, uow: UnitOfWork) -> None:
    aggregate = await uow.plan_of("Goal", data.goal_id)
    lifecycle = GoalLifecycleStatus(data.lifecycle_status) if data.lifecycle_status else None
    aggregate.change_goal_status(
        data.goal_id,
        lifecycle_status=lifecycle,
        achievement_status=GoalAchievement(data.achievement_status) if data.achievement_status else None,
        reason=data.reason,
        expected_version=ctx.expected_version,
        now=ctx.now,
    )
    await uow.commit(result("Goal", aggregate.goal(data.goal_id)))
