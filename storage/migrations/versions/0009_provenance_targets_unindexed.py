"""Provenance's GIN index on `targets` goes: the runtime role can never use it. Under row-level security
Postgres runs no operator that is not marked leakproof before the policy, and no array (or jsonb) GIN
operator is, so `targets && …` is a filter after the tenant's (patient or recorded) index either way —
checked with EXPLAIN as the runtime role, before and after. Every accepted command paid for its entries.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_provenance_targets")


def downgrade() -> None:
    op.execute("CREATE INDEX ix_provenance_targets ON provenance USING gin (targets)")
