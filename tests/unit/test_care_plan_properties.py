"""Property-based: any sequence of commands keeps the aggregate's invariants (hypothesis)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.care_plan import CarePlanAggregate
from domain.entities import Activity, Goal, Participant
from domain.errors import ClosedForChanges, DomainError, VersionConflict
from domain.statuses import (
    CAREPLAN_CLOSED,
    CarePlanStatus,
    GoalAchievement,
    GoalLifecycleStatus,
    TaskStatus,
)
from domain.values import CodeableConcept

START = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
MEMBERS = ("dr-a", "dr-b", "nurse-c")


@dataclass(frozen=True)
class Op:
    name: str
    args: tuple[Any, ...] = ()


ops = st.one_of(
    st.builds(Op, st.just("update"), st.tuples(st.sampled_from(["A", "B", "C"]))),
    st.builds(Op, st.just("plan_status"), st.tuples(st.sampled_from(list(CarePlanStatus)))),
    st.builds(Op, st.just("add_goal"), st.tuples(st.sampled_from(list(GoalLifecycleStatus)))),
    st.builds(
        Op,
        st.just("goal_status"),
        st.tuples(
            st.integers(0, 5),
            st.none() | st.sampled_from(list(GoalLifecycleStatus)),
            st.none() | st.sampled_from(list(GoalAchievement)),
        ),
    ),
    st.builds(Op, st.just("add_activity"), st.tuples(st.sampled_from([TaskStatus.DRAFT, TaskStatus.READY]))),
    st.builds(Op, st.just("task_status"), st.tuples(st.integers(0, 5), st.sampled_from(list(TaskStatus)))),
    st.builds(Op, st.just("request_review"), st.tuples(st.none() | st.sampled_from(MEMBERS))),
    st.builds(
        Op, st.just("complete_review"), st.tuples(st.sampled_from(["continue", "revise", "discontinue"]))
    ),
    st.builds(Op, st.just("add_member"), st.tuples(st.sampled_from(MEMBERS))),
    st.builds(Op, st.just("remove_member"), st.tuples(st.sampled_from(MEMBERS))),
)
stale_flags = st.lists(st.booleans(), min_size=40, max_size=40)


def apply(aggregate: CarePlanAggregate, op: Op, now: datetime, counter: int, stale: bool) -> None:
    plan = aggregate.plan
    version = plan.version - 1 if stale else plan.version
    goals, tasks = (
        list(aggregate.goals),
        [a for a in aggregate.activities if not aggregate.activities[a].is_review],
    )
    match op.name:
        case "update":
            aggregate.update({"title": op.args[0]}, expected_version=version, now=now)
        case "plan_status":
            aggregate.change_status(op.args[0], reason="r", expected_version=version, now=now)
        case "add_goal":
            goal = Goal(
                id=f"g{counter}", version=0, created=now, last_updated=now, plan_id="elsewhere",
                patient_id="someone-else", description=CodeableConcept(text="g"), lifecycle_status=op.args[0],
                status_date=now.date(),
            )  # fmt: skip
            aggregate.add_goal(goal, expected_version=version if stale else None, now=now)
        case "goal_status" if goals:
            goal = aggregate.goals[goals[op.args[0] % len(goals)]]
            aggregate.change_goal_status(
                goal.id, lifecycle_status=op.args[1], achievement_status=op.args[2], reason="r",
                expected_version=goal.version - 1 if stale else goal.version, now=now,
            )  # fmt: skip
        case "add_activity":
            activity = Activity(
                id=f"t{counter}", version=0, created=now, last_updated=now, plan_id="elsewhere",
                patient_id="someone-else", description="t", status=op.args[0],
            )  # fmt: skip
            aggregate.add_activity(activity, expected_version=version if stale else None, now=now)
        case "task_status" if tasks:
            task = aggregate.activities[tasks[op.args[0] % len(tasks)]]
            aggregate.change_activity_status(
                task.id, op.args[1], reason="r", outcome=None,
                expected_version=task.version - 1 if stale else task.version, now=now,
            )  # fmt: skip
        case "request_review":
            aggregate.request_review(
                review_task_id=f"r{counter}",
                reviewer_id=op.args[0],
                due=None,
                expected_version=version,
                now=now,
            )
        case "complete_review":
            aggregate.complete_review(
                outcome=op.args[0], notes=(), next_review_due=None, expected_version=version, now=now
            )
        case "add_member":
            participant = Participant(member_id=op.args[0], role=CodeableConcept(text="role"))
            team_version = aggregate.care_team.version if aggregate.care_team else None
            aggregate.add_member(
                participant, new_team_id=lambda: "team", expected_version=team_version, now=now
            )
        case "remove_member" if aggregate.care_team is not None:
            aggregate.remove_member(op.args[0], expected_version=aggregate.care_team.version, now=now)


def resources(aggregate: CarePlanAggregate) -> dict[tuple[str, str], Any]:
    found: dict[tuple[str, str], Any] = {("CarePlan", aggregate.plan.id): aggregate.plan}
    found |= {("Goal", g.id): g for g in aggregate.goals.values()}
    found |= {("Task", a.id): a for a in aggregate.activities.values()}
    if aggregate.care_team is not None:
        found[("CareTeam", aggregate.care_team.id)] = aggregate.care_team
    return found


@settings(max_examples=300, deadline=None)
@given(st.lists(ops, min_size=1, max_size=40), stale_flags)
def test_any_command_sequence_keeps_the_invariants(sequence: list[Op], stale: list[bool]) -> None:
    aggregate = CarePlanAggregate.create(
        plan_id="cp", patient_id="p1", title="plan", now=START, status=CarePlanStatus.ACTIVE
    )
    aggregate.mark_stored()
    for step, op in enumerate(sequence):
        now = START + timedelta(days=step)
        before = copy.deepcopy(resources(aggregate))
        was_closed = aggregate.plan.status in CAREPLAN_CLOSED
        was_status = aggregate.plan.status
        try:
            apply(aggregate, op, now, step, stale[step] and step % 3 == 0)
        except DomainError as refused:
            # A refused command is refused whole: the command is undone by the transaction, but the
            # domain itself must not half-apply it either.
            assert resources(aggregate) == before, (op, refused)
            if was_closed and op.name in ("add_goal", "add_activity"):
                assert isinstance(refused, (ClosedForChanges, VersionConflict))
            aggregate.mark_stored()
            continue
        after = resources(aggregate)
        changed = {
            key for key, _ in ((k, None) for k in after) if key not in before or after[key] != before[key]
        }
        # Versions grow by exactly one per changed resource, and events carry the new versions.
        for key in changed:
            old = before.get(key)
            assert after[key].version == (old.version + 1 if old is not None else 1), key
        for event in aggregate.events:
            assert event.version == after[(event.resource_type, event.resource_id)].version
        assert {(e.resource_type, e.resource_id) for e in aggregate.events} == changed
        # Terminal stays terminal: a closed plan only moves to entered-in-error, and takes no new parts.
        if was_closed:
            assert aggregate.plan.status in (was_status, CarePlanStatus.ENTERED_IN_ERROR)
            assert op.name not in ("add_goal", "add_activity")
        # Every part belongs to the plan's patient.
        for goal in aggregate.goals.values():
            assert (goal.plan_id, goal.patient_id) == (aggregate.plan.id, aggregate.plan.patient_id)
        for activity in aggregate.activities.values():
            assert (activity.plan_id, activity.patient_id) == (aggregate.plan.id, aggregate.plan.patient_id)
        assert set(aggregate.plan.goal_ids) == set(aggregate.goals)
        aggregate.mark_stored()


def test_due_dates_do_not_leak_into_the_past() -> None:
    aggregate = CarePlanAggregate.create(
        plan_id="cp", patient_id="p", title="t", now=START, status=CarePlanStatus.ACTIVE
    )
    aggregate.mark_stored()
    with pytest.raises(DomainError, match="past"):
        aggregate.complete_review(
            outcome="continue", notes=(), next_review_due=date(2025, 1, 1), expected_version=1, now=START
        )
