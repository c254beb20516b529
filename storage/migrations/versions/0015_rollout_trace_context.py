"""The trace context of the command that started a rollout (CONTRACT §12): each plan's migration, done
later by the rollout worker, is a trace of its own linked to it, so its events lead back to the command.
Nullable: runs started by an untraced command (or before this revision) have none.

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE rollouts ADD COLUMN traceparent text")


def downgrade() -> None:
    op.execute("ALTER TABLE rollouts DROP COLUMN traceparent")
