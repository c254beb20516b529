"""Search index: token, reference, date and string (uri) values of every current resource, per parameter.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import text

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

INDEX_TABLES = ("search_token", "search_reference", "search_date", "search_string")
STATEMENTS: tuple[str, ...] = (
    """
    CREATE TABLE search_token (
        tenant_id     text NOT NULL,
        resource_type text NOT NULL,
        resource_id   text NOT NULL,
        param         text NOT NULL,
        system        text,
        code          text,
        display       text
    )
    """,
    "CREATE INDEX ix_search_token_code ON search_token (tenant_id, resource_type, param, code, system)",
    "CREATE INDEX ix_search_token_resource ON search_token (tenant_id, resource_type, resource_id)",
    """
    CREATE TABLE search_reference (
        tenant_id     text NOT NULL,
        resource_type text NOT NULL,
        resource_id   text NOT NULL,
        param         text NOT NULL,
        ref_type      text,
        ref_id        text
    )
    """,
    "CREATE INDEX ix_search_reference_target"
    " ON search_reference (tenant_id, resource_type, param, ref_id, ref_type)",
    "CREATE INDEX ix_search_reference_resource ON search_reference (tenant_id, resource_type, resource_id)",
    """
    CREATE TABLE search_date (
        tenant_id     text        NOT NULL,
        resource_type text        NOT NULL,
        resource_id   text        NOT NULL,
        param         text        NOT NULL,
        low           timestamptz NOT NULL,
        high          timestamptz NOT NULL
    )
    """,
    "CREATE INDEX ix_search_date_range ON search_date (tenant_id, resource_type, param, low, high)",
    "CREATE INDEX ix_search_date_resource ON search_date (tenant_id, resource_type, resource_id)",
    """
    CREATE TABLE search_string (
        tenant_id     text NOT NULL,
        resource_type text NOT NULL,
        resource_id   text NOT NULL,
        param         text NOT NULL,
        value         text NOT NULL
    )
    """,
    "CREATE INDEX ix_search_string_value ON search_string (tenant_id, resource_type, param, lower(value))",
    "CREATE INDEX ix_search_string_resource ON search_string (tenant_id, resource_type, resource_id)",
    # Sorting and paging by last update and id, per type.
    "CREATE INDEX ix_care_plans_updated ON care_plans (tenant_id, last_updated, id)",
    "CREATE INDEX ix_goals_updated ON goals (tenant_id, last_updated, id)",
    "CREATE INDEX ix_tasks_updated ON tasks (tenant_id, last_updated, id)",
    "CREATE INDEX ix_care_teams_updated ON care_teams (tenant_id, last_updated, id)",
    "CREATE INDEX ix_provenance_recorded ON provenance (tenant_id, recorded, id)",
    "CREATE INDEX ix_provenance_patient ON provenance (tenant_id, patient_id)",
)


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)
    for table in INDEX_TABLES:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(
            f"""
            CREATE POLICY tenant_isolation ON {table}
                USING (tenant_id = current_setting('app.tenant_id', true))
                WITH CHECK (tenant_id = current_setting('app.tenant_id', true))
            """
        )
    _backfill()


def _backfill() -> None:
    """Index what schema 0002 already holds (the migration runs as the owner, which RLS does not hide
    from when it is a superuser; FORCE applies to a plain owner, so set each row's tenant first)."""
    from storage.search_index import index_rows

    bind = op.get_bind()
    for table in ("care_plans", "goals", "tasks", "care_teams"):
        rows = bind.execute(text(f"SELECT tenant_id, resource FROM {table}")).all()
        for tenant_id, resource in rows:
            bind.execute(text("SELECT set_config('app.tenant_id', :t, true)"), {"t": tenant_id})
            for statement, params in index_rows(tenant_id, resource):
                bind.execute(statement, params)


def downgrade() -> None:
    op.execute("DROP TABLE search_token, search_reference, search_date, search_string")
    for index in ("ix_care_plans_updated", "ix_goals_updated", "ix_tasks_updated", "ix_care_teams_updated"):
        op.execute(f"DROP INDEX {index}")
    op.execute("DROP INDEX ix_provenance_recorded")
    op.execute("DROP INDEX ix_provenance_patient")
