"""The command's trace context beside each outbox row it wrote (CONTRACT §12): the relay's publish span
links to the trace the event belongs to (the event itself carries it as the CloudEvents `traceparent`
extension). Nullable: rows of no traced command (the scheduler's, untraced deployments) have none.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE outbox ADD COLUMN traceparent text")
    op.execute("ALTER TABLE outbox_parked ADD COLUMN traceparent text")


def downgrade() -> None:
    op.execute("ALTER TABLE outbox_parked DROP COLUMN traceparent")
    op.execute("ALTER TABLE outbox DROP COLUMN traceparent")
