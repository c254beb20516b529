"""Index for type-level history: newest first per type, without sorting the whole tenant.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE INDEX ix_resource_history_type_time ON resource_history "
        "(tenant_id, resource_type, last_updated DESC, resource_id, version DESC)"
    )


def downgrade() -> None:
    op.execute("DROP INDEX ix_resource_history_type_time")
