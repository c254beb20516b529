"""The Postgres schema, as SQLAlchemy Core tables. Every tenant table leads with `tenant_id` and is under
row-level security (see migrations). Changes here need a new Alembic revision."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSON, JSONB

metadata = MetaData()

care_plans = Table(
    "care_plans",
    metadata,
    Column("tenant_id", Text, nullable=False),
    Column("id", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("patient_id", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("last_updated", DateTime(timezone=True), nullable=False),
    Column("state", JSONB),
    Column("resource", JSON, nullable=False),
    PrimaryKeyConstraint("tenant_id", "id"),
    Index("ix_care_plans_patient", "tenant_id", "patient_id"),
)

goals = Table(
    "goals",
    metadata,
    Column("tenant_id", Text, nullable=False),
    Column("id", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("plan_id", Text, nullable=False),
    Column("patient_id", Text, nullable=False),
    Column("lifecycle_status", Text, nullable=False),
    Column("achievement_status", Text),
    Column("last_updated", DateTime(timezone=True), nullable=False),
    Column("state", JSONB, nullable=False),
    Column("resource", JSON, nullable=False),
    PrimaryKeyConstraint("tenant_id", "id"),
)

tasks = Table(
    "tasks",
    metadata,
    Column("tenant_id", Text, nullable=False),
    Column("id", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("plan_id", Text, nullable=False),
    Column("patient_id", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("owner_id", Text),
    Column("is_review", Boolean, nullable=False),
    Column("last_updated", DateTime(timezone=True), nullable=False),
    Column("state", JSONB, nullable=False),
    Column("resource", JSON, nullable=False),
    PrimaryKeyConstraint("tenant_id", "id"),
)

care_teams = Table(
    "care_teams",
    metadata,
    Column("tenant_id", Text, nullable=False),
    Column("id", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("plan_id", Text, nullable=False),
    Column("patient_id", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("last_updated", DateTime(timezone=True), nullable=False),
    Column("state", JSONB, nullable=False),
    Column("resource", JSON, nullable=False),
    PrimaryKeyConstraint("tenant_id", "id"),
)

# One row per program version (CONTRACT §10); `program_version` is the business version ("1", "2", …).
plan_definitions = Table(
    "plan_definitions",
    metadata,
    Column("tenant_id", Text, nullable=False),
    Column("id", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("name", Text, nullable=False),
    Column("url", Text, nullable=False),
    Column("program_version", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("last_updated", DateTime(timezone=True), nullable=False),
    Column("state", JSONB, nullable=False),
    Column("resource", JSON, nullable=False),
    PrimaryKeyConstraint("tenant_id", "id"),
)

# A program rollout's run (CONTRACT §10) and the state of each plan it covers.
rollouts = Table(
    "rollouts",
    metadata,
    Column("tenant_id", Text, nullable=False),
    Column("id", Uuid, nullable=False),
    Column("program_id", Text, nullable=False),
    Column("target", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("started_by", JSONB, nullable=False),
    Column("command_id", Uuid, nullable=False),
    Column("correlation_id", Text),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("completed", DateTime(timezone=True)),
    Column("totals", JSONB),
    Column("traceparent", Text),  # the starting command's trace (migration 0015)
    PrimaryKeyConstraint("tenant_id", "id"),
)
rollout_plans = Table(
    "rollout_plans",
    metadata,
    Column("tenant_id", Text, nullable=False),
    Column("rollout_id", Uuid, nullable=False),
    Column("plan_id", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("changes", JSONB),
    Column("settled", DateTime(timezone=True)),
    PrimaryKeyConstraint("tenant_id", "rollout_id", "plan_id"),
)

# Every version of every FHIR resource we own, as served by vread and _history.
resource_history = Table(
    "resource_history",
    metadata,
    Column("tenant_id", Text, nullable=False),
    Column("resource_type", Text, nullable=False),
    Column("resource_id", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("last_updated", DateTime(timezone=True), nullable=False),
    Column("command_id", Uuid, nullable=False),
    Column("resource", JSON, nullable=False),
    PrimaryKeyConstraint("tenant_id", "resource_type", "resource_id", "version"),
)

# The audit Provenance of each accepted command, also served read-only (US Core _revinclude).
provenance = Table(
    "provenance",
    metadata,
    Column("tenant_id", Text, nullable=False),
    Column("id", Text, nullable=False),
    Column("recorded", DateTime(timezone=True), nullable=False),
    Column("patient_id", Text),
    Column("targets", ARRAY(Text), nullable=False),
    Column("resource", JSON, nullable=False),
    PrimaryKeyConstraint("tenant_id", "id"),
)

# The inbox: every command id a tenant sent, with the outcome it got (effectively-once processing).
command_log = Table(
    "command_log",
    metadata,
    Column("tenant_id", Text, nullable=False),
    Column("command_id", Uuid, nullable=False),
    Column("command_type", Text, nullable=False),
    Column("request_hash", Text, nullable=False),
    Column("status", Integer, nullable=False),
    Column("outcome", JSONB, nullable=False),
    Column("correlation_id", Text),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    PrimaryKeyConstraint("tenant_id", "command_id"),
)

# Events and audit records waiting for the relay, written in the command's own transaction. The relay deletes
# each row in the transaction that published it, so every row here is waiting: it reads them by id (the
# primary key, the one index), never by a high-water mark (DESIGN.md, the gap trap).
outbox = Table(
    "outbox",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("tenant_id", Text, nullable=False),
    Column("event_id", Uuid, nullable=False),
    Column("subject", Text, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("traceparent", Text),  # the command's trace (migration 0013)
)

# Outbox rows the broker can never take (an invalid subject, too large, no stream takes it), moved here by the
# relay with the reason, in the transaction that tried them; they wait for an operator, with their outbox id.
outbox_parked = Table(
    "outbox_parked",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("tenant_id", Text, nullable=False),
    Column("event_id", Uuid, nullable=False),
    Column("subject", Text, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("parked_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("last_error", Text, nullable=False),
    Column("traceparent", Text),
)

# The search index (storage.search_index writes it, fhir_read's queries read it).
search_token = Table(
    "search_token",
    metadata,
    Column("tenant_id", Text, nullable=False),
    Column("resource_type", Text, nullable=False),
    Column("resource_id", Text, nullable=False),
    Column("param", Text, nullable=False),
    Column("system", Text),
    Column("code", Text),
    Column("display", Text),
)
search_reference = Table(
    "search_reference",
    metadata,
    Column("tenant_id", Text, nullable=False),
    Column("resource_type", Text, nullable=False),
    Column("resource_id", Text, nullable=False),
    Column("param", Text, nullable=False),
    Column("ref_type", Text),
    Column("ref_id", Text),
)
search_date = Table(
    "search_date",
    metadata,
    Column("tenant_id", Text, nullable=False),
    Column("resource_type", Text, nullable=False),
    Column("resource_id", Text, nullable=False),
    Column("param", Text, nullable=False),
    Column("low", DateTime(timezone=True), nullable=False),
    Column("high", DateTime(timezone=True), nullable=False),
)
search_string = Table(
    "search_string",
    metadata,
    Column("tenant_id", Text, nullable=False),
    Column("resource_type", Text, nullable=False),
    Column("resource_id", Text, nullable=False),
    Column("param", Text, nullable=False),
    Column("value", Text, nullable=False),
)

schedule_markers = Table(
    "schedule_markers",
    metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("kind", Text, primary_key=True),
    Column("resource_id", Text, primary_key=True),
    Column("marker", Text, primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
)

# The FHIR types read from a current-row table of their own (Provenance has its table apart).
READABLE_TABLES = {
    "CarePlan": "care_plans",
    "Goal": "goals",
    "Task": "tasks",
    "CareTeam": "care_teams",
    "PlanDefinition": "plan_definitions",
}

TENANT_TABLES: tuple[str, ...] = (
    "care_plans",
    "goals",
    "tasks",
    "care_teams",
    "plan_definitions",
    "rollouts",
    "rollout_plans",
    "resource_history",
    "provenance",
    "command_log",
    "outbox",
    "outbox_parked",
    "search_token",
    "search_reference",
    "search_date",
    "search_string",
    "schedule_markers",
)
