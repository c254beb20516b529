"""Use cases on the CarePlan aggregate: one function per command, transport-free."""

from __future__ import annotations

from domain.care_plan import CarePlan, CarePlanIntent, CarePlanStatus
from domain.errors import VersionConflict
from domain.fhir import render_care_plan
from handlers import translate
from handlers.context import CommandContext, CommandResult
from handlers.ports import ResourceVersion, UnitOfWork
from handlers.recording import Change, record_changes
from schemas.commands import CarePlanCreate


async def create_care_plan(data: CarePlanCreate, ctx: CommandContext, uow: UnitOfWork) -> CommandResult:
    """`careplan.create`. A caller-chosen id that already exists is a version conflict: the create
    expected no version at all (like HTTP's `If-None-Match: *`)."""
    plan_id = data.id or str(ctx.new_id())
    existing = await uow.care_plan_version(plan_id)
    if existing is not None:
        raise VersionConflict(expected=0, current=existing)
    plan = CarePlan.create(
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
    version = ResourceVersion("CarePlan", plan.id, plan.version, plan.last_updated, render_care_plan(plan))
    await uow.insert_care_plan(version, patient_id=plan.patient_id, status=plan.status.value)
    await record_changes(uow, ctx, [Change(version, tuple(plan.events), plan.patient_id)], operation="CREATE")
    return CommandResult(201, "CarePlan", plan.id, plan.version)
