"""Goals, Tasks (activities and reviews) and CareTeams; the domain state of every resource beside its FHIR.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

NEW_TENANT_TABLES = ("goals", "tasks", "care_teams")

STATEMENTS: tuple[str, ...] = (
    # The aggregate is loaded from `state` (the domain's own record); `resource` is what FHIR reads serve.
    # Plans written by 0001 have no state; commands on them answer INTERNAL until re-created (pre-release).
    "ALTER TABLE care_plans ADD COLUMN state jsonb",
    """
    CREATE TABLE goals (
        tenant_id          text        NOT NULL,
        id                 text        NOT NULL,
        version            integer     NOT NULL CHECK (version >= 1),
        plan_id            text        NOT NULL,
        patient_id         text        NOT NULL,
        lifecycle_status   text        NOT NULL,
        achievement_status text,
        last_updated       timestamptz NOT NULL,
        state              jsonb       NOT NULL,
        resource           jsonb       NOT NULL,
        PRIMARY KEY (tenant_id, id),
        FOREIGN KEY (tenant_id, plan_id) REFERENCES care_plans (tenant_id, id)
    )
    """,
    "CREATE INDEX ix_goals_plan ON goals (tenant_id, plan_id)",
    "CREATE INDEX ix_goals_patient ON goals (tenant_id, patient_id)",
    """
    CREATE TABLE tasks (
        tenant_id    text        NOT NULL,
        id           text        NOT NULL,
        version      integer     NOT NULL CHECK (version >= 1),
        plan_id      text        NOT NULL,
        patient_id   text        NOT NULL,
        status       text        NOT NULL,
        owner_id     text,
        is_review    boolean     NOT NULL,
        last_updated timestamptz NOT NULL,
        state        jsonb       NOT NULL,
        resource     jsonb       NOT NULL,
        PRIMARY KEY (tenant_id, id),
        FOREIGN KEY (tenant_id, plan_id) REFERENCES care_plans (tenant_id, id)
    )
    """,
    "CREATE INDEX ix_tasks_plan ON tasks (tenant_id, plan_id)",
    "CREATE INDEX ix_tasks_patient ON tasks (tenant_id, patient_id)",
    """
    CREATE TABLE care_teams (
        tenant_id    text        NOT NULL,
        id           text        NOT NULL,
        version      integer     NOT NULL CHECK (version >= 1),
        plan_id      text        NOT NULL,
        patient_id   text        NOT NULL,
        status       text        NOT NULL,
        last_updated timestamptz NOT NULL,
        state        jsonb       NOT NULL,
        resource     jsonb       NOT NULL,
        PRIMARY KEY (tenant_id, id),
        UNIQUE (tenant_id, plan_id),
        FOREIGN KEY (tenant_id, plan_id) REFERENCES care_plans (tenant_id, id)
    )
    """,
    "CREATE INDEX ix_care_teams_patient ON care_teams (tenant_id, patient_id)",
)


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)
    for table in NEW_TENANT_TABLES:
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
    op.execute("DROP TABLE care_teams, tasks, goals")
    op.execute("ALTER TABLE care_plans DROP COLUMN state")
