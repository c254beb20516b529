"""The scheduler's storage, across tenants as the system role: candidate queries, plan claims (the plan's
row lock, as commands take it) and markers that make each signal go out once."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import date
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from domain.entities import CarePlan, Goal
from domain.schedule import GOAL_CAN_BE_OVERDUE, GOAL_ON_TRACK, PLAN_UNDER_REVIEW
from handlers.ports import GoalCounts, OutboxMessage, ScheduleCandidate
from storage import tables
from storage.aggregates import goal_from_state, plan_from_state

_OVERDUE_GOALS = text(
    """
    SELECT g.tenant_id, g.plan_id, g.id
    FROM goals g
    CROSS JOIN LATERAL (
        SELECT min((t ->> 'due_date')::date) AS due
        FROM jsonb_array_elements(g.state -> 'targets') t
        WHERE (t ->> 'due_date')::date < :today
    ) passed
    WHERE g.lifecycle_status = ANY(:open)
      AND (g.achievement_status IS NULL OR NOT g.achievement_status = ANY(:on_track))
      AND passed.due IS NOT NULL
      AND NOT EXISTS (
          SELECT 1 FROM schedule_markers m
          WHERE m.tenant_id = g.tenant_id AND m.kind = 'goal.overdue' AND m.resource_id = g.id
            AND m.marker = passed.due::text
      )
    ORDER BY passed.due
    LIMIT :limit
    """
)
_REVIEWS_DUE = text(
    """
    SELECT p.tenant_id, p.id, p.id
    FROM care_plans p
    CROSS JOIN LATERAL (SELECT (p.state -> 'review' ->> 'next_due')::date AS due) review
    WHERE p.status = ANY(:reviewable)
      AND review.due < :today
      AND NOT EXISTS (
          SELECT 1 FROM schedule_markers m
          WHERE m.tenant_id = p.tenant_id AND m.kind = 'careplan.review_due' AND m.resource_id = p.id
            AND m.marker = review.due::text
      )
    ORDER BY review.due
    LIMIT :limit
    """
)


class _Writes:
    def __init__(self, conn: AsyncConnection, tenant_id: str) -> None:
        self.conn = conn
        self.tenant_id = tenant_id

    async def mark(self, kind: str, resource_id: str, marker: str) -> bool:
        inserted = await self.conn.scalar(
            insert(tables.schedule_markers)
            .values(tenant_id=self.tenant_id, kind=kind, resource_id=resource_id, marker=marker)
            .on_conflict_do_nothing()
            .returning(tables.schedule_markers.c.marker)
        )
        return inserted is not None

    async def add_to_outbox(self, messages: list[OutboxMessage]) -> None:
        await insert_outbox(self.conn, self.tenant_id, messages)


class SqlPlanClaim(_Writes):
    def __init__(
        self, conn: AsyncConnection, tenant_id: str, plan_id: str, plan_state: dict[str, Any]
    ) -> None:
        super().__init__(conn, tenant_id)
        self.plan_id = plan_id
        self._plan_state = plan_state

    async def goal(self, goal_id: str) -> tuple[Goal, dict[str, Any]] | None:
        row = (
            await self.conn.execute(
                select(tables.goals.c.state, tables.goals.c.resource).where(
                    tables.goals.c.tenant_id == self.tenant_id,
                    tables.goals.c.id == goal_id,
                    tables.goals.c.plan_id == self.plan_id,
                )
            )
        ).one_or_none()
        return None if row is None else (goal_from_state(row.state), row.resource)

    async def plan(self) -> tuple[CarePlan, dict[str, Any]]:
        resource = await self.conn.scalar(
            select(tables.care_plans.c.resource).where(
                tables.care_plans.c.tenant_id == self.tenant_id, tables.care_plans.c.id == self.plan_id
            )
        )
        assert resource is not None  # the row is locked by this transaction
        return plan_from_state(self._plan_state), dict(resource)


class SqlPeriodClaim(_Writes):
    async def goal_counts(self) -> GoalCounts:
        by_status = (
            await self.conn.execute(
                text(
                    "SELECT lifecycle_status, achievement_status, count(*) FROM goals WHERE tenant_id = :t "
                    "GROUP BY 1, 2 ORDER BY 1, 2"
                ),
                {"t": self.tenant_id},
            )
        ).all()
        by_code = (
            await self.conn.execute(
                text(
                    """
                    SELECT c ->> 'system', c ->> 'code', min(c ->> 'display'), count(DISTINCT g.id)
                    FROM goals g, jsonb_array_elements(g.state -> 'description' -> 'codings') c
                    WHERE g.tenant_id = :t AND c ->> 'code' IS NOT NULL
                    GROUP BY 1, 2 ORDER BY 1, 2
                    """
                ),
                {"t": self.tenant_id},
            )
        ).all()
        return GoalCounts(
            by_status=[(str(lc), ach, int(n)) for lc, ach, n in by_status],
            by_code=[(system, str(code), display, int(n)) for system, code, display, n in by_code],
        )


class SqlScheduleStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def overdue_goal_candidates(self, today: date, limit: int) -> list[ScheduleCandidate]:
        params = {
            "today": today,
            "open": [s.value for s in GOAL_CAN_BE_OVERDUE],
            "on_track": [s.value for s in GOAL_ON_TRACK],
            "limit": limit,
        }
        return await self._candidates(_OVERDUE_GOALS, params)

    async def review_due_candidates(self, today: date, limit: int) -> list[ScheduleCandidate]:
        params = {"today": today, "reviewable": [s.value for s in PLAN_UNDER_REVIEW], "limit": limit}
        return await self._candidates(_REVIEWS_DUE, params)

    async def _candidates(self, query: Any, params: dict[str, Any]) -> list[ScheduleCandidate]:
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query, params)).all()
        return [ScheduleCandidate(tenant_id=t, plan_id=p, resource_id=r) for t, p, r in rows]

    @contextlib.asynccontextmanager
    async def claim_plan(self, tenant_id: str, plan_id: str) -> AsyncIterator[SqlPlanClaim | None]:
        async with self._engine.begin() as conn:
            plan_state = await conn.scalar(
                select(tables.care_plans.c.state)
                .where(tables.care_plans.c.tenant_id == tenant_id, tables.care_plans.c.id == plan_id)
                .with_for_update(skip_locked=True)
            )
            yield None if plan_state is None else SqlPlanClaim(conn, tenant_id, plan_id, plan_state)

    async def tenants(self) -> list[str]:
        async with self._engine.connect() as conn:
            return list(
                (await conn.scalars(text("SELECT DISTINCT tenant_id FROM care_plans ORDER BY 1"))).all()
            )

    @contextlib.asynccontextmanager
    async def claim_period(self, tenant_id: str, kind: str, key: str) -> AsyncIterator[SqlPeriodClaim | None]:
        async with self._engine.begin() as conn:
            claim = SqlPeriodClaim(conn, tenant_id)
            # A concurrent sweep's insert of the same marker blocks here until it commits, then conflicts.
            yield claim if await claim.mark(kind, "", key) else None


async def insert_outbox(conn: AsyncConnection, tenant_id: str, messages: list[OutboxMessage]) -> None:
    """Outbox rows in the caller's transaction; the relay publishes them once it commits."""
    if messages:
        await conn.execute(
            insert(tables.outbox),
            [
                {"tenant_id": tenant_id, "event_id": m.event_id, "subject": m.subject, "payload": m.payload}
                for m in messages
            ],
        )
