"""The commands we accept (CONTRACT §4): each one's data model, permission, use case, version rule, the
events it may emit and its REST route (§9). OpenAPI, AsyncAPI, the REST adapter and the pipeline read this
one table; the service hands it to them (`standard_commands()`), nothing reads it as a global."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel

from domain.access import Permission
from handlers import activities, care_plans, care_teams, goals, programs, rollouts
from handlers.context import CommandContext
from handlers.unit_of_work import UnitOfWork
from schemas import commands as wire

UseCase = Callable[[Any, CommandContext, UnitOfWork], Awaitable[None]]
API_PREFIX = "/api/v1"


class VersionCheck(StrEnum):
    """CONTRACT §4's "version checked" column: whether `expected_version` (HTTP: `If-Match`) is needed.
    The aggregates enforce it; the REST edge reads it to answer 428 before a command is even recorded."""

    REQUIRED = "required"
    OPTIONAL = "optional"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class HttpRoute:
    """A command's row of CONTRACT §9. Path parameters are named after the data fields they fill."""

    method: str
    path: str
    summary: str
    body_field: str | None = None  # the body is this one field of the data (PATCH: `changes`)
    has_body: bool = True

    @property
    def path_fields(self) -> tuple[str, ...]:
        return tuple(re.findall(r"{(\w+)}", self.path))


@dataclass(frozen=True, slots=True)
class CommandSpec:
    name: str
    data_model: type[BaseModel]
    permission: str
    execute: UseCase
    route: HttpRoute
    events: tuple[str, ...]  # CloudEvent types (without `careplan.`) the command may emit, besides audit
    version: VersionCheck = VersionCheck.REQUIRED
    version_target: str | None = "plan"  # whose version `expected_version` names


class Commands(Mapping[str, CommandSpec]):
    """An immutable table of commands by name."""

    def __init__(self, specs: tuple[CommandSpec, ...]) -> None:
        self._specs = {spec.name: spec for spec in specs}

    def __getitem__(self, name: str) -> CommandSpec:
        return self._specs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def with_command(self, spec: CommandSpec) -> Commands:
        """This table and one more command (tests add a use case of their own this way)."""
        return Commands((*self._specs.values(), spec))


_P = Permission
_PLAN = f"{API_PREFIX}/care-plans/{{care_plan_id}}"
_GOAL = f"{API_PREFIX}/goals/{{goal_id}}"
_ACTIVITY = f"{API_PREFIX}/activities/{{activity_id}}"
_MEMBER = f"{_PLAN}/care-team/members/{{member_id}}"
_PROGRAMS = f"{API_PREFIX}/programs"
_PROGRAM = f"{_PROGRAMS}/{{program_id}}"
_CASCADE = ("activity.status_changed", "activity.completed")  # a plan's status reaches its open activities

