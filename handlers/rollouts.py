"""Use cases of program rollouts (CONTRACT §10): `program.rollout` — its dry run, or the start of a run —
and the worker's migration of one plan of a run, each plan in its own transaction.

Exactly once per plan rests on two things written in the migration's own commit: the plan's rollout row
moves out of `pending` (claimed under its row lock, so two workers never take the same plan), and the
command log takes the migration's id, derived from the rollout and the plan, so a replayed migration is
refused by its primary key whatever else went wrong."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from domain.access import Principal
from domain.care_plan import CarePlanAggregate
from domain.errors import DomainError, InvalidTransition, InvalidValue
from domain.programs import (
    EnrolledItems,
    Migration,
    Program,
    Progress,
    PublicationStatus,
    follows,
    goal_progress,
    migrate,
    migration,
    rollout_skip_reason,
    task_progress,
)
from domain.statuses import CarePlanStatus, GoalAchievement, GoalLifecycleStatus, TaskStatus
from handlers.context import CommandContext, CommandResult, result
from handlers.ports import (
    IdFactory,
    OutboxMessage,
    PlansAlike,
    PlanSettled,
    RolloutCandidate,
    RolloutRecord,
    RolloutStart,
    Transaction,
)
from handlers.tracing import trace_context
from handlers.unit_of_work import UnitOfWork
from schemas import commands as wire
from schemas.events import CloudEvent, event_subject

MIGRATE_COMMAND = "careplan.migrate"  # the command log's name for one plan's migration by a rollout
# A dry run reads every plan it covers in one command: past this many, name them in batches.
MAX_DRY_RUN_PLANS = 50_000
# A dry run's report fits one NATS reply: groups of plans past this size are counted, not listed.
MAX_REPORT_BYTES = 512 * 1024


async def rollout(data: wire.ProgramRollout, ctx: CommandContext, uow: UnitOfWork) -> None:
    """`program.rollout`: the plans it covers, then either what a run would do to each (dry run: nothing
    written) or a run started, its plans pending, worked by `migrate_next_plan`."""
    target = (await uow.program(data.program_id)).program
    if target.status is not PublicationStatus.ACTIVE:
        raise InvalidTransition(
            field="program_id",
            from_=target.status.value,
            to="rolled out",
            allowed=(PublicationStatus.ACTIVE.value,),
        )
    named = list(dict.fromkeys(data.care_plan_ids)) if data.care_plan_ids is not None else None
    candidates = await uow.plans_following(target.url, named)
    covered, skipped = coverage(target, candidates, named)
    if data.dry_run:
        if len(covered) > MAX_DRY_RUN_PLANS:
            raise InvalidValue(
                "data.care_plan_ids",
                f"a dry run covers at most {MAX_DRY_RUN_PLANS} plans and this one {len(covered)}: name them "
                "in batches",
            )
        report = await _dry_run(target, covered, skipped, uow)
        uow.answer_without_writing(
            CommandResult(200, "PlanDefinition", target.id, target.version, dry_run=report)
        )
        return
    rollout_id = ctx.new_id()
    uow.start_rollout(
        RolloutStart(
            rollout_id=rollout_id,
            program_id=target.id,
            target=target.canonical,
            plan_ids=tuple(
                [c.plan_id for c, _ in covered] + [c.plan_id for c in skipped_candidates(candidates, skipped)]
            ),
            started_by=started_by(ctx.principal),
            created=ctx.now,
        )
    )
    await uow.commit(CommandResult(202, "Rollout", str(rollout_id), 1, rollout_id=str(rollout_id)))


def coverage(
    target: Program, candidates: list[RolloutCandidate], named: list[str] | None
) -> tuple[list[tuple[RolloutCandidate, str]], dict[str, str]]:
    """The plans a rollout to `target` migrates, each with the canonical it follows now, and those it
    passes over (id → why). A named plan that does not exist, or follows no version of the program, is a
    caller's mistake: VALIDATION_ERROR with its path."""
    found = {c.plan_id: c for c in candidates}
    if named is not None:
        for index, plan_id in enumerate(named):
            candidate = found.get(plan_id)
            if candidate is None:
                raise InvalidValue(f"data.care_plan_ids.{index}", f"no CarePlan/{plan_id}")
            if follows(candidate.instantiates, target.url) is None:
                raise InvalidValue(
                    f"data.care_plan_ids.{index}", f"CarePlan/{plan_id} follows no version of {target.url}"
                )
    covered: list[tuple[RolloutCandidate, str]] = []
    skipped: dict[str, str] = {}
    for candidate in candidates:
        reason = rollout_skip_reason(target, CarePlanStatus(candidate.status), candidate.instantiates)
        if reason is not None:
            if named is not None:  # the default set is the plans to migrate only
                skipped[candidate.plan_id] = reason
            continue
        canonical = follows(candidate.instantiates, target.url)
        assert canonical is not None
        covered.append((candidate, canonical))
    return covered, skipped


