"""A record, for the tests, of every row ever committed to the outbox.

The relay deletes a row once JetStream has it, so the outbox no longer says what a command wrote. The tests'
databases get a trigger that copies each row inserted into the outbox to `OUTBOX_LEDGER`, in the inserting
transaction: a rolled-back insert leaves no trace there either, so the ledger holds exactly what the outbox
held over time, and tests compare the streams (or "nothing was written") against it. It lives in a schema
of its own, outside the service's, which the schema checks never look at.
"""

from __future__ import annotations

from sqlalchemy import text

from storage.database import create_engine

OUTBOX_LEDGER = "test_ledger.outbox_rows"

_STATEMENTS = (
    "CREATE SCHEMA test_ledger",
    f"""
    CREATE TABLE {OUTBOX_LEDGER} (
        id        bigint NOT NULL,
        tenant_id text   NOT NULL,
        event_id  uuid   NOT NULL,
        subject   text   NOT NULL,
        payload   bytea  NOT NULL
    )
    """,
    f"""
    CREATE FUNCTION test_ledger.record_outbox() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
    BEGIN
        INSERT INTO {OUTBOX_LEDGER} SELECT id, tenant_id, event_id, subject, payload FROM inserted;
        RETURN NULL;
    END $$
    """,
    """
    CREATE TRIGGER test_ledger AFTER INSERT ON outbox REFERENCING NEW TABLE AS inserted
        FOR EACH STATEMENT EXECUTE FUNCTION test_ledger.record_outbox()
    """,
)


async def install_outbox_ledger(admin_url: str) -> None:
    """On a migrated database, as its owner."""
    engine = create_engine(admin_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            for statement in _STATEMENTS:
                await conn.execute(text(statement))
    finally:
        await engine.dispose()
