"""Read queries for the HTTP surface: stored FHIR JSON as text, straight from the row (no re-rendering),
always inside a tenant-bound transaction so RLS applies."""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from domain.errors import Unavailable
from domain.scopes import EVERYONE, Reader
from handlers.ports import StoredOutcome
from storage.criteria_sql import Sql, positional, visible_sql
from storage.database import SET_TENANT
from storage.errors import describe, is_transient
from storage.tables import READABLE_TABLES
from storage.visibility import HIDDEN_FROM_PATIENTS, visible_to_patient
from storage.wal_position import (
    CURRENT_POSITION,
    REPLAYED_POSITION,
    ReplicaBehind,
    WalPosition,
    required_position,
)


@dataclass(frozen=True, slots=True)
class StoredResource:
    version: int
    last_updated: datetime
    json_text: str


# Binding the tenant and, for a read that must reflect a position (storage.wal_position.reflecting),
# checking that this connection's server has replayed it: one statement, so the check costs no round trip.
# The reads after it take their snapshots later (READ COMMITTED: one per statement), so they see it all.
_BIND_REFLECTING = (
    "SELECT set_config('app.tenant_id', {tenant}, true), "
    f"COALESCE({REPLAYED_POSITION} >= CAST(CAST({{position}} AS text) AS pg_lsn), false)"
)
_SET_TENANT_REFLECTING = text(_BIND_REFLECTING.format(tenant=":tenant", position=":position"))
_RAW_SET_TENANT = "SELECT set_config('app.tenant_id', $1, true)"
_RAW_SET_TENANT_REFLECTING = _BIND_REFLECTING.format(tenant="$1", position="$2")


@asynccontextmanager
async def tenant_transaction(engine: AsyncEngine, tenant_id: str) -> AsyncIterator[AsyncConnection]:
    """A transaction bound to the tenant; `ReplicaBehind` before anything is read when the read must reflect
    a position its server has not replayed."""
    required = required_position()
    try:
        async with engine.connect() as conn, conn.begin():
            if required is None:
                await conn.execute(SET_TENANT, {"tenant": tenant_id})
            else:
                bound = await conn.execute(
                    _SET_TENANT_REFLECTING, {"tenant": tenant_id, "position": str(required)}
                )
                if not bound.one()[1]:
                    raise ReplicaBehind(str(required))
            yield conn
    except Exception as exc:
        if is_transient(exc):
            raise Unavailable("database", describe(exc)) from exc
        raise


async def read_resource(
    engine: AsyncEngine,
    tenant_id: str,
    resource_type: str,
    resource_id: str,
    *,
    reader: Reader = EVERYONE,
) -> StoredResource | None:
    """The current version, or None when unknown or hidden from this caller (a patient's walls,
    storage.visibility; the token's scopes, storage.criteria_sql.visible_sql)."""
    if reader.reading(resource_type) is not None:
        sql = Sql()
        where = visible_sql(sql, resource_type, reader)
        table = READABLE_TABLES[resource_type]
        statement = (
            f"SELECT version, last_updated, resource::text FROM {table} r "
            f"WHERE r.id = {sql.bind(resource_id)} AND {where}"
        )
        rows = await fetch_in_tenant(engine, tenant_id, *positional(statement, sql.params))
    else:
        args: list[Any] = [resource_id]
        if reader.patient_id is not None:
            args += [reader.patient_id, list(HIDDEN_FROM_PATIENTS)]
        rows = await fetch_in_tenant(
            engine, tenant_id, _read_sql(resource_type, reader.patient_id is not None), *args
        )
    return StoredResource(rows[0][0], rows[0][1], rows[0][2]) if rows else None


@functools.lru_cache(maxsize=32)
def _read_sql(resource_type: str, for_patient: bool) -> str:
    table = READABLE_TABLES[resource_type]
    sql = f"SELECT version, last_updated, resource::text FROM {table} r WHERE r.id = $1"
    if for_patient:
        sql += " AND " + visible_to_patient(resource_type, "r", "$2", "$3::text[]")
    return sql


async def fetch_in_tenant(engine: AsyncEngine, tenant_id: str, sql: str, *args: Any) -> list[Any]:
    """One read statement in a tenant-bound transaction, on the pooled connection's asyncpg driver
    itself: on the hottest read SQLAlchemy's statement layer cost more than the database did.
    `ReplicaBehind` as in `tenant_transaction`."""
    required = required_position()
    try:
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection
            try:
                async with driver.transaction():
                    if required is None:
                        await driver.execute(_RAW_SET_TENANT, tenant_id)
                        return list(await driver.fetch(sql, *args))
                    if await driver.fetchval(_RAW_SET_TENANT_REFLECTING, tenant_id, str(required), column=1):
                        return list(await driver.fetch(sql, *args))
            except BaseException:
                # SQLAlchemy did not see this failure: do not hand a broken connection back to the pool.
                await conn.invalidate()
                raise
        raise ReplicaBehind(str(required))  # the connection is back in the pool, healthy
    except Exception as exc:
        if is_transient(exc):
            raise Unavailable("database", describe(exc)) from exc
        raise


async def read_command_outcome(
    engine: AsyncEngine, tenant_id: str, command_id: uuid.UUID
) -> StoredOutcome | None:
    """A command's stored outcome, with the WAL position now (at or after its commit: it is visible)."""
    async with tenant_transaction(engine, tenant_id) as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT command_type, request_hash, status, outcome, "
                    f"{CURRENT_POSITION} AS position FROM command_log WHERE command_id = :id"
                ).columns(outcome=JSONB),
                {"id": command_id},
            )
        ).one_or_none()
    return None if row is None else StoredOutcome(*row)


async def replayed_position(engine: AsyncEngine) -> WalPosition:
    """How far the server of one of the engine's connections has replayed (storage.wal_position)."""
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection
        replayed = await driver.fetchval(f"SELECT ({REPLAYED_POSITION})::text")
    return WalPosition.parse(replayed) if replayed else WalPosition(0)  # NULL: replay has not begun


async def ping(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


async def runtime_role_problem(engine: AsyncEngine) -> str | None:
    """Why the runtime role must not serve (RLS would silently not apply), or None when it is safe."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT r.rolname, r.rolsuper, r.rolbypassrls, "
                    "(SELECT count(*) FROM pg_tables t "
                    " WHERE t.schemaname = 'public' AND t.tableowner = r.rolname) "
                    "FROM pg_roles r WHERE r.rolname = current_user"
                )
            )
        ).one()
    name, superuser, bypass, owned = row
    if superuser:
        return f"runtime role {name!r} is a superuser: row-level security would not apply"
    if bypass:
        return f"runtime role {name!r} has BYPASSRLS: row-level security would not apply"
    if owned:
        return f"runtime role {name!r} owns {owned} table(s): use a role that does not own the schema"
    return None
