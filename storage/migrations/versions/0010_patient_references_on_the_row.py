"""The `patient`/`subject` references of plans, goals, tasks and care teams lose their search-index rows:
each is rendered from its row's indexed `patient_id` column (`Patient/<patient_id>`, never missing), and
searches and sorts now read that column (storage.search_index.ON_PATIENT_COLUMN). Two of the seven
index rows a create wrote, and their four index entries.

The tables force row-level security on their owner too; each statement here is about every tenant, so
the owner is let past the policies for this transaction only.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_TABLES = {"CarePlan": "care_plans", "Goal": "goals", "Task": "tasks", "CareTeam": "care_teams"}


def upgrade() -> None:
    with _every_tenant("search_reference"):
        op.execute(
            "DELETE FROM search_reference WHERE param IN ('patient', 'subject') "
            "AND resource_type IN ('CarePlan', 'Goal', 'Task', 'CareTeam')"
        )


def downgrade() -> None:
    with _every_tenant("search_reference", *_TABLES.values()):
        for resource_type, table in _TABLES.items():
            for param in ("patient", "subject"):
                op.execute(
                    "INSERT INTO search_reference "
                    "(tenant_id, resource_type, resource_id, param, ref_type, ref_id) "
                    f"SELECT tenant_id, '{resource_type}', id, '{param}', 'Patient', patient_id FROM {table}"
                )


@contextlib.contextmanager
def _every_tenant(*tables: str) -> Iterator[None]:
    for table in tables:
        op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
    yield
    for table in tables:
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
