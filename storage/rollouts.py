"""A rollout's reads inside a command's or a migration's transaction (CONTRACT §10): the plans a rollout may
cover, what their keyed items say for a dry run, and the claim of a run's next plan."""

from __future__ import annotations

import uuid

import asyncpg
import orjson

from domain.statuses import CAREPLAN_CLOSED
from handlers.ports import KeyedItem, PlansAlike, RolloutCandidate

_CLOSED = [s.value for s in CAREPLAN_CLOSED]
_NAMED_PLANS = (
    "SELECT id, status, (state -> 'instantiates')::text FROM care_plans "
    "WHERE tenant_id = $1 AND id = ANY($2::text[])"
)
# Open plans with a canonical of the program's url (`<url>|<version>`).
_FOLLOWING = (
    "SELECT id, status, (state -> 'instantiates')::text FROM care_plans "
    "WHERE tenant_id = $1 AND NOT status = ANY($3::text[]) AND EXISTS ("
    "SELECT 1 FROM jsonb_array_elements_text(state -> 'instantiates') AS c WHERE split_part(c, '|', 1) = $2) "
    "ORDER BY id"
)
# Each plan's keyed items as one text ("Goal a1c active -,Task lab requested -"), and the plans grouped by
# it: a dry run over 10,000 plans of a programme of 30 items reads a handful of rows, not 300,000, and text
# costs Postgres less to build and compare than jsonb.
_KEYED_ITEMS = (
    "WITH items AS ("
    "SELECT plan_id, 'Goal ' || (state ->> 'program_key') || ' ' || lifecycle_status || ' ' "
    "|| coalesce(achievement_status, '-') AS item FROM goals "
    "WHERE tenant_id = $1 AND plan_id = ANY($2::text[]) AND state ->> 'program_key' IS NOT NULL "
    "UNION ALL SELECT plan_id, 'Task ' || (state ->> 'program_key') || ' ' || status || ' -' FROM tasks "
    "WHERE tenant_id = $1 AND plan_id = ANY($2::text[]) AND state ->> 'program_key' IS NOT NULL), "
    "per_plan AS (SELECT plan_id, string_agg(item, ',' ORDER BY item) AS items FROM items GROUP BY plan_id) "
    "SELECT items, array_agg(plan_id ORDER BY plan_id) FROM per_plan GROUP BY items"
)
_CLAIM = (
    "SELECT plan_id FROM rollout_plans WHERE tenant_id = $1 AND rollout_id = $2 AND state = 'pending' "
    "ORDER BY plan_id LIMIT 1 FOR UPDATE SKIP LOCKED"
)


async def plans_following(
    conn: asyncpg.Connection, tenant_id: str, url: str, plan_ids: list[str] | None
) -> list[RolloutCandidate]:
    if plan_ids is None:
        rows = await conn.fetch(_FOLLOWING, tenant_id, url, _CLOSED)
    else:
        rows = await conn.fetch(_NAMED_PLANS, tenant_id, plan_ids)
    return [
        RolloutCandidate(plan_id, status, tuple(orjson.loads(follows or "[]")))
        for plan_id, status, follows in rows
    ]


async def keyed_items(conn: asyncpg.Connection, tenant_id: str, plan_ids: list[str]) -> list[PlansAlike]:
    """Keys are `[a-z0-9-]` and statuses FHIR codes: neither holds the separators."""
    return [
        PlansAlike(tuple(alike), tuple(_item(*text.split(" ")) for text in items.split(",")))
        for items, alike in await conn.fetch(_KEYED_ITEMS, tenant_id, plan_ids)
    ]


def _item(resource_type: str, key: str, status: str, achievement: str) -> KeyedItem:
    return KeyedItem(key, resource_type, status, None if achievement == "-" else achievement)


async def claim_plan(conn: asyncpg.Connection, tenant_id: str, rollout_id: uuid.UUID) -> str | None:
    plan_id: str | None = await conn.fetchval(_CLAIM, tenant_id, rollout_id)
    return plan_id
