"""Load and save the CarePlan aggregate: the domain's records kept as JSON (`state`) beside the FHIR JSON
(`resource`) and the columns that searches and lookups use."""

from __future__ import annotations

from typing import Any

import asyncpg
from pydantic import TypeAdapter
from sqlalchemy import Table

from domain.care_plan import CarePlanAggregate
from domain.entities import Activity, CarePlan, CareTeam, Goal, Versioned
from domain.programs import Program, ProgramAggregate
from handlers.ports import NewVersion
from storage import tables
from storage.database import json_text

_STATE: dict[str, TypeAdapter[Any]] = {
    "CarePlan": TypeAdapter(CarePlan),
    "Goal": TypeAdapter(Goal),
    "Task": TypeAdapter(Activity),
    "CareTeam": TypeAdapter(CareTeam),
    "PlanDefinition": TypeAdapter(Program),
}
_TABLES: dict[str, Table] = {
    "CarePlan": tables.care_plans,
    "Goal": tables.goals,
    "Task": tables.tasks,
    "CareTeam": tables.care_teams,
}


def goal_from_state(state: dict[str, Any]) -> Goal:
    goal: Goal = _STATE["Goal"].validate_python(state)
    return goal


def plan_from_state(state: dict[str, Any]) -> CarePlan:
    plan: CarePlan = _STATE["CarePlan"].validate_python(state)
    return plan


class MissingState(RuntimeError):
    """A row written before the domain state was stored (schema 0001); it cannot be changed by commands."""


# The plan's parts, in one statement: read after the plan's row lock, which every writer of them takes.
_PLAN = "SELECT id, state::text FROM care_plans WHERE tenant_id = $1 AND id = $2 FOR UPDATE"
_PARTS = (
    "SELECT 'Goal', id, state::text FROM goals WHERE tenant_id = $1 AND plan_id = $2 "
    "UNION ALL SELECT 'Task', id, state::text FROM tasks WHERE tenant_id = $1 AND plan_id = $2 "
    "UNION ALL SELECT 'CareTeam', id, state::text FROM care_teams WHERE tenant_id = $1 AND plan_id = $2"
)
# A goal or task never moves to another plan: its plan id, read in the same statement, is the plan to lock.
_PLAN_OF_PART = {
    resource_type: "SELECT p.id, p.state::text FROM care_plans p WHERE p.tenant_id = $1 AND p.id = "
    f"(SELECT plan_id FROM {table.name} WHERE tenant_id = $1 AND id = $2) FOR UPDATE OF p"
    for resource_type, table in _TABLES.items()
    if resource_type != "CarePlan"
}
_PLAN_OF = {
    resource_type: f"SELECT plan_id FROM {table.name} WHERE tenant_id = $1 AND id = $2"
    for resource_type, table in _TABLES.items()
    if resource_type != "CarePlan"
}


async def load_plan(conn: asyncpg.Connection, tenant_id: str, plan_id: str) -> CarePlanAggregate | None:
    """The whole aggregate, with the plan row locked: every command on a plan (or its parts) queues here,
    so versions and the outbox order of one plan's events follow commit order. States are parsed from
    the stored JSON text by pydantic directly."""
    return await _with_parts(conn, tenant_id, await conn.fetchrow(_PLAN, tenant_id, plan_id))


async def load_plan_of(
    conn: asyncpg.Connection, tenant_id: str, resource_type: str, resource_id: str
) -> CarePlanAggregate | None:
    """The whole aggregate of the plan a goal or task belongs to, locked, in the same round trips."""
    locked = await conn.fetchrow(_PLAN_OF_PART[resource_type], tenant_id, resource_id)
    return await _with_parts(conn, tenant_id, locked)


async def _with_parts(
    conn: asyncpg.Connection, tenant_id: str, locked: asyncpg.Record | None
) -> CarePlanAggregate | None:
    if locked is None:
        return None
    plan_id, state = locked
    if state is None:
        raise MissingState(f"CarePlan/{plan_id} has no stored domain state")
    plan: CarePlan = _STATE["CarePlan"].validate_json(state)
    parts: dict[str, list[tuple[str, str]]] = {"Goal": [], "Task": [], "CareTeam": []}
    for kind, part_id, state in await conn.fetch(_PARTS, tenant_id, plan_id):
        parts[kind].append((part_id, state))
    goals = [_STATE["Goal"].validate_json(state) for _, state in sorted(parts["Goal"])]
    activities = [_STATE["Task"].validate_json(state) for _, state in sorted(parts["Task"])]
    teams = [_STATE["CareTeam"].validate_json(state) for _, state in sorted(parts["CareTeam"])]
    return CarePlanAggregate(
        plan,
        goals={g.id: g for g in goals},
        activities={a.id: a for a in activities},
        care_team=teams[0] if teams else None,
    )


