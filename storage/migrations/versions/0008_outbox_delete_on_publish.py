"""The outbox keeps only rows waiting for the relay: a published row is deleted in the transaction that
published it, and a row the broker can never take moves to `outbox_parked`. So a row is written once and
deleted once, with one index entry (its primary key, which the relay's `ORDER BY id` scan reads), instead
of being updated to mark it published, kept seven days, and indexed five times.

Existing rows: waiting rows stay as they are, published rows are dropped (JetStream has them), parked rows
move to `outbox_parked` with their `parked_at` and `last_error`.

Rolling deploy: commands of the previous release keep working (they insert only the columns kept), but its
relay does not (it reads `published_at`): its next batch fails before publishing anything, and it gives the
relay lock up; a replica of this release then leads. Run `careplan migrate` just before the rollout. A
relay of this release does not lead before this revision (it would take published rows for waiting ones).

Downgrade: parked rows return to `outbox` with `attempts` 1 (what the previous release sets when it parks);
rows published meanwhile were deleted and stay so. Stop this release's replicas first.

Revision ID: 0008
Revises: 0006
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0006"
branch_labels = None
depends_on = None

OLD_INDEXES = ("ix_outbox_unpublished", "ix_outbox_published", "ix_outbox_parked")


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE outbox_parked (
            id         bigint      PRIMARY KEY,
            tenant_id  text        NOT NULL,
            event_id   uuid        NOT NULL,
            subject    text        NOT NULL,
            payload    bytea       NOT NULL,
            created_at timestamptz NOT NULL,
            parked_at  timestamptz NOT NULL DEFAULT now(),
            last_error text        NOT NULL
        )
        """
    )
    # FORCE: the owner is bound too. A missing app.tenant_id reads as NULL and matches no row.
    op.execute("ALTER TABLE outbox_parked ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE outbox_parked FORCE ROW LEVEL SECURITY")
    op.execute(
        """
        CREATE POLICY tenant_isolation ON outbox_parked
            USING (tenant_id = current_setting('app.tenant_id', true))
            WITH CHECK (tenant_id = current_setting('app.tenant_id', true))
        """
    )
    # The bulk of the published rows (up to the seven days kept), while commands keep inserting. Rows
    # published over six days ago are left to the pass below: the previous release's retention clean-up
    # deletes those, and holding their row locks here while waiting for the table lock could deadlock it.
    op.execute("DELETE FROM outbox WHERE published_at > now() - interval '6 days'")
    # From here on nothing else touches the outbox until this commits: commands wait a moment, and a batch
    # the previous release's relay has in flight finishes first, so no row it marks is missed below.
    op.execute("LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE")
    op.execute("DELETE FROM outbox WHERE published_at IS NOT NULL")
    op.execute(
        """
        WITH parked AS (
            DELETE FROM outbox WHERE parked_at IS NOT NULL
            RETURNING id, tenant_id, event_id, subject, payload, created_at, parked_at, last_error
        )
        INSERT INTO outbox_parked
            (id, tenant_id, event_id, subject, payload, created_at, parked_at, last_error)
        SELECT id, tenant_id, event_id, subject, payload, created_at, parked_at, coalesce(last_error, '')
        FROM parked
        """
    )
    op.execute(f"DROP INDEX {', '.join(OLD_INDEXES)}")
    op.execute(
        "ALTER TABLE outbox DROP CONSTRAINT outbox_event_id_key, DROP COLUMN published_at, "
        "DROP COLUMN attempts, DROP COLUMN last_error, DROP COLUMN parked_at"
    )


def downgrade() -> None:
    op.execute(
        "ALTER TABLE outbox ADD COLUMN published_at timestamptz, ADD COLUMN attempts integer NOT NULL "
        "DEFAULT 0, ADD COLUMN last_error text, ADD COLUMN parked_at timestamptz"
    )
    op.execute("LOCK TABLE outbox_parked IN ACCESS EXCLUSIVE MODE")
    op.execute(
        """
        INSERT INTO outbox (id, tenant_id, event_id, subject, payload, created_at, attempts, last_error,
                            parked_at)
        SELECT id, tenant_id, event_id, subject, payload, created_at, 1, last_error, parked_at
        FROM outbox_parked
        """
    )
    op.execute("DROP TABLE outbox_parked")
    op.execute("ALTER TABLE outbox ADD CONSTRAINT outbox_event_id_key UNIQUE (event_id)")
    op.execute(
        "CREATE INDEX ix_outbox_unpublished ON outbox (id) WHERE published_at IS NULL AND parked_at IS NULL"
    )
    op.execute("CREATE INDEX ix_outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL")
    op.execute(
        "CREATE INDEX ix_outbox_parked ON outbox (id) WHERE published_at IS NULL AND parked_at IS NOT NULL"
    )