def skipped_candidates(
    candidates: list[RolloutCandidate], skipped: Mapping[str, str]
) -> list[RolloutCandidate]:
    """Named plans a run passes over are in its rows all the same, settled by the worker with the reason."""
    return [c for c in candidates if c.plan_id in skipped]


def started_by(principal: Principal) -> dict[str, Any]:
    """Who started a run, as each migration's Provenance names them."""
    return {
        "subject": principal.subject,
        "issuer": principal.issuer,
        "token_id": principal.token_id,
        "roles": sorted(principal.roles),
    }


# --- the dry run ---


async def _dry_run(
    target: Program, covered: list[tuple[RolloutCandidate, str]], skipped: Mapping[str, str], uow: UnitOfWork
) -> dict[str, Any]:
    versions: dict[str, Program | None] = {}
    for canonical in sorted({c for _, c in covered}):
        version = canonical.partition("|")[2]
        found = await uow.find_program_version(target.name, version)
        versions[canonical] = found.program if found else None
    items = by_plan(await uow.keyed_items([c.plan_id for c, _ in covered]))
    planned: list[tuple[str, str, Migration]] = []
    skipped = dict(skipped)
    nothing = EnrolledItems()
    judged: dict[tuple[str, int], Migration] = {}  # plans alike share their EnrolledItems: diffed once
    for candidate, canonical in covered:
        old = versions[canonical]
        if old is None:
            skipped[candidate.plan_id] = f"the plan follows {canonical}, which does not exist"
            continue
        held = items.get(candidate.plan_id, nothing)
        key = (canonical, id(held))
        if key not in judged:
            judged[key] = migration(old.content, target.content, held)
        planned.append((candidate.plan_id, canonical, judged[key]))
    return dry_run_report(target, planned, skipped)


def by_plan(groups: list[PlansAlike]) -> dict[str, EnrolledItems]:
    """Each plan's keyed items and their progress, as the rollout rules judge it: once per group of plans
    alike, the same (immutable) EnrolledItems for each plan of a group."""
    judged: dict[str, EnrolledItems] = {}
    for group in groups:
        progress: dict[str, Progress] = {}
        for item in group.items:
            if item.resource_type == "Goal":
                achievement = GoalAchievement(item.achievement) if item.achievement else None
                progress[item.key] = goal_progress(GoalLifecycleStatus(item.status), achievement)
            else:
                progress[item.key] = task_progress(TaskStatus(item.status))
        items = EnrolledItems(progress)
        judged |= dict.fromkeys(group.plan_ids, items)
    return judged


def dry_run_report(
    target: Program, planned: list[tuple[str, str, Migration]], skipped: Mapping[str, str]
) -> dict[str, Any]:
    """Totals over every plan, then the plans grouped by what a run would do to them (largest group first),
    then the plans passed over. Groups that would take the report past MAX_REPORT_BYTES are counted in
    the totals and `unlisted_plans`, not listed."""
    groups: dict[tuple[str, Migration], list[str]] = {}
    for plan_id, canonical, change in planned:
        groups.setdefault((canonical, change), []).append(plan_id)
    totals = Counter({"plans": len(planned), "skipped": len(skipped)})
    for (_, change), plan_ids in groups.items():
        for name, keys in change.to_dict().items():
            totals[name] += len(keys) * len(plan_ids)
    listed: list[dict[str, Any]] = []
    size, unlisted = 0, 0
    for (canonical, change), plan_ids in sorted(groups.items(), key=lambda g: (-len(g[1]), g[0][0])):
        group = {"from": canonical, **change.to_dict(), "care_plan_ids": plan_ids}
        size += len(orjson.dumps(group))
        if size > MAX_REPORT_BYTES:
            unlisted += len(plan_ids)
            continue
        listed.append(group)
    return {
        "to": target.canonical,
        "totals": {name: totals[name] for name in ("plans", "add", "cancel", "update", "keep", "skipped")},
        "changes": listed,
        "unlisted_plans": unlisted,
        "skipped": [{"care_plan_id": p, "reason": r} for p, r in sorted(skipped.items())[:1000]],
    }


# --- a run, one plan at a time ---


@dataclass(frozen=True, slots=True)
class RolloutRun:
    """What the worker needs of a run: its id and tenant, the versions it moves between (contents of
    active and retired versions never change, so they are read once), who started it."""

    rollout_id: uuid.UUID
    tenant_id: str
    target: Program
    versions: Mapping[str, Program]  # every version of the program's name, by canonical
    started_by: Mapping[str, Any]
    correlation_id: str | None
    traceparent: str | None = None  # the starting command's trace, which each migration links to

    @property
    def principal(self) -> Principal:
        who = self.started_by
        return Principal(
            tenant_id=self.tenant_id,
            subject=str(who.get("subject")),
            roles=frozenset(who.get("roles") or ()),
            issuer=who.get("issuer"),
            token_id=who.get("token_id"),
        )


