"""Scheduler markers: one row per signal sent (an overdue goal and its due date, a plan's review date, a
tenant's summary period), so a signal goes out once however many sweeps and replicas see it.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE schedule_markers (
            tenant_id text NOT NULL,
            kind text NOT NULL,
            resource_id text NOT NULL,
            marker text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tenant_id, kind, resource_id, marker)
        )
        """
    )
    op.execute("ALTER TABLE schedule_markers ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE schedule_markers FORCE ROW LEVEL SECURITY")
    op.execute(
        """
        CREATE POLICY tenant_isolation ON schedule_markers
            USING (tenant_id = current_setting('app.tenant_id', true))
            WITH CHECK (tenant_id = current_setting('app.tenant_id', true))
        """
    )
    # The sweeps look for open goals and reviewable plans across tenants.
    op.execute(
        "CREATE INDEX ix_goals_open ON goals (lifecycle_status) "
        "WHERE lifecycle_status IN ('accepted', 'active')"
    )
    op.execute(
        "CREATE INDEX ix_care_plans_reviewable ON care_plans (status) WHERE status IN ('active', 'on-hold')"
    )


def downgrade() -> None:
    op.execute("DROP INDEX ix_care_plans_reviewable")
    op.execute("DROP INDEX ix_goals_open")
    op.execute("DROP TABLE schedule_markers")
