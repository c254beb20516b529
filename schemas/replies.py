"""Replies to commands (CONTRACT §3): also what the command log stores as a command's outcome."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict
from pydantic.json_schema import SkipJsonSchema

# A REST success's `result.position` as a header; sent back on a FHIR read, that read reflects the commit or a
# later state (CONTRACT §11).
POSITION_HEADER = "Careplan-Position"


def _without_default(schema: JsonDict) -> None:
    schema.pop("default", None)


class ResultBody(BaseModel):
    resource_type: str
    id: str
    version: int
    # Absent only from the outcome as stored (written before its commit had a position): never on the wire.
    position: str | SkipJsonSchema[None] = Field(
        default=None,
        json_schema_extra=_without_default,
        description=(
            "The commit's position in the database's write-ahead log, opaque: send it back as the "
            "`Careplan-Position` header of a FHIR read to see this change or a later state (CONTRACT §11). "
            "On every successful reply; an answer repeated from the command log carries a position at or "
            "after the original commit."
        ),
    )

    rollout_id: str | SkipJsonSchema[None] = Field(
        default=None,
        json_schema_extra=_without_default,
        description="`program.rollout` run (202): its id, for `careplan.query.rollout` and "
        "`GET /api/v1/rollouts/{rollout_id}`.",
    )
    rollout: dict[str, Any] | SkipJsonSchema[None] = Field(
        default=None,
        json_schema_extra=_without_default,
        description="`program.rollout` dry run (200): what a run would do — `totals`, `changes` (plans "
        "with the same `from`, `add`, `cancel`, `update` and `keep` keys, grouped) and `skipped`.",
    )


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any] | None = None


class Reply(BaseModel):
    model_config = ConfigDict(frozen=True)

    command_id: str | None
    ok: bool
    status: int
    result: ResultBody | None = None
    error: ErrorBody | None = None

    def at_position(self, position: str | None) -> Reply:
        """This reply with its commit's WAL position in `result` (an error reply has no result for it)."""
        if self.result is None or position is None:
            return self
        return self.model_copy(update={"result": self.result.model_copy(update={"position": position})})

    def to_wire(self) -> dict[str, Any]:
        """The contract's JSON: only the branch that applies (`result` on success, `error` otherwise)."""
        return self.model_dump(mode="json", exclude_none=True, exclude={"command_id"}) | {
            "command_id": self.command_id
        }
