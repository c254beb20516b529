"""Parked outbox rows get a partial index of their own, so `/metrics` counts them (and the relay lag)
without scanning the published rows kept for the retention period.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE INDEX ix_outbox_parked ON outbox (id) WHERE published_at IS NULL AND parked_at IS NOT NULL"
    )


def downgrade() -> None:
    op.execute("DROP INDEX ix_outbox_parked")
