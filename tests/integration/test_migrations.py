"""`careplan migrate` is idempotent, matches the tables the code queries, and `serve` refuses unsafe roles."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from service.runner import StartupRefused, start_service
from service.settings import Settings
from storage.database import create_engine
from storage.migrate import alembic_config, current_revision, migrate
from storage.tables import TENANT_TABLES, metadata
from tests.conftest import DatabaseUrls


async def schema_snapshot(admin_url: str) -> list[tuple[object, ...]]:
    engine = create_engine(admin_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            columns = (
                await conn.execute(
                    text(
                        "SELECT table_name, column_name, data_type FROM information_schema.columns "
                        "WHERE table_schema = 'public' ORDER BY 1, 2"
                    )
                )
            ).all()
            grants = (
                await conn.execute(
                    text(
                        "SELECT grantee, table_name, privilege_type "
                        "FROM information_schema.role_table_grants "
                        "WHERE table_schema = 'public' ORDER BY 1, 2, 3"
                    )
                )
            ).all()
            policies = (
                await conn.execute(text("SELECT tablename, policyname FROM pg_policies ORDER BY 1"))
            ).all()
    finally:
        await engine.dispose()
    return [tuple(r) for r in (*columns, *grants, *policies)]


async def test_migrate_twice_changes_nothing(database: DatabaseUrls) -> None:
    before = await schema_snapshot(database.admin)
    await migrate(database.admin, database.runtime, database.system)
    after = await schema_snapshot(database.admin)
    assert (
        await current_revision(database.admin)
        == ScriptDirectory.from_config(alembic_config()).get_current_head()
    )
    assert after == before


async def test_every_tenant_table_has_forced_rls_with_using_and_with_check(database: DatabaseUrls) -> None:
    engine = create_engine(database.admin, pool_size=1)
    try:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, p.qual, p.with_check "
                        "FROM pg_class c JOIN pg_policies p ON p.tablename = c.relname "
                        "WHERE c.relname = ANY(:t)"
                    ),
                    {"t": list(TENANT_TABLES)},
                )
            ).all()
    finally:
        await engine.dispose()
    assert {r[0] for r in rows} == set(TENANT_TABLES)
    for name, enabled, forced, using, with_check in rows:
        assert enabled and forced, name
        assert "app.tenant_id" in using and "app.tenant_id" in with_check, name


async def test_migrations_agree_with_the_tables_the_code_queries(database: DatabaseUrls) -> None:
    engine = create_engine(database.admin, pool_size=1)
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={"compare_type": True}), metadata
                )
            )
    finally:
        await engine.dispose()
    # Index/constraint naming and server defaults are the migration's to choose; tables and columns are not.
    structural = [d for d in diff if d[0] in {"add_table", "remove_table", "add_column", "remove_column"}]
    assert structural == []


@pytest.mark.parametrize(
    ("runtime_is", "reason"),
    [pytest.param("admin", "superuser", id="superuser"), pytest.param("system", "BYPASSRLS", id="bypassrls")],
)
async def test_serve_refuses_a_runtime_role_that_bypasses_rls(
    settings: Settings, database: DatabaseUrls, runtime_is: str, reason: str
) -> None:
    unsafe = settings.model_copy(update={"database_url": getattr(database, runtime_is)})
    with pytest.raises(StartupRefused, match=reason):
        await start_service(unsafe)


async def test_serve_names_missing_configuration(settings: Settings) -> None:
    with pytest.raises(StartupRefused, match="CAREPLAN_NATS_URL"):
        await start_service(settings.model_copy(update={"nats_url": None}))
