"""FHIR R4 status vocabularies and the service's transition tables (DOMAIN.md §1.2, §2.3, §3.2, §4).
Anything not listed is refused; terminal means terminal, except a correction to entered-in-error."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import TypeVar

from domain.errors import InvalidTransition


class CarePlanStatus(StrEnum):
    """http://hl7.org/fhir/request-status"""

    DRAFT = "draft"
    ACTIVE = "active"
    ON_HOLD = "on-hold"
    REVOKED = "revoked"
    COMPLETED = "completed"
    ENTERED_IN_ERROR = "entered-in-error"
    UNKNOWN = "unknown"


class CarePlanIntent(StrEnum):
    """http://hl7.org/fhir/request-intent, restricted to CarePlanIntent; immutable once the plan exists."""

    PROPOSAL = "proposal"
    PLAN = "plan"
    ORDER = "order"
    OPTION = "option"


class GoalLifecycleStatus(StrEnum):
    """http://hl7.org/fhir/goal-status"""

    PROPOSED = "proposed"
    PLANNED = "planned"
    ACCEPTED = "accepted"
    ACTIVE = "active"
    ON_HOLD = "on-hold"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    ENTERED_IN_ERROR = "entered-in-error"
    REJECTED = "rejected"


class GoalAchievement(StrEnum):
    """http://terminology.hl7.org/CodeSystem/goal-achievement"""

    IN_PROGRESS = "in-progress"
    IMPROVING = "improving"
    WORSENING = "worsening"
    NO_CHANGE = "no-change"
    ACHIEVED = "achieved"
    SUSTAINING = "sustaining"
    NOT_ACHIEVED = "not-achieved"
    NO_PROGRESS = "no-progress"
    NOT_ATTAINABLE = "not-attainable"


class TaskStatus(StrEnum):
    """http://hl7.org/fhir/task-status"""

    DRAFT = "draft"
    REQUESTED = "requested"
    RECEIVED = "received"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    READY = "ready"
    CANCELLED = "cancelled"
    IN_PROGRESS = "in-progress"
    ON_HOLD = "on-hold"
    FAILED = "failed"
    COMPLETED = "completed"
    ENTERED_IN_ERROR = "entered-in-error"


class CareTeamStatus(StrEnum):
    """http://hl7.org/fhir/care-team-status"""

    PROPOSED = "proposed"
    ACTIVE = "active"
    SUSPENDED = "suspended"
    INACTIVE = "inactive"
    ENTERED_IN_ERROR = "entered-in-error"


P, G, T, C = CarePlanStatus, GoalLifecycleStatus, TaskStatus, CareTeamStatus

CAREPLAN_AT_CREATE = (P.DRAFT, P.ACTIVE)
CAREPLAN_TRANSITIONS: Mapping[CarePlanStatus, tuple[CarePlanStatus, ...]] = {
    P.DRAFT: (P.ACTIVE, P.REVOKED, P.ENTERED_IN_ERROR),
    P.ACTIVE: (P.ON_HOLD, P.REVOKED, P.COMPLETED, P.ENTERED_IN_ERROR),
    P.ON_HOLD: (P.ACTIVE, P.REVOKED, P.COMPLETED, P.ENTERED_IN_ERROR),
    P.REVOKED: (P.ENTERED_IN_ERROR,),
    P.COMPLETED: (P.ENTERED_IN_ERROR,),
    P.ENTERED_IN_ERROR: (),
    # `unknown` comes only from imports; any real status may replace it.
    P.UNKNOWN: (P.DRAFT, P.ACTIVE, P.ON_HOLD, P.REVOKED, P.COMPLETED, P.ENTERED_IN_ERROR),
}
# A closed plan takes no new goals, activities, reviews or content changes.
CAREPLAN_CLOSED = frozenset({P.REVOKED, P.COMPLETED, P.ENTERED_IN_ERROR})

