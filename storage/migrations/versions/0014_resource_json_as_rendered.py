"""Each stored FHIR resource keeps the text its renderer wrote (`json`, not `jsonb`), so reads serve it with
`resourceType` first and the elements in the order R4 lists them, as people and many clients expect;
jsonb sorts keys by length. The service only ever reads a resource whole (`resource::text`) or one field
of it (`->>`, which json has too); what it searches is in the index tables and the `state` columns.
Rows written before keep the order jsonb gave them.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

TABLES = (
    "care_plans",
    "goals",
    "tasks",
    "care_teams",
    "plan_definitions",
    "resource_history",
    "provenance",
)


def upgrade() -> None:
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN resource TYPE json USING resource::json")


def downgrade() -> None:
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN resource TYPE jsonb USING resource::jsonb")
