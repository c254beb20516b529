"""Use cases of care programs (CONTRACT §10): define a version, change a draft, publish or retire it, and
enrol a patient."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from domain.care_plan import CarePlanAggregate
from domain.entities import ReviewState
from domain.errors import InvalidTransition, InvalidValue
from domain.programs import (
    ActivityTemplate,
    Duration,
    GoalTemplate,
    ProgramAggregate,
    ProgramContent,
    PublicationStatus,
    TargetTemplate,
    enrolment,
)
from domain.statuses import CarePlanStatus
from domain.values import Period
from handlers import translate
from handlers.care_plans import ensure_encounter_checked
from handlers.context import CommandContext, result
from handlers.unit_of_work import UnitOfWork
from schemas import commands as wire


async def define_program(data: wire.ProgramDefine, ctx: CommandContext, uow: UnitOfWork) -> None:
    """`program.define`: a draft at the next version of its name; `revises`, when given, must be a
    version of the same name."""
    if data.revises is not None:
        earlier = await uow.program(data.revises)
        if earlier.program.name != data.name:
            raise InvalidValue(
                "data.revises", f"PlanDefinition/{data.revises} is a version of {earlier.program.name!r}"
            )
    aggregate = ProgramAggregate.define(
        program_id=str(ctx.new_id()),
        tenant_id=ctx.tenant_id,
        name=data.name,
        program_version=await uow.next_program_version(data.name),
        content=content_of(data),
        now=ctx.now,
        revises=data.revises,
    )
    uow.add_program(aggregate)
    await uow.commit(result("PlanDefinition", aggregate.program, created=True))


async def update_program(data: wire.ProgramUpdate, ctx: CommandContext, uow: UnitOfWork) -> None:
    """`program.update`: a merge patch of a draft's content; a field given replaces it whole."""
    aggregate = await uow.program(data.program_id)
    aggregate.program.check_updatable()
    changes = data.changes
    if "title" in changes.model_fields_set and changes.title is None:
        raise InvalidValue("data.changes.title", "a program needs a title")
    given = {
        name: value for name, value in _fields(changes, "data.changes").items() if name in _given(changes)
    }
    content = _checked(lambda: dataclasses.replace(aggregate.program.content, **given), "data.changes")
    aggregate.update(content, expected_version=ctx.expected_version, now=ctx.now)
    await uow.commit(result("PlanDefinition", aggregate.program))


async def change_program_status(data: wire.ProgramChangeStatus, ctx: CommandContext, uow: UnitOfWork) -> None:
    aggregate = await uow.program(data.program_id)
    aggregate.change_status(
        PublicationStatus(data.status), expected_version=ctx.expected_version, now=ctx.now, reason=data.reason
    )
    await uow.commit(result("PlanDefinition", aggregate.program))


# --- the wire's content as the domain's ---


def content_of(data: wire.ProgramContentIn) -> ProgramContent:
    return _checked(lambda: ProgramContent(**_fields(data, "data")), "data")


def _given(changes: wire.ProgramChanges) -> set[str]:
    """The content fields a patch names (`review` is the content's `review_interval_days`)."""
    return {"review_interval_days" if name == "review" else name for name in changes.model_fields_set}


def _fields(data: wire.ProgramContentIn | wire.ProgramChanges, prefix: str) -> dict[str, Any]:
    return {
        "title": data.title,
        "description": data.description,
        "categories": translate.concepts(data.categories or []),
        "addresses": translate.concepts(data.addresses or []),
        "review_interval_days": data.review.interval_days if data.review else None,
        "goals": tuple(_goal(g, f"{prefix}.goals.{i}") for i, g in enumerate(data.goals or [])),
        "activities": tuple(
            _activity(a, f"{prefix}.activities.{i}") for i, a in enumerate(data.activities or [])
        ),
    }


def _checked(build: Callable[[], ProgramContent], prefix: str) -> ProgramContent:
    """The content, its rules checked by the domain; a path it names is placed under `prefix`."""
    try:
        return build()
    except InvalidValue as exc:
        if prefix != "data" and exc.path.startswith("data."):
            raise InvalidValue(prefix + exc.path.removeprefix("data"), exc.message) from exc
        raise


def _duration(text: str | None, path: str) -> Duration | None:
    return None if text is None else Duration.parse(text, path)


def _goal(goal: wire.ProgramGoalIn, path: str) -> GoalTemplate:
    return GoalTemplate(
        key=goal.key,
        description=translate.concept(goal.description),
        priority=translate.optional_concept(goal.priority),
        targets=tuple(
            TargetTemplate(
                measure=translate.optional_concept(t.measure),
                detail=translate.target(wire.GoalTargetIn(measure=t.measure, detail=t.detail)).detail,
                due_after=_duration(t.due_after, f"{path}.targets.{i}.due_after"),
            )
            for i, t in enumerate(goal.targets)
        ),
    )


def _activity(activity: wire.ProgramActivityIn, path: str) -> ActivityTemplate:
    return ActivityTemplate(
        key=activity.key,
        description=activity.description,
        code=translate.optional_concept(activity.code),
        kind=activity.kind,
        goal_keys=tuple(activity.goal_keys),
        priority=activity.priority,
        start_after=_duration(activity.start_after, f"{path}.start_after"),
        duration=_duration(activity.duration, f"{path}.duration"),
    )


async def enroll(data: wire.CarePlanEnroll, ctx: CommandContext, uow: UnitOfWork) -> None:
    """`careplan.enroll`: one transaction makes the CarePlan, its Goals and its Tasks from an active
    program version, each item tied to its key; the events are the single commands' `*.added` ones,
    `careplan.created` and `careplan.enrolled`."""
    found = await uow.program_to_enrol(data.program)
    program = found.program
    if program.status is not PublicationStatus.ACTIVE:
        raise InvalidTransition(
            field="program",
            from_=program.status.value,
            to="enrolled",
            allowed=(PublicationStatus.ACTIVE.value,),
        )
    content = program.content
    start = data.start or ctx.now.date()
    aggregate = CarePlanAggregate.create(
        plan_id=str(ctx.new_id()),
        patient_id=data.patient_id,
        title=data.title or content.title,
        now=ctx.now,
        status=CarePlanStatus(data.status),
        description=content.description,
        encounter_id=data.encounter_id,
        author_id=data.author_id,
        categories=content.categories,
        addresses=content.addresses,
        period=Period(start=start),
        review=(
            ReviewState(
                interval_days=content.review_interval_days,
                next_due=start + timedelta(days=content.review_interval_days),
            )
            if content.review_interval_days
            else None
        ),
        instantiates=(program.canonical,),
    )
    items = enrolment(
        program,
        start=start,
        plan_active=data.status == "active",
        new_id=lambda: str(ctx.new_id()),
        skip=frozenset(data.skip),
        owners=data.owners,
    )
    aggregate.add_enrolled(
        items.goals,
        items.activities,
        now=ctx.now,
        data={"program": program.url, "version": program.program_version, "program_id": program.id},
    )
    ensure_encounter_checked(ctx, None, aggregate.plan)
    uow.add(aggregate)
    await uow.commit(result("CarePlan", aggregate.plan, created=True))
