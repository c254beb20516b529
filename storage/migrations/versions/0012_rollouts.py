"""Program rollouts (CONTRACT §10): a run is a row of `rollouts`, and each plan it covers a row of
`rollout_plans` whose state moves from `pending` to `migrated` or `skipped` in the very transaction that
migrates (or passes over) the plan. A worker that dies mid-run leaves the rest `pending` for the next one.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

STATEMENTS: tuple[str, ...] = (
    """
    CREATE TABLE rollouts (
        tenant_id      text        NOT NULL,
        id             uuid        NOT NULL,
        program_id     text        NOT NULL,
        target         text        NOT NULL,
        status         text        NOT NULL CHECK (status IN ('running', 'completed')),
        started_by     jsonb       NOT NULL,
        command_id     uuid        NOT NULL,
        correlation_id text,
        created        timestamptz NOT NULL,
        completed      timestamptz,
        totals         jsonb,
        PRIMARY KEY (tenant_id, id)
    )
    """,
    "CREATE INDEX ix_rollouts_running ON rollouts (created) WHERE status = 'running'",
    """
    CREATE TABLE rollout_plans (
        tenant_id  text        NOT NULL,
        rollout_id uuid        NOT NULL,
        plan_id    text        NOT NULL,
        state      text        NOT NULL CHECK (state IN ('pending', 'migrated', 'skipped')),
        changes    jsonb,
        settled    timestamptz,
        PRIMARY KEY (tenant_id, rollout_id, plan_id),
        FOREIGN KEY (tenant_id, rollout_id) REFERENCES rollouts (tenant_id, id)
    )
    """,
    "CREATE INDEX ix_rollout_plans_pending ON rollout_plans (tenant_id, rollout_id, plan_id) "
    "WHERE state = 'pending'",
    *(
        statement
        for table in ("rollouts", "rollout_plans")
        for statement in (
            f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY",
            f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY",
            f"""
            CREATE POLICY tenant_isolation ON {table}
                USING (tenant_id = current_setting('app.tenant_id', true))
                WITH CHECK (tenant_id = current_setting('app.tenant_id', true))
            """,
        )
    ),
)


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TABLE rollout_plans")
    op.execute("DROP TABLE rollouts")
