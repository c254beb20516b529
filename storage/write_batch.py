"""Everything one command writes — current rows, search index, history, Provenance, outbox, its outcome in
the command log — as ONE statement: each kind of row is a part (a CTE) of it, so a command costs one round
trip to write, however many resources it changed.

The parts see the statement's snapshot: the index deletes do not see the index inserts. The statement
returns how many current rows it wrote — one fewer than asked means a version guard failed (a lost update)
— and whether the command log took the outcome: a twin delivery of the command that committed first makes
this one a replay. In either case the caller must not commit."""

from __future__ import annotations

import functools
import re
from typing import Any

from handlers.ports import CommitRecord
from storage.aggregates import current_row
from storage.database import json_text
from storage.search_index import reindex_parts

# Each current-row table's columns after (tenant_id) and their Postgres array types, in unnest order.
_CURRENT: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    resource_type: (
        table,
        (
            ("id", "text"),
            ("version", "int"),
            ("last_updated", "timestamptz"),
            ("state", "jsonb"),
            ("resource", "json"),  # as rendered, key order kept (migration 0014)
            *columns,
        ),
    )
    for resource_type, table, columns in (
        ("CarePlan", "care_plans", (("patient_id", "text"), ("status", "text"))),
        (
            "Goal",
            "goals",
            (
                ("plan_id", "text"),
                ("patient_id", "text"),
                ("lifecycle_status", "text"),
                ("achievement_status", "text"),
            ),
        ),
        (
            "Task",
            "tasks",
            (
                ("plan_id", "text"),
                ("patient_id", "text"),
                ("status", "text"),
                ("owner_id", "text"),
                ("is_review", "boolean"),
            ),
        ),
        ("CareTeam", "care_teams", (("plan_id", "text"), ("patient_id", "text"), ("status", "text"))),
        (
            "PlanDefinition",
            "plan_definitions",
            (("name", "text"), ("url", "text"), ("program_version", "text"), ("status", "text")),
        ),
    )
}


_JSON = ("json", "jsonb")  # sent as text, cast in the statement


def _current_cte(resource_type: str) -> str:
    """Insert at version 1, update after, only from the version before: the plan's row lock already
    serialises writers; this guards against a lost update regardless."""
    table, columns = _CURRENT[resource_type]
    names = [name for name, _ in columns]
    arrays = ", ".join(
        f"CAST(:{table}_{name} AS {'text' if kind in _JSON else kind}[])" for name, kind in columns
    )
    values = ", ".join(f"x.{name}::{kind}" if kind in _JSON else f"x.{name}" for name, kind in columns)
    updates = ", ".join(f"{name} = excluded.{name}" for name in names if name != "id")
    return (
        f"w_{table} AS (INSERT INTO {table} (tenant_id, {', '.join(names)}) "
        f"SELECT :tenant, {values} FROM unnest({arrays}) AS x({', '.join(names)}) "
        f"ON CONFLICT (tenant_id, id) DO UPDATE SET {updates} "
        f"WHERE {table}.version = excluded.version - 1 RETURNING id, version, last_updated, resource)"
    )


