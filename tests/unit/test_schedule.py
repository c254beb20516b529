"""What is overdue or due for review on a given day (DOMAIN.md §8.4), and the summary periods."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from domain.entities import CarePlan, Goal, GoalTarget, ReviewState
from domain.schedule import goal_overdue, review_due, summary_period
from domain.statuses import CarePlanIntent, CarePlanStatus, GoalAchievement, GoalLifecycleStatus
from domain.values import CodeableConcept

NOW = datetime(2026, 3, 1, tzinfo=UTC)
DUE = date(2026, 3, 10)


def goal(
    *due: date | None,
    lifecycle: GoalLifecycleStatus = GoalLifecycleStatus.ACTIVE,
    achievement: GoalAchievement | None = None,
) -> Goal:
    return Goal(
        id="g1",
        version=1,
        created=NOW,
        last_updated=NOW,
        plan_id="p1",
        patient_id="pat",
        description=CodeableConcept(text="walk daily"),
        lifecycle_status=lifecycle,
        status_date=NOW.date(),
        achievement_status=achievement,
        targets=tuple(GoalTarget(due_date=d) for d in due),
    )


def plan(status: CarePlanStatus, next_due: date | None) -> CarePlan:
    return CarePlan(
        id="p1",
        version=1,
        created=NOW,
        last_updated=NOW,
        patient_id="pat",
        title="plan",
        status=status,
        intent=CarePlanIntent.PLAN,
        review=ReviewState(interval_days=90, next_due=next_due),
    )


def test_a_goal_is_overdue_from_the_day_after_its_due_date() -> None:
    assert goal_overdue(goal(DUE), DUE) is None
    overdue = goal_overdue(goal(DUE), DUE + timedelta(days=1))
    assert overdue is not None
    assert overdue.due_date == DUE


def test_the_earliest_passed_due_date_drives_the_signal_and_every_passed_target_is_listed() -> None:
    later = DUE + timedelta(days=5)
    overdue = goal_overdue(goal(later, None, DUE, DUE + timedelta(days=90)), later + timedelta(days=1))
    assert overdue is not None
    assert overdue.due_date == DUE
    assert overdue.overdue_targets == (0, 2)


@pytest.mark.parametrize(
    "lifecycle",
    [s for s in GoalLifecycleStatus if s not in (GoalLifecycleStatus.ACTIVE, GoalLifecycleStatus.ACCEPTED)],
)
def test_only_accepted_and_active_goals_can_be_overdue(lifecycle: GoalLifecycleStatus) -> None:
    assert goal_overdue(goal(DUE, lifecycle=lifecycle), DUE + timedelta(days=30)) is None
    assert goal_overdue(goal(DUE, lifecycle=GoalLifecycleStatus.ACCEPTED), DUE + timedelta(days=30))


@pytest.mark.parametrize("achievement", list(GoalAchievement))
def test_achieved_and_sustaining_goals_are_on_track(achievement: GoalAchievement) -> None:
    overdue = goal_overdue(goal(DUE, achievement=achievement), DUE + timedelta(days=1))
    on_track = achievement in (GoalAchievement.ACHIEVED, GoalAchievement.SUSTAINING)
    assert (overdue is None) is on_track


def test_a_goal_without_a_due_date_is_never_overdue() -> None:
    assert goal_overdue(goal(), date(2100, 1, 1)) is None
    assert goal_overdue(goal(None), date(2100, 1, 1)) is None


@pytest.mark.parametrize("status", list(CarePlanStatus))
def test_only_active_and_on_hold_plans_are_due_for_review(status: CarePlanStatus) -> None:
    due = review_due(plan(status, DUE), DUE + timedelta(days=1))
    assert (due == DUE) is (status in (CarePlanStatus.ACTIVE, CarePlanStatus.ON_HOLD))


def test_a_review_is_due_from_the_day_after_its_date_and_never_without_one() -> None:
    assert review_due(plan(CarePlanStatus.ACTIVE, DUE), DUE) is None
    assert review_due(plan(CarePlanStatus.ACTIVE, None), date(2100, 1, 1)) is None


def test_summary_periods_are_the_last_whole_interval_aligned_to_the_epoch() -> None:
    period = summary_period(datetime(2026, 3, 1, 10, 59, 59, tzinfo=UTC), 3600)
    assert (period.start, period.end) == (
        datetime(2026, 3, 1, 9, tzinfo=UTC),
        datetime(2026, 3, 1, 10, tzinfo=UTC),
    )
    assert summary_period(datetime(2026, 3, 1, 10, 0, 0, tzinfo=UTC), 3600).end == period.end
    daily = summary_period(datetime(2026, 3, 1, 0, 0, 1, tzinfo=UTC), 86400)
    assert daily.key == "2026-02-28T00:00:00+00:00"
