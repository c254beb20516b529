"""The CarePlan aggregate: one patient's plan with its goals, activities (Tasks), reviews and care team.

Every command is a method here. A method checks the version the caller expected, applies the FHIR status
rules, bumps the version of each resource it changes, and records one domain event per new version.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import Any

from domain.entities import (
    Activity,
    CarePlan,
    CareTeam,
    Goal,
    Participant,
    ReviewState,
    Versioned,
)
from domain.errors import ClosedForChanges, InvalidTransition, InvalidValue, NotFound, VersionConflict
from domain.events import DomainEvent
from domain.statuses import (
    CAREPLAN_AT_CREATE,
    CAREPLAN_CLOSED,
    CAREPLAN_TRANSITIONS,
    GOAL_ACHIEVEMENT_ALLOWED,
    GOAL_AT_CREATE,
    GOAL_CLOSED,
    GOAL_COMPLETED_ACHIEVEMENTS,
    GOAL_MET,
    GOAL_TRANSITIONS,
    TASK_AT_CREATE,
    TASK_NOT_STARTED,
    TASK_TERMINAL,
    TASK_TRANSITIONS,
    CarePlanIntent,
    CarePlanStatus,
    CareTeamStatus,
    GoalAchievement,
    GoalLifecycleStatus,
    TaskStatus,
    check_initial,
    check_transition,
)
from domain.values import CodeableConcept, Note, Period

IdFactory = Callable[[], str]

PLAN_UPDATABLE = frozenset(
    {
        "title",
        "description",
        "encounter_id",
        "categories",
        "period",
        "addresses",
        "author_id",
        "review",
        "notes",
        "intent",
        "patient_id",
    }
)
PLAN_IMMUTABLE = frozenset({"intent", "patient_id"})
PLAN_REQUIRED = frozenset({"title"})
GOAL_UPDATABLE = frozenset(
    {"description", "priority", "categories", "start_date", "targets", "addresses", "notes"}
)
GOAL_REQUIRED = frozenset({"description"})


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgramChange:
    """What a rollout does to one plan, decided by `domain.programs.migrate`: items to add, not-started
    items to cancel or to rewrite from their new template (`revised`: resource type, id, new field
    values), and the canonicals the plan follows afterwards."""

    instantiates: tuple[str, ...]
    reason: str
    goals: Sequence[Goal] = ()
    activities: Sequence[Activity] = ()
    cancelled: Sequence[tuple[str, str]] = ()
    revised: Sequence[tuple[str, str, Mapping[str, object]]] = ()


def check_version(resource: Versioned, expected: int | None, *, required: bool) -> None:
    """Optimistic concurrency: the caller's `expected_version` must be the current one."""
    if expected is None:
        if required:
            raise InvalidValue("expected_version", "this command needs the version it expects")
        return
    if expected != resource.version:
        raise VersionConflict(expected=expected, current=resource.version)


