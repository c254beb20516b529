"""Use cases on the plan itself: create, update, change status, request and complete reviews."""

from __future__ import annotations

from domain.care_plan import CarePlanAggregate
from domain.entities import CarePlan
from domain.errors import Unavailable, VersionConflict
from domain.statuses import CarePlanIntent, CarePlanStatus
from handlers import translate
from handlers.context import CommandContext, result
from handlers.unit_of_work import UnitOfWork
from schemas.commands import (
    CarePlanChangeStatus,
    CarePlanCompleteReview,
    CarePlanCreate,
    CarePlanRequestReview,
    CarePlanUpdate,
)


async def create_care_plan(data: CarePlanCreate, ctx: CommandContext, uow: UnitOfWork) -> None:
    """`careplan.create`. A caller-chosen id that already exists is a version conflict: the create
    expected no version at all (like HTTP's `If-None-Match: *`)."""
    plan_id = data.id or str(ctx.new_id())
    if data.id is not None:  # a fresh UUID is nobody's yet
        existing = await uow.find_plan(plan_id)
        if existing is not None:
            raise VersionConflict(expected=0, current=existing.plan.version)
    aggregate = CarePlanAggregate.create(
        plan_id=plan_id,
        patient_id=data.patient_id,
        title=data.title,
        now=ctx.now,
        status=CarePlanStatus(data.status),
        intent=CarePlanIntent(data.intent),
        description=data.description,
        encounter_id=data.encounter_id,
        author_id=data.author_id,
        categories=translate.concepts(data.categories),
        period=translate.period(data.period),
        addresses=translate.concepts(data.addresses),
        review=translate.review(data.review),
        notes=translate.notes(data.notes),
    )
    ensure_encounter_checked(ctx, None, aggregate.plan)
    uow.add(aggregate)
    await uow.commit(result("CarePlan", aggregate.plan, created=True))


async def update_care_plan(data: CarePlanUpdate, ctx: CommandContext, uow: UnitOfWork) -> None:
    """`careplan.update`: a merge-patch of the create fields (status has its own command)."""
    aggregate = await uow.plan(data.care_plan_id)
    encounter_before = aggregate.plan.encounter_id
    changes = translate.merge_patch(
        data.changes,
        {
            "categories": translate.concepts,
            "addresses": translate.concepts,
            "period": translate.period,
            "notes": translate.notes,
            "intent": CarePlanIntent,
            "review": lambda r: translate.review(r, aggregate.plan.review),
        },
    )
    aggregate.update(changes, expected_version=ctx.expected_version, now=ctx.now)
    ensure_encounter_checked(ctx, encounter_before, aggregate.plan)
    await uow.commit(result("CarePlan", aggregate.plan))


async def change_care_plan_status(data: CarePlanChangeStatus, ctx: CommandContext, uow: UnitOfWork) -> None:
    """`careplan.change_status`, with the cascades to open activities (DOMAIN.md §1.2)."""
    aggregate = await uow.plan(data.care_plan_id)
    to = CarePlanStatus(data.status)
    aggregate.change_status(to, reason=data.reason, expected_version=ctx.expected_version, now=ctx.now)
    await uow.commit(result("CarePlan", aggregate.plan))


async def request_review(data: CarePlanRequestReview, ctx: CommandContext, uow: UnitOfWork) -> None:
    """`careplan.request_review`: a review Task and the plan's next review date."""
    aggregate = await uow.plan(data.care_plan_id)
    aggregate.request_review(
        review_task_id=str(ctx.new_id()),
        reviewer_id=data.reviewer_id,
        due=data.due,
        expected_version=ctx.expected_version,
        now=ctx.now,
    )
    await uow.commit(result("CarePlan", aggregate.plan))


async def complete_review(data: CarePlanCompleteReview, ctx: CommandContext, uow: UnitOfWork) -> None:
    """`careplan.complete_review`: close the review, set the next one; `discontinue` revokes the plan."""
    aggregate = await uow.plan(data.care_plan_id)
    aggregate.complete_review(
        outcome=data.outcome,
        notes=translate.notes(data.notes),
        next_review_due=data.next_review_due,
        expected_version=ctx.expected_version,
        now=ctx.now,
    )
    await uow.commit(result("CarePlan", aggregate.plan))


def ensure_encounter_checked(ctx: CommandContext, encounter_before: str | None, plan: CarePlan) -> None:
    """Scheduling confirmed a new encounter as the patient's before the transaction. The plan as locked
    now must pair the same two; if not, the check was of another state of the plan (changed meanwhile),
    so the command is retried, and checked again."""
    if not ctx.upstream_checked or plan.encounter_id is None or plan.encounter_id == encounter_before:
        return
    checked = ctx.checked_encounter
    if checked is None or (checked.encounter_id, checked.patient_id) != (plan.encounter_id, plan.patient_id):
        raise Unavailable("scheduling", "the plan changed while its encounter was checked")