def commit_statement(tenant_id: str, record: CommitRecord) -> tuple[str, list[Any]]:
    """The statement and its parameters. It selects the number of current rows written and whether the
    outcome was (1, or 0 when the command log holds the id already: a twin committed first)."""
    ctes: list[str] = []
    params: dict[str, Any] = {"tenant": tenant_id}
    written: list[str] = []
    by_type: dict[str, list[dict[str, Any]]] = {}
    for version in record.versions:
        by_type.setdefault(version.resource_type, []).append(current_row(version))
    for resource_type, rows in by_type.items():
        table, columns = _CURRENT[resource_type]
        ctes.append(_current_cte(resource_type))
        written.append(f"(SELECT count(*) FROM w_{table})")
        params |= {f"{table}_{name}": [row[name] for row in rows] for name, _ in columns}
    if record.versions:
        index_ctes, index_params = reindex_parts([v.resource for v in record.versions])
        ctes += index_ctes
        params |= index_params
        # History from what the upserts wrote: each resource's JSON crosses the wire once, for both rows.
        # A row a version guard refused returns nothing, and then the caller does not commit anyway.
        written_rows = " UNION ALL ".join(
            f"SELECT '{rt}', id, version, last_updated, resource FROM w_{_CURRENT[rt][0]}" for rt in by_type
        )
        ctes.append(
            "w_history AS (INSERT INTO resource_history (tenant_id, resource_type, resource_id, version, "
            f"last_updated, command_id, resource) SELECT :tenant, x.rt, x.id, x.v, x.at, :command_id, x.r "
            f"FROM ({written_rows}) AS x(rt, id, v, at, r))"
        )
    if record.provenance is not None:
        ctes.append(
            "w_provenance AS (INSERT INTO provenance (tenant_id, id, recorded, patient_id, targets, "
            "resource) VALUES (:tenant, :p_id, :p_recorded, :p_patient, CAST(:p_targets AS text[]), "
            "CAST(:p_resource AS json)))"
        )
        provenance = record.provenance
        params |= {
            "p_id": provenance.resource["id"],
            "p_recorded": provenance.recorded,
            "p_patient": provenance.patient_id,
            "p_targets": list(provenance.targets),
            "p_resource": json_text(provenance.resource),
        }
    if record.outbox:
        ctes.append(
            "w_outbox AS (INSERT INTO outbox (tenant_id, event_id, subject, payload, traceparent) "
            "SELECT :tenant, * FROM unnest(CAST(:o_event AS uuid[]), CAST(:o_subject AS text[]), "
            "CAST(:o_payload AS bytea[]), CAST(:o_trace AS text[])))"
        )
        params |= {
            "o_event": [m.event_id for m in record.outbox],
            "o_subject": [m.subject for m in record.outbox],
            "o_payload": [m.payload for m in record.outbox],
            "o_trace": [m.traceparent for m in record.outbox],
        }
    if record.rollout is not None:
        ctes += _ROLLOUT_CTES
        rollout = record.rollout
        params |= {
            "r_id": rollout.rollout_id,
            "r_program": rollout.program_id,
            "r_target": rollout.target,
            "r_started_by": json_text(rollout.started_by),
            "r_created": rollout.created,
            "r_plans": list(rollout.plan_ids),
            "r_trace": rollout.traceparent,
        }
    if record.settled is not None:
        ctes.append(_SETTLE_CTE)
        settled = record.settled
        params |= {
            "s_rollout": settled.rollout_id,
            "s_plan": settled.plan_id,
            "s_state": settled.state,
            "s_changes": json_text(settled.changes),
        }
    outcome = record.outcome
    ctes.append(
        "w_outcome AS (INSERT INTO command_log (tenant_id, command_id, command_type, request_hash, status, "
        "outcome, correlation_id) VALUES (:tenant, :command_id, :c_type, :c_hash, :c_status, "
        "CAST(:c_outcome AS jsonb), :c_correlation) "
        "ON CONFLICT (tenant_id, command_id) DO NOTHING RETURNING 1)"
    )
    params |= {
        "command_id": outcome.command_id,
        "c_type": outcome.command_type,
        "c_hash": outcome.request_hash,
        "c_status": outcome.status,
        "c_outcome": json_text(outcome.reply),
        "c_correlation": outcome.correlation_id,
    }
    sql, names = _statement(tuple(ctes), " + ".join(written) or "0")
    return sql, [params[name] for name in names]


# A run and its plans, pending (CONTRACT §10).
_ROLLOUT_CTES = (
    "w_rollout AS (INSERT INTO rollouts (tenant_id, id, program_id, target, status, started_by, command_id, "
    "correlation_id, created, traceparent) VALUES (:tenant, :r_id, :r_program, :r_target, 'running', "
    "CAST(:r_started_by AS jsonb), :command_id, :c_correlation, :r_created, :r_trace) RETURNING id)",
    "w_rollout_plans AS (INSERT INTO rollout_plans (tenant_id, rollout_id, plan_id, state) "
    "SELECT :tenant, (SELECT id FROM w_rollout), p, 'pending' FROM unnest(CAST(:r_plans AS text[])) AS p)",
)
# A plan the rollout worker claimed (its row is locked): settled with the migration, in the same commit.
_SETTLE_CTE = (
    "w_settled AS (UPDATE rollout_plans SET state = :s_state, changes = CAST(:s_changes AS jsonb), "
    "settled = now() WHERE tenant_id = :tenant AND rollout_id = :s_rollout AND plan_id = :s_plan "
    "AND state = 'pending')"
)


@functools.lru_cache(maxsize=128)
def _statement(ctes: tuple[str, ...], written: str) -> tuple[str, tuple[str, ...]]:
    """The statement with asyncpg's positional parameters, and the parameter names in their order.
    Commands come in few shapes; asyncpg then reuses the prepared statement of each."""
    named = f"WITH {', '.join(ctes)} SELECT {written}, (SELECT count(*) FROM w_outcome)"
    order: dict[str, int] = {}

    def positional(match: re.Match[str]) -> str:
        return f"${order.setdefault(match.group(1), len(order) + 1)}"

    return _NAMED.sub(positional, named), tuple(order)


# `:name` parameters, not the `::type` casts beside them.
_NAMED = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")
