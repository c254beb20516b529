"""What the scheduler signals, decided from a resource and a day (DOMAIN.md §8.4): overdue goals, plans due
for review, and the periods of goal-achievement summaries. Derived, never written into the resources."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from domain.entities import CarePlan, Goal
from domain.statuses import CarePlanStatus, GoalAchievement, GoalLifecycleStatus

# Paused (on-hold), not yet agreed (proposed, planned) and closed goals are never overdue.
GOAL_CAN_BE_OVERDUE = frozenset({GoalLifecycleStatus.ACCEPTED, GoalLifecycleStatus.ACTIVE})
GOAL_ON_TRACK = frozenset({GoalAchievement.ACHIEVED, GoalAchievement.SUSTAINING})
PLAN_UNDER_REVIEW = frozenset({CarePlanStatus.ACTIVE, CarePlanStatus.ON_HOLD})


@dataclass(frozen=True, slots=True)
class OverdueGoal:
    """The earliest passed due date drives the alert; every target past its date is listed."""

    due_date: date
    overdue_targets: tuple[int, ...]  # indexes into Goal.target


def goal_overdue(goal: Goal, today: date) -> OverdueGoal | None:
    """A due date is the last day to reach the target: a goal is overdue from the day after."""
    if goal.lifecycle_status not in GOAL_CAN_BE_OVERDUE or goal.achievement_status in GOAL_ON_TRACK:
        return None
    passed = [
        (t.due_date, i) for i, t in enumerate(goal.targets) if t.due_date is not None and t.due_date < today
    ]
    if not passed:
        return None
    return OverdueGoal(due_date=min(d for d, _ in passed), overdue_targets=tuple(i for _, i in passed))


def review_due(plan: CarePlan, today: date) -> date | None:
    """The plan's review date, when it has passed and the plan is one that gets reviewed."""
    if plan.status not in PLAN_UNDER_REVIEW or plan.review is None or plan.review.next_due is None:
        return None
    return plan.review.next_due if today > plan.review.next_due else None


@dataclass(frozen=True, slots=True)
class SummaryPeriod:
    """The interval a goal-achievement summary covers: the last whole one before `now`."""

    start: datetime
    end: datetime

    @property
    def key(self) -> str:
        return self.start.isoformat()


def summary_period(now: datetime, interval_s: float) -> SummaryPeriod:
    """Periods are aligned to the epoch, so every replica computes the same one."""
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    elapsed = (now - epoch).total_seconds()
    end = epoch + timedelta(seconds=(elapsed // interval_s) * interval_s)
    return SummaryPeriod(start=end - timedelta(seconds=interval_s), end=end)