async def plan_id_of(
    conn: asyncpg.Connection, tenant_id: str, resource_type: str, resource_id: str
) -> str | None:
    plan_id: str | None = await conn.fetchval(_PLAN_OF[resource_type], tenant_id, resource_id)
    return plan_id


def current_row(version: NewVersion) -> dict[str, Any]:
    """The current row of a new version: domain state and FHIR JSON (as JSON text) and the columns that
    searches and lookups use."""
    entity = version.entity
    return {
        "id": entity.id,
        "version": entity.version,
        "last_updated": entity.last_updated,
        "state": _STATE[version.resource_type].dump_json(entity).decode(),
        "resource": json_text(version.resource),
        **_columns(entity),
    }


def _columns(entity: Versioned) -> dict[str, Any]:
    """The searchable columns of each table, from the domain record."""
    match entity:
        case CarePlan():
            return {"patient_id": entity.patient_id, "status": entity.status.value}
        case Goal():
            return {
                "plan_id": entity.plan_id,
                "patient_id": entity.patient_id,
                "lifecycle_status": entity.lifecycle_status.value,
                "achievement_status": entity.achievement_status.value if entity.achievement_status else None,
            }
        case Activity():
            return {
                "plan_id": entity.plan_id,
                "patient_id": entity.patient_id,
                "status": entity.status.value,
                "owner_id": entity.owner_id,
                "is_review": entity.is_review,
            }
        case CareTeam():
            return {"plan_id": entity.plan_id, "patient_id": entity.patient_id, "status": entity.status.value}
        case Program():
            return {
                "name": entity.name,
                "url": entity.url,
                "program_version": entity.program_version,
                "status": entity.status.value,
            }
    raise TypeError(f"no table for {type(entity).__name__}")


# --- programs (CONTRACT §10) ---

_PROGRAM = "SELECT state::text FROM plan_definitions WHERE tenant_id = $1 AND id = $2 FOR UPDATE"
# Versions of one name are numbered in turn: defines of a name queue on a lock of their own (there may be no
# row yet to lock), held to the end of the transaction.
_NAME_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('plan_definitions/' || $1 || '/' || $2, 0))"
_LATEST_VERSION = (
    "SELECT coalesce(max(program_version::int), 0) FROM plan_definitions WHERE tenant_id = $1 AND name = $2"
)


async def load_program(conn: asyncpg.Connection, tenant_id: str, program_id: str) -> ProgramAggregate | None:
    """A program version, its row locked until commit."""
    return _program(await conn.fetchval(_PROGRAM, tenant_id, program_id))


_PROGRAM_VERSION = (
    "SELECT state::text FROM plan_definitions WHERE tenant_id = $1 AND name = $2 AND program_version = $3 "
    "FOR SHARE"
)
_NEWEST_ACTIVE = (
    "SELECT state::text FROM plan_definitions WHERE tenant_id = $1 AND name = $2 AND status = 'active' "
    "ORDER BY program_version::int DESC LIMIT 1 FOR SHARE"
)


async def find_program(
    conn: asyncpg.Connection, tenant_id: str, name: str, program_version: str | None
) -> ProgramAggregate | None:
    """A version of `name` (its newest active one when `program_version` is None), held against change."""
    if program_version is None:
        return _program(await conn.fetchval(_NEWEST_ACTIVE, tenant_id, name))
    return _program(await conn.fetchval(_PROGRAM_VERSION, tenant_id, name, program_version))


def _program(state: str | None) -> ProgramAggregate | None:
    if state is None:
        return None
    program: Program = _STATE["PlanDefinition"].validate_json(state)
    return ProgramAggregate(program)


async def latest_program_version(conn: asyncpg.Connection, tenant_id: str, name: str) -> int:
    """The highest business version of `name` (0 for a new name), the name locked until commit."""
    await conn.execute(_NAME_LOCK, tenant_id, name)
    latest: int = await conn.fetchval(_LATEST_VERSION, tenant_id, name)
    return latest
