"""The database connection killed during COMMIT (issue 5, scenario 4), both ways it can fall:

- before the commit is durable: nothing was applied, and the redelivery applies the command once;
- after it is durable but before the service hears so (the case that makes retries dangerous): the
  redelivery finds the command in the command log and answers with the stored outcome, applying nothing.

Postgres is made to hold the COMMIT open so the test can terminate the backend inside it: a deferred
trigger that sleeps holds it before the commit record is written; a synchronous standby that never
answers holds it after (the commit is durable locally and the backend waits in SyncRep).
"""

from __future__ import annotations

import pytest
from sqlalchemy import text

from service.dev_identity import DevKeys
from service.embedded.postgres_server import EmbeddedPostgres
from storage.database import create_engine
from tests.faults.lab import Lab, until
from tests.faults.load import CommandLoad, assert_each_command_applied_once, assert_events_once_in_order

TENANT = "t-commit"

# The first command of TENANT to reach the outbox gets the fault; a sequence survives the rollback.
HOLD_BEFORE_DURABLE = (
    "CREATE SEQUENCE commit_fault",
    f"""
    CREATE FUNCTION commit_fault() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
    BEGIN
        IF NEW.tenant_id = '{TENANT}' AND nextval('commit_fault') = 1 THEN
            PERFORM pg_sleep(60);
        END IF;
        RETURN NULL;
    END $$
    """,
    "CREATE CONSTRAINT TRIGGER commit_fault AFTER INSERT ON outbox "
    "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION commit_fault()",
)
HOLD_AFTER_DURABLE = (
    "CREATE SEQUENCE commit_fault",
    f"""
    CREATE FUNCTION commit_fault() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
    BEGIN
        IF NEW.tenant_id = '{TENANT}' AND nextval('commit_fault') = 1 THEN
            PERFORM set_config('synchronous_commit', 'on', true);  -- this transaction waits for the standby
        END IF;
        RETURN NEW;
    END $$
    """,
    "CREATE TRIGGER commit_fault BEFORE INSERT ON outbox FOR EACH ROW EXECUTE FUNCTION commit_fault()",
)
WAIT_EVENT = {"before": "PgSleep", "after": "SyncRep"}


async def _execute(url: str, statements: tuple[str, ...], *, autocommit: bool = False) -> None:
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            if autocommit:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            for statement in statements:
                await conn.execute(text(statement))
            await conn.commit()
    finally:
        await engine.dispose()


@pytest.mark.parametrize("when", ["before", "after"])
async def test_connection_killed_during_commit(
    lab_with_own_postgres: tuple[Lab, EmbeddedPostgres], keys: DevKeys, when: str
) -> None:
    lab, postgres = lab_with_own_postgres
    if when == "after":
        # A standby that never connects: only a transaction that asks for synchronous commit waits for it.
        await _execute(
            postgres.url(),
            (
                "ALTER SYSTEM SET synchronous_standby_names = 'nobody'",
                f'ALTER DATABASE "{lab.database.name}" SET synchronous_commit = local',
                "SELECT pg_reload_conf()",
            ),
            autocommit=True,
        )
    await _execute(lab.database.admin, HOLD_BEFORE_DURABLE if when == "before" else HOLD_AFTER_DURABLE)
    service = lab.serve("a")
    await service.ready()
    nc = await lab.connect()
    try:
        load = CommandLoad(nc, keys.mint(tenant_id=TENANT, roles=["clinician"]))
        await load.start()
        await load.send("careplan.create", {"patient_id": "p1", "title": "Falls prevention"})

        # When the backend is terminated while it is inside COMMIT
        async def committing_backend() -> bool:
            killed = await lab.scalar(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE query ILIKE 'COMMIT%' AND wait_event = :w",
                w=WAIT_EVENT[when],
            )
            return bool(killed)

        await until(committing_backend, 30, f"a backend waiting in COMMIT ({WAIT_EVENT[when]})")
        if when == "after":
            # The commit was durable: the plan is there before any redelivery could have written it.
            assert await lab.scalar("SELECT count(*) FROM care_plans") == 1
        else:
            assert await lab.scalar("SELECT count(*) FROM care_plans") == 0

        # Then the service, which lost the connection, retries; the command is applied exactly once
        await load.answered(timeout=60)
        await assert_each_command_applied_once(lab, load)
        await assert_events_once_in_order(lab, load, nc)
        retries = service.log_lines("will retry in")
        assert len(retries) == 1, retries
        assert await lab.scalar("SELECT count(*) FROM resource_history") == 1
        assert await lab.scalar("SELECT count(*) FROM provenance") == 1
    finally:
        await nc.close()
    if when == "after":
        assert "has already committed locally" in postgres.log_file.read_text(errors="replace")
