"""The commands we accept: subject suffix → data model, permission, use case (CONTRACT §4)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from domain.access import Permission
from handlers import activities, care_plans, care_teams, goals
from handlers.context import CommandContext, CommandResult
from handlers.ports import UnitOfWork
from schemas import commands as wire

UseCase = Callable[[Any, CommandContext, UnitOfWork], Awaitable[CommandResult]]


@dataclass(frozen=True, slots=True)
class CommandSpec:
    name: str
    data_model: type[BaseModel]
    permission: str
    execute: UseCase


_P = Permission
COMMANDS: dict[str, CommandSpec] = {
    spec.name: spec
    for spec in (
        CommandSpec("careplan.create", wire.CarePlanCreate, _P.CAREPLAN_WRITE, care_plans.create_care_plan),
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
        CommandSpec("goal.add", wire.GoalAdd, _P.GOAL_WRITE, goals.add_goal),
        CommandSpec("goal.update", wire.GoalUpdate, _P.GOAL_WRITE, goals.update_goal),
        CommandSpec("goal.change_status", wire.GoalChangeStatus, _P.GOAL_WRITE, goals.change_goal_status),
        CommandSpec("activity.add", wire.ActivityAdd, _P.ACTIVITY_WRITE, activities.add_activity),
        CommandSpec("activity.assign", wire.ActivityAssign, _P.ACTIVITY_WRITE, activities.assign_activity),
        CommandSpec(
            "activity.change_status",
            wire.ActivityChangeStatus,
            _P.ACTIVITY_WRITE,
            activities.change_activity_status,
        ),
        CommandSpec("careteam.add_member", wire.CareTeamAddMember, _P.CARETEAM_WRITE, care_teams.add_member),
        CommandSpec(
            "careteam.update_member", wire.CareTeamUpdateMember, _P.CARETEAM_WRITE, care_teams.update_member
        ),
        CommandSpec(
            "careteam.remove_member", wire.CareTeamRemoveMember, _P.CARETEAM_WRITE, care_teams.remove_member
        ),
    )
}
