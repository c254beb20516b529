"""`careplan migrate`: schema by Alembic, then the runtime and system roles with exactly their grants.

Idempotent and safe to run from several replicas at once (an advisory lock serialises them).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.database import RoleLogin, create_engine, role_of

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_MIGRATE_LOCK_KEY = 0x6361_7265_706C_616E  # "careplan"

# Exactly what each role needs; nothing else (CONTRACT §1).
RUNTIME_GRANTS: dict[str, str] = {
    "care_plans": "SELECT, INSERT, UPDATE",
    "goals": "SELECT, INSERT, UPDATE",
    "tasks": "SELECT, INSERT, UPDATE",
    "care_teams": "SELECT, INSERT, UPDATE",
    "plan_definitions": "SELECT, INSERT, UPDATE",
    "rollouts": "SELECT, INSERT, UPDATE",
    "rollout_plans": "SELECT, INSERT, UPDATE",
    "resource_history": "SELECT, INSERT",
    "provenance": "SELECT, INSERT",
    "command_log": "SELECT, INSERT",
    "outbox": "INSERT",
    "search_token": "SELECT, INSERT, DELETE",
    "search_reference": "SELECT, INSERT, DELETE",
    "search_date": "SELECT, INSERT, DELETE",
    "search_string": "SELECT, INSERT, DELETE",
}
SYSTEM_GRANTS: dict[str, str] = {
    # The relay locks waiting rows (FOR UPDATE needs UPDATE), deletes what it published and moves what it
    # parks; the scheduler inserts its signals. Parked rows are only counted (metrics) and added to.
    "outbox": "SELECT, INSERT, UPDATE, DELETE",
    "outbox_parked": "SELECT, INSERT",
    # The scheduler reads across tenants and takes a plan's row lock, as every command on the plan does, so
    # its signals queue behind the plan's changes. Postgres lets only a role with an UPDATE privilege lock
    # a row; the column it may update is one the scheduler never writes.
    "care_plans": "SELECT, UPDATE (last_updated)",
    "goals": "SELECT",
    "schedule_markers": "SELECT, INSERT",
    # The rollout worker finds the running rollouts of every tenant (it works each as its tenant); the
    # metrics count what they have left.
    "rollouts": "SELECT",
    "rollout_plans": "SELECT",
}


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


async def migrate(admin_url: str, runtime_url: str, system_url: str) -> None:
    """Bring the database to the newest schema and make sure both roles exist with their grants."""
    runtime, system = role_of(runtime_url), role_of(system_url)
    engine = create_engine(admin_url, pool_size=1, application_name="careplan-migrate")
    try:
        async with engine.begin() as conn:
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATE_LOCK_KEY})
            await conn.run_sync(lambda sync: command.upgrade(alembic_config(sync), "head"))
            await _ensure_role(conn, runtime, bypass_rls=False)
            await _ensure_role(conn, system, bypass_rls=True)
            await _grant(conn, runtime.name, RUNTIME_GRANTS, sequences=True)
            await _grant(conn, system.name, SYSTEM_GRANTS, sequences=True)
    finally:
        await engine.dispose()


async def current_revision(admin_url: str) -> str | None:
    engine = create_engine(admin_url, pool_size=1, application_name="careplan-migrate")
    try:
        async with engine.connect() as conn:
            exists = await conn.scalar(text("SELECT to_regclass('alembic_version') IS NOT NULL"))
            if not exists:
                return None
            revision: str | None = await conn.scalar(text("SELECT version_num FROM alembic_version"))
            return revision
    finally:
        await engine.dispose()


async def _ensure_role(conn: AsyncConnection, role: RoleLogin, *, bypass_rls: bool) -> None:
    """Create the role when missing, with the URL's password. An existing role is left as it is:
    its password and attributes belong to the operator (serve checks the runtime role instead)."""
    exists = await conn.scalar(text("SELECT 1 FROM pg_roles WHERE rolname = :n"), {"n": role.name})
    if exists:
        return
    ident = _quote_ident(role.name)
    attributes = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE " + ("BYPASSRLS" if bypass_rls else "NOBYPASSRLS")
    password = f" PASSWORD {_quote_literal(role.password)}" if role.password else ""
    await conn.execute(text(f"CREATE ROLE {ident} {attributes}{password}"))


async def _grant(conn: AsyncConnection, role: str, grants: dict[str, str], *, sequences: bool) -> None:
    ident = _quote_ident(role)
    database = await conn.scalar(text("SELECT current_database()"))
    await conn.execute(text(f"GRANT CONNECT ON DATABASE {_quote_ident(str(database))} TO {ident}"))
    await conn.execute(text(f"GRANT USAGE ON SCHEMA public TO {ident}"))
    for table, privileges in grants.items():
        await conn.execute(text(f"GRANT {privileges} ON TABLE {table} TO {ident}"))
    if sequences:
        await conn.execute(text(f"GRANT USAGE ON SEQUENCE outbox_id_seq TO {ident}"))


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