GOAL_AT_CREATE = (G.PROPOSED, G.PLANNED, G.ACCEPTED, G.ACTIVE)
GOAL_TRANSITIONS: Mapping[GoalLifecycleStatus, tuple[GoalLifecycleStatus, ...]] = {
    G.PROPOSED: (G.PLANNED, G.ACCEPTED, G.ACTIVE, G.REJECTED, G.CANCELLED, G.ENTERED_IN_ERROR),
    G.PLANNED: (G.ACCEPTED, G.ACTIVE, G.CANCELLED, G.ENTERED_IN_ERROR),
    G.ACCEPTED: (G.ACTIVE, G.ON_HOLD, G.CANCELLED, G.ENTERED_IN_ERROR),
    G.ACTIVE: (G.ON_HOLD, G.COMPLETED, G.CANCELLED, G.ENTERED_IN_ERROR),
    G.ON_HOLD: (G.ACTIVE, G.COMPLETED, G.CANCELLED, G.ENTERED_IN_ERROR),
    G.COMPLETED: (G.ACTIVE, G.ENTERED_IN_ERROR),  # reopening (e.g. relapse) needs a reason
    G.CANCELLED: (G.ENTERED_IN_ERROR,),
    G.REJECTED: (G.ENTERED_IN_ERROR,),
    G.ENTERED_IN_ERROR: (),
}
GOAL_CLOSED = frozenset({G.CANCELLED, G.REJECTED, G.ENTERED_IN_ERROR})
# achievementStatus means something only while the goal is pursued or done (DOMAIN.md §2.3).
GOAL_ACHIEVEMENT_ALLOWED = frozenset({G.ACTIVE, G.ON_HOLD, G.COMPLETED})
GOAL_COMPLETED_ACHIEVEMENTS = frozenset(
    {
        GoalAchievement.ACHIEVED,
        GoalAchievement.NOT_ACHIEVED,
        GoalAchievement.NO_PROGRESS,
        GoalAchievement.NOT_ATTAINABLE,
    }
)
GOAL_MET = frozenset({GoalAchievement.ACHIEVED, GoalAchievement.SUSTAINING})

TASK_AT_CREATE = (T.DRAFT, T.READY, T.REQUESTED)
TASK_TRANSITIONS: Mapping[TaskStatus, tuple[TaskStatus, ...]] = {
    T.DRAFT: (T.READY, T.REQUESTED, T.CANCELLED, T.ENTERED_IN_ERROR),
    T.REQUESTED: (T.ACCEPTED, T.REJECTED, T.CANCELLED, T.ENTERED_IN_ERROR),
    T.RECEIVED: (T.ACCEPTED, T.REJECTED, T.CANCELLED, T.ENTERED_IN_ERROR),
    T.ACCEPTED: (T.IN_PROGRESS, T.CANCELLED, T.ENTERED_IN_ERROR),
    T.READY: (T.IN_PROGRESS, T.CANCELLED, T.ENTERED_IN_ERROR),
    T.IN_PROGRESS: (T.ON_HOLD, T.COMPLETED, T.FAILED, T.CANCELLED, T.READY, T.ENTERED_IN_ERROR),
    T.ON_HOLD: (T.IN_PROGRESS, T.FAILED, T.CANCELLED, T.ENTERED_IN_ERROR),
    T.COMPLETED: (T.ENTERED_IN_ERROR,),
    T.FAILED: (T.ENTERED_IN_ERROR,),
    T.CANCELLED: (T.ENTERED_IN_ERROR,),
    T.REJECTED: (T.ENTERED_IN_ERROR,),
    T.ENTERED_IN_ERROR: (),
}
TASK_TERMINAL = frozenset({T.COMPLETED, T.FAILED, T.CANCELLED, T.REJECTED, T.ENTERED_IN_ERROR})
TASK_NOT_STARTED = frozenset({T.DRAFT, T.REQUESTED, T.RECEIVED, T.ACCEPTED, T.READY})

CARETEAM_TRANSITIONS: Mapping[CareTeamStatus, tuple[CareTeamStatus, ...]] = {
    C.PROPOSED: (C.ACTIVE, C.INACTIVE, C.ENTERED_IN_ERROR),
    C.ACTIVE: (C.SUSPENDED, C.INACTIVE, C.ENTERED_IN_ERROR),
    C.SUSPENDED: (C.ACTIVE, C.INACTIVE, C.ENTERED_IN_ERROR),
    C.INACTIVE: (C.ENTERED_IN_ERROR,),
    C.ENTERED_IN_ERROR: (),
}

S = TypeVar("S", bound=StrEnum)


def check_transition(field: str, table: Mapping[S, tuple[S, ...]], from_: S, to: S) -> None:
    """Raise InvalidTransition unless `table` allows from_ → to."""
    allowed = table.get(from_, ())
    if to not in allowed:
        raise InvalidTransition(
            field=field, from_=from_.value, to=to.value, allowed=tuple(a.value for a in allowed)
        )


def check_initial(field: str, allowed: tuple[S, ...], to: S) -> None:
    if to not in allowed:
        raise InvalidTransition(field=field, from_=None, to=to.value, allowed=tuple(a.value for a in allowed))
