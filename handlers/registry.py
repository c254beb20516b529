"""The commands we accept: subject suffix → data model, permission, use case (CONTRACT §4)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from domain.access import Permission
from handlers.care_plans import create_care_plan
from handlers.context import CommandContext, CommandResult
from handlers.ports import UnitOfWork
from schemas.commands import CarePlanCreate

UseCase = Callable[[Any, CommandContext, UnitOfWork], Awaitable[CommandResult]]


@dataclass(frozen=True, slots=True)
class CommandSpec:
    name: str
    data_model: type[BaseModel]
    permission: str
    execute: UseCase


COMMANDS: dict[str, CommandSpec] = {
    spec.name: spec
    for spec in (CommandSpec("careplan.create", CarePlanCreate, Permission.CAREPLAN_WRITE, create_care_plan),)
}
