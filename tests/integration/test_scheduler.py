"""The scheduler against real Postgres and NATS: overdue goals and reviews due are signalled once per due
date however many sweeps and replicas run, and a tenant's goal-achievement summary counts its goals only.

The schedulers here run on a clock of the test's own, far in the future (the service's own scheduler, on
the real clock, never finds these dates passed)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from nats.aio.client import Client as NatsClient

from handlers import scheduler as scheduler_use_cases
from service.runner import RunningService
from service.scheduler import Scheduler
from storage.schedule_store import SqlScheduleStore
from tests.conftest import TokenFactory
from tests.integration.commands import Caller
from tests.integration.helpers import count_messages, last_event

DUE = date(2099, 3, 1)
DAY_AFTER = datetime(2099, 3, 2, 9, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def schedulers(service: RunningService, clock: Callable[[], datetime], count: int = 2) -> list[Scheduler]:
    """Replicas: separate schedulers on one database."""
    return [
        Scheduler(
            SqlScheduleStore(service.system_engine),
            interval_s=60,
            metrics_interval_s=3600,
            timezone=ZoneInfo("UTC"),
            clock=clock,
        )
        for _ in range(count)
    ]


async def sweep_three_times(replicas: list[Scheduler]) -> None:
    for _ in range(3):
        await asyncio.gather(*(r.sweep() for r in replicas))


async def settled_count(nc: NatsClient, subject: str) -> int:
    """After the relay has had time to publish what the sweeps wrote."""
    await asyncio.sleep(1.0)
    return await count_messages(nc, "CAREPLAN_EVENTS", subject)


async def new_plan(caller: Caller, **data: object) -> str:
    result = await caller.ok(
        "careplan.create", {"patient_id": "p1", "title": "CKD plan", "status": "active", **data}
    )
    return str(result["id"])


async def add_goal(caller: Caller, plan_id: str, *due_dates: date, **data: object) -> str:
    targets = [{"measure": {"text": "eGFR"}, "due_date": d.isoformat()} for d in due_dates]
    body = {"care_plan_id": plan_id, "description": {"text": "Keep eGFR stable"}, "targets": targets, **data}
    return str((await caller.ok("goal.add", {"lifecycle_status": "active", **body}))["id"])


async def test_a_goal_due_yesterday_is_signalled_once_across_replicas_and_sweeps(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory
) -> None:
    caller = Caller(nc, service.http_url, token_for(tenant))
    plan_id = await new_plan(caller)
    goal_id = await add_goal(caller, plan_id, DUE + timedelta(days=30), DUE)
    not_yet = await add_goal(caller, plan_id, DUE + timedelta(days=1))  # due today: not overdue yet

    await sweep_three_times(schedulers(service, Clock(DAY_AFTER)))

    subject = f"careplan.evt.{tenant}.goal.overdue"
    assert await settled_count(nc, subject) == 1
    event = await last_event(nc, "CAREPLAN_EVENTS", subject)
    assert event["type"] == "careplan.goal.overdue"
    assert event["subject"] == f"Goal/{goal_id}"
    assert event["resourceversion"] == 1
    assert event["data"]["due_date"] == DUE.isoformat()  # the earliest passed due date
    assert event["data"]["overdue_targets"] == [1]
    assert event["data"]["resource"]["id"] == goal_id
    assert event["data"]["resource"]["resourceType"] == "Goal"
    assert event["tenantid"] == tenant
    assert not_yet != goal_id


async def test_a_goal_achieved_before_the_sweep_is_not_signalled(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory
) -> None:
    caller = Caller(nc, service.http_url, token_for(tenant))
    plan_id = await new_plan(caller)
    achieved = await add_goal(caller, plan_id, DUE)
    await caller.ok("goal.change_status", {"goal_id": achieved, "achievement_status": "achieved"}, version=1)
    paused = await add_goal(caller, plan_id, DUE)
    await caller.ok("goal.change_status", {"goal_id": paused, "lifecycle_status": "on-hold"}, version=1)
    await add_goal(caller, plan_id, DUE, lifecycle_status="proposed")
    await add_goal(caller, plan_id)  # no targets: no due date, never overdue

    await sweep_three_times(schedulers(service, Clock(DAY_AFTER)))

    assert await settled_count(nc, f"careplan.evt.{tenant}.goal.overdue") == 0


async def test_a_new_due_date_that_passes_is_signalled_again(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory
) -> None:
    caller = Caller(nc, service.http_url, token_for(tenant))
    plan_id = await new_plan(caller)
    goal_id = await add_goal(caller, plan_id, DUE)
    clock = Clock(DAY_AFTER)
    replicas = schedulers(service, clock)
    await sweep_three_times(replicas)
    # The team gives the goal a new date at review; when that passes too, it is overdue again.
    later = DUE + timedelta(days=60)
    changes = {"targets": [{"measure": {"text": "eGFR"}, "due_date": later.isoformat()}]}
    await caller.ok("goal.update", {"goal_id": goal_id, "changes": changes}, version=1)
    await sweep_three_times(replicas)
    clock.now = datetime.combine(later + timedelta(days=1), datetime.min.time(), UTC)
    await sweep_three_times(replicas)

    subject = f"careplan.evt.{tenant}.goal.overdue"
    assert await settled_count(nc, subject) == 2
    event = await last_event(nc, "CAREPLAN_EVENTS", subject)
    assert event["data"]["due_date"] == later.isoformat()
    assert event["resourceversion"] == 2


async def test_a_review_is_signalled_once_per_due_date_and_a_completed_review_sets_the_next(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory
) -> None:
    caller = Caller(nc, service.http_url, token_for(tenant))
    plan_id = await new_plan(caller, review={"interval_days": 90, "next_due": DUE.isoformat()})
    await new_plan(caller, review={"interval_days": 90, "next_due": (DUE + timedelta(days=5)).isoformat()})
    await new_plan(caller, status="draft", review={"next_due": DUE.isoformat()})  # drafts are not reviewed
    clock = Clock(DAY_AFTER)
    replicas = schedulers(service, clock)

    await sweep_three_times(replicas)
    subject = f"careplan.evt.{tenant}.careplan.review_due"
    assert await settled_count(nc, subject) == 1
    first = await last_event(nc, "CAREPLAN_EVENTS", subject)
    assert first["subject"] == f"CarePlan/{plan_id}"
    assert first["data"]["next_review_due"] == DUE.isoformat()

    # The review is done: the next date comes from the plan's interval, and is signalled when it passes.
    await caller.ok("careplan.complete_review", {"care_plan_id": plan_id, "outcome": "continue"}, version=1)
    plan = await caller.read("CarePlan", plan_id)
    next_due = date.today() + timedelta(days=90)
    review = [s for e in plan["extension"] for s in e.get("extension", []) if s["url"] == "nextReviewDue"]
    assert review == [{"url": "nextReviewDue", "valueDate": next_due.isoformat()}]
    await sweep_three_times(replicas)
    assert await settled_count(nc, subject) == 2
    second = await last_event(nc, "CAREPLAN_EVENTS", subject)
    assert second["data"]["next_review_due"] == next_due.isoformat()
    assert second["resourceversion"] == 2


async def test_goal_achievement_summary_counts_its_tenant_only_once_per_period(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory
) -> None:
    caller = Caller(nc, service.http_url, token_for(tenant))
    plan_id = await new_plan(caller)
    coded = {"coding": [{"system": "http://snomed.info/sct", "code": "289169006", "display": "Weight loss"}]}
    await add_goal(caller, plan_id, description=coded)
    await add_goal(caller, plan_id, description=coded, achievement_status="improving")
    achieved = await add_goal(caller, plan_id)
    await caller.ok("goal.change_status", {"goal_id": achieved, "achievement_status": "achieved"}, version=1)
    other = Caller(nc, service.http_url, token_for(f"{tenant}x"))
    await add_goal(other, await new_plan(other), description=coded)

    now = datetime(2099, 5, 1, 10, 30, tzinfo=UTC)
    replicas = schedulers(service, Clock(now))
    await asyncio.gather(*(r.summarise() for r in replicas))
    await asyncio.gather(*(r.summarise() for r in replicas))

    subject = f"careplan.evt.{tenant}.metrics.goal_achievement"
    assert await settled_count(nc, subject) == 1
    event = await last_event(nc, "CAREPLAN_EVENTS", subject)
    data = event["data"]
    assert data["period"] == {"start": "2099-05-01T09:00:00+00:00", "end": "2099-05-01T10:00:00+00:00"}
    assert data["total_goals"] == 3
    assert data["by_lifecycle_status"] == {"active": 3}
    assert data["by_achievement_status"] == {"achieved": 1, "improving": 1, "none": 1}
    assert data["by_code"] == [
        {"system": "http://snomed.info/sct", "code": "289169006", "display": "Weight loss", "count": 2}
    ]
    assert event["type"] == "careplan.metrics.goal_achievement"
    other_event = await last_event(nc, "CAREPLAN_EVENTS", f"careplan.evt.{tenant}x.metrics.goal_achievement")
    assert other_event["data"]["total_goals"] == 1


async def test_one_sweep_works_through_a_backlog_larger_than_its_batch(
    service: RunningService,
    nc: NatsClient,
    tenant: str,
    token_for: TokenFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(scheduler_use_cases, "BATCH", 2)
    caller = Caller(nc, service.http_url, token_for(tenant))
    plan_id = await new_plan(caller)
    due = DUE - timedelta(days=400)  # before every other test's dates: this backlog comes first
    for _ in range(5):
        await add_goal(caller, plan_id, due)

    (replica,) = schedulers(service, Clock(DAY_AFTER), count=1)
    result = await replica.sweep()

    assert result.goals_overdue >= 5
    assert await settled_count(nc, f"careplan.evt.{tenant}.goal.overdue") == 5
