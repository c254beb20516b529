"""Initial schema: care plans, history, provenance, command log, outbox; row-level security everywhere.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TENANT_TABLES = ("care_plans", "resource_history", "provenance", "command_log", "outbox")

STATEMENTS: tuple[str, ...] = (
    """
    CREATE TABLE care_plans (
        tenant_id    text        NOT NULL,
        id           text        NOT NULL,
        version      integer     NOT NULL CHECK (version >= 1),
        patient_id   text        NOT NULL,
        status       text        NOT NULL,
        last_updated timestamptz NOT NULL,
        resource     jsonb       NOT NULL,
        PRIMARY KEY (tenant_id, id)
    )
    """,
    """
    CREATE INDEX ix_care_plans_patient ON care_plans (tenant_id, patient_id)
    """,
    """
    CREATE TABLE resource_history (
        tenant_id     text        NOT NULL,
        resource_type text        NOT NULL,
        resource_id   text        NOT NULL,
        version       integer     NOT NULL CHECK (version >= 1),
        last_updated  timestamptz NOT NULL,
        command_id    uuid        NOT NULL,
        resource      jsonb       NOT NULL,
        PRIMARY KEY (tenant_id, resource_type, resource_id, version)
    )
    """,
    """
    CREATE TABLE provenance (
        tenant_id  text        NOT NULL,
        id         text        NOT NULL,
        recorded   timestamptz NOT NULL,
        patient_id text,
        targets    text[]      NOT NULL,
        resource   jsonb       NOT NULL,
        PRIMARY KEY (tenant_id, id)
    )
    """,
    """
    CREATE INDEX ix_provenance_targets ON provenance USING gin (targets)
    """,
    """
    CREATE TABLE command_log (
        tenant_id      text        NOT NULL,
        command_id     uuid        NOT NULL,
        command_type   text        NOT NULL,
        request_hash   text        NOT NULL,
        status         integer     NOT NULL,
        outcome        jsonb       NOT NULL,
        correlation_id text,
        recorded_at    timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (tenant_id, command_id)
    )
    """,
    """
    CREATE TABLE outbox (
        id           bigserial   PRIMARY KEY,
        tenant_id    text        NOT NULL,
        event_id     uuid        NOT NULL UNIQUE,
        subject      text        NOT NULL,
        payload      bytea       NOT NULL,
        created_at   timestamptz NOT NULL DEFAULT now(),
        published_at timestamptz,
        attempts     integer     NOT NULL DEFAULT 0,
        last_error   text,
        parked_at    timestamptz
    )
    """,
    # The relay reads unpublished rows, never a high-water mark (ids commit out of order).
    """
    CREATE INDEX ix_outbox_unpublished ON outbox (id) WHERE published_at IS NULL AND parked_at IS NULL
    """,
    """
    CREATE INDEX ix_outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL
    """,
    """
    -- Wake the relay when a command commits (NOTIFY arrives at commit, once per transaction).
    CREATE FUNCTION careplan_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('careplan_outbox', '');
        RETURN NULL;
    END $$
    """,
    """
    CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
        FOR EACH STATEMENT EXECUTE FUNCTION careplan_outbox_notify()
    """,
)


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)
    for table in TENANT_TABLES:
        # FORCE: the owner is bound too. A missing app.tenant_id reads as NULL and matches no row.
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(
            f"""
            CREATE POLICY tenant_isolation ON {table}
                USING (tenant_id = current_setting('app.tenant_id', true))
                WITH CHECK (tenant_id = current_setting('app.tenant_id', true))
            """
        )


def downgrade() -> None:
    op.execute("DROP TABLE outbox, command_log, provenance, resource_history, care_plans")
    op.execute("DROP FUNCTION careplan_outbox_notify()")
