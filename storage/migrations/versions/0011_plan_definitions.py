"""Care programs (CONTRACT §10): each program version is a row of `plan_definitions`, its PlanDefinition
JSON beside the domain's state and the columns enrolment, rollouts and searches look up: the name and its
business version (unique per tenant: a version is never reused), the canonical url and the status.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

STATEMENTS: tuple[str, ...] = (
    """
    CREATE TABLE plan_definitions (
        tenant_id       text        NOT NULL,
        id              text        NOT NULL,
        version         integer     NOT NULL CHECK (version >= 1),
        name            text        NOT NULL,
        url             text        NOT NULL,
        program_version text        NOT NULL,
        status          text        NOT NULL,
        last_updated    timestamptz NOT NULL,
        state           jsonb       NOT NULL,
        resource        jsonb       NOT NULL,
        PRIMARY KEY (tenant_id, id),
        UNIQUE (tenant_id, name, program_version)
    )
    """,
    "ALTER TABLE plan_definitions ENABLE ROW LEVEL SECURITY",
    "ALTER TABLE plan_definitions FORCE ROW LEVEL SECURITY",
    """
    CREATE POLICY tenant_isolation ON plan_definitions
        USING (tenant_id = current_setting('app.tenant_id', true))
        WITH CHECK (tenant_id = current_setting('app.tenant_id', true))
    """,
)


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TABLE plan_definitions")
