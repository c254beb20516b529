"""The scheduler's use cases: signal overdue goals and plans due for review once per due date, and send each
tenant's goal-achievement summary once per period. Each signal is decided again under the plan's row lock
and written with its marker in one transaction, so replicas and repeated sweeps send it once, and it queues
behind any command changing the plan (events stay in version order per resource)."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from domain.schedule import goal_overdue, review_due, summary_period
from handlers.ports import GoalCounts, OutboxMessage, ScheduleCandidate, ScheduleStore
from schemas.events import CloudEvent, event_subject

GOAL_OVERDUE = "goal.overdue"
REVIEW_DUE = "careplan.review_due"
GOAL_ACHIEVEMENT = "metrics.goal_achievement"
BATCH = 500


@dataclass(frozen=True, slots=True)
class SweepResult:
    goals_overdue: int
    reviews_due: int


@dataclass(frozen=True, slots=True)
class Sweep:
    """One pass: `now` from the caller's clock, `today` in the care organisation's time zone."""

    now: datetime
    today: date
    sweep_id: uuid.UUID


async def signal_overdue_goals(store: ScheduleStore, sweep: Sweep, new_id: Callable[[], uuid.UUID]) -> int:
    sent = 0
    async for candidate in _all_candidates(lambda: store.overdue_goal_candidates(sweep.today, BATCH)):
        async with store.claim_plan(candidate.tenant_id, candidate.plan_id) as claim:
            if claim is None:
                continue
            found = await claim.goal(candidate.resource_id)
            overdue = goal_overdue(found[0], sweep.today) if found else None
            if found is None or overdue is None:
                continue  # changed since the candidate query (achieved, closed, new due date)
            goal, resource = found
            if not await claim.mark(GOAL_OVERDUE, goal.id, overdue.due_date.isoformat()):
                continue
            data = {
                "resource": resource,
                "due_date": overdue.due_date.isoformat(),
                "overdue_targets": list(overdue.overdue_targets),
            }
            subject = f"Goal/{goal.id}"
            event = _event(sweep, new_id(), candidate.tenant_id, GOAL_OVERDUE, subject, goal.version, data)
            await claim.add_to_outbox([event])
            sent += 1
    return sent


async def signal_reviews_due(store: ScheduleStore, sweep: Sweep, new_id: Callable[[], uuid.UUID]) -> int:
    sent = 0
    async for candidate in _all_candidates(lambda: store.review_due_candidates(sweep.today, BATCH)):
        async with store.claim_plan(candidate.tenant_id, candidate.plan_id) as claim:
            if claim is None:
                continue
            plan, resource = await claim.plan()
            due = review_due(plan, sweep.today)
            if due is None or not await claim.mark(REVIEW_DUE, plan.id, due.isoformat()):
                continue
            data = {"resource": resource, "next_review_due": due.isoformat()}
            subject = f"CarePlan/{plan.id}"
            event = _event(sweep, new_id(), candidate.tenant_id, REVIEW_DUE, subject, plan.version, data)
            await claim.add_to_outbox([event])
            sent += 1
    return sent


async def sweep_due_signals(
    store: ScheduleStore, sweep: Sweep, new_id: Callable[[], uuid.UUID]
) -> SweepResult:
    return SweepResult(
        goals_overdue=await signal_overdue_goals(store, sweep, new_id),
        reviews_due=await signal_reviews_due(store, sweep, new_id),
    )


async def send_goal_achievement_summaries(
    store: ScheduleStore, sweep: Sweep, interval_s: float, new_id: Callable[[], uuid.UUID]
) -> int:
    """Per tenant, once per period: the counts as of the end of the last whole period."""
    period = summary_period(sweep.now, interval_s)
    sent = 0
    for tenant_id in await store.tenants():
        async with store.claim_period(tenant_id, GOAL_ACHIEVEMENT, period.key) as claim:
            if claim is None:
                continue
            counts = await claim.goal_counts()
            data = {
                "period": {"start": period.start.isoformat(), "end": period.end.isoformat()},
                "as_of": sweep.now.isoformat(),
                **_summary(counts),
            }
            subject = f"metrics/goal_achievement/{period.key}"
            await claim.add_to_outbox(
                [_event(sweep, new_id(), tenant_id, GOAL_ACHIEVEMENT, subject, None, data)]
            )
            sent += 1
    return sent


async def _all_candidates(
    query: Callable[[], Awaitable[list[ScheduleCandidate]]],
) -> AsyncIterator[ScheduleCandidate]:
    """Batch after batch while full ones keep coming (a backlog, e.g. after downtime) and the last one was
    not all skipped: candidates whose plan a command holds come back in every batch until the next sweep."""
    seen: set[ScheduleCandidate] = set()
    while True:
        batch = await query()
        fresh = [c for c in batch if c not in seen]
        for candidate in fresh:
            yield candidate
        seen.update(fresh)
        if len(batch) < BATCH or not fresh:
            return


def _summary(counts: GoalCounts) -> dict[str, Any]:
    lifecycle: Counter[str] = Counter()
    achievement: Counter[str] = Counter()
    for lifecycle_status, achievement_status, n in counts.by_status:
        lifecycle[lifecycle_status] += n
        achievement[achievement_status or "none"] += n
    return {
        "total_goals": sum(lifecycle.values()),
        "by_lifecycle_status": dict(sorted(lifecycle.items())),
        "by_achievement_status": dict(sorted(achievement.items())),
        "by_status": [
            {"lifecycle_status": lc, "achievement_status": ach, "count": n} for lc, ach, n in counts.by_status
        ],
        "by_code": [
            {"system": system, "code": code, "display": display, "count": n}
            for system, code, display, n in counts.by_code
        ],
    }


def _event(
    sweep: Sweep,
    event_id: uuid.UUID,
    tenant_id: str,
    name: str,
    subject: str,
    version: int | None,
    data: dict[str, Any],
) -> OutboxMessage:
    """No command caused it: the sweep's id is the causation and the correlation."""
    cloud_event = CloudEvent(
        id=str(event_id),
        type=f"careplan.{name}",
        subject=subject,
        time=sweep.now,
        tenantid=tenant_id,
        correlationid=str(sweep.sweep_id),
        causationid=str(sweep.sweep_id),
        resourceversion=version,
        data=data,
    )
    return OutboxMessage(event_id, event_subject(tenant_id, name), cloud_event.to_bytes())