class CarePlanAggregate:
    """The plan and everything it owns, loaded and changed as one unit under the plan's row lock."""

    def __init__(
        self,
        plan: CarePlan,
        goals: Mapping[str, Goal] | None = None,
        activities: Mapping[str, Activity] | None = None,
        care_team: CareTeam | None = None,
    ) -> None:
        self.plan = plan
        self.goals: dict[str, Goal] = dict(goals or {})
        self.activities: dict[str, Activity] = dict(activities or {})
        self.care_team = care_team
        self.events: list[DomainEvent] = []
        self._changed: dict[tuple[str, str], Versioned] = {}

    # --- reading ---

    def changed(self) -> list[tuple[str, Versioned]]:
        """Resources with a new version, in the order they changed: what storage must write."""
        return [(resource_type, resource) for (resource_type, _), resource in self._changed.items()]

    def mark_stored(self) -> None:
        """The changes so far are stored: the next command starts new versions (one per resource)."""
        self._changed.clear()
        self.events.clear()

    def goal(self, goal_id: str) -> Goal:
        try:
            return self.goals[goal_id]
        except KeyError:
            raise NotFound("Goal", goal_id) from None

    def activity(self, activity_id: str) -> Activity:
        try:
            return self.activities[activity_id]
        except KeyError:
            raise NotFound("Task", activity_id) from None

    def open_review(self) -> Activity | None:
        return next(
            (a for a in self.activities.values() if a.is_review and a.status not in TASK_TERMINAL), None
        )

    # --- CarePlan commands ---

    @classmethod
    def create(
        cls,
        *,
        plan_id: str,
        patient_id: str,
        title: str,
        now: datetime,
        status: CarePlanStatus = CarePlanStatus.DRAFT,
        intent: CarePlanIntent = CarePlanIntent.PLAN,
        **fields: Any,
    ) -> CarePlanAggregate:
        """Start a plan; only `draft` and `active` are valid first statuses."""
        check_initial("status", CAREPLAN_AT_CREATE, status)
        plan = CarePlan(
            id=plan_id,
            version=0,
            created=now,
            last_updated=now,
            patient_id=patient_id,
            title=title,
            status=status,
            intent=intent,
            **fields,
        )
        aggregate = cls(plan)
        aggregate._new_version("CarePlan", plan, now, "careplan.created")
        return aggregate

    def add_enrolled(
        self, goals: list[Goal], activities: list[Activity], *, now: datetime, data: dict[str, Any]
    ) -> None:
        """The goals and activities of a new plan's program (CONTRACT §10), in the command that made the
        plan: each its `*.added` event, and the plan's `careplan.enrolled` (with `data`) instead of an
        update per item."""
        self._add_program_items(goals, activities, now)
        self._new_version("CarePlan", self.plan, now, "careplan.enrolled", data)

    def _add_program_items(
        self, goals: Sequence[Goal], activities: Sequence[Activity], now: datetime
    ) -> None:
        """Goals and activities made from a program's templates (enrolment, rollout): each its `*.added`
        event; the plan lists them, its own version is the caller's to make."""
        for goal in goals:
            check_initial("lifecycle_status", GOAL_AT_CREATE, goal.lifecycle_status)
            goal.plan_id, goal.patient_id = self.plan.id, self.plan.patient_id
            goal.version, goal.created, goal.last_updated, goal.status_date = 0, now, now, now.date()
            self.goals[goal.id] = goal
            self._new_version("Goal", goal, now, "goal.added")
        for activity in activities:
            check_initial("status", TASK_AT_CREATE, activity.status)
            if any(goal_id not in self.goals for goal_id in activity.goal_ids):
                raise InvalidValue("goal_ids", "a program activity names a goal of another plan")
            activity.plan_id, activity.patient_id = self.plan.id, self.plan.patient_id
            activity.version, activity.created, activity.last_updated = 0, now, now
            self.activities[activity.id] = activity
            self._new_version("Task", activity, now, "activity.added")
        self.plan.goal_ids = (*self.plan.goal_ids, *(g.id for g in goals))
        self.plan.activity_ids = (*self.plan.activity_ids, *(a.id for a in activities))

    def apply_program(self, change: ProgramChange, *, now: datetime, data: dict[str, Any]) -> None:
        """A rollout's migration of this plan to a new program version (CONTRACT §10): the usual event per
        changed item (`*.added`, `*.status_changed`, `*.updated`) and the plan's `careplan.migrated` (with
        `data`), even when only the version it follows moves."""
        self._require_open("a program rollout")
        self._add_program_items(change.goals, change.activities, now)
        for resource_type, resource_id in change.cancelled:
            if resource_type == "Goal":
                self._cancel_goal(self.goal(resource_id), change.reason, now)
            else:
                self._set_task_status(
                    self.activity(resource_id), TaskStatus.CANCELLED, now, reason=change.reason
                )
        for resource_type, resource_id, fields in change.revised:
            item: Goal | Activity = (
                self.goal(resource_id) if resource_type == "Goal" else self.activity(resource_id)
            )
            revised = sorted(name for name, value in fields.items() if getattr(item, name) != value)
            for name in revised:
                setattr(item, name, fields[name])
            if revised and isinstance(item, Goal):
                self._new_version("Goal", item, now, "goal.updated", {"changed": revised})
            elif revised:
                self._new_version("Task", item, now, "activity.updated", {"changed": revised})
        self.plan.instantiates = change.instantiates
        self._new_version("CarePlan", self.plan, now, "careplan.migrated", data)

    def _cancel_goal(self, goal: Goal, reason: str, now: datetime) -> None:
        from_lifecycle, from_achievement = goal.lifecycle_status, goal.achievement_status
        check_transition("lifecycle_status", GOAL_TRANSITIONS, from_lifecycle, GoalLifecycleStatus.CANCELLED)
        goal.lifecycle_status, goal.achievement_status = GoalLifecycleStatus.CANCELLED, None
        goal.status_date, goal.status_reason = now.date(), reason
        data: dict[str, Any] = {
            "from": {
                "lifecycle_status": from_lifecycle.value,
                "achievement_status": _value(from_achievement),
            },
            "to": {"lifecycle_status": GoalLifecycleStatus.CANCELLED.value, "achievement_status": None},
        }
        self._new_version("Goal", goal, now, "goal.status_changed", data)

    def update(self, changes: Mapping[str, object], *, expected_version: int | None, now: datetime) -> None:
        """Merge-patch of the plan's content (not its status); a patch that changes nothing is no version."""
        check_version(self.plan, expected_version, required=True)
        self._require_open("changes")
        effective = _apply_changes(self.plan, changes, PLAN_UPDATABLE, PLAN_IMMUTABLE, PLAN_REQUIRED)
        if effective:
            self._new_version("CarePlan", self.plan, now, "careplan.updated", {"changed": sorted(effective)})

    def change_status(
        self, to: CarePlanStatus, *, reason: str | None, expected_version: int | None, now: datetime
    ) -> None:
        check_version(self.plan, expected_version, required=True)
        self._change_plan_status(to, reason, now)

    def request_review(
        self,
        *,
        review_task_id: str,
        reviewer_id: str | None,
        due: date | None,
        expected_version: int | None,
        now: datetime,
    ) -> Activity:
        """Schedule a review: a review Task (SNOMED 425268008, focus = the plan) and the next due date."""
        check_version(self.plan, expected_version, required=True)
        if self.plan.status not in (CarePlanStatus.ACTIVE, CarePlanStatus.ON_HOLD):
            raise ClosedForChanges(resource="CarePlan", status=self.plan.status.value, action="reviews")
        if self.open_review() is not None:
            raise InvalidValue("care_plan_id", "the plan already has an open review")
        review = self.plan.review or ReviewState()
        due = due or review.next_due
        task = Activity(
            id=review_task_id,
            version=0,
            created=now,
            last_updated=now,
            plan_id=self.plan.id,
            patient_id=self.plan.patient_id,
            description=f"Review of care plan: {self.plan.title}",
            status=TaskStatus.READY if reviewer_id else TaskStatus.REQUESTED,
            intent="order",
            owner_id=reviewer_id,
            scheduled=Period(end=due) if due else None,
            is_review=True,
        )
        self.activities[task.id] = task
        self._new_version("Task", task, now, "activity.added")
        self.plan.review = replace(review, next_due=due)
        self._new_version(
            "CarePlan", self.plan, now, "careplan.review_requested", {"review_task_id": task.id}
        )
        return task

    def complete_review(
        self,
        *,
        outcome: str,
        notes: tuple[Note, ...],
        next_review_due: date | None,
        expected_version: int | None,
        now: datetime,
    ) -> None:
        """Record a review: close the open review Task, set the next due date (given, or from the
        interval), keep the notes; `discontinue` revokes the plan, `revise` and `continue` keep it."""
        check_version(self.plan, expected_version, required=True)
        if self.plan.status not in (CarePlanStatus.ACTIVE, CarePlanStatus.ON_HOLD):
            raise ClosedForChanges(resource="CarePlan", status=self.plan.status.value, action="reviews")
        today = now.date()
        open_review = self.open_review()
        if open_review is not None:
            # Holding the review is doing it: the review Task completes from whichever open status it had.
            self._set_task_status(open_review, TaskStatus.COMPLETED, now, reason=None, checked=False)
        review = self.plan.review or ReviewState()
        if next_review_due is None and review.interval_days is not None and outcome != "discontinue":
            next_review_due = today + timedelta(days=review.interval_days)
        if next_review_due is not None and next_review_due < today:
            raise InvalidValue("next_review_due", "is in the past")
        self.plan.review = replace(
            review,
            next_due=None if outcome == "discontinue" else next_review_due,
            last_reviewed=today,
            last_outcome=outcome,
        )
        self.plan.notes = self.plan.notes + notes
        if outcome == "discontinue":
            self._change_plan_status(CarePlanStatus.REVOKED, "discontinued at review", now)
        self._new_version("CarePlan", self.plan, now, "careplan.reviewed", {"outcome": outcome})

    # --- Goal commands ---

    def add_goal(self, goal: Goal, *, expected_version: int | None, now: datetime) -> None:
        check_version(self.plan, expected_version, required=False)
        self._require_open("new goals")
        check_initial("lifecycle_status", GOAL_AT_CREATE, goal.lifecycle_status)
        _check_achievement(goal.lifecycle_status, goal.achievement_status)
        goal.plan_id, goal.patient_id = self.plan.id, self.plan.patient_id
        goal.version, goal.created, goal.last_updated, goal.status_date = 0, now, now, now.date()
        self.goals[goal.id] = goal
        self._new_version("Goal", goal, now, "goal.added")
        self.plan.goal_ids = (*self.plan.goal_ids, goal.id)
        self._new_version("CarePlan", self.plan, now, "careplan.updated", {"changed": ["goal"]})

    def update_goal(
        self, goal_id: str, changes: Mapping[str, object], *, expected_version: int | None, now: datetime
    ) -> None:
        goal = self.goal(goal_id)
        check_version(goal, expected_version, required=True)
        if goal.lifecycle_status in GOAL_CLOSED:
            raise ClosedForChanges(resource="Goal", status=goal.lifecycle_status.value, action="changes")
        effective = _apply_changes(goal, changes, GOAL_UPDATABLE, frozenset(), GOAL_REQUIRED)
        if effective:
            self._new_version("Goal", goal, now, "goal.updated", {"changed": sorted(effective)})

    def change_goal_status(
        self,
        goal_id: str,
        *,
        lifecycle_status: GoalLifecycleStatus | None,
        achievement_status: GoalAchievement | None,
        reason: str | None,
        expected_version: int | None,
        now: datetime,
    ) -> None:
        goal = self.goal(goal_id)
        check_version(goal, expected_version, required=True)
        if lifecycle_status is None and achievement_status is None:
            raise InvalidValue("lifecycle_status", "give a lifecycle_status, an achievement_status or both")
        from_lifecycle, from_achievement = goal.lifecycle_status, goal.achievement_status
        to_lifecycle = lifecycle_status or from_lifecycle
        if lifecycle_status is not None and lifecycle_status != from_lifecycle:
            check_transition("lifecycle_status", GOAL_TRANSITIONS, from_lifecycle, lifecycle_status)
            if from_lifecycle is GoalLifecycleStatus.COMPLETED and not reason:
                raise InvalidValue("reason", "reopening a completed goal needs a reason")
        to_achievement = achievement_status if achievement_status is not None else from_achievement
        if to_lifecycle not in GOAL_ACHIEVEMENT_ALLOWED:
            to_achievement = None if achievement_status is None else to_achievement
        _check_achievement(to_lifecycle, to_achievement)
        if (to_lifecycle, to_achievement) == (from_lifecycle, from_achievement):
            return
        goal.lifecycle_status, goal.achievement_status = to_lifecycle, to_achievement
        goal.status_date, goal.status_reason = now.date(), reason
        data: dict[str, Any] = {
            "from": {
                "lifecycle_status": from_lifecycle.value,
                "achievement_status": _value(from_achievement),
            },
            "to": {"lifecycle_status": to_lifecycle.value, "achievement_status": _value(to_achievement)},
        }
        self._new_version("Goal", goal, now, "goal.status_changed", data)
        if to_achievement in GOAL_MET and from_achievement not in GOAL_MET:
            self._event("Goal", goal, "goal.achieved", data)

    # --- Activity commands ---

    def add_activity(self, activity: Activity, *, expected_version: int | None, now: datetime) -> None:
        check_version(self.plan, expected_version, required=False)
        self._require_open("new activities")
        check_initial("status", TASK_AT_CREATE, activity.status)
        for goal_id in activity.goal_ids:
            if goal_id not in self.goals:
                raise InvalidValue("goal_ids", f"Goal/{goal_id} is not a goal of this plan")
        activity.plan_id, activity.patient_id = self.plan.id, self.plan.patient_id
        activity.version, activity.created, activity.last_updated = 0, now, now
        self.activities[activity.id] = activity
        self._new_version("Task", activity, now, "activity.added")
        self.plan.activity_ids = (*self.plan.activity_ids, activity.id)
        self._new_version("CarePlan", self.plan, now, "careplan.updated", {"changed": ["activity"]})

    def assign_activity(
        self, activity_id: str, owner_id: str, *, expected_version: int | None, now: datetime
    ) -> None:
        activity = self.activity(activity_id)
        check_version(activity, expected_version, required=True)
        if activity.status not in TASK_NOT_STARTED:
            raise InvalidTransition(
                field="owner_id",
                from_=activity.status.value,
                to="reassigned",
                allowed=tuple(s.value for s in TASK_NOT_STARTED),
            )
        if activity.owner_id == owner_id:
            return
        previous = activity.owner_id
        activity.owner_id = owner_id
        self._new_version("Task", activity, now, "activity.assigned", {"from": previous, "to": owner_id})

    def change_activity_status(
        self,
        activity_id: str,
        to: TaskStatus,
        *,
        reason: str | None,
        outcome: CodeableConcept | None,
        expected_version: int | None,
        now: datetime,
    ) -> None:
        activity = self.activity(activity_id)
        check_version(activity, expected_version, required=True)
        if outcome is not None:
            activity.outcome = outcome
        self._set_task_status(activity, to, now, reason=reason)

    # --- CareTeam commands ---

    def add_member(
        self, participant: Participant, *, new_team_id: IdFactory, expected_version: int | None, now: datetime
    ) -> None:
        self._require_open("care team changes")
        if self.care_team is not None:
            check_version(self.care_team, expected_version, required=False)
        else:
            # The first member creates the plan's team: there is no version yet to expect.
            if expected_version is not None:
                raise VersionConflict(expected=expected_version, current=0)
            self.care_team = CareTeam(
                id=new_team_id(),
                version=0,
                created=now,
                last_updated=now,
                plan_id=self.plan.id,
                patient_id=self.plan.patient_id,
                name=f"Care team: {self.plan.title}",
                status=CareTeamStatus.ACTIVE,
            )
            self.plan.care_team_id = self.care_team.id
            self._new_version("CarePlan", self.plan, now, "careplan.updated", {"changed": ["care_team"]})
        team = self.care_team
        if any(p.member_id == participant.member_id and p.is_current(now.date()) for p in team.participants):
            raise InvalidValue("member_id", f"Practitioner/{participant.member_id} is already on the team")
        team.participants = (*team.participants, participant)
        self._new_version(
            "CareTeam", team, now, "careteam.member_added", {"member_id": participant.member_id}
        )

    def update_member(
        self,
        member_id: str,
        changes: Mapping[str, object],
        *,
        expected_version: int | None,
        now: datetime,
    ) -> None:
        team, index, current = self._current_member(member_id, now)
        check_version(team, expected_version, required=True)
        role = changes.get("role", current.role)
        period = changes.get("period", current.period)
        if not isinstance(role, CodeableConcept):
            raise InvalidValue("changes.role", "a member needs a role")
        if period is not None and not isinstance(period, Period):
            raise InvalidValue("changes.period", "must be a period")
        updated = replace(current, role=role, period=period)
        if updated == current:
            return
        team.participants = (*team.participants[:index], updated, *team.participants[index + 1 :])
        self._new_version("CareTeam", team, now, "careteam.member_updated", {"member_id": member_id})

    def remove_member(self, member_id: str, *, expected_version: int | None, now: datetime) -> None:
        """End the membership (period.end = today) rather than delete it: the team's history stays true."""
        team, index, current = self._current_member(member_id, now)
        check_version(team, expected_version, required=True)
        start = current.period.start if current.period is not None else None
        ended = replace(current, period=Period(start=start, end=now.date()))
        team.participants = (*team.participants[:index], ended, *team.participants[index + 1 :])
        self._new_version("CareTeam", team, now, "careteam.member_removed", {"member_id": member_id})

    # --- rules shared by the commands ---

    def _require_open(self, action: str) -> None:
        if self.plan.status in CAREPLAN_CLOSED:
            raise ClosedForChanges(resource="CarePlan", status=self.plan.status.value, action=action)

    def _current_member(self, member_id: str, now: datetime) -> tuple[CareTeam, int, Participant]:
        team = self.care_team
        if team is not None:
            for index, participant in enumerate(team.participants):
                if participant.member_id == member_id and participant.is_current(now.date()):
                    return team, index, participant
        raise NotFound("CareTeam member", member_id)

    def _change_plan_status(self, to: CarePlanStatus, reason: str | None, now: datetime) -> None:
        plan = self.plan
        from_ = plan.status
        check_transition("status", CAREPLAN_TRANSITIONS, from_, to)
        open_activities = [a for a in self.activities.values() if a.status not in TASK_TERMINAL]
        if from_ is CarePlanStatus.ON_HOLD and to is CarePlanStatus.COMPLETED and open_activities:
            raise InvalidTransition(
                field="status",
                from_=from_.value,
                to=to.value,
                allowed=tuple(
                    s.value for s in CAREPLAN_TRANSITIONS[from_] if s is not CarePlanStatus.COMPLETED
                ),
            )
        plan.status, plan.status_reason = to, reason
        if to in (CarePlanStatus.REVOKED, CarePlanStatus.COMPLETED):
            if plan.period is None or plan.period.end is None:
                plan.period = Period(start=plan.period.start if plan.period else None, end=now.date())
            # Close what is still open (DOMAIN.md §1.2); goals are left alone, they may serve other plans.
            for activity in open_activities:
                self._set_task_status(activity, TaskStatus.CANCELLED, now, reason=f"care plan {to.value}")
        elif to is CarePlanStatus.ON_HOLD:
            for activity in open_activities:
                if activity.status is TaskStatus.IN_PROGRESS:
                    activity.held_by_plan = True
                    self._set_task_status(activity, TaskStatus.ON_HOLD, now, reason="care plan on hold")
        elif to is CarePlanStatus.ACTIVE and from_ is CarePlanStatus.ON_HOLD:
            for activity in open_activities:
                if activity.held_by_plan and activity.status is TaskStatus.ON_HOLD:
                    self._set_task_status(activity, TaskStatus.IN_PROGRESS, now, reason=None)
        self._new_version(
            "CarePlan",
            plan,
            now,
            "careplan.status_changed",
            {"from": from_.value, "to": to.value, "reason": reason},
        )

    def _set_task_status(
        self, activity: Activity, to: TaskStatus, now: datetime, *, reason: str | None, checked: bool = True
    ) -> None:
        from_ = activity.status
        if checked:
            check_transition("status", TASK_TRANSITIONS, from_, to)
        activity.status, activity.status_reason = to, reason
        if to is not TaskStatus.ON_HOLD:
            activity.held_by_plan = False
        if to is TaskStatus.IN_PROGRESS and activity.execution_start is None:
            activity.execution_start = now
        if to in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED):
            activity.execution_end = now
        data = {"from": from_.value, "to": to.value, "reason": reason}
        self._new_version("Task", activity, now, "activity.status_changed", data)
        if to is TaskStatus.COMPLETED:
            self._event("Task", activity, "activity.completed", data)

    def _new_version(
        self,
        resource_type: str,
        resource: Versioned,
        now: datetime,
        event: str,
        data: dict[str, Any] | None = None,
    ) -> None:
        """Bump the resource's version once per command, and record the event for it."""
        key = (resource_type, resource.id)
        if key not in self._changed:
            resource.version += 1
            self._changed[key] = resource
        resource.last_updated = now
        self._event(resource_type, resource, event, data)

    def _event(self, resource_type: str, resource: Versioned, name: str, data: dict[str, Any] | None) -> None:
        self.events.append(DomainEvent(name, resource_type, resource.id, resource.version, dict(data or {})))


