"""The commands we accept: subject suffix → data model, permission, use case (CONTRACT §4)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel

from domain.access import Permission
from handlers import activities, care_plans, care_teams, goals
from handlers.context import CommandContext, CommandResult
from handlers.ports import UnitOfWork
from schemas import commands as wire

UseCase = Callable[[Any, CommandContext, UnitOfWork], Awaitable[CommandResult]]


class VersionCheck(StrEnum):
    """CONTRACT §4's "version checked" column: whether `expected_version` (HTTP: `If-Match`) is needed.
    The aggregates enforce it; the REST edge reads it to answer 428 before a command is even recorded."""

    REQUIRED = "required"
    OPTIONAL = "optional"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class CommandSpec:
    name: str
    data_model: type[BaseModel]
    permission: str
    execute: UseCase
    version: VersionCheck = VersionCheck.REQUIRED


_P = Permission
COMMANDS: dict[str, CommandSpec] = {
    spec.name: spec
    for spec in (
        CommandSpec(
            "careplan.create",
            wire.CarePlanCreate,
            _P.CAREPLAN_WRITE,
            care_plans.create_care_plan,
            VersionCheck.NONE,
        ),
        CommandSpec("careplan.update", wire.CarePlanUpdate, _P.CAREPLAN_WRITE, care_plans.update_care_plan),
        CommandSpec(
            "careplan.change_status",
            wire.CarePlanChangeStatus,
            _P.CAREPLAN_WRITE,
            care_plans.change_care_plan_status,
        ),
        CommandSpec(
            "careplan.request_review",
            wire.CarePlanRequestReview,
            _P.CAREPLAN_REVIEW,
            care_plans.request_review,
        ),
        CommandSpec(
            "careplan.complete_review",
            wire.CarePlanCompleteReview,
            _P.CAREPLAN_REVIEW,
            care_plans.complete_review,
        ),
        CommandSpec("goal.add", wire.GoalAdd, _P.GOAL_WRITE, goals.add_goal, VersionCheck.OPTIONAL),
        CommandSpec("goal.update", wire.GoalUpdate, _P.GOAL_WRITE, goals.update_goal),
        CommandSpec("goal.change_status", wire.GoalChangeStatus, _P.GOAL_WRITE, goals.change_goal_status),
        CommandSpec(
            "activity.add",
            wire.ActivityAdd,
            _P.ACTIVITY_WRITE,
            activities.add_activity,
            VersionCheck.OPTIONAL,
        ),
        CommandSpec("activity.assign", wire.ActivityAssign, _P.ACTIVITY_WRITE, activities.assign_activity),
        CommandSpec(
            "activity.change_status",
            wire.ActivityChangeStatus,
            _P.ACTIVITY_WRITE,
            activities.change_activity_status,
        ),
        CommandSpec(
            "careteam.add_member",
            wire.CareTeamAddMember,
            _P.CARETEAM_WRITE,
            care_teams.add_member,
            VersionCheck.OPTIONAL,
        ),
        CommandSpec(
            "careteam.update_member", wire.CareTeamUpdateMember, _P.CARETEAM_WRITE, care_teams.update_member
        ),
        CommandSpec(
            "careteam.remove_member", wire.CareTeamRemoveMember, _P.CARETEAM_WRITE, care_teams.remove_member
        ),
    )
}