_STANDARD = (
    CommandSpec(
        "careplan.create",
        wire.CarePlanCreate,
        _P.CAREPLAN_WRITE,
        care_plans.create_care_plan,
        HttpRoute("POST", f"{API_PREFIX}/care-plans", "Create a care plan"),
        ("careplan.created",),
        VersionCheck.NONE,
        None,
    ),
    CommandSpec(
        "careplan.update",
        wire.CarePlanUpdate,
        _P.CAREPLAN_WRITE,
        care_plans.update_care_plan,
        HttpRoute("PATCH", _PLAN, "Change a care plan (merge patch)", body_field="changes"),
        ("careplan.updated",),
    ),
    CommandSpec(
        "careplan.change_status",
        wire.CarePlanChangeStatus,
        _P.CAREPLAN_WRITE,
        care_plans.change_care_plan_status,
        HttpRoute("POST", f"{_PLAN}/status", "Change a care plan's status"),
        ("careplan.status_changed", *_CASCADE),
    ),
    CommandSpec(
        "careplan.request_review",
        wire.CarePlanRequestReview,
        _P.CAREPLAN_REVIEW,
        care_plans.request_review,
        HttpRoute("POST", f"{_PLAN}/reviews", "Request a review of a care plan"),
        ("careplan.review_requested", "activity.added"),
    ),
    CommandSpec(
        "careplan.complete_review",
        wire.CarePlanCompleteReview,
        _P.CAREPLAN_REVIEW,
        care_plans.complete_review,
        HttpRoute("POST", f"{_PLAN}/reviews/complete", "Complete a care plan review"),
        ("careplan.reviewed", "careplan.status_changed", *_CASCADE),
    ),
    CommandSpec(
        "goal.add",
        wire.GoalAdd,
        _P.GOAL_WRITE,
        goals.add_goal,
        HttpRoute("POST", f"{_PLAN}/goals", "Add a goal to a care plan"),
        ("goal.added", "careplan.updated"),
        VersionCheck.OPTIONAL,
    ),
    CommandSpec(
        "goal.update",
        wire.GoalUpdate,
        _P.GOAL_WRITE,
        goals.update_goal,
        HttpRoute("PATCH", _GOAL, "Change a goal", body_field="changes"),
        ("goal.updated",),
        version_target="goal",
    ),
    CommandSpec(
        "goal.change_status",
        wire.GoalChangeStatus,
        _P.GOAL_WRITE,
        goals.change_goal_status,
        HttpRoute("POST", f"{_GOAL}/status", "Change a goal's status"),
        ("goal.status_changed", "goal.achieved"),
        version_target="goal",
    ),
    CommandSpec(
        "activity.add",
        wire.ActivityAdd,
        _P.ACTIVITY_WRITE,
        activities.add_activity,
        HttpRoute("POST", f"{_PLAN}/activities", "Add an activity to a care plan"),
        ("activity.added", "careplan.updated"),
        VersionCheck.OPTIONAL,
    ),
    CommandSpec(
        "activity.assign",
        wire.ActivityAssign,
        _P.ACTIVITY_WRITE,
        activities.assign_activity,
        HttpRoute("POST", f"{_ACTIVITY}/assignment", "Assign an activity to a practitioner"),
        ("activity.assigned",),
        version_target="activity",
    ),
    CommandSpec(
        "activity.change_status",
        wire.ActivityChangeStatus,
        _P.ACTIVITY_WRITE,
        activities.change_activity_status,
        HttpRoute("POST", f"{_ACTIVITY}/status", "Change an activity's status"),
        _CASCADE,
        version_target="activity",
    ),
    CommandSpec(
        "careteam.add_member",
        wire.CareTeamAddMember,
        _P.CARETEAM_WRITE,
        care_teams.add_member,
        HttpRoute("POST", f"{_PLAN}/care-team/members", "Add a care-team member"),
        ("careteam.member_added", "careplan.updated"),
        VersionCheck.OPTIONAL,
        "care team",
    ),
    CommandSpec(
        "careteam.update_member",
        wire.CareTeamUpdateMember,
        _P.CARETEAM_WRITE,
        care_teams.update_member,
        HttpRoute("PATCH", _MEMBER, "Change a care-team member", body_field="changes"),
        ("careteam.member_updated",),
        version_target="care team",
    ),
    CommandSpec(
        "careteam.remove_member",
        wire.CareTeamRemoveMember,
        _P.CARETEAM_WRITE,
        care_teams.remove_member,
        HttpRoute("DELETE", _MEMBER, "Remove a care-team member", has_body=False),
        ("careteam.member_removed",),
        version_target="care team",
    ),
    CommandSpec(
        "careplan.enroll",
        wire.CarePlanEnroll,
        _P.CAREPLAN_WRITE,
        programs.enroll,
        HttpRoute("POST", f"{API_PREFIX}/care-plans/enrolments", "Enrol a patient in a care program"),
        ("careplan.created", "careplan.enrolled", "goal.added", "activity.added"),
        VersionCheck.NONE,
        None,
    ),
    CommandSpec(
        "program.define",
        wire.ProgramDefine,
        _P.PROGRAM_WRITE,
        programs.define_program,
        HttpRoute("POST", _PROGRAMS, "Define a care program version (a draft)"),
        ("program.defined",),
        VersionCheck.NONE,
        None,
    ),
    CommandSpec(
        "program.update",
        wire.ProgramUpdate,
        _P.PROGRAM_WRITE,
        programs.update_program,
        HttpRoute("PATCH", _PROGRAM, "Change a draft program version (merge patch)", body_field="changes"),
        ("program.updated",),
        VersionCheck.REQUIRED,
        "program",
    ),
    CommandSpec(
        "program.change_status",
        wire.ProgramChangeStatus,
        _P.PROGRAM_WRITE,
        programs.change_program_status,
        HttpRoute("POST", f"{_PROGRAM}/status", "Publish or retire a program version"),
        ("program.published", "program.retired"),
        VersionCheck.OPTIONAL,
        "program",
    ),
    CommandSpec(
        "program.rollout",
        wire.ProgramRollout,
        _P.PROGRAM_WRITE,
        rollouts.rollout,
        HttpRoute("POST", f"{_PROGRAM}/rollouts", "Move enrolled plans to this version (dry run by default)"),
        # Sent by the run, from the worker: per plan, and once at the end.
        (
            "careplan.migrated",
            "goal.added",
            "goal.updated",
            "goal.status_changed",
            "activity.added",
            "activity.updated",
            "activity.status_changed",
            "program.rollout_completed",
        ),
        VersionCheck.NONE,
        None,
    ),
)


def standard_commands() -> Commands:
    """Every command of CONTRACT §4."""
    return Commands(_STANDARD)