@dataclass(frozen=True, slots=True)
class PlanOutcome:
    plan_id: str
    state: str  # migrated | skipped
    changes: Mapping[str, Any]


async def migrate_next_plan(
    run: RolloutRun, transaction: Transaction, *, clock: Callable[[], datetime], new_id: IdFactory
) -> PlanOutcome | None:
    """Claim a pending plan of `run` and migrate it — diffed as it is now, under its row lock — or pass it
    over, settling its row in the same commit; None when no pending plan is left to claim."""
    plan_id = await transaction.claim_rollout_plan(run.rollout_id)
    if plan_id is None:
        return None
    ctx = CommandContext(
        principal=run.principal,
        command_id=uuid.uuid5(run.rollout_id, plan_id),
        command_type=MIGRATE_COMMAND,
        request_hash=f"{MIGRATE_COMMAND}:{run.rollout_id}:{plan_id}",
        correlation_id=run.correlation_id,
        expected_version=None,
        now=clock(),
        new_id=new_id,
    )
    uow = UnitOfWork(transaction, ctx)
    plan = await uow.find_plan(plan_id)
    outcome: PlanOutcome
    try:
        outcome = _migrate(run, plan_id, plan, ctx)
    except (
        DomainError
    ) as exc:  # a rule of the plan refused the change: passed over, reported, nothing changed
        outcome = PlanOutcome(plan_id, "skipped", {"reason": str(exc)})
        uow = UnitOfWork(transaction, ctx)
        plan = await uow.find_plan(plan_id)
    uow.settle(PlanSettled(run.rollout_id, plan_id, outcome.state, dict(outcome.changes)))
    if plan is None:
        await uow.commit(CommandResult(200, "CarePlan", plan_id, 0))
    else:
        await uow.commit(result("CarePlan", plan.plan))
    return outcome


def _migrate(
    run: RolloutRun, plan_id: str, plan: CarePlanAggregate | None, ctx: CommandContext
) -> PlanOutcome:
    if plan is None:
        return PlanOutcome(plan_id, "skipped", {"reason": "the plan does not exist"})
    reason = rollout_skip_reason(run.target, plan.plan.status, plan.plan.instantiates)
    canonical = follows(plan.plan.instantiates, run.target.url)
    old = run.versions.get(canonical or "")
    if reason is None and old is None:
        reason = f"the plan follows {canonical}, which does not exist"
    if reason is not None or old is None:
        return PlanOutcome(plan_id, "skipped", {"reason": reason})
    change = migrate(
        plan,
        old,
        run.target,
        new_id=lambda: str(ctx.new_id()),
        now=ctx.now,
        data={"rollout_id": str(run.rollout_id), "program_id": run.target.id},
    )
    changes = {
        "from": old.canonical,
        "to": run.target.canonical,
        "added": list(change.add),
        "cancelled": list(change.cancel),
        "updated": list(change.update),
        "kept": list(change.keep),
    }
    return PlanOutcome(plan_id, "migrated", changes)


# --- progress and the end of a run ---

ROLLOUT_COMPLETED = "program.rollout_completed"


def rollout_report(record: RolloutRecord) -> dict[str, Any]:
    """A run's progress as `careplan.query.rollout` and `GET /api/v1/rollouts/{id}` answer it."""
    return {
        "rollout_id": str(record.rollout_id),
        "program_id": record.program_id,
        "to": record.target,
        "status": record.status,
        "created": record.created.isoformat(),
        "completed": record.completed.isoformat() if record.completed else None,
        "plans": {"total": sum(record.counts.values()), **record.counts},
        "totals": record.totals,
        "conflicts": record.conflicts,
    }


def completed_event(
    record: RolloutRecord, tenant_id: str, now: datetime, event_id: uuid.UUID
) -> OutboxMessage:
    """`program.rollout_completed`, caused by the command that started the run and in its correlation,
    in the trace current now (the worker's, linked to that command's)."""
    carried = trace_context()
    event = CloudEvent(
        id=str(event_id),
        type=f"careplan.{ROLLOUT_COMPLETED}",
        subject=f"PlanDefinition/{record.program_id}",
        time=now,
        tenantid=tenant_id,
        correlationid=record.correlation_id,
        causationid=str(record.command_id),
        traceparent=carried.get("traceparent"),
        tracestate=carried.get("tracestate"),
        data={k: v for k, v in rollout_report(record).items() if k != "conflicts"},
    )
    return OutboxMessage(
        event_id, event_subject(tenant_id, ROLLOUT_COMPLETED), event.to_bytes(), carried.get("traceparent")
    )
