"""Everything a command writes besides its current rows — search index, history, Provenance, outbox, its
outcome in the command log — collected during the use case and written at commit as one statement.

Each kind of row is one part (a CTE) of that statement: one round trip where a row at a time cost one
each. The parts see the statement's snapshot: the index deletes do not see the index inserts."""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import TextClause, text

from handlers.ports import OutboxMessage, ResourceVersion
from storage.search_index import reindex_parts


@dataclass
class WriteBatch:
    index: list[dict[str, Any]] = field(default_factory=list)  # current FHIR resources to reindex
    history: list[tuple[ResourceVersion, uuid.UUID]] = field(default_factory=list)
    provenance: list[dict[str, Any]] = field(default_factory=list)
    outbox: list[OutboxMessage] = field(default_factory=list)
    outcomes: list[dict[str, Any]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.index or self.history or self.provenance or self.outbox or self.outcomes)

    def statement(self, tenant_id: str) -> tuple[TextClause, dict[str, Any]]:
        ctes: list[str] = []
        params: dict[str, Any] = {"tenant": tenant_id}
        if self.index:
            index_ctes, index_params = reindex_parts(self.index)
            ctes += index_ctes
            params |= index_params
        if self.history:
            ctes.append(
                "w_history AS (INSERT INTO resource_history (tenant_id, resource_type, resource_id, version, "
                "last_updated, command_id, resource) SELECT :tenant, rt, id, v, at, c, r::jsonb FROM unnest("
                "CAST(:h_type AS text[]), CAST(:h_id AS text[]), CAST(:h_version AS int[]), "
                "CAST(:h_updated AS timestamptz[]), CAST(:h_command AS uuid[]), CAST(:h_resource AS text[])) "
                "AS x(rt, id, v, at, c, r))"
            )
            params |= {
                "h_type": [v.resource_type for v, _ in self.history],
                "h_id": [v.resource_id for v, _ in self.history],
                "h_version": [v.version for v, _ in self.history],
                "h_updated": [v.last_updated for v, _ in self.history],
                "h_command": [command_id for _, command_id in self.history],
                "h_resource": [orjson.dumps(v.resource).decode() for v, _ in self.history],
            }
        for n, row in enumerate(self.provenance):
            ctes.append(
                f"w_provenance{n} AS (INSERT INTO provenance (tenant_id, id, recorded, patient_id, targets, "
                f"resource) VALUES (:tenant, :p{n}_id, :p{n}_recorded, :p{n}_patient, "
                f"CAST(:p{n}_targets AS text[]), CAST(:p{n}_resource AS jsonb)))"
            )
            params |= {f"p{n}_{key}": value for key, value in row.items()}
        if self.outbox:
            ctes.append(
                "w_outbox AS (INSERT INTO outbox (tenant_id, event_id, subject, payload) SELECT :tenant, * "
                "FROM unnest(CAST(:o_event AS uuid[]), CAST(:o_subject AS text[]), "
                "CAST(:o_payload AS bytea[])))"
            )
            params |= {
                "o_event": [m.event_id for m in self.outbox],
                "o_subject": [m.subject for m in self.outbox],
                "o_payload": [m.payload for m in self.outbox],
            }
        for n, row in enumerate(self.outcomes):
            ctes.append(
                f"w_outcome{n} AS (INSERT INTO command_log (tenant_id, command_id, command_type, "
                f"request_hash, status, outcome, correlation_id) VALUES (:tenant, :c{n}_command_id, "
                f":c{n}_command_type, :c{n}_request_hash, :c{n}_status, CAST(:c{n}_outcome AS jsonb), "
                f":c{n}_correlation_id))"
            )
            params |= {f"c{n}_{key}": value for key, value in row.items()}
        return _statement(tuple(ctes)), params


@functools.lru_cache(maxsize=64)
def _statement(ctes: tuple[str, ...]) -> TextClause:
    """Commands come in few shapes; parsing a long statement's parameters each time cost more than
    building its values."""
    return text(f"WITH {', '.join(ctes)} SELECT 1")
