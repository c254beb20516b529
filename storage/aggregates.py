"""Load and save the CarePlan aggregate: the domain's records kept as JSON (`state`) beside the FHIR JSON
(`resource`) and the columns that searches and lookups use."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import Table, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from domain.care_plan import CarePlanAggregate
from domain.entities import Activity, CarePlan, CareTeam, Goal, Versioned
from handlers.ports import ResourceVersion
from storage import tables
from storage.search_index import reindex

_STATE: dict[str, TypeAdapter[Any]] = {
    "CarePlan": TypeAdapter(CarePlan),
    "Goal": TypeAdapter(Goal),
    "Task": TypeAdapter(Activity),
    "CareTeam": TypeAdapter(CareTeam),
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


async def load_plan(conn: AsyncConnection, tenant_id: str, plan_id: str) -> CarePlanAggregate | None:
    """The whole aggregate, with the plan row locked: every command on a plan (or its parts) queues here,
    so versions and the outbox order of one plan's events follow commit order."""
    plan_state = (
        await conn.execute(
            select(tables.care_plans.c.state)
            .where(tables.care_plans.c.tenant_id == tenant_id, tables.care_plans.c.id == plan_id)
            .with_for_update()
        )
    ).scalar_one_or_none()
    if plan_state is None:
        exists = await conn.scalar(
            select(tables.care_plans.c.id).where(
                tables.care_plans.c.tenant_id == tenant_id, tables.care_plans.c.id == plan_id
            )
        )
        if exists is not None:
            raise MissingState(f"CarePlan/{plan_id} has no stored domain state")
        return None
    plan: CarePlan = _STATE["CarePlan"].validate_python(plan_state)
    goals = [
        _STATE["Goal"].validate_python(s) for s in await _children(conn, tables.goals, tenant_id, plan_id)
    ]
    activities = [
        _STATE["Task"].validate_python(s) for s in await _children(conn, tables.tasks, tenant_id, plan_id)
    ]
    teams = [
        _STATE["CareTeam"].validate_python(s)
        for s in await _children(conn, tables.care_teams, tenant_id, plan_id)
    ]
    return CarePlanAggregate(
        plan,
        goals={g.id: g for g in goals},
        activities={a.id: a for a in activities},
        care_team=teams[0] if teams else None,
    )


async def plan_id_of(
    conn: AsyncConnection, tenant_id: str, resource_type: str, resource_id: str
) -> str | None:
    table = _TABLES[resource_type]
    plan_id: str | None = await conn.scalar(
        select(table.c.plan_id).where(table.c.tenant_id == tenant_id, table.c.id == resource_id)
    )
    return plan_id


async def save_versions(
    conn: AsyncConnection,
    tenant_id: str,
    changed: list[tuple[str, Versioned]],
    versions: list[ResourceVersion],
) -> None:
    """Write each changed resource's current row (insert at version 1, update after)."""
    rendered = {(v.resource_type, v.resource_id): v.resource for v in versions}
    for resource_type, entity in changed:
        table = _TABLES[resource_type]
        row = {
            "tenant_id": tenant_id,
            "id": entity.id,
            "version": entity.version,
            "last_updated": entity.last_updated,
            "state": _STATE[resource_type].dump_python(entity, mode="json"),
            "resource": rendered[(resource_type, entity.id)],
            **_columns(entity),
        }
        statement = insert(table).values(row)
        statement = statement.on_conflict_do_update(
            index_elements=[table.c.tenant_id, table.c.id],
            set_={k: statement.excluded[k] for k in row if k not in ("tenant_id", "id")},
            # The plan row lock already serialises writers; this guards against a lost update regardless.
            where=table.c.version == entity.version - 1,
        )
        result = await conn.execute(statement)
        if result.rowcount != 1:
            raise RuntimeError(f"{resource_type}/{entity.id} was not at version {entity.version - 1}")
    await reindex(conn, tenant_id, [v.resource for v in versions])


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
    raise TypeError(f"no table for {type(entity).__name__}")


async def _children(conn: AsyncConnection, table: Table, tenant_id: str, plan_id: str) -> list[Any]:
    rows = await conn.execute(
        select(table.c.state)
        .where(table.c.tenant_id == tenant_id, table.c.plan_id == plan_id)
        .order_by(table.c.id)
    )
    return list(rows.scalars())
