"""The unit of work's own promises, and the registry's: what a command may emit is what it emits."""

from __future__ import annotations

import pytest

from domain.care_plan import CarePlanAggregate
from handlers.answers import error_reply
from handlers.context import CommandContext, result
from handlers.errors import ErrorCode, Rejection
from handlers.rollouts import MIGRATE_COMMAND
from handlers.unit_of_work import UnitOfWork
from tests.unit.use_cases.harness import CLINICIAN, START, TENANT, Clinic, Outcome

NURSE = {"coding": [{"system": "http://snomed.info/sct", "code": "224535009", "display": "Registered nurse"}]}


async def every_command(clinic: Clinic) -> dict[str, Outcome]:
    """A plan's life that runs each standard command at least once."""
    ran: dict[str, Outcome] = {}

    async def run(command: str, data: dict[str, object], version: int | None = None) -> Outcome:
        ran[command] = await clinic.run(command, data, expected_version=version)
        return ran[command]

    created = await run("careplan.create", {"patient_id": "p1", "title": "Plan", "status": "active"})
    assert created.reply.result is not None
    plan = created.reply.result.id
    await run("careplan.update", {"care_plan_id": plan, "changes": {"title": "Plan B"}}, 1)
    await run(
        "goal.add",
        {"care_plan_id": plan, "id": "g1", "description": {"text": "A"}, "lifecycle_status": "active"},
    )
    await run("goal.update", {"goal_id": "g1", "changes": {"description": {"text": "B"}}}, 1)
    await run(
        "goal.change_status",
        {"goal_id": "g1", "lifecycle_status": "completed", "achievement_status": "achieved"},
        2,
    )
    await run("activity.add", {"care_plan_id": plan, "id": "a1", "description": "Exam", "owner_id": "pr1"})
    await run("activity.assign", {"activity_id": "a1", "owner_id": "pr2"}, 1)
    await run("activity.change_status", {"activity_id": "a1", "status": "in-progress"}, 2)
    await run("careteam.add_member", {"care_plan_id": plan, "member_id": "pr1", "role": NURSE})
    await run(
        "careteam.update_member",
        {"care_plan_id": plan, "member_id": "pr1", "changes": {"period": {"start": "2026-01-01"}}},
        1,
    )
    await run("careteam.remove_member", {"care_plan_id": plan, "member_id": "pr1"}, 2)
    await run("careplan.request_review", {"care_plan_id": plan}, 5)
    await run("careplan.complete_review", {"care_plan_id": plan, "outcome": "continue"}, 6)
    await run("careplan.change_status", {"care_plan_id": plan, "status": "completed"}, 7)
    defined = await run(
        "program.define",
        {
            "name": "t2d",
            "title": "Type 2 diabetes",
            "goals": [{"key": "a1c", "description": {"text": "HbA1c below 7 %"}}],
            "activities": [{"key": "lab", "description": "HbA1c test", "goal_keys": ["a1c"]}],
        },
    )
    assert defined.reply.result is not None
    program = defined.reply.result.id
    await run("program.update", {"program_id": program, "changes": {"title": "Type 2 diabetes, adults"}}, 1)
    await run("program.change_status", {"program_id": program, "status": "active"}, 2)
    await run("careplan.enroll", {"patient_id": "p1", "program": "t2d"})
    revised = await clinic.run(
        "program.define",
        {
            "name": "t2d",
            "title": "Type 2 diabetes",
            "goals": [{"key": "a1c", "description": {"text": "HbA1c below 6.5 %"}}],
            "activities": [{"key": "eye", "description": "Retinal screening", "goal_keys": ["a1c"]}],
        },
    )
    assert revised.reply.result is not None
    await clinic.run("program.change_status", {"program_id": revised.reply.result.id, "status": "active"})
    started = await clinic.run("program.rollout", {"program_id": revised.reply.result.id, "dry_run": False})
    assert started.reply.result is not None and started.reply.result.rollout_id is not None
    # The run's events and audit are its migrations': one commit per plan, by the worker.
    ((_, ran["program.rollout"]),) = await clinic.migrate(clinic.rollout_run(started.reply.result.rollout_id))
    return ran


async def test_every_command_emits_only_the_events_its_registry_entry_names() -> None:
    clinic = Clinic()
    ran = await every_command(clinic)
    assert ran.keys() == clinic.commands.keys()
    for command, outcome in ran.items():
        emitted = {name for name, _, _ in outcome.events}
        assert emitted, command
        assert emitted <= set(clinic.commands[command].events), command


async def test_every_commit_carries_one_audit_event_last_and_its_outcome() -> None:
    clinic = Clinic()
    for command, outcome in (await every_command(clinic)).items():
        audit = outcome.record.outbox[-1]
        assert audit.subject == f"careplan.audit.{TENANT}", command
        assert outcome.record.provenance is not None
        by = MIGRATE_COMMAND if command == "program.rollout" else command
        assert outcome.record.provenance.resource["activity"]["text"] == by
        stored = outcome.record.outcome
        assert stored.command_type == by
        # Stored before the commit had a position; the answer carries it, and is otherwise the same.
        answer = outcome.reply.model_dump(mode="json", exclude_none=True)
        if command != "program.rollout":  # a migration's answer goes to nobody: the harness reads the log
            assert (
                answer["result"].pop("position") == f"0/{clinic.database.commits.index(outcome.record) + 1}"
            )
        assert stored.reply == answer


def _new_plan() -> CarePlanAggregate:
    return CarePlanAggregate.create(plan_id="x", patient_id="p1", title="T", now=START)


def _context(clinic: Clinic) -> CommandContext:
    return CommandContext(
        principal=CLINICIAN,
        command_id=clinic.new_id(),
        command_type="careplan.create",
        request_hash="h",
        correlation_id=None,
        expected_version=None,
        now=START,
        new_id=clinic.new_id,
    )


async def test_a_rejection_forgets_every_change_and_keeps_only_the_outcome() -> None:
    clinic = Clinic()
    ctx = _context(clinic)
    async with clinic.database.transaction(TENANT) as transaction:
        uow = UnitOfWork(transaction, ctx)
        uow.add(_new_plan())
        await uow.reject(error_reply(str(ctx.command_id), Rejection(ErrorCode.VALIDATION_ERROR, "no")))
    (record,) = clinic.database.commits
    assert record.versions == () and record.outbox == () and record.provenance is None
    assert record.outcome.status == 422
    assert clinic.database.plans == {}


async def test_a_unit_of_work_commits_once() -> None:
    clinic = Clinic()
    ctx = _context(clinic)
    async with clinic.database.transaction(TENANT) as transaction:
        uow = UnitOfWork(transaction, ctx)
        aggregate = _new_plan()
        uow.add(aggregate)
        await uow.commit(result("CarePlan", aggregate.plan, created=True))
        with pytest.raises(RuntimeError):
            await uow.commit(result("CarePlan", aggregate.plan, created=True))
    assert len(clinic.database.commits) == 1
    assert uow.answer is not None and uow.answer.result is not None
    assert uow.answer.result.position == "0/1"


async def test_answering_with_a_resource_the_command_did_not_change_is_a_bug_caught_at_commit() -> None:
    clinic = Clinic()
    ctx = _context(clinic)
    async with clinic.database.transaction(TENANT) as transaction:
        uow = UnitOfWork(transaction, ctx)
        aggregate = _new_plan()
        uow.add(aggregate)
        with pytest.raises(RuntimeError):
            await uow.commit(result("Goal", aggregate.plan))
    assert clinic.database.commits == []