def _apply_changes(
    target: object,
    changes: Mapping[str, object],
    updatable: frozenset[str],
    immutable: frozenset[str],
    required: frozenset[str],
) -> set[str]:
    """Apply a merge-patch (already translated to domain values); returns the fields that really changed."""
    effective: set[str] = set()
    for name, value in changes.items():
        if name not in updatable:
            raise InvalidValue(f"changes.{name}", "cannot be changed by this command")
        current = getattr(target, name)
        if value == current:
            continue
        if name in immutable:
            raise InvalidValue(f"changes.{name}", "is immutable; create a new plan instead")
        if name in required and value is None:
            raise InvalidValue(f"changes.{name}", "cannot be removed")
        setattr(target, name, value)
        effective.add(name)
    return effective


def _check_achievement(lifecycle: GoalLifecycleStatus, achievement: GoalAchievement | None) -> None:
    if achievement is None:
        return
    if lifecycle not in GOAL_ACHIEVEMENT_ALLOWED:
        raise InvalidValue("achievement_status", f"has no meaning while the goal is {lifecycle.value}")
    if lifecycle is GoalLifecycleStatus.COMPLETED and achievement not in GOAL_COMPLETED_ACHIEVEMENTS:
        raise InvalidValue("achievement_status", f"a completed goal cannot be {achievement.value}")
    if achievement is GoalAchievement.SUSTAINING and lifecycle is not GoalLifecycleStatus.ACTIVE:
        raise InvalidValue("achievement_status", "sustaining goes with an active goal")


def _value(status: GoalAchievement | None) -> str | None:
    return None if status is None else status.value
